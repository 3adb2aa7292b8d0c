// The one chunk step every solver shares, generic over a model's block inverse (models/model.ts:
// FlowSteps). Sampling inverts a block position by position: each output depends on the inputs
// before it. `advance` computes the outputs for sequence positions start+1..start+L and writes
// them into the sequence, in one of two orders:
// - sequential: position by position inside the call, each from the one just produced (exact).
//   Calls over consecutive chunks are the sequential solver; several positions per call save
//   per-call overhead and cache writes.
// - parallel: all L from the current inputs x[start..start+L−1] at once. Calling it repeatedly on
//   the same chunk until x stops changing is Jacobi; chunks solved in order are GS-Jacobi.
// Either way the chunk's keys are written into the KV cache once, at the end of the call.
//
// Everything stays static-shaped (x is [B, S, D] throughout; positions enter as int32 arrays and
// are read or written through one-hot matrices), so each chunk length compiles once.
import { np, cachedJit, keep, type Arr } from '../engine/index.js';
import type { FlowSteps, GuidanceRule } from '../models/model.js';

export type StepSpec = {
  /** Which model's steps (the jit cache keys on it). */
  key: string;
  /** Positions produced per call. */
  chunk: number;
  /** The solver's chunk size: every chunk starts at a multiple of it (the last may be shorter). */
  size: number;
  order: 'sequential' | 'parallel';
  guided: boolean;
  rule: GuidanceRule;
};

export type StepInputs = {
  /** The block's parameters (BlockInverse.params). */
  block: unknown;
  /** Current sequence [B, S, D]; positions ≤ start are final. */
  x: Arr;
  /** Noise [B, S, D] in sequence order. */
  z: Arr;
  /** int32 scalar: the first input position of this chunk. */
  start: Arr;
  cache: unknown;
  /** int32 [rows]: labels (the conditional ones, then −1s, when guided). */
  labels: Arr;
  /** Attention temperature per row, [rows, 1, 1, 1]. */
  temps: Arr;
  /** Guidance weight per produced position, [1, chunk, 1] (zeros when unguided). */
  weights: Arr;
};

export type StepOutputs = {
  x: Arr;
  cache: unknown;
  /**
   * The chunk's change per sample, [2, B]: Σ(new − old)² (row 0) and Σ new² (row 1) over the chunk,
   * from which the solvers form relative changes per sample or per batch.
   */
  change: Arr;
  /** int32 scalar start + L: the next chunk's start, computed here because a scalar made on the
   * host is a lazy constant that jax-js recompiles (expression hashing) on every call. */
  next: Arr;
};

/** [1, L, S] one-hot rows selecting positions first..first+L−1 (rank 3: jax-js matmul wants equal ranks). */
function positionsOneHot(first: Arr, l: number, s: number): Arr {
  const rows = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(first).reshape([l, 1]);
  return rows.equal(np.arange(s, undefined, undefined, { dtype: np.int32 }).reshape([1, s])).astype(np.float32).reshape([1, l, s]);
}

function advance(steps: FlowSteps, spec: StepSpec, inp: StepInputs): StepOutputs {
  const { chunk: l } = spec;
  const s = inp.x.shape[1]!;
  const how = { guided: spec.guided, rule: spec.rule };
  let callsLeft = spec.order === 'parallel' ? 1 : l;
  // The last call consumes the block's parameters and conditioning; earlier ones take references.
  type Shared = { block: unknown; labels: Arr; temps: Arr };
  const all: Shared = { block: inp.block, labels: inp.labels, temps: inp.temps };
  const shared = (): Shared => (--callsLeft === 0 ? all : (keep(all as never) as Shared));
  const write = positionsOneHot(inp.start.ref.add(1), l, s); // outputs start+1..start+L
  const zChunk = np.matmul(write.ref, inp.z);
  let fresh: Arr; // [B, L, D]
  let recent: unknown;
  if (spec.order === 'parallel') {
    const c = shared();
    const u = np.matmul(positionsOneHot(inp.start.ref, l, s), inp.x.ref);
    const r = steps.invert(c.block, { u, z: zChunk, first: inp.start.ref, cacheEnd: inp.start.ref, cache: inp.cache, labels: c.labels, temps: c.temps, weights: inp.weights }, how);
    fresh = r.x;
    recent = r.recent;
  } else {
    let u = np.matmul(positionsOneHot(inp.start.ref, 1, s), inp.x.ref);
    const rows = (inp.labels.shape[0] as number);
    let pending = steps.emptyPending(rows, spec.size);
    const outs: Arr[] = [];
    for (let i = 0; i < l; i++) {
      const c = shared();
      const io = { u, z: zChunk.ref.slice([], [i, i + 1]), first: inp.start.ref.add(i), cacheEnd: inp.start.ref, cache: inp.cache, pending, labels: c.labels, temps: c.temps, weights: inp.weights.ref.slice([], [i, i + 1]) };
      const r = steps.invert(c.block, io, how);
      u = r.x;
      outs.push(u.ref);
      pending = r.recent;
    }
    u.dispose();
    zChunk.dispose();
    inp.weights.dispose();
    fresh = l === 1 ? outs[0]! : np.concatenate(outs, 1);
    recent = pending;
  }
  const cache = steps.commit(inp.cache, recent, inp.start.ref, spec.size);
  const next = inp.start.add(l);
  const old = np.matmul(write.ref, inp.x.ref);
  const change = np.stack([np.square(fresh.ref.sub(old)).sum([1, 2]), np.square(fresh.ref).sum([1, 2])]);
  // Scatter the chunk back into positions start+1..start+L (one `where` pass over x).
  const covered = write.ref.sum(1).reshape([1, s, 1]).greater(0);
  const placed = l === 1 ? (write.dispose(), fresh) : np.matmul(write.transpose([0, 2, 1]), fresh);
  const x = np.where(covered, placed, inp.x);
  return { x, cache, change, next };
}

/** The jitted step for a model's steps and a spec (compiled once per spec and input shape, then cached). */
export function stepFunction(steps: FlowSteps, spec: StepSpec): (inp: StepInputs) => StepOutputs {
  return cachedJit(`flow-step:${JSON.stringify(spec)}`, () => (inp: StepInputs) => advance(steps, spec, inp));
}
