/**
 * Dependency-free SVG charts: line panels (with shaded bands and vertical markers), grouped-bar panels and
 * heatmaps, with axes, ticks, legend and an optional zero line.
 */

/** One line of a line chart. */
export interface LineSeries {
  readonly name: string;
  /** [x, y] points in drawing order; non-finite values break the line. */
  readonly points: readonly (readonly [number, number])[];
  readonly dashed?: boolean;
  /** A CSS color; default from the palette by series index. */
  readonly color?: string;
  /** Draw a dot at every point (default true when the series has at most 200 points). */
  readonly markers?: boolean;
  /**
   * A shaded band around the line in its color: [x, lo, hi] per point (a spread or an interval); a non-finite
   * value breaks the band.
   */
  readonly band?: readonly (readonly [number, number, number])[];
}

/** A vertical marker line across the plot area at `x` (a phase switch, say), with an optional label at its top. */
export interface VLine {
  readonly x: number;
  readonly label?: string;
  /** A CSS color (default dark gray). */
  readonly color?: string;
}

/** A tick placed by hand: value and its label. */
export interface Tick {
  readonly value: number;
  readonly label: string;
}

interface Common {
  readonly title: string;
  readonly xLabel?: string;
  readonly yLabel?: string;
  /** Draw the line y = 0 (and include 0 in the y range). */
  readonly zeroLine?: boolean;
  /** Panel size in pixels (default 560 x 360). */
  readonly width?: number;
  readonly height?: number;
  /** Fixed y range (default: the data's, padded). */
  readonly yRange?: readonly [number, number];
}

export interface LineChartSpec extends Common {
  readonly series: readonly LineSeries[];
  /** Fixed x ticks (default: evenly spaced round numbers). */
  readonly xTicks?: readonly Tick[];
  readonly xRange?: readonly [number, number];
  /** Vertical markers (drawn under the series; their x is kept inside the x range). */
  readonly vlines?: readonly VLine[];
}

/** Grouped bars: one group per category, one bar per series in each group. */
export interface BarChartSpec extends Common {
  readonly categories: readonly string[];
  readonly series: readonly {
    readonly name: string;
    readonly values: readonly number[];
    readonly color?: string;
  }[];
}

/** A rendered panel: its size and its SVG elements drawn with the top-left corner at the origin. */
export interface Chart {
  /** Width in SVG user units (px). */
  readonly width: number;
  /** Height in SVG user units (px). */
  readonly height: number;
  /** The panel's SVG elements (no enclosing <svg>). */
  readonly body: string;
}

/** The default colors, by series index. */
export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
];

/** Escape text for SVG content and attribute values. */
export const escapeXml = (s: string): string =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]!,
  );

const fmt = (v: number): string => {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace("e+", "e");
  return String(Number(v.toPrecision(6)));
};
const px = (v: number): string => (Math.round(v * 100) / 100).toString();

/** About `count` round tick values (1, 2, 5 times a power of ten) covering [lo, hi]. */
export const niceTicks = (lo: number, hi: number, count = 5): number[] => {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return out;
};

/** A padded [min, max] of finite values (a degenerate range is widened). */
const extent = (vals: readonly number[], includeZero: boolean, pad = 0.05): [number, number] => {
  const f = vals.filter(Number.isFinite);
  if (includeZero) f.push(0);
  if (f.length === 0) return [0, 1];
  let lo = Math.min(...f), hi = Math.max(...f);
  if (lo === hi) {
    const w = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= w;
    hi += w;
  }
  const p = (hi - lo) * pad;
  return [lo - p, hi + p];
};

interface Frame {
  readonly W: number;
  readonly H: number;
  readonly left: number;
  readonly top: number;
  readonly right: number;
  readonly bottom: number;
  readonly sx: (x: number) => number;
  readonly sy: (y: number) => number;
}

const LEFT = 64, RIGHT = 16;
const itemWidth = (name: string) => 30 + 6.5 * name.length;

/** Legend item positions in rows between the title and the plot area (the plot starts below them). */
const legendLayout = (W: number, names: readonly string[]): { x: number; row: number }[] => {
  const out: { x: number; row: number }[] = [];
  let x = LEFT, row = 0;
  for (const n of names) {
    if (x + itemWidth(n) > W - RIGHT && x > LEFT) {
      x = LEFT;
      row++;
    }
    out.push({ x, row });
    x += itemWidth(n);
  }
  return out;
};

