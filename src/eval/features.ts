// A small MNIST classifier whose penultimate activations are the features for sample-quality
// metrics (Fréchet distance, KID, precision/recall) and whose predictions give class accuracy.
//
//   x [N, C, H, W] in [-1, 1] → NHWC → conv3×3(c1) → maxpool 2 → ReLU → conv3×3(c2) → maxpool 2 →
//   ReLU → flatten → dense(hidden) → ReLU (the features) → dense(classes) (the logits)
//
// jax-js's direct convolution is ~10× slower than a matmul on wasm, so each 3×3 'SAME'
// convolution is an im2col: nine shifted slices of the padded input concatenated on the channel
// axis, then one matmul against a [9·C_in, C_out] weight. Pooling is a reshape and a max.
// Everything is a pure function over a parameter tree; the training step (AdamW, cosine
// schedule) is one jit. A run is a pure function of the seed.
import { fileURLToPath } from 'node:url';
import { np, jnn, jit, valueAndGrad, keep, release, fromF32, fromI32, toF32, toNumber, countParams, currentDevice, type Arr } from '../engine/index.js';
import { Rng } from '../engine/rng.js';
import { initLinear, linear, type Linear } from '../nn/layers.js';
import { ADAMW_DEFAULTS, adamScalars, adamwUpdate, cosineLr, initAdamState, type AdamWConfig } from '../nn/optim.js';
import { paramsFromHost, paramsToHost, paramShapes } from '../nn/params.js';
import { BatchSampler, makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';
import { loadDataset } from '../data/load.js';
import { checkWeightsAgainst, loadCheckpoint, saveCheckpoint } from '../io/checkpoint.js';
import { argmaxRows } from './metrics.js';

export type FeatureNetConfig = {
  model: 'mnist-cnn';
  inChannels: number;
  imgSize: number;
  conv1: number;
  conv2: number;
  /** Width of the penultimate layer: the feature size. */
  hidden: number;
  numClasses: number;
};

export const FEATURE_NET_DEFAULTS: FeatureNetConfig = { model: 'mnist-cnn', inChannels: 1, imgSize: 28, conv1: 16, conv2: 32, hidden: 128, numClasses: 10 };

/** The feature extractor that ships with the package (trained by `starflow train-features`); `starflow eval`'s default. */
export const SHIPPED_FEATURES = fileURLToPath(new URL('../../checkpoints/mnist-features', import.meta.url));

export type FeatureNetParams = { conv1: Linear; conv2: Linear; fc: Linear; head: Linear };

export class FeatureNetError extends Error {
  override name = 'FeatureNetError';
}

export function parseFeatureNetConfig(raw: unknown, source = 'config'): FeatureNetConfig {
  const r = raw as Record<string, unknown>;
  if (!r || typeof r !== 'object' || r.model !== 'mnist-cnn') {
    throw new FeatureNetError(`${source}: not a feature extractor config (expected "model": "mnist-cnn")`);
  }
  const out = { model: 'mnist-cnn' } as FeatureNetConfig;
  for (const k of ['inChannels', 'imgSize', 'conv1', 'conv2', 'hidden', 'numClasses'] as const) {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new FeatureNetError(`${source}: '${k}' must be a positive integer, got ${JSON.stringify(v)}`);
    out[k] = v;
  }
  if (out.imgSize % 4 !== 0) throw new FeatureNetError(`${source}: imgSize must be a multiple of 4 (two 2×2 poolings), got ${out.imgSize}`);
  return out;
}

export function initFeatureNet(cfg: FeatureNetConfig, seed: number): FeatureNetParams {
  const rng = new Rng(seed);
  const flat = (cfg.imgSize / 4) ** 2 * cfg.conv2;
  return {
    conv1: initLinear(rng.fork(0), 9 * cfg.inChannels, cfg.conv1),
    conv2: initLinear(rng.fork(1), 9 * cfg.conv1, cfg.conv2),
    fc: initLinear(rng.fork(2), flat, cfg.hidden),
    head: initLinear(rng.fork(3), cfg.hidden, cfg.numClasses),
  };
}

/** 3×3 'SAME' convolution of NHWC `x` as im2col + matmul; `p.w` is [9·C_in, C_out], taps row-major. */
function conv3x3(p: Linear, x: Arr): Arr {
  const [n, h, w, c] = x.shape as [number, number, number, number];
  const xp = np.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]);
  const taps: Arr[] = [];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) taps.push(xp.ref.slice([], [i, i + h], [j, j + w], []));
  xp.dispose();
  const cols = np.concatenate(taps, -1).reshape([n * h * w, 9 * c]);
  return linear(p, cols).reshape([n, h, w, -1]);
}

