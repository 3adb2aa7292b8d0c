// The sampling pipeline: noise → images, in batches, optionally denoised. The library call
// behind `starflow sample`.
import { Rng, toF32, fromF32, type Arr } from '../engine/index.js';
import { tokenShape, type TarFlowConfig } from '../models/config.js';
import type { TarFlowParams } from '../models/tarflow.js';
import { sampleFromNoise, SamplingError, type BlockPlan, type BlockStats, type Guidance } from './solvers.js';
import { denoise } from './denoise.js';

export type GenerateOptions = {
  n: number;
  /** One label per sample (class models); −1 = unconditional. */
  labels?: number[];
  plans: BlockPlan[];
  guidance: Guidance;
  seed: number;
  /** Samples per solver call batch. */
  batchSize?: number;
  /** Noise tokens to start from instead of drawing them, [n, T, D]. */
  noise?: Float32Array;
  denoise?: { sigma: number; lrScale: number };
  onProgress?: (done: number, total: number) => void;
};

export type GenerateResult = { images: Float32Array; shape: [number, number, number, number]; stats: BlockStats[][]; seconds: number };

/** Draws n × T × D standard normal noise tokens from a seed (the same for every solver). */
export async function drawNoise(cfg: TarFlowConfig, n: number, seed: number): Promise<Float32Array> {
  const { tokens, tokenDim } = tokenShape(cfg);
  const rng = new Rng(seed);
  const out = new Float32Array(n * tokens * tokenDim);
  for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  return out;
}

export async function generate(params: TarFlowParams, cfg: TarFlowConfig, o: GenerateOptions): Promise<GenerateResult> {
  if (!Number.isInteger(o.n) || o.n < 1) throw new SamplingError(`the number of samples must be an integer ≥ 1, got ${o.n}`);
  if (o.denoise && !(o.denoise.sigma > 0)) {
    throw new SamplingError('denoising needs the noise level σ the model was trained with (this model has noiseStd 0: pass --sigma)');
  }
  const { tokens, tokenDim, dims } = tokenShape(cfg);
  const noise = o.noise ?? (await drawNoise(cfg, o.n, o.seed));
  if (noise.length !== o.n * tokens * tokenDim) throw new SamplingError(`noise must hold ${o.n}×${tokens}×${tokenDim} values, got ${noise.length}`);
  const bs = Math.min(o.batchSize ?? o.n, o.n);
  const images = new Float32Array(o.n * dims);
  const stats: BlockStats[][] = [];
  const t0 = performance.now();
  for (let start = 0; start < o.n; start += bs) {
    const b = Math.min(bs, o.n - start);
    const z = fromF32(noise.subarray(start * tokens * tokenDim, (start + b) * tokens * tokenDim), [b, tokens, tokenDim]);
    const labels = o.labels?.slice(start, start + b);
    const r = await sampleFromNoise(params, cfg, z, labels, {
      plans: o.plans,
      guidance: o.guidance,
      onStep: (done, total) => o.onProgress?.(start * total + done * b, o.n * total),
    });
    let x: Arr = r.images;
    if (o.denoise) x = denoise(params, cfg, x, labels, o.denoise.sigma, o.denoise.lrScale);
    images.set(await toF32(x), start * dims);
    stats.push(r.stats);
  }
  return { images, shape: [o.n, cfg.inChannels, cfg.imgSize, cfg.imgSize], stats, seconds: (performance.now() - t0) / 1000 };
}
