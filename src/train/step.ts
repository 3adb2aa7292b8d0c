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

/** What the update half needs from a training config. */
export type UpdateConfig = { beta1: number; beta2: number; weightDecay: number; gradClip: number; emaDecay: number };

export type ApplyStep = ReturnType<typeof makeApplyStep>;

/**
 * (params, x, y, eps) → { loss, grads } for a loss (params, x, y, eps?) → scalar, the mean over
 * the batch. `withEps`: the loss takes standard-normal draws `eps`. Consumes its arguments.
 */
export function gradStepOf(loss: (p: Params, x: Arr, y: Arr, eps?: Arr) => Arr, withEps = false): GradStep {
  const step = withEps
    ? jit((p: Params, x: Arr, y: Arr, eps: Arr) => {
        const [value, grads] = valueAndGrad((q: Params, xs: Arr, ys: Arr, e: Arr) => loss(q, xs, ys, e))(p, x, y, eps);
        return { loss: value, grads };
      })
    : jit((p: Params, x: Arr, y: Arr) => {
        const [value, grads] = valueAndGrad((q: Params, xs: Arr, ys: Arr) => loss(q, xs, ys))(p, x, y);
        return { loss: value, grads };
      });
  const call = step as unknown as (...args: Arr[] | [Params, ...Arr[]]) => { loss: Arr; grads: Params };
  const f = (p: Params, x: Arr, y: Arr, eps?: Arr) => (eps ? call(p, x, y, eps) : call(p, x, y));
  return Object.assign(f, { dispose: () => step.dispose() });
}

/** The gradient step of a model's training loss; `eps` is its lossNoiseShape draws, when it takes some. */
export function makeGradStep(model: ModelConfig): GradStep {
  const family = familyOf(model);
  return gradStepOf((p, x, y, eps) => family.loss(p, model, x, y, eps), family.lossNoiseShape !== undefined);
}

/** (state, grads, lr, bc1, bc2, emaDecay) → { state, gradNorm }. Consumes its arguments. */
export function makeApplyStep(cfg: UpdateConfig) {
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