function maxPool2(x: Arr): Arr {
  const [n, h, w, c] = x.shape as [number, number, number, number];
  return x.reshape([n, h / 2, 2, w / 2, 2, c]).max([2, 4]);
}

/** Features [N, hidden] and logits [N, classes] of images [N, C, H, W] in [-1, 1]. */
export function featureNetForward(p: FeatureNetParams, x: Arr): { features: Arr; logits: Arr } {
  let h = x.transpose([0, 2, 3, 1]);
  // ReLU after the pooling: the same values (max commutes with a monotone map) on 4× fewer elements.
  h = jnn.relu(maxPool2(conv3x3(p.conv1, h)));
  h = jnn.relu(maxPool2(conv3x3(p.conv2, h)));
  const features = jnn.relu(linear(p.fc, h.reshape([h.shape[0]!, -1])));
  const logits = linear(p.head, features.ref);
  return { features, logits };
}

/** Mean cross-entropy of logits against integer labels. */
function crossEntropy(logits: Arr, y: Arr, classes: number): Arr {
  return jnn.logSoftmax(logits, -1).mul(jnn.oneHot(y, classes).astype(np.float32)).sum(-1).mean().neg();
}

// ---- inference over host data, batched ----

const inferFns = new Map<string, (p: FeatureNetParams, x: Arr) => { features: Arr; logits: Arr }>();

function inferFn(cfg: FeatureNetConfig) {
  const key = JSON.stringify(cfg);
  let f = inferFns.get(key);
  if (!f) {
    f = jit((p: FeatureNetParams, x: Arr) => featureNetForward(p, x)) as unknown as (p: FeatureNetParams, x: Arr) => { features: Arr; logits: Arr };
    inferFns.set(key, f);
  }
  return f;
}

/** Checks that images [n, C, H, W] fit the extractor; returns n. */
export function checkImageShape(cfg: FeatureNetConfig, shape: readonly number[], length: number): number {
  const [n, c, h, w] = shape;
  if (shape.length !== 4 || n === undefined || c === undefined || h === undefined || w === undefined) {
    throw new FeatureNetError(`images must have shape [N, C, H, W], got [${shape.join(', ')}]`);
  }
  if (c !== cfg.inChannels || h !== cfg.imgSize || w !== cfg.imgSize) {
    throw new FeatureNetError(`images are ${c}×${h}×${w} but the feature extractor takes ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize}`);
  }
  if (n === 0) throw new FeatureNetError('no images (N = 0)');
  if (length !== n * c * h * w) throw new FeatureNetError(`${length} values do not fill [${shape.join(', ')}]`);
  return n;
}

/**
 * Features [N, hidden] and logits [N, classes] of host images [N, C, H, W] in [-1, 1], in static
 * batches (the last one padded with repeats, which are dropped).
 */
