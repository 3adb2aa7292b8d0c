// AdamW (PyTorch semantics), a warm-up + cosine schedule, gradient-norm clipping and an EMA of
// the weights: pure functions over parameter trees, so a whole training step can be one `jit`.
// Step-dependent scalars (learning rate, bias corrections) enter as arrays: no recompiles.
import { np, mapTree, leaves, keep, type Arr, type JsTree } from '../engine/index.js';

export type AdamWConfig = { beta1: number; beta2: number; eps: number; weightDecay: number };
export type AdamState<P> = { m: P; v: P };

export const ADAMW_DEFAULTS: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 1e-4 };

/** Zero moments shaped like `params` (borrowed, not consumed). */
export function initAdamState<P extends JsTree<Arr>>(params: P): AdamState<P> {
  return { m: mapTree((p) => np.zerosLike(p), keep(params)), v: mapTree((p) => np.zerosLike(p), keep(params)) };
}

/** Scalars of step `t` (1-based): bias corrections 1 − β^t. */
export function adamScalars(cfg: AdamWConfig, t: number): { bc1: number; bc2: number } {
  return { bc1: 1 - cfg.beta1 ** t, bc2: 1 - cfg.beta2 ** t };
}

/**
 * One AdamW update. `lr`, `bc1`, `bc2` are scalar arrays. Decoupled weight decay is applied to
 * the weights before the Adam step, as torch.optim.AdamW does.
 */
export function adamwUpdate<P extends JsTree<Arr>>(
  params: P,
  grads: P,
  state: AdamState<P>,
  lr: Arr,
  bc1: Arr,
  bc2: Arr,
  cfg: AdamWConfig,
): { params: P; state: AdamState<P> } {
  const m = mapTree((m, g) => m.mul(cfg.beta1).add(g.mul(1 - cfg.beta1)), state.m, keep(grads));
  const v = mapTree((v, g) => v.mul(cfg.beta2).add(np.square(g).mul(1 - cfg.beta2)), state.v, grads);
  const step = mapTree(
    (m, v) => m.div(bc1.ref).div(np.sqrt(v.div(bc2.ref)).add(cfg.eps)).mul(lr.ref),
    keep(m),
    keep(v),
  );
  const decay = lr.ref.mul(-cfg.weightDecay).add(1);
  const next = mapTree((p, s) => p.mul(decay.ref).sub(s), params, step);
  decay.dispose();
  lr.dispose();
  bc1.dispose();
  bc2.dispose();
  return { params: next, state: { m, v } };
}

/** Global L2 norm of a gradient tree (a scalar array). */
export function globalNorm(grads: JsTree<Arr>): Arr {
  const sq = leaves(grads).map((g) => np.square(g).sum());
  return np.sqrt(sq.reduce((a, b) => a.add(b)));
}

/** Scales gradients so their global norm is at most `maxNorm`; returns them with the norm before clipping. */
export function clipByGlobalNorm<P extends JsTree<Arr>>(grads: P, maxNorm: number): { grads: P; norm: Arr } {
  const norm = globalNorm(keep(grads));
  const scale = np.minimum(np.reciprocal(norm.ref.add(1e-6)).mul(maxNorm), 1);
  const clipped = mapTree((g) => g.mul(scale.ref), grads);
  scale.dispose();
  return { grads: clipped, norm };
}

/** Exponential moving average of the weights: e ← decay·e + (1 − decay)·p. `decay` may be a scalar array. */
export function emaUpdate<P extends JsTree<Arr>>(ema: P, params: P, decay: number | Arr): P {
  if (typeof decay === 'number') return mapTree((e, p) => e.mul(decay).add(p.mul(1 - decay)), ema, params);
  const keepRate = decay.ref.mul(-1).add(1);
  const out = mapTree((e, p) => e.mul(decay.ref).add(p.mul(keepRate.ref)), ema, params);
  decay.dispose();
  keepRate.dispose();
  return out;
}

/** The EMA decay at step t, warmed up as (1 + t)/(10 + t) so early averages are not stuck at the initial weights. */
export function emaDecayAt(decay: number, step: number): number {
  return Math.min(decay, (1 + step) / (10 + step));
}

export type ScheduleConfig = { lr: number; minLr: number; warmupSteps: number; totalSteps: number; warmupFrom?: number };

/** Linear warm-up from `warmupFrom` (1e-6, as the reference) to `lr`, then cosine down to `minLr`. */
export function cosineLr(s: ScheduleConfig, step: number): number {
  const from = s.warmupFrom ?? 1e-6;
  if (step < s.warmupSteps) return from + ((s.lr - from) * step) / s.warmupSteps;
  const span = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, (step - s.warmupSteps) / span);
  return s.minLr + 0.5 * (s.lr - s.minLr) * (1 + Math.cos(Math.PI * progress));
}
