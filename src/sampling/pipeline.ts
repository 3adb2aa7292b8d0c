// The sampling pipeline: noise → images, in batches, optionally denoised, a latent model's
// samples decoded by its autoencoder. The library call behind `starflow sample`, generic over
// model families.
import { Rng, fromF32, toF32, type Arr } from '../engine/index.js';
import { imageShapeOf, NO_GUIDANCE, type Guidance, type Model } from '../models/model.js';
import { latentCodec } from '../models/autoencoder.js';
import { sampleModel, noiseArray, SamplingError, type BlockStats } from './solvers.js';
import { plansFor, type SolverChoice } from './plan.js';
import { odePlanFor } from './ode.js';
import { denoise } from './denoise.js';

export type GenerateOptions = {
  n: number;
  /** One label per sample (class models); −1 = unconditional. */
  labels?: number[];
  /** Solver: for autoregressive flows (default sequential), or for velocity families with its steps (default Euler, the model's steps). */
  solver?: SolverChoice;
  /** Default: none. */
  guidance?: Guidance;
  seed: number;
  /** Samples per solver call batch. */
  batchSize?: number;
  /** Noise to start from instead of drawing it, [n, ...noiseShape]. */
  noise?: Float32Array;
  denoise?: { sigma: number; lrScale: number };
  onProgress?: (done: number, total: number) => void;
  /** Text-conditioned models: encoder states [n, textTokens, textDim] (host, row-major) and, for guidance, the negative's. */
  text?: { states: Float32Array; negative?: Float32Array };
};

export type GenerateResult = {
  images: Float32Array;
  shape: [number, number, number, number];
  stats: BlockStats[][];
  seconds: number;
  /** Samples drawn again because their inverse overflowed (counted per attempt). */
  redrawn: number;
  /** Samples still non-finite after the redraws (or with caller-given noise). */
  nonFinite: number;
};

/**
 * Default labels for n samples of a model with `numClasses` classes: one row per class (the
 * first min(numClasses, 10)), ceil(n / rows) samples each, so a grid of `perRow` columns shows a
 * class per row (the last row may be shorter). Unconditional models: no labels, a square grid.
 */
export function classRows(n: number, numClasses: number): { labels: number[] | undefined; perRow: number } {
  if (numClasses === 0) return { labels: undefined, perRow: Math.ceil(Math.sqrt(n)) };
  const perRow = Math.ceil(n / Math.min(numClasses, 10));
  return { labels: Array.from({ length: n }, (_, i) => Math.floor(i / perRow)), perRow };
}

/** A seed for redraw round `round`, unrelated to the seeds a user would pick. */
function mix(seed: number, round: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) + round * 0x85ebca6b) >>> 0;
}

/** Values in one sample's noise. */
export function noiseSize(model: Pick<Model, 'family' | 'cfg'>): number {
  return model.family.noiseShape(model.cfg).reduce((a, b) => a * b, 1);
}

/** Draws n samples' standard normal noise from a seed (the same for every solver and device). */
export function drawNoise(model: Pick<Model, 'family' | 'cfg'>, n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n * noiseSize(model));
  for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  return out;
}

export async function generate(model: Model, o: GenerateOptions): Promise<GenerateResult> {
  const { cfg } = model;
  if (!Number.isInteger(o.n) || o.n < 1) throw new SamplingError(`the number of samples must be an integer ≥ 1, got ${o.n}`);
  if (o.denoise && !(o.denoise.sigma > 0)) {
    throw new SamplingError('denoising needs the noise level σ the model was trained with (this model has noiseStd 0: pass --sigma)');
  }
  const plans = plansFor(model, o.solver);
  const ode = model.family.sampler(cfg).kind === 'velocity' ? odePlanFor(model, o.solver?.name, o.solver?.steps) : undefined;
  const per = noiseSize(model);
  // A latent model's samples are decoded by its autoencoder into its images.
  const codec = model.autoencoder && latentCodec(model.autoencoder);
  const image = imageShapeOf(model);
  const shape: [number, number, number, number] = [o.n, image.channels, image.size, image.size];
  const dims = shape[1] * shape[2] * shape[3];
  const noise = o.noise ?? drawNoise(model, o.n, o.seed);
  if (noise.length !== o.n * per) throw new SamplingError(`noise must hold ${o.n}×${per} values, got ${noise.length}`);
  const bs = Math.min(o.batchSize ?? o.n, o.n);
  const images = new Float32Array(o.n * dims);
  const stats: BlockStats[][] = [];
  const t0 = performance.now();
  const textWidth = (cfg.textTokens ?? 0) * (cfg.textDim ?? 0);
  const rowsOf = (data: Float32Array, idx: number[]): Arr => {
    const out = new Float32Array(idx.length * textWidth);
    idx.forEach((i, k) => out.set(data.subarray(i * textWidth, (i + 1) * textWidth), k * textWidth));
    return fromF32(out, [idx.length, cfg.textTokens ?? 0, cfg.textDim ?? 0]);
  };
  for (const [name, t] of [['text states', o.text?.states], ['negative text states', o.text?.negative]] as const) {
    if (t && t.length !== o.n * textWidth) throw new SamplingError(`${name} must hold ${o.n}×${cfg.textTokens ?? 0}×${cfg.textDim ?? 0} values, got ${t.length}`);
  }
  /** Samples `idx` from noise z (their rows), with their labels and text. */
  const sampleBatch = async (z: Float32Array, idx: number[], progress: (done: number, total: number) => void) => {
    const labels = o.labels && idx.map((i) => o.labels![i]!);
    const text = o.text && { states: rowsOf(o.text.states, idx), ...(o.text.negative ? { negative: rowsOf(o.text.negative, idx) } : {}) };
    try {
      const r = await sampleModel(model, noiseArray(model, z, idx.length), labels, { plans, guidance: o.guidance ?? NO_GUIDANCE, onStep: progress, text, ...(ode ? { ode } : {}) });
      stats.push(r.stats);
      const x: Arr = o.denoise ? denoise(model, r.images, labels, o.denoise.sigma, o.denoise.lrScale, text?.states) : r.images;
      return await toF32(codec ? codec.decode(x) : x);
    } finally {
      text?.states.dispose();
      text?.negative?.dispose();
    }
  };
  const range = (from: number, count: number) => Array.from({ length: count }, (_, k) => from + k);
  for (let start = 0; start < o.n; start += bs) {
    const b = Math.min(bs, o.n - start);
    const z = noise.subarray(start * per, (start + b) * per);
    images.set(await sampleBatch(z, range(start, b), (done, total) => o.onProgress?.(start * total + done * b, o.n * total)), start * dims);
  }
  // An inverse can overflow where the flow is poorly trained; like the reference, draw those
  // samples again (fresh noise from the seed), unless the caller fixed the noise.
  const bad = () => range(0, o.n).filter((i) => !images.subarray(i * dims, (i + 1) * dims).every(Number.isFinite));
  let redrawn = 0;
  for (let round = 1; round <= 3 && !o.noise; round++) {
    const idx = bad();
    if (idx.length === 0) break;
    redrawn += idx.length;
    const fresh = drawNoise(model, idx.length, mix(o.seed, round));
    const x = await sampleBatch(fresh, idx, () => {});
    idx.forEach((i, k) => images.set(x.subarray(k * dims, (k + 1) * dims), i * dims));
  }
  const nonFinite = bad().length;
  return { images, shape, stats, seconds: (performance.now() - t0) / 1000, redrawn, nonFinite };
}
