// Inverting the flow, block by block, from the last block to the first. Each block is a
// triangular system solved chunk by chunk with the shared step (step.ts):
// - sequential: exact, token by token, several tokens per call (the KV cache is written once per
//   call, and per-call overhead is what batch-1 sampling mostly costs);
// - jacobi: the whole sequence as one chunk, iterated until it stops changing;
// - gs-jacobi: the sequence split into modules solved in order, Jacobi inside each.
// A chunk of L tokens is exact after L iterations, so iteration caps above L are never needed.
import { np, keep, fromI32, fromF32, toNumber, type Arr } from '../engine/index.js';
import { emptyBlockCache, blockPositions, isFlipped, unpatchify, type TarFlowParams } from '../models/tarflow.js';
import { tokenShape, type TarFlowConfig } from '../models/config.js';
import { stepFunction, type GuidanceRule } from './step.js';

export type BlockPlan =
  | { kind: 'sequential'; tokensPerCall?: number }
  | { kind: 'jacobi'; modules: number; maxIter: number; tol: number; init: 'z' | 'zeros' };

export type Guidance = {
  weight: number;
  rule: GuidanceRule;
  /** Ramp the weight linearly along the sequence, (t/(T−1))·w for token t. */
  annealed: boolean;
  /** Attention temperature of the unconditional branch. */
  attnTemp: number;
  /** Model block indices that get guidance; all when absent. */
  blocks?: number[];
};

export const NO_GUIDANCE: Guidance = { weight: 0, rule: 'tarflow', annealed: false, attnTemp: 1 };

export type SampleOptions = {
  /** One plan per block, indexed by sampling order (0 = the first block run = the model's last). */
  plans: BlockPlan[];
  guidance: Guidance;
  /** Called after every solver call, for progress bars. */
  onStep?: (done: number, total: number) => void;
};

export type BlockStats = { block: number; calls: number; iterations: number[] };

export class SamplingError extends Error {
  override name = 'SamplingError';
}

export function isGuided(g: Guidance, cfg: TarFlowConfig, blockIndex: number): boolean {
  if (g.weight === 0) return false;
  if (cfg.numClasses === 0 && g.attnTemp === 1) return false; // both branches would be identical
  return !g.blocks || g.blocks.includes(blockIndex);
}

/** Tokens per call of the sequential solver unless a plan says otherwise. */
export const SEQUENTIAL_TOKENS_PER_CALL = 8;

/** Chunk boundaries over the T − 1 unknown tokens: [start, length] with start the first input position. */
export function chunksOf(plan: BlockPlan, tokens: number): [number, number][] {
  const unknown = tokens - 1;
  const size =
    plan.kind === 'sequential'
      ? Math.max(1, plan.tokensPerCall ?? SEQUENTIAL_TOKENS_PER_CALL)
      : Math.ceil(unknown / Math.max(1, Math.min(plan.modules, unknown)));
  const out: [number, number][] = [];
  for (let s = 0; s < unknown; s += size) out.push([s, Math.min(size, unknown - s)]);
  return out;
}

/** The number of solver calls a plan makes at most, for progress reporting. */
export function maxCalls(plan: BlockPlan, tokens: number): number {
  if (plan.kind === 'sequential') return chunksOf(plan, tokens).length;
  return chunksOf(plan, tokens).reduce((n, [, l]) => n + Math.min(l, plan.maxIter), 0);
}

/**
 * Inverts block `bi`: z (natural token order, [B, T, D]) → its input x. `labels` are int32 [B]
 * (class models) or undefined.
 */
