// Score-based denoising after sampling: the model was trained on x + σε, so it is a density of
// noisy data and one Tweedie step E[x | x̃] ≈ x̃ + σ²∇log p(x̃) removes the noise. The score comes
// from autodiff of the model's own log-likelihood with respect to its input.
import { grad, jit, keep, fromI32, type Arr } from '../engine/index.js';
import { forward, flowLoss, type TarFlowParams } from '../models/tarflow.js';
import type { TarFlowConfig } from '../models/config.js';

const compiled = new Map<string, (p: TarFlowParams, x: Arr, y: Arr) => Arr>();

function lossGrad(cfg: TarFlowConfig): (p: TarFlowParams, x: Arr, y: Arr) => Arr {
  const key = JSON.stringify(cfg);
  let f = compiled.get(key);
  if (!f) {
    const loss = (x: Arr, p: TarFlowParams, y: Arr) => {
      const r = forward(p, cfg, x, cfg.numClasses > 0 ? y : (y.dispose(), undefined));
      r.blockZ2.dispose();
      return flowLoss(r.z, r.logdet);
    };
    const g = jit((p: TarFlowParams, x: Arr, y: Arr) => grad(loss)(x, p, y));
    f = g as unknown as (p: TarFlowParams, x: Arr, y: Arr) => Arr;
    compiled.set(key, f);
  }
  return f;
}

/**
 * One denoising step on images x [B, C, H, W]. The loss is a mean over batch and dimensions,
 * so its gradient is −∇log p/(B·D) and the Tweedie step size is lr = B·D·σ² (times `lrScale`),
 * as the reference computes it.
 */
export function denoise(params: TarFlowParams, cfg: TarFlowConfig, x: Arr, labels: number[] | undefined, sigma: number, lrScale = 1): Arr {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  const lr = lrScale * b * c * h * w * sigma * sigma;
  const y = fromI32(labels ?? new Array<number>(b).fill(0), [b]);
  const g = lossGrad(cfg)(keep(params), x.ref, y);
  return x.sub(g.mul(lr));
}
