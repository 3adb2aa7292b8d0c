// Small line charts rendered straight into an RGB buffer (for encodePng): axes with tick values
// and titles in a 3×5 pixel font, one polyline with dots per series. No dependencies, runs anywhere.
import type { RasterImage } from '../io/png.js';

export type Series = { points: [number, number][]; color: [number, number, number]; dots?: boolean };
export type ChartOptions = { width?: number; height?: number; logY?: boolean; title?: string; xLabel?: string; yLabel?: string };

// 3×5 glyphs, rows top to bottom, 3 bits each (4 = left column).
const FONT: Record<string, number[]> = {
  '0': [7, 5, 5, 5, 7], '1': [2, 6, 2, 2, 7], '2': [7, 1, 7, 4, 7], '3': [7, 1, 7, 1, 7], '4': [5, 5, 7, 1, 1],
  '5': [7, 4, 7, 1, 7], '6': [7, 4, 7, 5, 7], '7': [7, 1, 1, 1, 1], '8': [7, 5, 7, 5, 7], '9': [7, 5, 7, 1, 7],
  '.': [0, 0, 0, 0, 2], '-': [0, 0, 7, 0, 0], '+': [0, 2, 7, 2, 0], ' ': [0, 0, 0, 0, 0],
  '(': [1, 2, 2, 2, 1], ')': [4, 2, 2, 2, 4], '/': [1, 1, 2, 4, 4], '%': [5, 1, 2, 4, 5], ':': [0, 2, 0, 2, 0], ',': [0, 0, 0, 2, 4], '=': [0, 7, 0, 7, 0],
  // Letters, drawn as capitals (tick labels' exponents too: 1.0E5).
  A: [2, 5, 7, 5, 5], B: [6, 5, 6, 5, 6], C: [3, 4, 4, 4, 3], D: [6, 5, 5, 5, 6], E: [7, 4, 6, 4, 7], F: [7, 4, 6, 4, 4],
  G: [3, 4, 5, 5, 3], H: [5, 5, 7, 5, 5], I: [7, 2, 2, 2, 7], J: [1, 1, 1, 5, 2], K: [5, 5, 6, 5, 5], L: [4, 4, 4, 4, 7],
  M: [5, 7, 7, 5, 5], N: [6, 5, 5, 5, 5], O: [2, 5, 5, 5, 2], P: [6, 5, 6, 4, 4], Q: [2, 5, 5, 6, 3], R: [6, 5, 6, 5, 5],
  S: [3, 4, 2, 1, 6], T: [7, 2, 2, 2, 2], U: [5, 5, 5, 5, 7], V: [5, 5, 5, 5, 2], W: [5, 5, 7, 7, 5], X: [5, 5, 2, 5, 5],
  Y: [5, 5, 2, 2, 2], Z: [7, 1, 2, 4, 7],
};

const glyph = (ch: string): number[] | undefined => FONT[ch.toUpperCase()];

export class Canvas {
  readonly data: Uint8Array;
  constructor(
    readonly width: number,
    readonly height: number,
  ) {
    this.data = new Uint8Array(width * height * 3).fill(255);
  }
  set(x: number, y: number, c: readonly [number, number, number]): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 3;
    this.data[o] = c[0];
    this.data[o + 1] = c[1];
    this.data[o + 2] = c[2];
  }
  line(x0: number, y0: number, x1: number, y1: number, c: readonly [number, number, number]): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    for (let i = 0; i <= steps; i++) this.set(x0 + ((x1 - x0) * i) / steps, y0 + ((y1 - y0) * i) / steps, c);
  }
  dot(x: number, y: number, c: readonly [number, number, number]): void {
    for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) this.set(x + dx, y + dy, c);
  }
  /** Text in the 3×5 font at scale `s`, (x, y) the top left; characters outside the font are skipped. */
  text(x: number, y: number, s: string, c: readonly [number, number, number] = [0, 0, 0], scale = 1): void {
    for (const ch of s) {
      const g = glyph(ch);
      if (g) {
        for (let r = 0; r < 5; r++) for (let col = 0; col < 3; col++) if (g[r]! & (4 >> col)) for (let a = 0; a < scale; a++) for (let b = 0; b < scale; b++) this.set(x + col * scale + a, y + r * scale + b, c);
      }
      x += 4 * scale;
    }
  }
  /** Text reading upwards (a y-axis title), (x, y) the bottom left of its first character. */
  textUp(x: number, y: number, s: string, c: readonly [number, number, number] = [0, 0, 0]): void {
    for (const ch of s) {
      const g = glyph(ch);
      if (g) for (let r = 0; r < 5; r++) for (let col = 0; col < 3; col++) if (g[r]! & (4 >> col)) this.set(x + r, y - col, c);
      y -= 4;
    }
  }
  image(): RasterImage {
    return { width: this.width, height: this.height, channels: 3, data: this.data };
  }
}

