/** SVG charts are well-formed XML with every series, ticks are round and cover the range; the progress bar's two modes. */
import fc from "fast-check";
import { barChart, escapeXml, lineChart, niceTicks, panels, toSvg } from "../io/svg.ts";
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
