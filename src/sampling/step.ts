// The one block-inverse step every solver shares. Sampling inverts a block token by token:
// x_t = z_t·exp(a_t) + b_t with (a_t, b_t) predicted from x_<t. `advance` computes the outputs
// for positions start+1..start+L and writes them into x, in one of two orders:
// - sequential: token by token inside the call, each from the one just produced (exact). Calls
//   over consecutive chunks are the sequential solver; several tokens per call save per-call
//   overhead and cache writes.
// - parallel: all L from the current inputs x[start..start+L−1] at once. Calling it repeatedly on
//   the same chunk until x stops changing is Jacobi; chunks solved in order are GS-Jacobi.
// Either way the chunk's keys are written into the KV cache once, at the end of the call.
//
// Everything stays static-shaped (x is [B, T, D] throughout; positions enter as int32 arrays and
// are read or written through one-hot matrices), so each chunk length compiles once.
import { np, jit, keep, type Arr } from '../engine/index.js';
import { blockStep, commitBlockCache, emptyBlockPending, type Block, type BlockCache, type BlockPending } from '../models/tarflow.js';
import type { TarFlowConfig } from '../models/config.js';

export type GuidanceRule = 'tarflow' | 'starflow';

/**
 * Combines the conditional and unconditional predictions of log-scale a and shift b.
 * - tarflow: linear extrapolation of a and b separately, a + w(a − a_u), b + w(b − b_u).
 * - starflow: the Gaussian N(μ_c, σ_c²)^(1+w) / N(μ_u, σ_u²)^w, with the precision kept
 *   ≥ 1/σ_c² by clipping σ_c/σ_u at 1.
 * `w` may be an array (per position, for annealed guidance).
 */
export function guide(rule: GuidanceRule, ac: Arr, bc: Arr, au: Arr, bu: Arr, w: Arr): [Arr, Arr] {
  if (rule === 'tarflow') {
    const a = ac.ref.add(ac.sub(au).mul(w.ref));
    const b = bc.ref.add(bc.sub(bu).mul(w));
    return [a, b];
  }
  const ratio = np.minimum(np.exp(ac.ref.sub(au)), 1);
  const s = np.square(ratio);
  const denom = w.ref.add(1).sub(w.ref.mul(s.ref)); // 1 + w − w·s ≥ 1
  const a = ac.sub(np.log(denom.ref).mul(0.5));
  const b = w.ref.add(1).mul(bc).sub(w.mul(s).mul(bu)).div(denom);
  return [a, b];
}

export type StepSpec = {
  cfg: TarFlowConfig;
  /** Tokens produced per call. */
  chunk: number;
  /** The solver's chunk size: every chunk starts at a multiple of it (the last may be shorter). */
  size: number;
  order: 'sequential' | 'parallel';
  guided: boolean;
  rule: GuidanceRule;
};

export type StepInputs = {
  block: Block;
  /** The block's position table in processing order, [T, C]. */
  pos: Arr;
  /** Current tokens [B, T, D] (model order); positions ≤ start are final. */
  x: Arr;
  /** Noise tokens [B, T, D] (model order). */
  z: Arr;
  /** int32 scalar: the first input position of this chunk. */
  start: Arr;
  cache: BlockCache;
  /** int32 [B] (or [2B] when guided: the conditional labels then −1s), or a dummy for unconditional models. */
  labels: Arr;
  /** Attention temperature per row, [B or 2B, 1, 1, 1]. */
  temps: Arr;
  /** Guidance weight per produced token, [1, chunk, 1] (zeros when unguided). */
  weights: Arr;
};

export type StepOutputs = {
  x: Arr;
  cache: BlockCache;
  /** Relative change of the chunk: mean((new − old)²) / mean(new²), a scalar. */
  change: Arr;
  /** int32 scalar start + L: the next chunk's start, computed here because a scalar made on the
   * host is a lazy constant that jax-js recompiles (expression hashing) on every call. */
  next: Arr;
};