const frameOf = (
  c: Common,
  xr: readonly [number, number],
  yr: readonly [number, number],
  names: readonly string[],
): Frame => {
  const W = c.width ?? 560, H0 = c.height ?? 360;
  const rows = names.length ? Math.max(...legendLayout(W, names).map((p) => p.row)) + 1 : 0;
  const H = H0 + Math.max(0, rows - 1) * 15;
  const left = LEFT, right = W - RIGHT, top = 32 + rows * 15, bottom = H - 48;
  const sx = (x: number) => left + ((x - xr[0]) / (xr[1] - xr[0] || 1)) * (right - left);
  const sy = (y: number) => bottom - ((y - yr[0]) / (yr[1] - yr[0] || 1)) * (bottom - top);
  return { W, H, left, top, right, bottom, sx, sy };
};

/** Title, frame, y ticks and grid, axis labels and the zero line. */
const axes = (c: Common, f: Frame, yr: readonly [number, number]): string[] => {
  const out: string[] = [];
  out.push(`<rect x="0" y="0" width="${f.W}" height="${f.H}" fill="white"/>`);
  out.push(
    `<text x="${px(f.W / 2)}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${
      escapeXml(c.title)
    }</text>`,
  );
  for (const v of niceTicks(yr[0], yr[1], 6)) {
    const y = f.sy(v);
    if (y < f.top - 0.5 || y > f.bottom + 0.5) continue;
    out.push(`<line x1="${f.left}" y1="${px(y)}" x2="${f.right}" y2="${px(y)}" stroke="#e5e5e5"/>`);
    out.push(`<line x1="${f.left - 4}" y1="${px(y)}" x2="${f.left}" y2="${px(y)}" stroke="black"/>`);
    out.push(
      `<text x="${f.left - 6}" y="${px(y + 4)}" text-anchor="end" font-size="11">${escapeXml(fmt(v))}</text>`,
    );
  }
  out.push(
    `<rect x="${f.left}" y="${f.top}" width="${f.right - f.left}" height="${
      f.bottom - f.top
    }" fill="none" stroke="black"/>`,
  );
  if (c.zeroLine && yr[0] <= 0 && yr[1] >= 0) {
    const y = px(f.sy(0));
    out.push(
      `<line class="zero-line" x1="${f.left}" y1="${y}" x2="${f.right}" y2="${y}" stroke="#555" stroke-dasharray="5 3"/>`,
    );
  }
  if (c.xLabel) {
    out.push(
      `<text x="${px((f.left + f.right) / 2)}" y="${f.H - 10}" text-anchor="middle" font-size="12">${
        escapeXml(c.xLabel)
      }</text>`,
    );
  }
  if (c.yLabel) {
    const cy = px((f.top + f.bottom) / 2);
    out.push(
      `<text x="14" y="${cy}" text-anchor="middle" font-size="12" transform="rotate(-90 14 ${cy})">${
        escapeXml(c.yLabel)
      }</text>`,
    );
  }
  return out;
};

/** Legend entries in rows under the title, above the plot area. */
const legend = (f: Frame, items: readonly { name: string; color: string; dashed?: boolean }[]): string[] =>
  legendLayout(f.W, items.map((i) => i.name)).map(({ x, row }, i) => {
    const it = items[i], y = 38 + row * 15;
    return `<g class="legend-item"><line x1="${px(x)}" y1="${px(y - 4)}" x2="${px(x + 18)}" y2="${
      px(y - 4)
    }" stroke="${escapeXml(it.color)}" stroke-width="2"${it.dashed ? ' stroke-dasharray="5 3"' : ""}/>` +
      `<text x="${px(x + 22)}" y="${px(y)}" font-size="11">${escapeXml(it.name)}</text></g>`;
  });

