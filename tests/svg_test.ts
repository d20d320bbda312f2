/** SVG charts are well-formed XML with every series, ticks are round and cover the range; the progress bar's two modes. */
import fc from "fast-check";
import {
  barChart,
  escapeXml,
  heatColor,
  heatmap,
  lineChart,
  niceTicks,
  panels,
  textPanel,
  toSvg,
} from "../io/svg.ts";
import { formatDuration, progress, progressLine } from "../io/progress.ts";

/** Check tags nest and close, attribute values are quoted, and text has no raw `<` or bare `&`; returns the tag names. */
const parseXmlish = (doc: string): string[] => {
  if (!doc.startsWith('<?xml version="1.0"')) throw new Error("no XML declaration");
  const body = doc.replace(/^<\?xml[^>]*\?>\s*/, "");
  const stack: string[] = [], names: string[] = [];
  const re = /<(\/?)([a-zA-Z][\w-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0, m: RegExpExecArray | null;
  while ((m = re.exec(body))) {
    const text = body.slice(last, m.index);
    if (/[<>]|&(?!(amp|lt|gt|quot|apos);)/.test(text)) throw new Error(`bad text ${JSON.stringify(text)}`);
    last = re.lastIndex;
    const [, close, name, , self] = m;
    names.push(name);
    if (close) {
      if (stack.pop() !== name) throw new Error(`</${name}> closes the wrong element`);
    } else if (!self) stack.push(name);
  }
  if (body.slice(last).trim() !== "") {
    throw new Error(`trailing or unparsed text: ${body.slice(last, last + 80)}`);
  }
  if (stack.length) throw new Error(`unclosed: ${stack.join(",")}`);
  if (names[0] !== "svg") throw new Error("root is not <svg>");
  return names;
};

Deno.test("niceTicks: increasing round steps inside the range, 2 to 12 of them", () => {
  fc.assert(
    // Widths down to 1e-5 of the magnitude (narrower ranges run out of f64 digits for the ticks).
    fc.property(
      fc.double({ min: -1e6, max: 1e6, noNaN: true }),
      fc.double({ min: 1e-5, max: 1e3, noNaN: true }),
      (lo, f) => {
        const hi = lo + f * Math.max(1, Math.abs(lo));
        const t = niceTicks(lo, hi, 5);
        if (t.length < 2 || t.length > 12) throw new Error(`${t.length} ticks for [${lo}, ${hi}]`);
        const step = t[1] - t[0];
        const mant = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
        if (![1, 2, 5, 10].some((k) => Math.abs(mant - k) < 1e-6)) {
          throw new Error(`step ${step} is not round`);
        }
        t.forEach((v, i) => {
          if (v < lo - step * 1e-6 || v > hi + step * 1e-6) {
            throw new Error(`tick ${v} outside [${lo}, ${hi}]`);
          }
          if (i > 0 && Math.abs(v - t[i - 1] - step) > step * 1e-6) throw new Error("uneven ticks");
        });
      },
    ),
  );
  if (niceTicks(3, 3).join() !== "3" || niceTicks(NaN, 1).length !== 0) throw new Error("degenerate ranges");
});

Deno.test("lineChart: series, legend, dashes, gaps at NaN, zero line, escaped text; panels lay charts out in columns", () => {
  const a = lineChart({
    title: "A <title> & more",
    xLabel: "x",
    yLabel: "y",
    series: [
      { name: "solid", points: [[0, 1], [1, -2], [2, NaN], [3, 4], [4, 5]] },
      { name: 'a<b & "c"', points: [[0, 0.5], [4, 0.25]], dashed: true },
    ],
    zeroLine: true,
  });
  const doc = toSvg(a);
  const names = parseXmlish(doc);
  if (names.filter((n) => n === "polyline").length !== 3) {
    throw new Error("the NaN point must split the first series in two");
  }
  if (
    !doc.includes('data-name="a&lt;b &amp; &quot;c&quot;"') || !doc.includes("A &lt;title&gt; &amp; more")
  ) {
    throw new Error("escaping");
  }
  if (!doc.includes('stroke-dasharray="6 4"') || !doc.includes('class="zero-line"')) {
    throw new Error("dash / zero line");
  }
  if ((doc.match(/class="legend-item"/g) ?? []).length !== 2) throw new Error("legend");
  const noZero = toSvg(lineChart({ title: "t", series: [{ name: "s", points: [[0, 1], [1, 2]] }] }));
  if (noZero.includes("zero-line")) throw new Error("zero line drawn without zeroLine");
  const b = barChart({
    title: "bars",
    categories: ["0", "1", "2"],
    series: [{ name: "up", values: [1, 2, 3] }, { name: "down", values: [-1, NaN, -3] }],
    zeroLine: true,
  });
  const all = panels([a, b, a], 2, "three panels");
  const tags = parseXmlish(all);
  if (tags.filter((n) => n === "rect").length < 5 + 3) throw new Error("bars missing");
  const [, w, h] = /width="(\d+)" height="(\d+)"/.exec(all)!;
  if (Number(w) !== 2 * Math.max(a.width, b.width) || Number(h) !== 2 * Math.max(a.height, b.height) + 30) {
    throw new Error(`panel size ${w} x ${h}`);
  }
  if ((all.match(/class="panel"/g) ?? []).length !== 3) throw new Error("panels");
  if (escapeXml(`<&>"'`) !== "&lt;&amp;&gt;&quot;&apos;") throw new Error("escapeXml");
});

Deno.test("lineChart: any random data gives well-formed SVG", () => {
  const pt = fc.tuple(fc.double({ min: -1e3, max: 1e3 }), fc.double({ min: -1e3, max: 1e3 }));
  fc.assert(
    fc.property(
      fc.array(fc.record({ name: fc.string(), points: fc.array(pt, { maxLength: 20 }) }), { maxLength: 4 }),
      fc.boolean(),
      (series, zeroLine) => {
        parseXmlish(toSvg(lineChart({ title: "random", series, zeroLine })));
        parseXmlish(
          toSvg(
            barChart({
              title: "bars",
              categories: ["a", "b"],
              series: series.map((s) => ({ name: s.name, values: s.points.map((p) => p[1]) })),
            }),
          ),
        );
      },
    ),
    { numRuns: 60 },
  );
});

const sink = () => {
  const out: string[] = [];
  return { out, writeSync: (b: Uint8Array) => (out.push(new TextDecoder().decode(b)), b.length) };
};

Deno.test("progress: plain mode prints a line per 10% or per 5 s; terminal mode redraws one line", () => {
  let now = 0;
  const s = sink();
  const p = progress("work", 100, { sink: s, tty: false, now: () => now, unit: "tok" });
  for (let i = 0; i < 100; i++) {
    now += 10; // 1 s in all: only the 10% boundaries print
    p.tick();
  }
  p.done();
  const lines = s.out.join("").trim().split("\n");
  if (lines.length !== 10 || !/^work \[#+\] 100\/100 100% 100 tok\/s in 0:01$/.test(lines[9])) {
    throw new Error(`plain lines: ${JSON.stringify(lines)}`);
  }
  const slow = sink();
  now = 0;
  const q = progress("slow", 1000, { sink: slow, tty: false, now: () => now });
  for (let i = 0; i < 50; i++) {
    now += 1000; // 50 s for 5%: a line every 5 s
    q.tick();
  }
  if (slow.out.length !== 10) throw new Error(`${slow.out.length} lines in 50 s, expected 10`);
  const t = sink();
  now = 0;
  const r = progress("tty", 4, { sink: t, tty: true, now: () => now, redrawMs: 0 });
  for (let i = 0; i < 4; i++) {
    now += 500;
    r.tick();
  }
  r.done();
  const text = t.out.join("");
  if (!text.startsWith("\rtty [") || (text.match(/\n/g) ?? []).length !== 1 || !text.includes("\x1b[K")) {
    throw new Error(`tty output ${JSON.stringify(text)}`);
  }
  const u = sink();
  const v = progress("train", 2, { sink: u, tty: false, now: () => now });
  v.setNote("reward 0.625");
  v.update(1);
  if (!/train \[.*\] 1\/2 .*ETA .* {2}reward 0\.625$/.test(u.out.join("").trim())) {
    throw new Error(`note: ${JSON.stringify(u.out.join(""))}`);
  }
  if (!progressLine("x", 1, 4, 2).endsWith("ETA 0:06") || formatDuration(3725) !== "1:02:05") {
    throw new Error("eta");
  }
});

/** Every `x,y` pair of the `points` attributes of the first `<tag>` group with class `cls`. */
const pointsIn = (doc: string, cls: string, tag = "polygon"): [number, number][][] => {
  const g = doc.match(new RegExp(`<g class="${cls}"[^>]*>(.*?)</g>`))?.[1] ?? "";
  return [...g.matchAll(new RegExp(`<${tag}[^>]* points="([^"]*)"`, "g"))].map((m) =>
    m[1].split(" ").map((p) => p.split(",").map(Number) as [number, number])
  );
};
/** The plot area of a line chart: its frame rectangle. */
const plotArea = (doc: string) => {
  const m = doc.match(/<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="none"/)!;
  const [x, y, w, h] = m.slice(1).map(Number);
  return { left: x, top: y, right: x + w, bottom: y + h };
};

Deno.test("lineChart bands: a polygon per finite run, in the series' color, inside the plot, widening the y range", () => {
  const doc = toSvg(lineChart({
    title: "bands",
    series: [{
      name: "mean",
      color: "#123456",
      points: [[0, 1], [1, 2], [2, 1.5], [3, 1]],
      band: [[0, 0.5, 1.5], [1, 1, 4], [2, NaN, 2], [3, 0, 1.2]],
    }],
  }));
  parseXmlish(doc);
  const polys = pointsIn(doc, "band");
  if (polys.length !== 2 || polys[0].length !== 4 || polys[1].length !== 2) {
    throw new Error(`polygons: ${JSON.stringify(polys)}`);
  }
  if (!/<g class="band" data-name="mean"><polygon fill="#123456" fill-opacity="0.18"/.test(doc)) {
    throw new Error("band color");
  }
  const area = plotArea(doc);
  const ys = polys.flat().map((p) => p[1]);
  if (ys.some((y) => y < area.top || y > area.bottom)) throw new Error(`band outside the plot: ${ys}`);
  // The band's top (hi = 4 at x = 1) is above every point of the line (max 2): the range was widened for it.
  const line = pointsIn(doc, "series", "polyline")[0].map((p) => p[1]);
  if (!(Math.min(...ys) < Math.min(...line))) throw new Error("the band does not reach above the line");
  // Upper edge left to right, then the lower edge back: the first polygon's x go 0, 1, then 1, 0.
  const xs = polys[0].map((p) => p[0]);
  if (!(xs[0] < xs[1] && xs[1] === xs[2] && xs[3] === xs[0])) throw new Error(`band order: ${xs}`);
});

Deno.test("lineChart vlines: a dashed marker across the plot at x with its label; x widens the range", () => {
  const doc = toSvg(lineChart({
    title: "markers",
    series: [{ name: "s", points: [[0, 0], [1, 1], [2, 2]] }],
    vlines: [{ x: 1.5, label: "phase <switch>" }, { x: 4, color: "#ff0000" }],
  }));
  parseXmlish(doc);
  const lines = [
    ...doc.matchAll(
      /<g class="vline"><line x1="([\d.]+)" y1="([\d.]+)" x2="[\d.]+" y2="([\d.]+)" stroke="([^"]+)"/g,
    ),
  ];
  if (lines.length !== 2) throw new Error(`${lines.length} markers`);
  const area = plotArea(doc);
  const pts = pointsIn(doc, "series", "polyline")[0].map((p) => p[0]);
  const x15 = Number(lines[0][1]), x4 = Number(lines[1][1]);
  if (!(x15 > pts[1] && x15 < pts[2]) || Math.abs(x15 - (pts[1] + pts[2]) / 2) > 0.02) {
    throw new Error(`x = 1.5 drawn at ${x15}, points at ${pts}`);
  }
  if (!(x4 > pts[2] && x4 <= area.right)) throw new Error(`x = 4 drawn at ${x4}`);
  if (Number(lines[0][2]) !== area.top || Number(lines[0][3]) !== area.bottom) {
    throw new Error("marker height");
  }
  if (lines[1][4] !== "#ff0000" || !doc.includes("phase &lt;switch&gt;")) throw new Error("color / label");
});

Deno.test("heatmap: a cell per value with its text, darker for larger values, n/a for missing; diverging colors", () => {
  const doc = toSvg(heatmap({
    title: "grid",
    xLabel: "phase-steps",
    yLabel: "layer",
    rows: ["0", "1"],
    columns: ["5", "10", "<20>"],
    values: [[10, 20, 30], [40, NaN, 60]],
    format: (v) => v.toFixed(1),
  }));
  const names = parseXmlish(doc);
  if (
    (doc.match(/class="cell"/g) ?? []).length !== 5 || (doc.match(/class="cell missing"/g) ?? []).length !== 1
  ) {
    throw new Error("cells");
  }
  for (const t of ["10.0", "30.0", "60.0", "n/a", "&lt;20&gt;", "phase-steps", "layer"]) {
    if (!doc.includes(`>${t}<`)) throw new Error(`missing text ${t}`);
  }
  if (names.filter((n) => n === "rect").length < 6 + 5) throw new Error("cells and key swatches");
  const fill = (v: string) =>
    doc.match(new RegExp(`fill="(#[0-9a-f]{6})" stroke="white"><title>[^<]*: ${v}<`))![1];
  const lum = (c: string) => {
    const n = parseInt(c.slice(1), 16);
    return 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
  };
  if (!(lum(fill("10")) > lum(fill("30")) && lum(fill("30")) > lum(fill("60")))) {
    throw new Error(`sequential scale: ${fill("10")} ${fill("30")} ${fill("60")}`);
  }
  // The darkest cell gets white text.
  if (!/fill="white">60\.0</.test(doc)) throw new Error("text color on a dark cell");
  const rgb = (c: string) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const [neg, zero, pos] = [-2, 0, 1].map((v) => rgb(heatColor(v, "diverging", -1, 2)));
  if (!(neg[2] > neg[0] && pos[0] > pos[2] && zero.every((c) => c > 240))) {
    throw new Error(`diverging: ${neg} ${zero} ${pos}`);
  }
  if (heatColor(NaN, "sequential", 0, 1) !== "#d9d9d9") throw new Error("missing color");
});

Deno.test("textPanel: escaped monospace lines under a title", () => {
  const doc = toSvg(textPanel("summary & more", ["a < b", "c"]));
  parseXmlish(doc);
  if (
    !doc.includes("summary &amp; more") || !doc.includes(">a &lt; b<") || !doc.includes('class="text-lines"')
  ) {
    throw new Error(doc);
  }
});
