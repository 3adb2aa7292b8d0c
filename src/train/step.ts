// One training step, in two jitted halves: the loss gradient on a batch (or on one replica's slice
// of it) and the update (global-norm clipping, AdamW, EMA) from a gradient. Data-parallel training
// runs the first half on every replica and the second once, on the mean of their gradients.
import { jit, valueAndGrad, keep, release, type Arr } from '../engine/index.js';
import { forward, flowLoss, type TarFlowParams } from '../models/tarflow.js';
import type { TarFlowConfig } from '../models/config.js';
import { ADAMW_DEFAULTS, adamwUpdate, clipByGlobalNorm, emaUpdate, type AdamWConfig } from '../nn/optim.js';
import type { TrainConfig } from './config.js';

export type TrainState = { params: TarFlowParams; m: TarFlowParams; v: TarFlowParams; ema: TarFlowParams };

/** (params, x, y) → { loss, grads }: the mean loss over the batch and its gradient. Consumes its arguments. */
export function makeGradStep(model: TarFlowConfig) {
  const lossFn = (p: TarFlowParams, x: Arr, y: Arr) => {
    const r = forward(p, model, x, model.numClasses > 0 ? y : (y.dispose(), undefined));
    r.blockZ2.dispose();
    return flowLoss(r.z, r.logdet);
  };
  return jit((p: TarFlowParams, x: Arr, y: Arr) => {
    const [loss, grads] = valueAndGrad(lossFn)(p, x, y);
    return { loss, grads };
  });
}

/** (state, grads, lr, bc1, bc2, emaDecay) → { state, gradNorm }. Consumes its arguments. */
export function makeApplyStep(cfg: TrainConfig) {
  const opt: AdamWConfig = { ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2, weightDecay: cfg.weightDecay };
  return jit((s: TrainState, grads: TarFlowParams, lr: Arr, bc1: Arr, bc2: Arr, emaDecay: Arr) => {
    const clipped = clipByGlobalNorm(grads, cfg.gradClip);
    const next = adamwUpdate(s.params, clipped.grads, { m: s.m, v: s.v }, lr, bc1, bc2, opt);
    const ema = cfg.emaDecay > 0 ? emaUpdate(s.ema, keep(next.params), emaDecay) : (release(s.ema), emaDecay.dispose(), keep(next.params));
    return { state: { params: next.params, m: next.state.m, v: next.state.v, ema }, gradNorm: clipped.norm };
  });
}

/** Both halves on one batch: (state, x, y, lr, bc1, bc2, emaDecay) → { state, loss, gradNorm }. */
export function makeTrainStep(cfg: TrainConfig) {
  const gradStep = makeGradStep(cfg.model);
  const applyStep = makeApplyStep(cfg);
  const step = (s: TrainState, x: Arr, y: Arr, lr: Arr, bc1: Arr, bc2: Arr, emaDecay: Arr) => {
    const { loss, grads } = gradStep(keep(s.params), x, y);
    const { state, gradNorm } = applyStep(s, grads, lr, bc1, bc2, emaDecay);
    return { state, loss, gradNorm };
  };
  /** Frees both halves' compiled programs. */
  const dispose = () => (gradStep.dispose(), applyStep.dispose());
  return Object.assign(step, { dispose });
}
