// Inverting an autoregressive flow, block by block, from the last block to the first. Each block
// is a triangular system solved chunk by chunk with the shared step (step.ts), generic over the
// model's block inverse (models/model.ts):
// - sequential: exact, position by position, several positions per call (the KV cache is written
//   once per call, and per-call overhead is what batch-1 sampling mostly costs);
// - jacobi: the whole sequence as one chunk, iterated until it stops changing;
// - gs-jacobi: the sequence split into modules solved in order, Jacobi inside each.
// A chunk of L positions is exact after L iterations, so iteration caps above L are never needed.
// Jacobi's stopping rule holds per sample by default: a chunk is done when every sample's relative
// change is below the tolerance, so one hard sample in a large batch is not cut short by the easy
// ones; ml-starflow's block-wise Jacobi ('batch') stops on the whole batch's relative change,
// Σ(new − old)² / Σ new².
import { np, keep, release, fromF32, fromI32, toF32, type Arr } from '../engine/index.js';
import type { AutoregressiveSampler, Guidance, Model, TextConditioning } from '../models/model.js';
import { stepFunction } from './step.js';
import { integrate, odePlanFor, type OdePlan } from './ode.js';


export type BlockPlan =
  | { kind: 'sequential'; tokensPerCall?: number }
  | {
      kind: 'jacobi';
      /** Modules of about equal length over the block, or chunks of exactly `chunk` positions (the last shorter). */
      modules: number;
      chunk?: number;
      maxIter: number;
      tol: number;
      init: 'z' | 'zeros';
      /** 'sample' (default): every sample's relative change below tol; 'batch': the batch's (ml-starflow). */
      criterion?: 'sample' | 'batch';
    };

export type SampleOptions = {
  /** One plan per block, indexed by sampling order (0 = the first block run = the model's last). */
  plans: BlockPlan[];
  guidance: Guidance;
  /** Called after every solver call, for progress bars. */
  onStep?: (done: number, total: number) => void;
  /** Text-conditioned models: the states (and, for guidance, the negative). */
  text?: TextConditioning;
  /** Velocity families: solver and steps (default: Euler, the model's steps). */
  ode?: OdePlan;
};

export type BlockStats = { block: number; calls: number; iterations: number[] };

export class SamplingError extends Error {
  override name = 'SamplingError';
}

/**
 * Positions per call of the sequential solver unless a plan says otherwise. Fewer positions per
 * call compile faster; more write the KV cache less often. 4 was the best or level with the best of
 * 1, 2, 4 and 8 on the sample-process bench model (1,024 samples) and on checkpoints/mnist-uniform
 * at 1 and 1,000 samples, first call included (2026-12-03, native kernels).
 */
export const SEQUENTIAL_TOKENS_PER_CALL = 4;

/** Chunk boundaries over the S − 1 unknown positions: [start, length] with start the first input position. */
export function chunksOf(plan: BlockPlan, length: number): [number, number][] {
  const unknown = length - 1;
  const size =
    plan.kind === 'sequential'
      ? Math.max(1, plan.tokensPerCall ?? SEQUENTIAL_TOKENS_PER_CALL)
      : (plan.chunk ?? Math.ceil(unknown / Math.max(1, Math.min(plan.modules, unknown))));
  const out: [number, number][] = [];
  for (let s = 0; s < unknown; s += size) out.push([s, Math.min(size, unknown - s)]);
  return out;
}

/** The number of solver calls a plan makes at most, for progress reporting. */
export function maxCalls(plan: BlockPlan, length: number): number {
  if (plan.kind === 'sequential') return chunksOf(plan, length).length;
  return chunksOf(plan, length).reduce((n, [, l]) => n + Math.min(l, plan.maxIter), 0);
}

/** The autoregressive sampler of a model, or a clear error for families that sample otherwise. */
export function autoregressive(model: Model): AutoregressiveSampler {
  const s = model.family.sampler(model.cfg);
  if (s.kind !== 'autoregressive') throw new SamplingError(`${model.family.name} models are not autoregressive flows: they have no block solvers`);
  return s;
}

/**
 * Inverts block `bi`: z (natural token order, [B, T, D]) → its input x. `labels` are one per
 * sample (class models) or undefined.
 */