/** [1, L, T] one-hot rows selecting positions first..first+L−1 (rank 3: jax-js matmul wants equal ranks). */
function positionsOneHot(first: Arr, l: number, t: number): Arr {
  const rows = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(first).reshape([l, 1]);
  return rows.equal(np.arange(t, undefined, undefined, { dtype: np.int32 }).reshape([1, t])).astype(np.float32).reshape([1, l, t]);
}

function advance(spec: StepSpec, inp: StepInputs): StepOutputs {
  const { cfg, chunk: l } = spec;
  const [batch, t] = inp.x.shape as [number, number, number];
  const labels = cfg.numClasses > 0 ? inp.labels : (inp.labels.dispose(), undefined);
  // One block pass: tokens u (after `pending`) → the guided (a, b) of the tokens one later.
  let passesLeft = spec.order === 'parallel' ? 1 : l;
  const pass = (u: Arr, pending: BlockPending | undefined, w: Arr) => {
    const rows = spec.guided ? np.concatenate([u.ref, u], 0) : u;
    const block = --passesLeft === 0 ? inp.block : keep(inp.block); // the last pass consumes it
    const r = blockStep(block, inp.pos.ref, rows, inp.start.ref, inp.cache, labels?.ref, cfg, inp.temps.ref, pending);
    if (!spec.guided) {
      w.dispose();
      return { ab: [r.a, r.b] as [Arr, Arr], recent: r.recent };
    }
    const half = (v: Arr, i: number) => v.slice([i * batch, (i + 1) * batch]);
    return { ab: guide(spec.rule, half(r.a.ref, 0), half(r.b.ref, 0), half(r.a, 1), half(r.b, 1), w), recent: r.recent };
  };
  const write = positionsOneHot(inp.start.ref.add(1), l, t); // outputs start+1..start+L
  const zChunk = np.matmul(write.ref, inp.z);
  let fresh: Arr; // [B, L, D]
  let recent: BlockPending;
  if (spec.order === 'parallel') {
    const r = pass(np.matmul(positionsOneHot(inp.start.ref, l, t), inp.x.ref), undefined, inp.weights);
    fresh = zChunk.mul(np.exp(r.ab[0])).add(r.ab[1]);
    recent = r.recent;
  } else {
    let u = np.matmul(positionsOneHot(inp.start.ref, 1, t), inp.x.ref);
    let pending = emptyBlockPending(cfg, spec.guided ? 2 * batch : batch, spec.size);
    const outs: Arr[] = [];
    for (let i = 0; i < l; i++) {
      const r = pass(u, pending, inp.weights.ref.slice([], [i, i + 1]));
      u = zChunk.ref.slice([], [i, i + 1]).mul(np.exp(r.ab[0])).add(r.ab[1]);
      outs.push(u.ref);
      pending = r.recent;
    }
    u.dispose();
    zChunk.dispose();
    inp.weights.dispose();
    fresh = l === 1 ? outs[0]! : np.concatenate(outs, 1);
    recent = pending;
  }
  labels?.dispose();
  inp.pos.dispose();
  inp.temps.dispose();
  const cache = commitBlockCache(inp.cache, recent, inp.start.ref, spec.size);
  const next = inp.start.add(l);
  const old = np.matmul(write.ref, inp.x.ref);
  const change = np.square(fresh.ref.sub(old)).mean().div(np.square(fresh.ref).mean().add(1e-12));
  // Scatter the chunk back into positions start+1..start+L (one `where` pass over x).
  const covered = write.ref.sum(1).reshape([1, t, 1]).greater(0);
  const placed = l === 1 ? (write.dispose(), fresh) : np.matmul(write.transpose([0, 2, 1]), fresh);
  const x = np.where(covered, placed, inp.x);
  return { x, cache, change, next };
}

const compiled = new Map<string, (inp: StepInputs) => StepOutputs>();

/** The jitted step for a spec (compiled once per spec and input shape, then cached). */
export function stepFunction(spec: StepSpec): (inp: StepInputs) => StepOutputs {
  const key = JSON.stringify(spec);
  let f = compiled.get(key);
  if (!f) {
    f = jit((inp: StepInputs) => advance(spec, inp)) as unknown as (inp: StepInputs) => StepOutputs;
    compiled.set(key, f);
  }
  return f;
}
