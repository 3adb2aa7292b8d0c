// Sampling families with a velocity field (models/model.ts: VelocitySampler): rectified flow and
// MeanFlow carry noise at t = 1 to data at t = 0 in N steps over a schedule (uniform in t, or
// SD3's shifted one), by Euler (x ← x + (r − t)·v, one network evaluation per step) or Heun (the
// mean of the velocities at both ends, two). Classifier-free guidance evaluates the conditional
// and unconditional rows in one batch and extrapolates, v_c + w·(v_c − v_u).
import { np, cachedJit, fromI32, hostScalars, keep, release, type Arr, type Params } from '../engine/index.js';
import type { Guidance, Model, OdeSolverName, TextConditioning, VelocitySampler } from '../models/model.js';
import { SamplingError } from './solvers.js';

export const ODE_SOLVERS: readonly OdeSolverName[] = ['euler', 'heun'];

/** How a velocity family samples: a solver and a number of steps. */
export type OdePlan = { solver: OdeSolverName; steps: number };

/** Network evaluations per sample of a plan (guidance evaluates both branches in one batch: not counted twice). */
export function evaluationsOf(plan: OdePlan): number {
  return plan.solver === 'heun' ? 2 * plan.steps : plan.steps;
}

/** The times t₀ = 1 > t₁ > … > t_N = 0 of N steps, shifted by s: t ↦ s·t / (1 + (s − 1)·t). */
export function timeSchedule(steps: number, shift: number): number[] {
  return Array.from({ length: steps + 1 }, (_, i) => {
    const t = 1 - i / steps;
    return (shift * t) / (1 + (shift - 1) * t);
  });
}

/** The velocity sampler of a model, or a clear error. */
export function velocitySampler(model: Model): VelocitySampler {
  const s = model.family.sampler(model.cfg);
  if (s.kind !== 'velocity') throw new SamplingError(`${model.family.name} models do not integrate a velocity field: --steps does not apply`);
  return s;
}

/** A plan from a solver name (default Euler) and steps (default the model's), checked against what the family supports. */
export function odePlanFor(model: Model, solver?: string, steps?: number): OdePlan {
  const s = velocitySampler(model);
  const name = (solver ?? 'euler') as OdeSolverName;
  if (!(ODE_SOLVERS as readonly string[]).includes(name)) throw new SamplingError(`${model.family.name} models sample with ${s.solvers.join(' or ')}, not '${solver}'`);
  if (!s.solvers.includes(name)) throw new SamplingError(`this model samples with ${s.solvers.join(' or ')}: ${name} needs the instantaneous velocity, which a MeanFlow model does not learn`);
  const n = steps ?? s.defaultSteps;
  if (!Number.isInteger(n) || n < 1) throw new SamplingError(`the number of steps must be an integer ≥ 1, got ${n}`);
  return { solver: name, steps: n };
}

/** `scalars`: hostScalars([t, r, guidance weight]). */
type StepInputs = { params: Params; x: Arr; scalars: Arr; labels: Arr; text?: Arr };

/** One jitted step x(t) → x(r) for a model, solver and branch layout. */
function stepFunction(model: Model, s: VelocitySampler, solver: OdeSolverName, guided: boolean, withText: boolean): (inp: StepInputs) => Arr {
  const key = `ode-step:${solver}:${guided}:${withText}:${JSON.stringify(model.cfg)}`;
  return cachedJit(key, () => (inp: StepInputs) => {
    const b = inp.x.shape[0]!;
    const scalar = (k: number) => inp.scalars.ref.slice([k, k + 1]);
    const t = np.broadcastTo(scalar(0), [b]);
    const r = np.broadcastTo(scalar(1), [b]);
    const weight = scalar(2);
    const rows = (a: Arr) => (guided ? np.concatenate([a.ref, a], 0) : a);
    const labels = inp.labels; // already [2B] when guided
    /** The (guided) velocity at x, time t; consumes x and t. */
    const velocity = (x: Arr, t: Arr, r: Arr): Arr => {
      const v = s.velocity(inp.params, rows(x), rows(t), rows(r), labels.ref, inp.text?.ref);
      if (!guided) return v;
      const cond = v.ref.slice([0, b]);
      const uncond = v.slice([b, 2 * b]);
      return cond.ref.add(cond.sub(uncond).mul(weight.ref));
    };
    const dt = r.ref.sub(t.ref).reshape([b, 1, 1, 1]);
    const v0 = velocity(inp.x.ref, t.ref, r.ref);
    let out: Arr;
    if (solver === 'euler') out = inp.x.add(v0.mul(dt));
    else {
      const ahead = inp.x.ref.add(v0.ref.mul(dt.ref));
      const v1 = velocity(ahead, r.ref, r.ref);
      out = inp.x.add(v0.add(v1).mul(dt).mul(0.5));
    }
    release([t, r, weight, inp.scalars, labels] as never);
    inp.text?.dispose();
    release(inp.params);
    return out;
  });
}

/**
 * Noise z [B, ...noiseShape] → the model's samples (before any decoding), in `plan.steps` steps.
 * Borrows the model's parameters; consumes z.
 */
export function integrate(
  model: Model,
  z: Arr,
  labels: number[] | undefined,
  plan: OdePlan,
  guidance: Guidance,
  text?: TextConditioning,
  onStep?: (done: number, total: number) => void,
): Arr {
  const s = velocitySampler(model);
  const b = z.shape[0]!;
  const guided = guidance.weight > 0;
  if (guided && model.cfg.numClasses === 0 && !(model.cfg.textDim ?? 0)) throw new SamplingError('guidance needs a class- or text-conditional model');
  if (guidance.attnTemp !== 1) throw new SamplingError(`${model.family.name} models have no attention-temperature guidance (--attn-temp)`);
  if (guidance.annealed) throw new SamplingError(`${model.family.name} models have no annealed guidance (it ramps along a flow's token sequence)`);
  const ys = labels ?? new Array<number>(b).fill(-1);
  const labelArr = fromI32(guided ? [...ys, ...ys.map(() => -1)] : ys, [guided ? 2 * b : b]);
  const states = text && (guided ? np.concatenate([text.states.ref, text.negative!.ref], 0) : text.states.ref);
  const step = stepFunction(model, s, plan.solver, guided, Boolean(states));
  const times = timeSchedule(plan.steps, s.timeShift);
  let x = z;
  for (let i = 0; i < plan.steps; i++) {
    const scalars = hostScalars([times[i]!, times[i + 1]!, guidance.weight]);
    x = step({ params: keep(model.params), x, scalars, labels: labelArr.ref, ...(states ? { text: states.ref } : {}) });
    onStep?.(i + 1, plan.steps);
  }
  labelArr.dispose();
  states?.dispose();
  return s.toImages(x);
}