export async function invertBlock(
  params: TarFlowParams,
  cfg: TarFlowConfig,
  bi: number,
  z: Arr,
  labels: number[] | undefined,
  plan: BlockPlan,
  guidance: Guidance,
  onCall?: () => void,
): Promise<{ x: Arr; stats: BlockStats }> {
  const batch = z.shape[0]!;
  const { tokens } = tokenShape(cfg);
  const guided = isGuided(guidance, cfg, bi);
  const rows = guided ? 2 * batch : batch;
  const block = params.blocks[bi]!;
  const flipped = isFlipped(bi);

  const zm = flipped ? np.flip(z, 1) : z;
  const first = np.arange(tokens).equal(0).reshape([1, tokens, 1]);
  // Token 0 passes through every block; the others start from z or from zeros.
  let x = plan.kind === 'jacobi' && plan.init === 'zeros' ? np.where(first, zm.ref, 0) : (first.dispose(), zm.ref);

  const ys = labels ?? new Array<number>(batch).fill(0);
  const labelArr = fromI32(guided ? [...ys, ...ys.map(() => -1)] : ys, [rows]);
  const temps = fromF32(
    Array.from({ length: rows }, (_, r) => (r >= batch ? guidance.attnTemp : 1)),
    [rows, 1, 1, 1],
  );
  const pos = blockPositions(block.pos.ref, bi);
  const chunks = chunksOf(plan, tokens);
  const size = chunks[0]![1]; // every chunk starts at a multiple of the first one's length
  let cache = emptyBlockCache(cfg, rows, size);
  const stats: BlockStats = { block: bi, calls: 0, iterations: [] };

  let startArr: Arr | null = null; // chunks are contiguous: each call returns the next start
  for (const [start, len] of chunks) {
    startArr ??= fromI32([start], []);
    const order = plan.kind === 'sequential' ? 'sequential' : 'parallel';
    const step = stepFunction({ cfg, chunk: len, size, order, guided, rule: guidance.rule });
    const w = Array.from({ length: len }, (_, i) =>
      guided ? (guidance.annealed ? ((start + i + 1) / (tokens - 1)) * guidance.weight : guidance.weight) : 0,
    );
    const weights = fromF32(w, [1, len, 1]);
    const cap = plan.kind === 'sequential' ? 1 : Math.min(len, plan.maxIter);
    let iters = 0;
    let next: Arr | null = null;
    for (; iters < cap; ) {
      const out = step({
        block: keep(block),
        pos: pos.ref,
        x,
        z: zm.ref,
        start: startArr.ref,
        cache,
        labels: labelArr.ref,
        temps: temps.ref,
        weights: weights.ref,
      });
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
      } else if ((await toNumber(out.change)) < plan.tol) {
        break;
      }
    }
    stats.iterations.push(iters);
    weights.dispose();
    startArr.dispose();
    startArr = next;
  }
  startArr?.dispose();
  for (const c of cache) {
    c.kT.dispose();
    c.v.dispose();
  }
  pos.dispose();
  labelArr.dispose();
  temps.dispose();
  zm.dispose();
  return { x: flipped ? np.flip(x, 1) : x, stats };
}

/** Noise tokens → images [B, C, H, W] (not denoised). */
export async function sampleFromNoise(
  params: TarFlowParams,
  cfg: TarFlowConfig,
  z: Arr,
  labels: number[] | undefined,
  opts: SampleOptions,
): Promise<{ images: Arr; stats: BlockStats[] }> {
  validateRequest(cfg, z, labels, opts);
  const { tokens } = tokenShape(cfg);
  const total = opts.plans.reduce((n, p) => n + maxCalls(p, tokens), 0);
  let done = 0;
  const stats: BlockStats[] = [];
  let x = z;
  for (let k = 0; k < cfg.numBlocks; k++) {
    const bi = cfg.numBlocks - 1 - k;
    const r = await invertBlock(params, cfg, bi, x, labels, opts.plans[k]!, opts.guidance, () => opts.onStep?.(++done, total));
    x = r.x;
    stats.push(r.stats);
  }
  return { images: unpatchify(x, cfg), stats };
}

function validateRequest(cfg: TarFlowConfig, z: Arr, labels: number[] | undefined, opts: SampleOptions): void {
  const { tokens, tokenDim } = tokenShape(cfg);
  const [b, t, d] = z.shape;
  if (z.ndim !== 3 || t !== tokens || d !== tokenDim) {
    throw new SamplingError(`noise must have shape [batch, ${tokens}, ${tokenDim}], got [${z.shape}]`);
  }
  if (b === 0) throw new SamplingError('the number of samples must be at least 1');
  if (opts.plans.length !== cfg.numBlocks) {
    throw new SamplingError(`a sampling plan needs one entry per block (${cfg.numBlocks}), got ${opts.plans.length}`);
  }
  if (cfg.numClasses > 0) {
    if (!labels || labels.length !== b) throw new SamplingError(`a class-conditional model needs ${b} labels, got ${labels?.length ?? 0}`);
    const bad = labels.find((y) => !Number.isInteger(y) || y < -1 || y >= cfg.numClasses);
    if (bad !== undefined) throw new SamplingError(`class ${bad} is out of range: this model has classes 0..${cfg.numClasses - 1} (−1 = unconditional)`);
  } else if (labels && labels.some((y) => y !== -1)) {
    throw new SamplingError('this model is unconditional: it takes no class labels');
  }
  const g = opts.guidance;
  if (!(g.weight >= 0) || !Number.isFinite(g.weight)) throw new SamplingError(`the guidance weight must be a number ≥ 0, got ${g.weight}`);
  if (!(g.attnTemp > 0)) throw new SamplingError(`the attention temperature must be > 0, got ${g.attnTemp}`);
  if (g.weight > 0 && cfg.numClasses === 0 && g.attnTemp === 1) {
    throw new SamplingError('guidance on an unconditional model needs an attention temperature ≠ 1 for its negative branch (e.g. --attn-temp 0.5)');
  }
  for (const bi of g.blocks ?? []) {
    if (!Number.isInteger(bi) || bi < 0 || bi >= cfg.numBlocks) throw new SamplingError(`guided block ${bi} does not exist (0..${cfg.numBlocks - 1})`);
  }
}
