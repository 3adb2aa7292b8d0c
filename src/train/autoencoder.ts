// Training the latent autoencoder (models/autoencoder.ts) in STARFlow's two phases, through the
// shared optimisation loop: (1) encoder and decoder on the mean squared reconstruction error; the
// latents' scale is then measured on training images so that the flow sees unit variance;
// (2) the decoder alone on noisy latents, decode(encode(x) + σε) ≈ x, at the latent flow's noise
// level σ, so that decoded samples need no score denoising. A run is a pure function of the seed.
import { existsSync } from 'node:fs';
import { keep, release, fromF32, fromI32, toF32, countParams, currentDevice, type Arr, type Params } from '../engine/index.js';
import { Rng } from '../engine/rng.js';
import { initAdamState } from '../nn/optim.js';
import { BatchSampler, makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';
import { loadDataset } from '../data/load.js';
import {
  initAutoencoder,
  latentCodec,
  latentShape,
  noisyDecoderLoss,
  parseAutoencoderConfig,
  reconstructionLoss,
  type Autoencoder,
  type AutoencoderConfig,
  type AutoencoderParams,
} from '../models/autoencoder.js';
import { saveAutoencoder } from '../io/autoencoder.js';
import { gradStepOf, makeApplyStep, type TrainState } from './step.js';
import { optimize, type Schedule } from './loop.js';
import { CODE } from './code-version.js';

export class AutoencoderError extends Error {
  override name = 'AutoencoderError';
}

export type AutoencoderEvent =
  | { type: 'start'; phase: 'reconstruction' | 'decoder'; steps: number; params: number }
  | { type: 'step'; phase: 'reconstruction' | 'decoder'; step: number; steps: number; loss: number; stepsPerSec: number }
  | { type: 'scale'; latentScale: number; std: number };

export type AutoencoderTrainOptions = {
  train: ImageDataset;
  /** Architecture beyond the data's shape (channels per level, latent channels). */
  architecture?: { channels?: number[]; latentChannels?: number };
  /** Phase 1 steps (default 2000) and phase 2 steps (default 600). */
  steps?: number;
  decoderSteps?: number;
  batchSize?: number;
  lr?: number;
  /** σ of the latent noise the decoder is fine-tuned on: the latent flow's noiseStd (default 0.3, STARFlow's). 0 skips phase 2. */
  noiseStd?: number;
  seed?: number;
  signal?: AbortSignal;
  onEvent?: (e: AutoencoderEvent) => void;
};

export type TrainedAutoencoder = Autoencoder & { seconds: number; train: Record<string, unknown> };

/** Images this many at a time when encoding a set. */
const HOST_BATCH = 250;

/**
 * Latents [n, c, h, w] of a dataset's images (all, or the first `n`), in static batches (the
 * last padded with repeats, which are dropped).
 */
export async function encodeDataset(ae: Autoencoder, ds: ImageDataset, n = ds.n, onBatch?: (done: number, total: number) => void): Promise<Float32Array> {
  const { cfg } = ae;
  if (ds.channels !== cfg.inChannels || ds.height !== cfg.imgSize || ds.width !== cfg.imgSize) {
    throw new AutoencoderError(`images are ${ds.channels}×${ds.height}×${ds.width} but the autoencoder takes ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize}`);
  }
  const total = Math.min(n, ds.n);
  const { channels, size } = latentShape(cfg);
  const per = channels * size * size;
  const bs = Math.min(HOST_BATCH, total);
  const codec = latentCodec(ae);
  const out = new Float32Array(total * per);
  for (let start = 0; start < total; start += bs) {
    const idx = Array.from({ length: bs }, (_, i) => Math.min(start + i, total - 1));
    const z = await toF32(codec.encode(fromF32(makeBatch(ds, idx).x, [bs, cfg.inChannels, cfg.imgSize, cfg.imgSize])));
    out.set(z.subarray(0, Math.min(bs, total - start) * per), start * per);
    onBatch?.(Math.min(start + bs, total), total);
  }
  return out;
}

function standardDeviation(v: Float32Array): number {
  let s = 0;
  for (const x of v) s += x;
  const mean = s / v.length;
  let ss = 0;
  for (const x of v) ss += (x - mean) ** 2;
  return Math.sqrt(ss / v.length);
}

/** Trains both phases; the caller owns the returned parameters. */
export async function trainAutoencoder(opts: AutoencoderTrainOptions): Promise<TrainedAutoencoder> {
  const ds = opts.train;
  let cfg: AutoencoderConfig = parseAutoencoderConfig({ model: 'autoencoder', inChannels: ds.channels, imgSize: ds.height, ...opts.architecture }, 'autoencoder');
  if (ds.width !== ds.height) throw new AutoencoderError(`images must be square, got ${ds.height}×${ds.width}`);
  const steps = opts.steps ?? 2000;
  const noiseStd = opts.noiseStd ?? 0.3;
  const decoderSteps = noiseStd > 0 ? (opts.decoderSteps ?? 600) : 0;
  const batchSize = opts.batchSize ?? 64;
  const seed = opts.seed ?? 0;
  for (const [name, v, min] of [['steps', steps, 1], ['decoder steps', decoderSteps, 0], ['batch size', batchSize, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new AutoencoderError(`${name} must be an integer ≥ ${min}, got ${v}`);
  }
  if (!(noiseStd >= 0 && Number.isFinite(noiseStd))) throw new AutoencoderError(`the decoder's noise σ must be a finite number ≥ 0, got ${noiseStd}`);
  const emit = opts.onEvent ?? (() => {});
  const sampler = new BatchSampler(ds.n, batchSize, seed);
  const imageShape = [batchSize, ds.channels, ds.height, ds.width];
  const schedule = (total: number, lr: number): Schedule => ({
    lr,
    minLr: lr / 10,
    warmupSteps: Math.min(100, Math.floor(total / 10)),
    steps: total,
    beta1: 0.9,
    beta2: 0.99,
    weightDecay: 0,
    gradClip: 1,
    emaDecay: 0,
  });
  const stop = () => (opts.signal?.aborted ? 'interrupted' : undefined);
  const diverged = async (s: number, loss: number) => {
    throw new AutoencoderError(`training diverged at step ${s} (loss ${loss}); lower the learning rate`);
  };
  const t0 = performance.now();
  const lr = opts.lr ?? 2e-3;

  // Phase 1: reconstruction.
  let params = initAutoencoder(cfg, seed);
  emit({ type: 'start', phase: 'reconstruction', steps, params: countParams(params) });
  {
    const sched = schedule(steps, lr);
    const adam = initAdamState(params);
    const grad = gradStepOf((p, x) => reconstructionLoss(p as AutoencoderParams, cfg, x));
    const apply = makeApplyStep(sched);
    const t1 = performance.now();
    try {
      const r = await optimize({
        state: { params, m: adam.m, v: adam.v, ema: keep(params) } as TrainState,
        from: 0,
        stopAt: steps,
        schedule: sched,
        apply,
        stop,
        batch: (s) => ({ x: makeBatch(ds, sampler.batchIndices(s)).x, xShape: imageShape, y: new Int32Array(batchSize) }),
        gradients: async (p: Params, b) => grad(keep(p), fromF32(b.x, b.xShape), fromI32(b.y, [batchSize])),
        onSkip: diverged,
        async onStep({ step, loss }) {
          emit({ type: 'step', phase: 'reconstruction', step, steps, loss, stepsPerSec: step / ((performance.now() - t1) / 1000) });
        },
      });
      if (r.reason === 'interrupted') throw new AutoencoderError('interrupted during the reconstruction phase: nothing was saved');
      release([r.state.m, r.state.v, r.state.ema]);
      params = r.state.params as AutoencoderParams;
    } finally {
      grad.dispose();
      apply.dispose();
    }
  }

  // The latents' scale, from training images.
  const std = standardDeviation(await encodeDataset({ cfg, params }, ds, 4096));
  if (!(std > 0)) throw new AutoencoderError(`the encoder's latents have no spread (standard deviation ${std}): training failed`);
  cfg = { ...cfg, latentScale: 1 / std, decoderNoiseStd: noiseStd };
  emit({ type: 'scale', latentScale: cfg.latentScale, std });

  // Phase 2: the decoder on noisy latents.
  if (decoderSteps > 0) {
    emit({ type: 'start', phase: 'decoder', steps: decoderSteps, params: countParams(params.decoder) });
    const sched = schedule(decoderSteps, lr / 4);
    const adam = initAdamState(params.decoder);
    // The loss's (x, y) are the latents and their images.
    const grad = gradStepOf((p, z, images, eps) => noisyDecoderLoss(p as AutoencoderParams['decoder'], cfg, z, images as Arr, eps!), true);
    const apply = makeApplyStep(sched);
    const codec = latentCodec({ cfg, params: { encoder: params.encoder } as AutoencoderParams }); // the decoder's weights are the optimiser's
    const { channels, size } = latentShape(cfg);
    const latentCount = batchSize * channels * size * size;
    const t2 = performance.now();
    try {
      const r = await optimize({
        state: { params: params.decoder, m: adam.m, v: adam.v, ema: keep(params.decoder) } as unknown as TrainState,
        from: 0,
        stopAt: decoderSteps,
        schedule: sched,
        apply,
        stop,
        batch(s) {
          const rng = new Rng(seed).fork(1_000_000 + s);
          const eps = Float32Array.from({ length: latentCount }, () => rng.normal());
          return { x: makeBatch(ds, sampler.batchIndices(s)).x, xShape: imageShape, y: new Int32Array(0), eps: { data: eps, shape: [batchSize, channels, size, size] } };
        },
        gradients: async (p: Params, b) => {
          const z = codec.encode(fromF32(b.x, b.xShape));
          return grad(keep(p), z, fromF32(b.x, b.xShape), fromF32(b.eps!.data, b.eps!.shape));
        },
        onSkip: diverged,
        async onStep({ step, loss }) {
          emit({ type: 'step', phase: 'decoder', step, steps: decoderSteps, loss, stepsPerSec: step / ((performance.now() - t2) / 1000) });
        },
      });
      if (r.reason === 'interrupted') throw new AutoencoderError('interrupted during the decoder phase: nothing was saved');
      release([r.state.m, r.state.v, r.state.ema]);
      params = { encoder: params.encoder, decoder: r.state.params as unknown as AutoencoderParams['decoder'] };
    } finally {
      grad.dispose();
      apply.dispose();
    }
  }
  return {
    cfg,
    params,
    seconds: (performance.now() - t0) / 1000,
    train: { steps, decoderSteps, batchSize, lr, noiseStd, seed, params: countParams(params) },
  };
}

export type TrainAutoencoderRunOptions = Omit<AutoencoderTrainOptions, 'train'> & {
  /** 'mnist:train', 'fashion-mnist:train' or an image folder (grey or RGB at `size`). */
  data: string;
  /** Folders: the side and channels to load them at (default 28, 1). */
  size?: number;
  channels?: number;
  out: string;
  force?: boolean;
  /** How it was made (a command line), stored in config.json. */
  command?: string;
};

/** Loads the data, trains, and saves to `out` with how it was made; refuses to overwrite without `force`. */
export async function trainAutoencoderRun(o: TrainAutoencoderRunOptions): Promise<TrainedAutoencoder & { out: string; trainImages: number }> {
  const { data, size = 28, channels = 1, out, force, command, ...rest } = o;
  if (!force && existsSync(out)) throw new AutoencoderError(`${out} exists: pass --force to replace it, or pick another --out`);
  const train = await loadDataset(data, { size, channels });
  const ae = await trainAutoencoder({ ...rest, train });
  await saveAutoencoder(out, ae, { software: 'starflow-ts', ...CODE, data, ...(command === undefined ? {} : { command }), seconds: Math.round(ae.seconds), device: currentDevice(), train: ae.train, savedAt: new Date().toISOString() });
  return { ...ae, out, trainImages: train.n };
}
