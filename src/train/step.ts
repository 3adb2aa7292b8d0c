// One training step, in two jitted halves: the loss gradient on a batch (or on one replica's slice
// of it) and the update (global-norm clipping, AdamW, EMA) from a gradient. Data-parallel training
// runs the first half on every replica and the second once, on the mean of their gradients.
// Generic over families: the loss is the family's (models/model.ts).
import { jit, valueAndGrad, keep, release, type Arr, type Params } from '../engine/index.js';
import { familyOf } from '../models/registry.js';
import type { ModelConfig } from '../models/model.js';
import { ADAMW_DEFAULTS, adamwUpdate, clipByGlobalNorm, emaUpdate, type AdamWConfig } from '../nn/optim.js';
import type { TrainConfig } from './config.js';

export type TrainState = { params: Params; m: Params; v: Params; ema: Params };

export type GradStep = ((p: Params, x: Arr, y: Arr, eps?: Arr) => { loss: Arr; grads: Params }) & { dispose(): void };

/**
 * (params, x, y, eps) → { loss, grads }: the mean loss over the batch and its gradient. `eps` is
 * the family's standard-normal draws for this batch (lossNoiseShape), absent when it takes none.
 * Consumes its arguments.
 */
export function makeGradStep(model: ModelConfig): GradStep {
  const family = familyOf(model);
  const step = family.lossNoiseShape
    ? jit((p: Params, x: Arr, y: Arr, eps: Arr) => {
        const [loss, grads] = valueAndGrad((q: Params, xs: Arr, ys: Arr, e: Arr) => family.loss(q, model, xs, ys, e))(p, x, y, eps);
        return { loss, grads };
      })
    : jit((p: Params, x: Arr, y: Arr) => {
        const [loss, grads] = valueAndGrad((q: Params, xs: Arr, ys: Arr) => family.loss(q, model, xs, ys))(p, x, y);
        return { loss, grads };
      });
  const call = step as unknown as (...args: Arr[] | [Params, ...Arr[]]) => { loss: Arr; grads: Params };
  const f = (p: Params, x: Arr, y: Arr, eps?: Arr) => (eps ? call(p, x, y, eps) : call(p, x, y));
  return Object.assign(f, { dispose: () => step.dispose() });
}

/** (state, grads, lr, bc1, bc2, emaDecay) → { state, gradNorm }. Consumes its arguments. */
export function makeApplyStep(cfg: TrainConfig) {
  const opt: AdamWConfig = { ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2, weightDecay: cfg.weightDecay };
  return jit((s: TrainState, grads: Params, lr: Arr, bc1: Arr, bc2: Arr, emaDecay: Arr) => {
    const clipped = clipByGlobalNorm(grads, cfg.gradClip);
    const next = adamwUpdate(s.params, clipped.grads, { m: s.m, v: s.v }, lr, bc1, bc2, opt);
    const ema = cfg.emaDecay > 0 ? emaUpdate(s.ema, keep(next.params), emaDecay) : (release(s.ema), emaDecay.dispose(), keep(next.params));
    return { state: { params: next.params, m: next.state.m, v: next.state.v, ema }, gradNorm: clipped.norm };
  });
}

/** Both halves on one batch: (state, x, y, lr, bc1, bc2, emaDecay, eps?) → { state, loss, gradNorm }. */
export function makeTrainStep(cfg: TrainConfig) {
  const gradStep = makeGradStep(cfg.model);
  const applyStep = makeApplyStep(cfg);
  const step = (s: TrainState, x: Arr, y: Arr, lr: Arr, bc1: Arr, bc2: Arr, emaDecay: Arr, eps?: Arr) => {
    const { loss, grads } = gradStep(keep(s.params), x, y, eps);
    const { state, gradNorm } = applyStep(s, grads, lr, bc1, bc2, emaDecay);
    return { state, loss, gradNorm };
  };
  /** Frees both halves' compiled programs. */
  const dispose = () => (gradStep.dispose(), applyStep.dispose());
  return Object.assign(step, { dispose });
}