/** A line chart panel. */
export const lineChart = (c: LineChartSpec): Chart => {
  const xs = [
    ...c.series.flatMap((s) => [...s.points.map((p) => p[0]), ...(s.band ?? []).map((b) => b[0])]),
    ...(c.vlines ?? []).map((v) => v.x),
  ];
  const bandYs = (s: LineSeries) => (s.band ?? []).flatMap((b) => [b[1], b[2]]);
  const ys = c.series.flatMap((s) => [...s.points.map((p) => p[1]), ...bandYs(s)]);
  const xr = c.xRange ?? extent(xs, false, 0.02);
  const yr = c.yRange ?? extent(ys, c.zeroLine ?? false, 0.08);
  const f = frameOf(c, xr, yr, c.series.map((s) => s.name));
  const out = axes(c, f, yr);
  const xt = c.xTicks ?? niceTicks(xr[0], xr[1], 8).map((v) => ({ value: v, label: fmt(v) }));
  for (const t of xt) {
    const x = f.sx(t.value);
    if (x < f.left - 0.5 || x > f.right + 0.5) continue;
    out.push(`<line x1="${px(x)}" y1="${f.bottom}" x2="${px(x)}" y2="${f.bottom + 4}" stroke="black"/>`);
    out.push(
      `<text x="${px(x)}" y="${f.bottom + 16}" text-anchor="middle" font-size="11">${
        escapeXml(t.label)
      }</text>`,
    );
  }
  for (const v of c.vlines ?? []) {
    if (!Number.isFinite(v.x)) continue;
    const x = px(f.sx(v.x)), color = escapeXml(v.color ?? "#444");
    out.push(
      `<g class="vline"><line x1="${x}" y1="${f.top}" x2="${x}" y2="${f.bottom}" stroke="${color}" ` +
        `stroke-width="1.2" stroke-dasharray="2 3"/>` +
        (v.label
          ? `<text x="${px(f.sx(v.x) + 3)}" y="${f.top + 11}" font-size="10" fill="${color}">${
            escapeXml(v.label)
          }</text>`
          : "") +
        `</g>`,
    );
  }
  c.series.forEach((s, i) => {
    if (!s.band?.length) return;
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const runs: (readonly [number, number, number])[][] = [[]];
    for (const b of s.band) {
      if (b.every(Number.isFinite)) runs[runs.length - 1].push(b);
      else if (runs[runs.length - 1].length) runs.push([]);
    }
    const polys = runs.filter((r) => r.length > 0).map((r) => {
      const pts = [
        ...r.map((b) => `${px(f.sx(b[0]))},${px(f.sy(b[2]))}`),
        ...[...r].reverse().map((b) => `${px(f.sx(b[0]))},${px(f.sy(b[1]))}`),
      ];
      return `<polygon fill="${escapeXml(color)}" fill-opacity="0.18" stroke="none" points="${
        pts.join(" ")
      }"/>`;
    });
    out.push(`<g class="band" data-name="${escapeXml(s.name)}">${polys.join("")}</g>`);
  });
  const items: { name: string; color: string; dashed?: boolean }[] = [];
  c.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    items.push({ name: s.name, color, dashed: s.dashed });
    // Split at non-finite points so a gap shows as a gap.
    const runs: string[][] = [[]];
    for (const [x, y] of s.points) {
      if (Number.isFinite(x) && Number.isFinite(y)) {
        runs[runs.length - 1].push(`${px(f.sx(x))},${px(f.sy(y))}`);
      } else if (runs[runs.length - 1].length) runs.push([]);
    }
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : "";
    const parts = runs.filter((r) => r.length > 0).map((r) =>
      `<polyline fill="none" stroke="${escapeXml(color)}" stroke-width="1.8"${dash} points="${r.join(" ")}"/>`
    );
    if (s.markers ?? s.points.length <= 200) {
      for (const r of runs) {
        for (const p of r) {
          const [x, y] = p.split(",");
          parts.push(`<circle cx="${x}" cy="${y}" r="2.5" fill="${escapeXml(color)}"/>`);
        }
      }
    }
    out.push(`<g class="series" data-name="${escapeXml(s.name)}">${parts.join("")}</g>`);
  });
  out.push(...legend(f, items));
  return { width: f.W, height: f.H, body: out.join("\n") };
};

/** A grouped bar chart panel (bars start at zero; negative values go down). */
export const barChart = (c: BarChartSpec): Chart => {
  const n = c.categories.length;
  const ys = c.series.flatMap((s) => s.values);
  const yr = c.yRange ?? extent(ys, true, 0.08);
  const f = frameOf(c, [0, Math.max(1, n)], yr, c.series.map((s) => s.name));
  const out = axes(c, f, yr);
  const groupW = (f.right - f.left) / Math.max(1, n);
  const barW = (groupW * 0.8) / Math.max(1, c.series.length);
  const labelEvery = Math.max(1, Math.ceil(n / Math.max(1, Math.floor((f.right - f.left) / 28))));
  c.categories.forEach((cat, i) => {
    if (i % labelEvery !== 0) return;
    const x = f.left + groupW * (i + 0.5);
    out.push(`<line x1="${px(x)}" y1="${f.bottom}" x2="${px(x)}" y2="${f.bottom + 4}" stroke="black"/>`);
    out.push(
      `<text x="${px(x)}" y="${f.bottom + 16}" text-anchor="middle" font-size="11">${escapeXml(cat)}</text>`,
    );
  });
  const y0 = f.sy(Math.min(Math.max(0, yr[0]), yr[1]));
  const items: { name: string; color: string }[] = [];
  c.series.forEach((s, j) => {
    const color = s.color ?? PALETTE[j % PALETTE.length];
    items.push({ name: s.name, color });
    const rects = s.values.slice(0, n).map((v, i) => {
      if (!Number.isFinite(v)) return "";
      const x = f.left + groupW * i + groupW * 0.1 + barW * j;
      const y = f.sy(v);
      return `<rect x="${px(x)}" y="${px(Math.min(y, y0))}" width="${px(barW)}" height="${
        px(Math.abs(y0 - y))
      }" fill="${escapeXml(color)}"><title>${
        escapeXml(`${s.name} ${c.categories[i]}: ${fmt(v)}`)
      }</title></rect>`;
    });
    out.push(`<g class="series" data-name="${escapeXml(s.name)}">${rects.join("")}</g>`);
  });
  out.push(...legend(f, items));
  return { width: f.W, height: f.H, body: out.join("\n") };
};

