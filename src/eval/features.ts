// A small MNIST classifier whose penultimate activations are the features for sample-quality
// metrics (Fréchet distance, KID, precision/recall) and whose predictions give class accuracy.
//
//   x [N, C, H, W] in [-1, 1] → NHWC → conv3×3(c1) → maxpool 2 → ReLU → conv3×3(c2) → maxpool 2 →
//   ReLU → flatten → dense(hidden) → ReLU (the features) → dense(classes) (the logits)
//
// Convolutions are im2col products (nn/conv.ts); pooling is a reshape and a max.
// Everything is a pure function over a parameter tree; it trains through the shared optimisation
// loop (src/train/classifier.ts).
import { fileURLToPath } from 'node:url';
import { np, jnn, cachedJit, keep, release, fromF32, toF32, type Arr } from '../engine/index.js';
import { Rng } from '../engine/rng.js';
import { initLinear, linear, type Linear } from '../nn/layers.js';
import { conv3x3 } from '../nn/conv.js';
import { paramsFromHost, paramsToHost, paramShapes } from '../nn/params.js';
import { makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';
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

/** The classifier's training loss: mean cross-entropy of its logits against integer labels. */
export function classifierLoss(p: FeatureNetParams, cfg: FeatureNetConfig, x: Arr, y: Arr): Arr {
  const logits = featureNetForward(p, x).logits;
  return jnn.logSoftmax(logits, -1).mul(jnn.oneHot(y, cfg.numClasses).astype(np.float32)).sum(-1).mean().neg();
}

// ---- inference over host data, batched ----

function inferFn(cfg: FeatureNetConfig) {
  return cachedJit(`features:${JSON.stringify(cfg)}`, () => (p: FeatureNetParams, x: Arr) => featureNetForward(p, x));
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
