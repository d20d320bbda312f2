/** A progress bar: redraws one line on a terminal; elsewhere prints a plain line every ~5 s or every 10%. */

/** Where the bar writes (Deno.stdout by default). */
export interface ProgressSink {
  writeSync(bytes: Uint8Array): number;
  isTerminal?(): boolean;
}

export interface ProgressOptions {
  /** The stream (default Deno.stdout). */
  readonly sink?: ProgressSink;
  /** Force terminal (redraw) or plain mode; default: the sink's isTerminal(). */
  readonly tty?: boolean;
  /** Unit of the rate, e.g. "tok" gives "12.3 tok/s" (default "it"). */
  readonly unit?: string;
  /** Clock in milliseconds (tests pass a fake one). */
  readonly now?: () => number;
  /** Plain mode: seconds between lines at most (default 5). */
  readonly every?: number;
  /** Terminal mode: least milliseconds between redraws (default 100). */
  readonly redrawMs?: number;
  /** Bar width in characters (default 24). */
  readonly width?: number;
}

/** A running progress display; `done()` writes the final line. */
export interface Progress {
  /** Advance by n steps (default 1). */
  tick(n?: number): void;
  /** Set the absolute step count. */
  update(step: number): void;
  /** Change the total (e.g. when generation stops early). */
  setTotal(total: number): void;
  /** Text shown after the bar (e.g. `reward 0.62`); empty for none. */
  setNote(note: string): void;
  /** Finish: draw the final state and end the line. */
  done(): void;
}

/** `h:mm:ss` or `m:ss`. */
export const formatDuration = (seconds: number): string => {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (x: number) => String(x).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
};

const formatRate = (r: number): string =>
  !Number.isFinite(r) ? "?" : r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);

/** One line of text for a state (no escape codes): `label [####----] 12/40 30% 3.10 it/s ETA 0:09`. */
export const progressLine = (
  label: string,
  step: number,
  total: number,
  elapsedS: number,
  unit = "it",
  width = 24,
  finished = false,
): string => {
  const frac = total > 0 ? Math.min(1, step / total) : 0;
  const full = Math.round(frac * width);
  const bar = "#".repeat(full) + "-".repeat(width - full);
  const rate = elapsedS > 0 ? step / elapsedS : NaN;
  const tail = finished
    ? `in ${formatDuration(elapsedS)}`
    : `ETA ${step > 0 && total > 0 ? formatDuration((total - step) / rate) : "?"}`;
  return `${label} [${bar}] ${step}/${total} ${(frac * 100).toFixed(0)}% ${
    formatRate(rate)
  } ${unit}/s ${tail}`;
};

/** Start a progress display of `total` steps. */
export const progress = (label: string, total: number, opts: ProgressOptions = {}): Progress => {
  const sink = opts.sink ?? Deno.stdout;
  let tty = opts.tty;
  if (tty === undefined) {
    try {
      tty = sink.isTerminal?.() ?? false;
    } catch {
      tty = false;
    }
  }
  const now = opts.now ?? (() => performance.now());
  const unit = opts.unit ?? "it", width = opts.width ?? 24;
  const everyMs = (opts.every ?? 5) * 1000, redrawMs = opts.redrawMs ?? 100;
  const enc = new TextEncoder();
  const write = (s: string) => {
    try {
      sink.writeSync(enc.encode(s));
    } catch {
      // a closed stream must not break the computation being reported on
    }
  };
  const t0 = now();
  let step = 0, lastDraw = t0, lastDecile = 0, finished = false, note = "";
  const line = (elapsed: number) =>
    progressLine(label, step, total, elapsed, unit, width, finished) + (note ? `  ${note}` : "");
  const draw = (force: boolean) => {
    const t = now();
    const elapsed = (t - t0) / 1000;
    if (tty) {
      if (!force && t - lastDraw < redrawMs && step > 1) return;
      lastDraw = t;
      write(`\r${line(elapsed)}\x1b[K`);
      return;
    }
    const decile = total > 0 ? Math.floor((10 * Math.min(step, total)) / total) : 0;
    // The last step's line is done()'s, so a finished count does not print twice.
    if (force || (step < total && (decile > lastDecile || t - lastDraw >= everyMs))) {
      lastDraw = t;
      lastDecile = decile;
      write(`${line(elapsed)}\n`);
    }
  };
  return {
    tick(n = 1) {
      step += n;
      draw(false);
    },
    update(s) {
      step = s;
      draw(false);
    },
    setTotal(t) {
      total = t;
    },
    setNote(n) {
      note = n;
    },
    done() {
      if (finished) return;
      finished = true;
      draw(true);
      if (tty) write("\n");
    },
  };
};
