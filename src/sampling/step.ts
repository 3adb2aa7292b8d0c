// The one block-inverse step every solver shares. Sampling inverts a block token by token:
// x_t = z_t·exp(a_t) + b_t with (a_t, b_t) predicted from x_<t. `advance` computes the outputs
// for positions start+1..start+L from the current inputs x[start..start+L−1] and writes them into
// x. With L = 1 and start = 0, 1, … this is the sequential solver; calling it repeatedly on the
// same chunk until x stops changing is Jacobi; chunks solved in order are GS-Jacobi.
//
// Everything stays static-shaped (x is [B, T, D] throughout; positions enter as int32 arrays and
// are read or written through one-hot matrices), so each chunk length compiles once.
import { np, jit, type Arr } from '../engine/index.js';
import { blockStep, type Block, type BlockCache } from '../models/tarflow.js';
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
  const read = positionsOneHot(inp.start.ref, l, t); // inputs start..start+L−1
  const write = positionsOneHot(inp.start.ref.add(1), l, t); // outputs start+1..start+L
  let u = np.matmul(read, inp.x.ref);
  if (spec.guided) u = np.concatenate([u.ref, u], 0);
  const hasLabels = cfg.numClasses > 0;
  const next = inp.start.ref.add(l);
  const { a, b, cache } = blockStep(inp.block, inp.pos, u, inp.start, inp.cache, hasLabels ? inp.labels : (inp.labels.dispose(), undefined), cfg, inp.temps);
  let ab: [Arr, Arr];
  if (spec.guided) {
    const half = (v: Arr, i: number) => v.slice([i * batch, (i + 1) * batch]);
    ab = guide(spec.rule, half(a.ref, 0), half(b.ref, 0), half(a, 1), half(b, 1), inp.weights);
  } else {
    inp.weights.dispose();
    ab = [a, b];
  }
  const zChunk = np.matmul(write.ref, inp.z);
  const fresh = zChunk.mul(np.exp(ab[0])).add(ab[1]); // [B, L, D]
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
