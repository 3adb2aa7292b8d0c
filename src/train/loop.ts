// The one optimisation loop: every training run (a model family through the trainer, the feature
// extractor's classifier) steps through it. Per step: the batch, the learning rate of the
// warm-up + cosine schedule, the gradient (on this thread or data-parallel workers), the update
// (clipping, AdamW, EMA). A step whose loss or gradient norm is not finite is skipped: the weights
// stay as they were and the caller decides whether the run goes on.
import { np, keep, release, toNumber, type Arr, type Params } from '../engine/index.js';
import { ADAMW_DEFAULTS, adamScalars, cosineLr, emaDecayAt } from '../nn/optim.js';
import type { ApplyStep, TrainState, UpdateConfig } from './step.js';

/** Host data of one batch: images, labels (or token ids [B, L], row-major) and the loss's own standard-normal draws (if any). */
export type LoopBatch = { x: Float32Array; xShape: number[]; y: Int32Array; eps?: { data: Float32Array; shape: number[] } };

export type Schedule = UpdateConfig & {
  lr: number;
  minLr: number;
  warmupSteps: number;
  /** Length of the schedule (a run may stop before it). */
  steps: number;
};

export type StepReport = { step: number; loss: number; gradNorm: number; lr: number };

export type LoopOptions = {
  state: TrainState;
  /** Steps `from`..`stopAt − 1` are run (step numbers index the schedule and the data). */
  from: number;
  stopAt: number;
  schedule: Schedule;
  batch(step: number): LoopBatch;
  gradients(params: Params, batch: LoopBatch): Promise<{ loss: Arr; grads: Params }>;
  apply: ApplyStep;
  /** Asked before every step: a reason to stop now, or undefined to go on. */
  stop?(step: number): string | undefined;
  /** After a finite step; `step` counts the steps done, `state` is the new state (not to be released). */
  onStep(r: StepReport, state: TrainState): Promise<void>;
  /** After a skipped step (non-finite loss or gradient), with its step number; throw to end the run. */
  onSkip(step: number, loss: number): Promise<void>;
};

/** Runs the steps; returns the final state, the steps done and why it stopped ('done' at stopAt). */
export async function optimize(o: LoopOptions): Promise<{ state: TrainState; step: number; reason: string }> {
  const s = o.schedule;
  let state = o.state;
  let step = o.from;
  while (step < o.stopAt) {
    const reason = o.stop?.(step);
    if (reason) return { state, step, reason };
    const lr = cosineLr({ lr: s.lr, minLr: s.minLr, warmupSteps: s.warmupSteps, totalSteps: s.steps }, step);
    const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: s.beta1, beta2: s.beta2 }, step + 1);
    const g = await o.gradients(state.params, o.batch(step));
    const out = o.apply(keep(state), g.grads, np.array(lr), np.array(bc1), np.array(bc2), np.array(emaDecayAt(s.emaDecay, step)));
    const loss = await toNumber(g.loss);
    const gradNorm = await toNumber(out.gradNorm);
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      release(out.state); // keep the last good weights
      await o.onSkip(step, loss);
      step++;
      continue;
    }
    release(state);
    state = out.state;
    step++;
    await o.onStep({ step, loss, gradNorm, lr }, state);
  }
  return { state, step, reason: 'done' };
}
