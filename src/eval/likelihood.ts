// Exact likelihood of images under a model with one (flows): per batch of tensors, per host
// batch (`starflow nll --input`), and over a dataset (`starflow nll`, the trainer's periodic
// evaluation, the eval report). Bits/dim come from the formulas in models/model.ts. A latent model
// scores its autoencoder's latents of the images: its figures are latent bits/dim (bitsPerDimOf).
import { captionSource, type CaptionSource } from '../data/captions.js';
import { cachedJit, keep, fromF32, fromI32, toF32, Rng, type Arr, type Params } from '../engine/index.js';
import { bitsPerDimOf, type Model } from '../models/model.js';
import { latentCodec } from '../models/autoencoder.js';
import type { ImageDataset } from '../data/dataset.js';
import { makeBatch, uniformDequantize } from '../data/transforms.js';

export class LikelihoodError extends Error {
  override name = 'LikelihoodError';
}

function nllFn(model: Model, withText: boolean): (p: Params, x: Arr, y: Arr, text?: Arr) => Arr {
  const { family, cfg } = model;
  const nll = family.nll;
  if (!nll) throw new LikelihoodError(`${family.name} models have no exact likelihood`);
  if (family.jitNll === false) return (p: Params, x: Arr, y: Arr, text?: Arr) => nll(p, cfg, x, y, text);
  return cachedJit(`nll:${withText}:${JSON.stringify(cfg)}`, () => (p: Params, x: Arr, y: Arr, text?: Arr) => nll(p, cfg, x, y, text));
}

/**
 * Text-conditioned models need text states [B, textTokens, textDim] with their images, or, with
 * their own text encoder, caption token ids as y [B, textTokens] (`yShape`).
 */
function checkText(model: Model, b: number, text: Arr | Float32Array | undefined, yShape?: number[]): void {
  const { textTokens = 0, textDim = 0 } = model.cfg;
  const want = b * textTokens * textDim;
  const ids = yShape?.length === 2 && yShape[0] === b && yShape[1] === textTokens && model.family.textEncoder?.(model.cfg);
  if (textDim > 0 && !text && !ids) {
    throw new LikelihoodError(
      model.family.textEncoder?.(model.cfg)
        ? `this model reads captions: its likelihood needs caption token ids [${b}, ${textTokens}] or text states [${b}, ${textTokens}, ${textDim}]`
        : `this model is text-conditioned: its likelihood needs text states [${b}, ${textTokens}, ${textDim}]`,
    );
  }
  if (textDim === 0 && text) throw new LikelihoodError('this model is not text-conditioned: it takes no text');
  const n = text instanceof Float32Array ? text.length : (text?.size ?? 0);
  if (text && n !== want) throw new LikelihoodError(`text states must hold ${b}×${textTokens}×${textDim} values, got ${n}`);
}

/** NLL per image in nats per dimension, [B], of images x [B, C, H, W] with labels y int32 [B] (−1 or a class each; a text encoder's model: caption ids [B, L]). Consumes x and y. */
export function nllOf(model: Model, x: Arr, y: Arr, text?: Arr): Arr {
  checkText(model, x.shape[0]!, text, y.shape);
  return text ? nllFn(model, true)(keep(model.params), x, y, text) : nllFn(model, false)(keep(model.params), x, y);
}

export type ImageScores = {
  /** NLL per image, nats per dimension. */
  nll: Float32Array;
  /** Bits per dimension per image (8-bit data: the log 128 bin term included; a latent model: of its latents). */
  bpd: Float32Array;
  /** Flows: the noise [B, ...noiseShape] and the log-determinant per dimension per image. */
  z?: Float32Array;
  logdet?: Float32Array;
};

/**
 * What a model's density is over, from images [B, C, H, W] (consumed): the images themselves,
 * or a latent model's latents of them, with noise of σ = `noise` when given (host draws from `rng`).
 */
export function flowInputs(model: Model, images: Arr, noise?: { sigma: number; rng: Rng }): Arr {
  if (!model.autoencoder) return images;
  const z = latentCodec(model.autoencoder).encode(images);
  if (!noise || noise.sigma === 0) return z;
  const eps = Float32Array.from({ length: z.size }, () => noise.sigma * noise.rng.normal());
  return z.add(fromF32(eps, z.shape as number[]));
}

/**
 * Scores host images [B, C, H, W] in [−1, 1] as they are (no dequantisation noise; a latent
 * model: their clean latents), in batches. `encode` also returns z and the log-determinants (flows only).
 */
