// Score-based denoising after sampling: the model was trained on x + σε, so it is a density of
// noisy data and one Tweedie step E[x | x̃] ≈ x̃ + σ²∇log p(x̃) removes the noise. The score comes
// from autodiff of the model's own log-likelihood with respect to its input.
import { grad, cachedJit, keep, fromI32, type Arr, type Params } from '../engine/index.js';
import type { Model } from '../models/model.js';
import { SamplingError } from './solvers.js';

/**
 * Models trained on Gaussian-noised images sample them noisy: they are denoised unless asked not
 * to. A latent model whose decoder was fine-tuned on latents with that noise decodes noisy
 * latents as they are (STARFlow's recipe), so it is not.
 */
export function denoisesByDefault(model: Pick<Model, 'family' | 'cfg' | 'autoencoder'>): boolean {
  const decoderAbsorbs = model.autoencoder !== undefined && model.autoencoder.cfg.decoderNoiseStd >= model.cfg.noiseStd;
  return model.cfg.noiseStd > 0 && model.family.nll !== undefined && !decoderAbsorbs;
}

/**
 * One denoising step on images x [B, C, H, W]. The gradient is of the mean NLL per dimension
 * over the batch (the family's nll, given the text states of a text-conditioned model), −∇log p/(B·D), so the Tweedie step size is lr = B·D·σ² (times `lrScale`), as
 * the reference computes it.
 */
export function denoise(model: Model, x: Arr, labels: number[] | undefined, sigma: number, lrScale = 1, text?: Arr): Arr {
  const { family, cfg } = model;
  if (!family.nll) throw new SamplingError(`${family.name} models have no likelihood to denoise with`);
  const [b, c, h, w] = x.shape as [number, number, number, number];
  const lr = lrScale * b * c * h * w * sigma * sigma;
  const y = fromI32(labels ?? new Array<number>(b).fill(0), [b]);
  // The score of the model's density: the gradient of its mean NLL over the batch (given the text
  // states, borrowed, for a text-conditioned model).
  const nll = family.nll;
  const loss = (xs: Arr, p: Params, ys: Arr, ts?: Arr) => nll(p, cfg, xs, ys, ts).mean();
  const g = text
    ? cachedJit(`denoise-text:${JSON.stringify(cfg)}`, () => (p: Params, xs: Arr, ys: Arr, ts: Arr) => grad(loss)(xs, p, ys, ts))(keep(model.params), x.ref, y, text.ref)
    : cachedJit(`denoise:${JSON.stringify(cfg)}`, () => (p: Params, xs: Arr, ys: Arr) => grad(loss)(xs, p, ys))(keep(model.params), x.ref, y);
  return x.sub(g.mul(lr));
}