export async function extract(
  params: FeatureNetParams,
  cfg: FeatureNetConfig,
  images: Float32Array,
  shape: readonly number[],
  opts: { batchSize?: number } = {},
): Promise<{ features: Float32Array; logits: Float32Array; n: number }> {
  const n = checkImageShape(cfg, shape, images.length);
  const per = cfg.inChannels * cfg.imgSize * cfg.imgSize;
  const bs = Math.min(opts.batchSize ?? 250, n);
  const f = inferFn(cfg);
  const features = new Float32Array(n * cfg.hidden);
  const logits = new Float32Array(n * cfg.numClasses);
  const buf = new Float32Array(bs * per);
  for (let start = 0; start < n; start += bs) {
    const b = Math.min(bs, n - start);
    buf.set(images.subarray(start * per, (start + b) * per));
    for (let i = b; i < bs; i++) buf.copyWithin(i * per, (b - 1) * per, b * per);
    const r = f(keep(params), fromF32(buf.slice(), [bs, cfg.inChannels, cfg.imgSize, cfg.imgSize]));
    features.set((await toF32(r.features)).subarray(0, b * cfg.hidden), start * cfg.hidden);
    logits.set((await toF32(r.logits)).subarray(0, b * cfg.numClasses), start * cfg.numClasses);
  }
  return { features, logits, n };
}

/** Penultimate features [N, hidden] of host images [N, C, H, W]. */
export async function features(params: FeatureNetParams, cfg: FeatureNetConfig, images: Float32Array, shape: readonly number[]): Promise<Float32Array> {
  return (await extract(params, cfg, images, shape)).features;
}

/** Logits [N, classes] of host images [N, C, H, W]. */
export async function logits(params: FeatureNetParams, cfg: FeatureNetConfig, images: Float32Array, shape: readonly number[]): Promise<Float32Array> {
  return (await extract(params, cfg, images, shape)).logits;
}

/** Images of a dataset as [-1, 1] floats, in the given order (all when omitted). */
export function datasetImages(ds: ImageDataset, indices?: ArrayLike<number>): { x: Float32Array; y: Int32Array; shape: [number, number, number, number] } {
  const idx = indices ?? Array.from({ length: ds.n }, (_, i) => i);
  const b = makeBatch(ds, idx);
  return { x: b.x, y: b.y, shape: [idx.length, ds.channels, ds.height, ds.width] };
}

/** Test accuracy of the classifier on a dataset. */
export async function accuracyOn(params: FeatureNetParams, cfg: FeatureNetConfig, ds: ImageDataset, n = ds.n): Promise<number> {
  const { x, y, shape } = datasetImages(ds, Array.from({ length: Math.min(n, ds.n) }, (_, i) => i));
  const lg = await logits(params, cfg, x, shape);
  const pred = argmaxRows(lg, shape[0], cfg.numClasses);
  let right = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === y[i]) right++;
  return right / pred.length;
}

// ---- training ----

export type FeatureTrainOptions = {
  train: ImageDataset;
  test?: ImageDataset;
  cfg?: FeatureNetConfig;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  weightDecay?: number;
  warmupSteps?: number;
  seed?: number;
  /** Stop after this many steps (tests, benchmarks); the schedule still spans every epoch. */
  maxSteps?: number;
  onStep?: (e: { step: number; totalSteps: number; loss: number; epoch: number; stepsPerSec: number }) => void;
  onEpoch?: (e: { epoch: number; testAccuracy?: number }) => void;
};

export type TrainedFeatureNet = { cfg: FeatureNetConfig; params: FeatureNetParams; testAccuracy?: number; steps: number; seconds: number; train: Record<string, number> };

type TrainState = { params: FeatureNetParams; m: FeatureNetParams; v: FeatureNetParams };