/** A short tick label: up to 3 significant digits, exponent form outside [1e-3, 1e5). */
export function tickLabel(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace('e+', 'e');
  return String(Number(v.toPrecision(3)));
}

function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/** Ticks (as log10 values) at 1, 2, 5 × 10^k inside [lo, hi], thinned to powers of ten when crowded. */
function logTicks(lo: number, hi: number): number[] {
  const all: number[] = [];
  for (let k = Math.floor(lo); k <= Math.ceil(hi); k++) for (const m of [1, 2, 5]) all.push(k + Math.log10(m));
  const inside = all.filter((t) => t >= lo - 1e-9 && t <= hi + 1e-9);
  if (inside.length > 8) return inside.filter((t) => Number.isInteger(Math.round(t * 1e9) / 1e9));
  return inside.length >= 2 ? inside : niceTicks(lo, hi);
}

/** A line chart of one or more series; y may be logarithmic (non-positive values are dropped). */
export function lineChart(series: Series[], opts: ChartOptions = {}): RasterImage {
  const width = opts.width ?? 360;
  const height = opts.height ?? 220;
  const cv = new Canvas(width, height);
  const fy = (v: number) => (opts.logY ? Math.log10(v) : v);
  const pts = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0));
  const left = opts.yLabel ? 42 : 34;
  const right = width - 8;
  const top = opts.title ? 18 : 8;
  const bottom = height - (opts.xLabel ? 26 : 16);
  if (opts.title) cv.text(Math.round((width - 4 * opts.title.length) / 2), 4, opts.title);
  if (opts.xLabel) cv.text(Math.round((left + right - 4 * opts.xLabel.length) / 2), height - 9, opts.xLabel);
  if (opts.yLabel) cv.textUp(3, Math.round((top + bottom + 4 * opts.yLabel.length) / 2), opts.yLabel);
  const axis: [number, number, number] = [0, 0, 0];
  const grid: [number, number, number] = [225, 225, 225];
  if (pts.length === 0) {
    cv.line(left, bottom, right, bottom, axis);
    cv.line(left, top, left, bottom, axis);
    return cv.image();
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => fy(p[1]))), Math.max(...pts.map((p) => fy(p[1])))];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const px = (x: number) => left + ((x - x0) / (x1 - x0)) * (right - left);
  const py = (y: number) => bottom - ((fy(y) - y0) / (y1 - y0)) * (bottom - top);
  for (const t of opts.logY ? logTicks(y0, y1) : niceTicks(y0, y1)) {
    const y = bottom - ((t - y0) / (y1 - y0)) * (bottom - top);
    cv.line(left + 1, y, right, y, grid);
    const label = tickLabel(opts.logY ? 10 ** t : t);
    cv.text(left - 3 - 4 * label.length, Math.round(y) - 2, label);
  }
  for (const t of niceTicks(x0, x1)) {
    const x = px(t);
    cv.line(x, bottom, x, bottom + 2, axis);
    const label = tickLabel(t);
    cv.text(Math.round(x) - 2 * label.length, bottom + 5, label);
  }
  cv.line(left, bottom, right, bottom, axis);
  cv.line(left, top, left, bottom, axis);
  for (const s of series) {
    const ps = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0));
    for (let i = 1; i < ps.length; i++) cv.line(px(ps[i - 1]![0]), py(ps[i - 1]![1]), px(ps[i]![0]), py(ps[i]![1]), s.color);
    if (s.dots ?? ps.length <= 40) for (const [x, y] of ps) cv.dot(px(x), py(y), s.color);
  }
  return cv.image();
}

/** Places charts side by side on one white canvas. */
export function sideBySide(images: RasterImage[], gap = 8): RasterImage {
  const width = images.reduce((w, im) => w + im.width, 0) + gap * Math.max(0, images.length - 1);
  const height = Math.max(...images.map((im) => im.height));
  const out = new Uint8Array(width * height * 3).fill(255);
  let ox = 0;
  for (const im of images) {
    if (im.channels !== 3) throw new Error('sideBySide: RGB images only');
    for (let y = 0; y < im.height; y++) out.set(im.data.subarray(y * im.width * 3, (y + 1) * im.width * 3), (y * width + ox) * 3);
    ox += im.width + gap;
  }
  return { width, height, channels: 3, data: out };
}