export async function invertBlock(
  model: Model,
  bi: number,
  z: Arr,
  labels: number[] | undefined,
  plan: BlockPlan,
  guidance: Guidance,
  onCall?: () => void,
  text?: TextConditioning,
): Promise<{ x: Arr; stats: BlockStats }> {
  const sampler = autoregressive(model);
  const block = sampler.block(model.params, bi, z.ref, labels, guidance, text);
  const guided = sampler.isGuided(guidance, bi);
  const length = sampler.length;
  const zs = block.toSequence(z);
  const first = np.arange(length).equal(0).reshape([1, length, 1]);
  // Position 0 is known; the others start from z or from zeros.
  let x = plan.kind === 'jacobi' && plan.init === 'zeros' ? np.where(first, zs.ref, 0) : (first.dispose(), zs.ref);
  const { labels: labelArr, temps, rows } = block.conditioning;
  const chunks = chunksOf(plan, length);
  const size = chunks[0]![1]; // every chunk starts at a multiple of the first one's length
  const steps = sampler.steps(bi);
  let cache = steps.emptyCache(rows, size);
  const stats: BlockStats = { block: bi, calls: 0, iterations: [] };

  let startArr: Arr | null = null; // chunks are contiguous: each call returns the next start
  for (const [start, len] of chunks) {
    startArr ??= fromI32([start], []);
    const order = plan.kind === 'sequential' ? 'sequential' : 'parallel';
    const step = stepFunction(steps, { key: `${JSON.stringify(model.cfg)}:${steps.shapeKey}`, chunk: len, size, order, guided, rule: guidance.rule });
    const w = Array.from({ length: len }, (_, i) =>
      guided ? (guidance.annealed ? ((start + i + 1) / (length - 1)) * guidance.weight : guidance.weight) : 0,
    );
    const weights = fromF32(w, [1, len, 1]);
    const cap = plan.kind === 'sequential' ? 1 : Math.min(len, plan.maxIter);
    let iters = 0;
    let next: Arr | null = null;
    for (; iters < cap; ) {
      const out = step({ block: keep(block.params as never), x, z: zs.ref, start: startArr.ref, cache, labels: labelArr.ref, temps: temps.ref, weights: weights.ref });
      x = out.x;
      cache = out.cache;
      next?.dispose();
      next = out.next;
      iters++;
      stats.calls++;
      onCall?.();
      if (plan.kind === 'sequential') {
        out.change.dispose();
        await x.blockUntilReady(); // lazy dispatch would otherwise pile up every call
      } else if (converged(await toF32(out.change), plan)) {
        break;
      }
    }
    stats.iterations.push(iters);
    weights.dispose();
    startArr.dispose();
    startArr = next;
  }
  startArr?.dispose();
  release(cache as never);
  release(block.params as never);
  labelArr.dispose();
  temps.dispose();
  zs.dispose();
  return { x: block.fromSequence(x), stats };
}

/** Whether a Jacobi chunk is done, from the step's per-sample [Σ(new − old)², Σ new²] (as [2, B]). */
function converged(change: Float32Array, plan: Extract<BlockPlan, { kind: 'jacobi' }>): boolean {
  const b = change.length / 2;
  const moved = change.subarray(0, b);
  const size = change.subarray(b);
  if (plan.criterion === 'batch') return moved.reduce((a, v) => a + v, 0) < plan.tol * size.reduce((a, v) => a + v, 0) + 1e-30;
  return moved.every((m, i) => m < plan.tol * (size[i]! + 1e-12));
}

/** Noise → images [B, C, H, W] (not denoised) with an autoregressive flow's block solvers. */
export async function sampleFromNoise(model: Model, z: Arr, labels: number[] | undefined, opts: SampleOptions): Promise<{ images: Arr; stats: BlockStats[] }> {
  const sampler = autoregressive(model);
  validateRequest(model, z, labels, opts.guidance, opts.text);
  if (opts.plans.length !== sampler.numBlocks) {
    throw new SamplingError(`a sampling plan needs one entry per block (${sampler.numBlocks}), got ${opts.plans.length}`);
  }
  const total = opts.plans.reduce((n, p) => n + maxCalls(p, sampler.length), 0);
  let done = 0;
  const stats: BlockStats[] = [];
  let x = z;
  for (let k = 0; k < sampler.numBlocks; k++) {
    const bi = sampler.numBlocks - 1 - k;
    const r = await invertBlock(model, bi, x, labels, opts.plans[k]!, opts.guidance, () => opts.onStep?.(++done, total), opts.text);
    x = r.x;
    stats.push(r.stats);
  }
  return { images: sampler.toImages(x), stats };
}