/** Trains the classifier with AdamW (β₂ 0.999) and a warm-up + cosine schedule; seeded. */
export async function trainClassifier(opts: FeatureTrainOptions): Promise<TrainedFeatureNet> {
  const cfg = opts.cfg ?? FEATURE_NET_DEFAULTS;
  const ds = opts.train;
  if (ds.channels !== cfg.inChannels || ds.height !== cfg.imgSize || ds.width !== cfg.imgSize) {
    throw new FeatureNetError(`training images are ${ds.channels}×${ds.height}×${ds.width} but the network takes ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize}`);
  }
  const epochs = opts.epochs ?? 3;
  const batchSize = opts.batchSize ?? 128;
  const lr = opts.lr ?? 2e-3;
  const seed = opts.seed ?? 0;
  const opt: AdamWConfig = { ...ADAMW_DEFAULTS, beta2: 0.999, weightDecay: opts.weightDecay ?? 1e-4 };
  const sampler = new BatchSampler(ds.n, batchSize, seed);
  const totalSteps = epochs * sampler.batchesPerEpoch;
  const warmupSteps = opts.warmupSteps ?? Math.min(200, Math.floor(totalSteps / 10));
  const params = initFeatureNet(cfg, seed);
  const adam = initAdamState(params);
  let state: TrainState = { params, m: adam.m, v: adam.v };
  const step = jit((s: TrainState, x: Arr, y: Arr, lrA: Arr, bc1: Arr, bc2: Arr) => {
    const [loss, grads] = valueAndGrad((p: FeatureNetParams, xs: Arr, ys: Arr) => crossEntropy(featureNetForward(p, xs).logits, ys, cfg.numClasses))(keep(s.params), x, y);
    const next = adamwUpdate(s.params, grads, { m: s.m, v: s.v }, lrA, bc1, bc2, opt);
    return { state: { params: next.params, m: next.state.m, v: next.state.v }, loss };
  });
  const stopAt = Math.min(totalSteps, opts.maxSteps ?? Infinity);
  const t0 = performance.now();
  let testAccuracy: number | undefined;
  for (let s = 0; s < stopAt; s++) {
    const b = makeBatch(ds, sampler.batchIndices(s));
    const rate = cosineLr({ lr, minLr: 0, warmupSteps, totalSteps }, s);
    const { bc1, bc2 } = adamScalars(opt, s + 1);
    const out = step(state, fromF32(b.x, [batchSize, ds.channels, ds.height, ds.width]), fromI32(b.y, [batchSize]), np.array(rate), np.array(bc1), np.array(bc2));
    state = out.state;
    const loss = await toNumber(out.loss);
    if (!Number.isFinite(loss)) throw new FeatureNetError(`training diverged at step ${s} (loss ${loss}); lower the learning rate`);
    opts.onStep?.({ step: s + 1, totalSteps, loss, epoch: sampler.epochOf(s), stepsPerSec: (s + 1) / ((performance.now() - t0) / 1000) });
    const endOfEpoch = (s + 1) % sampler.batchesPerEpoch === 0 || s + 1 === stopAt;
    if (endOfEpoch) {
      if (opts.test) testAccuracy = await accuracyOn(state.params, cfg, opts.test);
      opts.onEpoch?.({ epoch: Math.ceil((s + 1) / sampler.batchesPerEpoch), testAccuracy });
    }
  }
  release(state.m);
  release(state.v);
  return {
    cfg,
    params: state.params,
    testAccuracy,
    steps: stopAt,
    seconds: (performance.now() - t0) / 1000,
    train: { epochs, batchSize, lr, weightDecay: opt.weightDecay, warmupSteps, seed, params: countParams(state.params) },
  };
}

// ---- checkpoints: config.json (architecture + how it was trained) + model.safetensors ----

export async function saveFeatureNet(
  dir: string,
  net: { cfg: FeatureNetConfig; params: FeatureNetParams; testAccuracy?: number; train?: Record<string, number> },
  extra: Record<string, unknown> = {},
): Promise<void> {
  const config = { ...net.cfg, featureSize: net.cfg.hidden, input: '[N, C, H, W] in [-1, 1] (x = u8 / 127.5 - 1)', data: 'mnist:train', testAccuracy: net.testAccuracy, train: net.train, ...extra }; // extra.data overrides
  await saveCheckpoint(dir, { config, model: await paramsToHost(net.params) });
}

