import type { ImageDataset } from './dataset.js';
import { epochOrder, type Rng } from '../engine/rng.js';

export interface Batch {
  /** (B, C, H, W) in [-1, 1]. */
  x: Float32Array;
  /** (B,) class indices; -1 marks a dropped (unconditional) label. */
  y: Int32Array;
}

export interface MakeBatchOptions {
  /** Mirror each image left-right with probability 0.5 (needs `rng`). */
  flip?: boolean;
  rng?: Rng;
}

/**
 * Gathers `indices` from `ds` into a float batch. Pixels map as
 * ToTensor + Normalize(0.5, 0.5): x = u8 / 255 * 2 - 1.
 */
export function makeBatch(ds: ImageDataset, indices: ArrayLike<number>, opts: MakeBatchOptions = {}): Batch {
  const { flip = false, rng } = opts;
  if (flip && !rng) throw new Error('makeBatch: flip needs an rng');
  const { channels: c, height: h, width: w } = ds;
  const per = c * h * w;
  const b = indices.length;
  const x = new Float32Array(b * per);
  const y = new Int32Array(b);
  for (let k = 0; k < b; k++) {
    const idx = indices[k]!;
    if (!Number.isInteger(idx) || idx < 0 || idx >= ds.n) throw new Error(`makeBatch: index ${idx} out of range 0..${ds.n - 1}`);
    y[k] = ds.labels[idx]!;
    const src = idx * per;
    const dst = k * per;
    const mirror = flip && rng!.uniform() < 0.5;
    for (let row = 0; row < c * h; row++) {
      const s = src + row * w;
      const d = dst + row * w;
      if (mirror) for (let col = 0; col < w; col++) x[d + col] = (ds.images[s + w - 1 - col]! / 255) * 2 - 1;
      else for (let col = 0; col < w; col++) x[d + col] = (ds.images[s + col]! / 255) * 2 - 1;
    }
  }
  return { x, y };
}

/** Returns x + sigma * N(0, 1), elementwise. */
export function addGaussianNoise(x: Float32Array, sigma: number, rng: Rng): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! + sigma * rng.normal();
  return out;
}

/**
 * Uniform dequantisation of a [-1, 1] batch built from 8-bit pixels: with
 * k = round((x + 1) * 255 / 2), returns 2 * (k + U[0, 1)) / 256 - 1, in [-1, 1).
 */
export function uniformDequantize(x: Float32Array, rng: Rng): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    // Rounding recovers the exact byte despite float error in x.
    const k = Math.round(((x[i]! + 1) * 255) / 2);
    out[i] = (2 * (k + rng.uniform())) / 256 - 1;
  }
  return out;
}

/** Returns a copy of y with each label replaced by -1 with probability p (classifier-free guidance training). */
export function dropLabels(y: Int32Array, p: number, rng: Rng): Int32Array {
  if (!(p >= 0 && p <= 1)) throw new Error(`dropLabels: p must be in [0, 1], got ${p}`);
  const out = new Int32Array(y.length);
  for (let i = 0; i < y.length; i++) out[i] = rng.uniform() < p ? -1 : y[i]!;
  return out;
}

/**
 * Global step → batch indices, a pure function of (seed, step): each epoch is a
 * fresh permutation from epochOrder, cut into floor(n / batchSize) batches; the
 * incomplete tail of each epoch is dropped. A resumed run thus sees the same data.
 */
export class BatchSampler {
  readonly batchesPerEpoch: number;
  private cachedEpoch = -1;
  private cachedOrder: Uint32Array = new Uint32Array(0);

  constructor(
    readonly n: number,
    readonly batchSize: number,
    readonly seed: number,
  ) {
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`BatchSampler: batch size must be a positive integer, got ${batchSize}`);
    if (!Number.isInteger(n) || n < batchSize) throw new Error(`BatchSampler: dataset of ${n} images is smaller than batch size ${batchSize}`);
    this.batchesPerEpoch = Math.floor(n / batchSize);
  }

  epochOf(step: number): number {
    return Math.floor(step / this.batchesPerEpoch);
  }

  batchIndices(step: number): Uint32Array {
    if (!Number.isInteger(step) || step < 0) throw new Error(`BatchSampler: step must be a non-negative integer, got ${step}`);
    const epoch = this.epochOf(step);
    if (epoch !== this.cachedEpoch) {
      this.cachedOrder = epochOrder(this.n, this.seed, epoch);
      this.cachedEpoch = epoch;
    }
    const start = (step - epoch * this.batchesPerEpoch) * this.batchSize;
    return this.cachedOrder.slice(start, start + this.batchSize);
  }
}

export type DataSpec = { kind: 'mnist' | 'fashion-mnist'; split: 'train' | 'test' } | { kind: 'folder'; dir: string };

/** Parses 'mnist[:train|:test]', 'fashion-mnist[:train|:test]', 'folder:/path' or a bare path. */
export function parseDataSpec(spec: string): DataSpec {
  const s = spec.trim();
  if (s === '') throw new Error('data spec is empty');
  for (const kind of ['mnist', 'fashion-mnist'] as const) {
    if (s === kind || s === `${kind}:train`) return { kind, split: 'train' };
    if (s === `${kind}:test`) return { kind, split: 'test' };
    if (s.startsWith(`${kind}:`)) throw new Error(`unknown split in data spec '${spec}' (use ${kind}:train or ${kind}:test)`);
  }
  if (s.startsWith('folder:')) {
    const dir = s.slice('folder:'.length);
    if (dir === '') throw new Error(`data spec '${spec}' names no folder`);
    return { kind: 'folder', dir };
  }
  // Two or more letters before ':' look like a scheme; one letter is a Windows drive.
  const scheme = /^([a-z][a-z0-9+.-]+):/i.exec(s);
  if (scheme) throw new Error(`unknown data source '${scheme[1]}:' in '${spec}' (use mnist:train, mnist:test, fashion-mnist:train, fashion-mnist:test or folder:/path)`);
  return { kind: 'folder', dir: s };
}