/** A heatmap: one cell per (row, column) category pair, colored by its value, the value written inside. */
export interface HeatmapSpec {
  readonly title: string;
  /** The axis names: columns (x, left to right) and rows (y, top to bottom). */
  readonly xLabel?: string;
  readonly yLabel?: string;
  readonly columns: readonly string[];
  readonly rows: readonly string[];
  /** values[row][column]; a non-finite value is a gray cell marked "n/a". */
  readonly values: readonly (readonly number[])[];
  /** The text inside a cell (default: the value with 3 significant digits). */
  readonly format?: (v: number) => string;
  /**
   * `sequential` (default): white to dark blue over [min, max] of the values; `diverging`: blue below zero, white
   * at zero, red above, symmetric around zero.
   */
  readonly scale?: "sequential" | "diverging";
  /** Fixed color range (sequential) or half-width (diverging: [-r, r] from the larger |end|). */
  readonly range?: readonly [number, number];
  readonly width?: number;
  readonly height?: number;
}

type Rgb = readonly [number, number, number];
const mix = (a: Rgb, b: Rgb, t: number): Rgb =>
  [0, 1, 2].map((i) => a[i] + (b[i] - a[i]) * t) as unknown as Rgb;
const hex = (c: Rgb) =>
  "#" + c.map((v) => Math.round(Math.min(255, Math.max(0, v))).toString(16).padStart(2, "0")).join("");
const WHITE: Rgb = [247, 251, 255],
  BLUE: Rgb = [8, 48, 107],
  RED: Rgb = [178, 24, 43],
  DBLUE: Rgb = [33, 102, 172];

/** The color of `v` on a heatmap's scale over [lo, hi] (non-finite: gray). */
export const heatColor = (v: number, scale: "sequential" | "diverging", lo: number, hi: number): string => {
  if (!Number.isFinite(v)) return "#d9d9d9";
  const clamp = (t: number) => Math.min(1, Math.max(0, t));
  if (scale === "diverging") {
    const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    const t = clamp(v / r);
    return hex(v >= 0 ? mix(WHITE, RED, t) : mix(WHITE, DBLUE, clamp(-v / r)));
  }
  return hex(mix(WHITE, BLUE, clamp((v - lo) / (hi - lo || 1))));
};

const dark = (color: string): boolean => {
  const n = parseInt(color.slice(1), 16);
  return 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255) < 128;
};