/** `data`: the training set's spec ('mnist:train', 'fashion-mnist:train'); eval scores against it. */
export type LoadedFeatureNet = { cfg: FeatureNetConfig; params: FeatureNetParams; testAccuracy?: number; data: string };

export async function loadFeatureNet(dir: string): Promise<LoadedFeatureNet> {
  const ck = await loadCheckpoint(dir);
  const cfg = parseFeatureNetConfig(ck.config, `${dir}/config.json`);
  const skeleton = initFeatureNet(cfg, 0);
  const shapes = paramShapes(skeleton);
  release(skeleton);
  checkWeightsAgainst(shapes, ck.model, `${dir}/model.safetensors`);
  const { testAccuracy: acc, data } = ck.config as { testAccuracy?: unknown; data?: unknown };
  if (data !== undefined && (typeof data !== 'string' || !/^(mnist|fashion-mnist):train$/.test(data))) {
    throw new FeatureNetError(`${dir}/config.json: 'data' must be "mnist:train" or "fashion-mnist:train", got ${JSON.stringify(data)}`);
  }
  return {
    cfg,
    params: paramsFromHost<FeatureNetParams>(ck.model),
    testAccuracy: typeof acc === 'number' ? acc : undefined,
    data: (data as string | undefined) ?? 'mnist:train',
  };
}

// ---- train and save in one call (`starflow train-features`) ----

/** The datasets a feature extractor can be trained on: '<name>:train', scored on '<name>:test'. */
export const FEATURE_DATASETS = ['mnist', 'fashion-mnist'] as const;
export type FeatureDataset = (typeof FEATURE_DATASETS)[number];

export type TrainFeatureExtractorOptions = Omit<FeatureTrainOptions, 'train' | 'test'> & {
  /** mnist (default) or fashion-mnist: trains on its train split, reports accuracy on its test split. */
  data?: FeatureDataset;
  /** Checkpoint directory to write (config.json + model.safetensors). */
  out: string;
  /** How the extractor was made (a command line), stored in config.json. */
  command?: string;
  /** Called once both datasets are loaded, before the first step. */
  onStart?: (e: { data: FeatureDataset; trainImages: number; testImages: number }) => void;
};

export type TrainedFeatureExtractor = TrainedFeatureNet & { out: string; data: FeatureDataset; testImages: number };

/**
 * Loads `<data>:train` and `<data>:test`, trains the classifier on the first (defaults: 4 epochs
 * of batch 128, peak lr 2e-3, seed 0, FEATURE_NET_DEFAULTS), reports accuracy on the second
 * after every epoch and saves it to `out` with its dataset, command, training time and device in
 * config.json. The caller owns the returned parameters.
 */
export async function trainFeatureExtractor(opts: TrainFeatureExtractorOptions): Promise<TrainedFeatureExtractor> {
  const { data = 'mnist', out, command, onStart, cfg = FEATURE_NET_DEFAULTS, ...schedule } = opts;
  if (!(FEATURE_DATASETS as readonly string[]).includes(data)) throw new FeatureNetError(`a feature extractor trains on ${FEATURE_DATASETS.join(' or ')}, not '${data}'`);
  const shape = { size: cfg.imgSize, channels: cfg.inChannels };
  const train = await loadDataset(`${data}:train`, shape);
  const test = await loadDataset(`${data}:test`, shape);
  onStart?.({ data, trainImages: train.n, testImages: test.n });
  const net = await trainClassifier({ ...schedule, train, test, cfg, epochs: schedule.epochs ?? 4, batchSize: schedule.batchSize ?? 128, lr: schedule.lr ?? 2e-3, seed: schedule.seed ?? 0 });
  await saveFeatureNet(out, net, { data: `${data}:train`, ...(command === undefined ? {} : { command }), seconds: Math.round(net.seconds), device: currentDevice() });
  return { ...net, out, data, testImages: test.n };
}