/** Checks noise, labels and guidance against a model before any work. */
export function validateRequest(model: Model, z: Arr, labels: number[] | undefined, g: Guidance, text?: TextConditioning): void {
  const { cfg, family } = model;
  const want = family.noiseShape(cfg);
  const [b] = z.shape;
  if (z.ndim !== want.length + 1 || z.shape.slice(1).join(',') !== want.join(',')) {
    throw new SamplingError(`noise must have shape [batch, ${want.join(', ')}], got [${z.shape}]`);
  }
  if (b === 0) throw new SamplingError('the number of samples must be at least 1');
  if (cfg.numClasses > 0) {
    if (!labels || labels.length !== b) throw new SamplingError(`a class-conditional model needs ${b} labels, got ${labels?.length ?? 0}`);
    const bad = labels.find((y) => !Number.isInteger(y) || y < -1 || y >= cfg.numClasses);
    if (bad !== undefined) throw new SamplingError(`class ${bad} is out of range: this model has classes 0..${cfg.numClasses - 1} (-1 = unconditional)`);
  } else if (labels && labels.some((y) => y !== -1)) {
    throw new SamplingError('this model is unconditional: it takes no class labels');
  }
  if (!(g.weight >= 0) || !Number.isFinite(g.weight)) throw new SamplingError(`the guidance weight must be a number ≥ 0, got ${g.weight}`);
  if (!(g.attnTemp > 0)) throw new SamplingError(`the attention temperature must be > 0, got ${g.attnTemp}`);
  const textDim = cfg.textDim ?? 0;
  if (textDim > 0) {
    const want = [b, cfg.textTokens, textDim].join(', ');
    for (const [name, t] of [['text states', text?.states], ['negative text states', text?.negative]] as const) {
      if (!t) continue;
      if (t.shape.join(', ') !== want) throw new SamplingError(`${name} must have shape [${want}], got [${t.shape.join(', ')}]`);
    }
    if (!text?.states) throw new SamplingError(`a text-conditioned model needs text states [${want}]`);
    if (g.weight > 0 && !text.negative) throw new SamplingError('guidance on a text-conditioned model needs negative text states (e.g. the empty caption\'s)');
  } else if (text) throw new SamplingError('this model is not text-conditioned: it takes no text');
  if (g.weight > 0 && cfg.numClasses === 0 && textDim === 0 && g.attnTemp === 1) {
    throw new SamplingError('guidance on an unconditional model needs an attention temperature ≠ 1 for its negative branch (e.g. --attn-temp 0.5)');
  }
  const s = family.sampler(cfg);
  const blocks = s.kind === 'autoregressive' ? s.numBlocks : 0;
  for (const bi of g.blocks ?? []) {
    if (!Number.isInteger(bi) || bi < 0 || bi >= blocks) throw new SamplingError(`guided block ${bi} does not exist (0..${blocks - 1})`);
  }
}

/** Noise → images with whatever sampler the family has. */
export async function sampleModel(model: Model, z: Arr, labels: number[] | undefined, opts: SampleOptions): Promise<{ images: Arr; stats: BlockStats[] }> {
  const s = model.family.sampler(model.cfg);
  if (s.kind === 'autoregressive') return sampleFromNoise(model, z, labels, opts);
  validateRequest(model, z, labels, opts.guidance, opts.text);
  if (s.kind === 'velocity') {
    const images = integrate(model, z, labels, opts.ode ?? odePlanFor(model), opts.guidance, opts.text, opts.onStep);
    return { images, stats: [] };
  }
  const images = s.sample(keep(model.params), z, labels, opts.guidance);
  opts.onStep?.(1, 1);
  return { images, stats: [] };
}

/** Host noise [n, ...shape] as an array. */
export function noiseArray(model: Model, data: Float32Array, n: number): Arr {
  return fromF32(data, [n, ...model.family.noiseShape(model.cfg)]);
}