/** A heatmap panel with a color key on the right. */
export const heatmap = (c: HeatmapSpec): Chart => {
  const scale = c.scale ?? "sequential";
  const vals = c.values.flat().filter(Number.isFinite);
  let [lo, hi] = c.range ?? (vals.length ? [Math.min(...vals), Math.max(...vals)] : [0, 1]);
  if (scale === "diverging") {
    const r = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    [lo, hi] = [-r, r];
  }
  const W = c.width ?? 560, H = c.height ?? 360;
  const labelW = Math.min(140, 12 + 6.5 * Math.max(0, ...c.rows.map((r) => r.length)));
  const left = 30 + labelW, right = W - 90, top = 40, bottom = H - 48;
  const nc = Math.max(1, c.columns.length), nr = Math.max(1, c.rows.length);
  const cw = (right - left) / nc, ch = (bottom - top) / nr;
  const fmtV = c.format ?? ((v: number) => String(Number(v.toPrecision(3))));
  const out: string[] = [
    `<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`,
    `<text x="${px(W / 2)}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${
      escapeXml(c.title)
    }</text>`,
  ];
  c.rows.forEach((rname, i) => {
    const y = top + ch * i;
    out.push(
      `<text x="${left - 6}" y="${px(y + ch / 2 + 4)}" text-anchor="end" font-size="11">${
        escapeXml(rname)
      }</text>`,
    );
    c.columns.forEach((_, j) => {
      const v = c.values[i]?.[j] ?? NaN, x = left + cw * j, fill = heatColor(v, scale, lo, hi);
      const cls = Number.isFinite(v) ? "cell" : "cell missing";
      out.push(
        `<g class="${cls}"><rect x="${px(x)}" y="${px(y)}" width="${px(cw)}" height="${
          px(ch)
        }" fill="${fill}" ` +
          `stroke="white"><title>${
            escapeXml(`${rname}, ${c.columns[j]}: ${Number.isFinite(v) ? fmt(v) : "n/a"}`)
          }` +
          `</title></rect><text x="${px(x + cw / 2)}" y="${px(y + ch / 2 + 4)}" text-anchor="middle" ` +
          `font-size="11" fill="${dark(fill) ? "white" : "black"}">${
            escapeXml(Number.isFinite(v) ? fmtV(v) : "n/a")
          }</text></g>`,
      );
    });
  });
  c.columns.forEach((cname, j) => {
    out.push(
      `<text x="${px(left + cw * (j + 0.5))}" y="${bottom + 16}" text-anchor="middle" font-size="11">${
        escapeXml(cname)
      }</text>`,
    );
  });
  if (c.xLabel) {
    out.push(
      `<text x="${px((left + right) / 2)}" y="${H - 10}" text-anchor="middle" font-size="12">${
        escapeXml(c.xLabel)
      }</text>`,
    );
  }
  if (c.yLabel) {
    const cy = px((top + bottom) / 2);
    out.push(
      `<text x="14" y="${cy}" text-anchor="middle" font-size="12" transform="rotate(-90 14 ${cy})">${
        escapeXml(c.yLabel)
      }</text>`,
    );
  }
  // The color key: five swatches from the top (hi) to the bottom (lo).
  const keyH = Math.min(30, (bottom - top) / 5);
  for (let k = 0; k < 5; k++) {
    const v = hi - ((hi - lo) * k) / 4, y = top + keyH * k;
    out.push(
      `<g class="key"><rect x="${right + 14}" y="${px(y)}" width="16" height="${px(keyH)}" fill="${
        heatColor(v, scale, lo, hi)
      }" stroke="#999"/><text x="${right + 34}" y="${px(y + keyH / 2 + 4)}" font-size="10">${
        escapeXml(fmtV(v))
      }</text></g>`,
    );
  }
  return { width: W, height: H, body: out.join("\n") };
};

/** A panel of text: a title and monospace lines (a summary beside the charts). */
export const textPanel = (title: string, lines: readonly string[], width = 560, height = 360): Chart => {
  const H = Math.max(height, 48 + 14 * lines.length);
  const body = [
    `<rect x="0" y="0" width="${width}" height="${H}" fill="white"/>`,
    `<text x="${px(width / 2)}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${
      escapeXml(title)
    }</text>`,
    `<g class="text-lines" font-family="monospace" font-size="11">`,
    ...lines.map((l, i) => `<text x="16" y="${44 + 14 * i}" xml:space="preserve">${escapeXml(l)}</text>`),
    `</g>`,
  ];
  return { width, height: H, body: body.join("\n") };
};

/** Several panels in one SVG document, `columns` per row (an optional title over all). */
export const panels = (charts: readonly Chart[], columns = 1, title?: string): string => {
  const cols = Math.max(1, Math.min(columns, charts.length || 1));
  const rows = Math.ceil(charts.length / cols);
  const cellW = Math.max(0, ...charts.map((c) => c.width));
  const cellH = Math.max(0, ...charts.map((c) => c.height));
  const head = title ? 30 : 0;
  const W = cols * cellW, H = rows * cellH + head;
  const parts = charts.map((c, i) =>
    `<g class="panel" transform="translate(${(i % cols) * cellW} ${
      head + Math.floor(i / cols) * cellH
    })">\n${c.body}\n</g>`
  );
  const t = title
    ? `<text x="${px(W / 2)}" y="20" text-anchor="middle" font-size="16" font-weight="bold">${
      escapeXml(title)
    }</text>\n`
    : "";
  return `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif">\n<rect width="${W}" height="${H}" fill="white"/>\n${t}${
      parts.join("\n")
    }\n</svg>\n`;
};

/** One chart as a whole SVG document. */
export const toSvg = (chart: Chart): string => panels([chart], 1);