export async function scoreImages(
  model: Model,
  x: Float32Array,
  shape: [number, number, number, number],
  labels: number[] | undefined,
  opts: { batchSize?: number; encode?: boolean; text?: Float32Array } = {},
): Promise<ImageScores> {
  const { family, cfg } = model;
  const [b, c, h, w] = shape;
  checkText(model, b, opts.text);
  const textPer = (cfg.textTokens ?? 0) * (cfg.textDim ?? 0);
  const per = c * h * w;
  const bs = opts.batchSize ?? 200;
  const encode = family.encode;
  if (opts.encode && !encode) throw new LikelihoodError(`${family.name} models are not flows: they have no noise for an image`);
  const enc = opts.encode && encode ? cachedJit(`encode:${Boolean(opts.text)}:${JSON.stringify(cfg)}`, () => (p: Params, xs: Arr, ys: Arr, ts?: Arr) => encode(p, cfg, xs, ys, ts)) : undefined;
  const zPer = family.noiseShape(cfg).reduce((a, v) => a * v, 1);
  const out: ImageScores = { nll: new Float32Array(b), bpd: new Float32Array(b) };
  if (enc) {
    out.z = new Float32Array(b * zPer);
    out.logdet = new Float32Array(b);
  }
  for (let s = 0; s < b; s += bs) {
    const n = Math.min(bs, b - s);
    const xs = () => flowInputs(model, fromF32(x.subarray(s * per, (s + n) * per), [n, c, h, w]));
    const ys = () => fromI32(labels ? labels.slice(s, s + n) : new Array<number>(n).fill(0), [n]);
    const ts = () => opts.text && fromF32(opts.text.subarray(s * textPer, (s + n) * textPer), [n, cfg.textTokens!, cfg.textDim!]);
    out.nll.set(await toF32(nllOf(model, xs(), ys(), ts())), s);
    if (enc) {
      const t = ts();
      const r = t ? enc(keep(model.params), xs(), ys(), t) : enc(keep(model.params), xs(), ys());
      out.z!.set(await toF32(r.z), s * zPer);
      out.logdet!.set(await toF32(r.logdet), s);
    }
  }
  out.nll.forEach((v, i) => (out.bpd[i] = bitsPerDimOf(model, v)));
  return out;
}

/**
 * Bits/dim per image. `mean` is over every image: +Infinity when the float32 likelihood of one
 * of them underflows (its z overflowed); `finiteMean` and `nonFinite` (indices) say what the
 * rest scored and which did.
 */
export type BpdResult = { mean: number; finiteMean: number; nonFinite: number[]; perImage: Float32Array };

/**
 * Bits/dim of the first `n` images of a dataset, uniformly dequantised with a fixed seed (as the
 * reference evaluates likelihood); a latent model's: of their latents with its training noise
 * (σ = noiseStd, seeded), the density it was trained on. Class models are evaluated as p(x | true label), models with a
 * text encoder as p(x | the image's fixed caption, data/captions.ts).
 */
export async function evaluateBpd(
  model: Model,
  ds: ImageDataset,
  n: number,
  opts: { batchSize?: number; seed?: number; onBatch?: (done: number, total: number) => void } = {},
): Promise<BpdResult> {
  const tokenizer = model.family.textEncoder?.(model.cfg)?.tokenizer;
  let captions: CaptionSource | undefined;
  if (tokenizer) {
    try {
      captions = captionSource(ds, tokenizer);
    } catch (e) {
      throw new LikelihoodError(`this model reads captions: ${(e as Error).message}`);
    }
  }
  const total = Math.min(n, ds.n);
  const bs = Math.min(opts.batchSize ?? 200, total);
  const rng = new Rng(opts.seed ?? 1234);
  const out = new Float32Array(total);
  for (let start = 0; start < total; start += bs) {
    // Static batch shape: the last batch is padded with repeats and the padding ignored.
    const idx = Array.from({ length: bs }, (_, i) => Math.min(start + i, total - 1));
    const batch = makeBatch(ds, idx);
    const shape = [bs, ds.channels, ds.height, ds.width];
    const x = model.autoencoder ? flowInputs(model, fromF32(batch.x, shape), { sigma: model.cfg.noiseStd, rng }) : fromF32(uniformDequantize(batch.x, rng), shape);
    // p(x | its label), or p(x | its caption) for a model with its own text encoder.
    const y = captions ? fromI32(captions.ids(idx, null), [bs, captions.maxTokens]) : fromI32(batch.y, [bs]);
    const nll = await toF32(nllOf(model, x, y));
    for (let i = 0; i < bs && start + i < total; i++) out[start + i] = bitsPerDimOf(model, nll[i]!);
    opts.onBatch?.(Math.min(start + bs, total), total);
  }
  let s = 0;
  let finite = 0;
  const nonFinite: number[] = [];
  for (const [i, v] of out.entries()) {
    s += v;
    if (Number.isFinite(v)) finite += v;
    else nonFinite.push(i);
  }
  return { mean: s / total, finiteMean: finite / (total - nonFinite.length), nonFinite, perImage: out };
}
