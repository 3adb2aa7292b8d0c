// Multi-head attention with a free head size and an attention temperature, plus a fixed-size KV
// cache. The cache has static shapes, so decoding any position reuses one compiled step: slots at
// or after the cache's end are masked, never sliced, and a chunk's keys are written in one pass
// once per solver call.
import { np, jnn, materialize, type Arr, type Rng } from '../engine/index.js';
import { linear, initLinear, initNorm, rmsNorm, type Linear, type Norm } from './layers.js';
import { applyRope } from './rope.js';

export type Attention = {
  qkv: Linear;
  proj: Linear;
  /** qk-norm: RMSNorm ((1 + g), eps 1e-6) over each query and key head, before rotation. */
  qNorm?: Norm;
  kNorm?: Norm;
};
/** `kvHeads` < heads: grouped-query attention, query head h reads key/value head ⌊h·kvHeads/heads⌋. */
export type AttentionShape = { heads: number; headDim: number; kvHeads?: number };
/** Keys transposed, [B, kvHeads, headDim, S], and values, [B, kvHeads, S, headDim], per layer. */
export type KvCache = { kT: Arr; v: Arr };
/** A chunk's keys and values not yet in the cache, in N slots of which the first `filled` are set. */
export type PendingKv = KvCache & { filled: number };
/** Rotary tables for the new tokens' positions, cos and sin [L, headDim] (nn/rope.ts). */
export type Rotation = { cos: Arr; sin: Arr };

const kvHeadsOf = (s: AttentionShape) => s.kvHeads ?? s.heads;

export function initAttention(rng: Rng, width: number, s: AttentionShape, opts: { bias?: boolean; qkNorm?: boolean } = {}): Attention {
  const inner = s.heads * s.headDim;
  const kv = kvHeadsOf(s) * s.headDim;
  const p: Attention = { qkv: initLinear(rng.fork(0), width, inner + 2 * kv, opts), proj: initLinear(rng.fork(1), inner, width, opts) };
  if (opts.qkNorm) {
    p.qNorm = initNorm(s.headDim, { bias: false, zero: true });
    p.kNorm = initNorm(s.headDim, { bias: false, zero: true });
  }
  return p;
}

/** Key slots for `n` positions: a multiple of 4, because jax-js's wasm backend vectorises a
 * reduction or an output axis only at multiples of 4. With MNIST's 49 tokens, unpadded keys made
 * the attention kernels run scalar (~7× slower); the extra slots are always masked out. */
export function keySlots(n: number, chunk = 1): number {
  // Chunks of ≤ 16 tokens written at multiples of their size also tile the slots (commitKv).
  const m = chunk % 4 === 0 && chunk <= 16 ? chunk : 4;
  return Math.ceil(n / m) * m;
}

/**
 * q and v as [B, heads, L, headDim], keys transposed as [B, heads, headDim, L] (k and v
 * zero-padded to `slots` positions); the qkv features are ordered [q heads | k heads | v heads].
 * Keys are stored transposed so the logits kernel's output axis (key slots) is contiguous, the
 * layout jax-js's wasm kernels vectorise along. Three matmuls on column slices of the weight:
 * splitting one projection's output instead makes the backward sum three padded copies of the
 * full qkv gradient (~10% of an attention layer). Materialised, padding included: a pad left as
 * a view is read with bounds checks, which also runs scalar.
 */
function projectQkv(p: Attention, x: Arr, s: AttentionShape, slots: number, rot?: Rotation): [Arr, Arr, Arr] {
  const [b, l] = x.shape as [number, number, number];
  const sizes = [s.heads, kvHeadsOf(s), kvHeadsOf(s)].map((h) => h * s.headDim);
  const starts = [0, sizes[0]!, sizes[0]! + sizes[1]!];
  const part = (i: number, input: Arr, to: number, transposed = false, norm?: Norm): Arr => {
    const [from, n] = [starts[i]!, sizes[i]!];
    const w = p.qkv.w.ref.slice([], [from, from + n]);
    const bias = p.qkv.b?.ref.slice([from, from + n]);
    let heads = linear(bias ? { w, b: bias } : { w }, input).reshape([b, l, n / s.headDim, s.headDim]);
    if (norm) heads = rmsNorm(norm, heads, 1e-6, 1);
    if (rot && i < 2) {
      heads = applyRope(heads.transpose([0, 2, 1, 3]), rot.cos.ref, rot.sin.ref);
      if (transposed) heads = heads.transpose([0, 1, 3, 2]);
    } else heads = heads.transpose(transposed ? [0, 2, 3, 1] : [0, 2, 1, 3]);
    if (to === l) return materialize(heads);
    const padding: [number, number][] = [[0, 0], [0, 0], [0, 0], [0, 0]];
    padding[transposed ? 3 : 2] = [0, to - l];
    return materialize(np.pad(heads, padding));
  };
  const out: [Arr, Arr, Arr] = [part(0, x.ref, l, false, p.qNorm), part(1, x.ref, slots, true, p.kNorm), part(2, x, slots)];
  p.qkv.w.dispose();
  p.qkv.b?.dispose(); // the norms' gains were consumed by rmsNorm
  if (rot) {
    rot.cos.dispose();
    rot.sin.dispose();
  }
  return out;
}

/** q scaled by 1/(√d·temp), so the logits q·kᵀ need no scaling pass of their own (q is the smaller). */
function scaledQuery(q: Arr, temp: number | Arr, headDim: number): Arr {
  const qs = q.mul(1 / Math.sqrt(headDim));
  return typeof temp === 'number' ? (temp === 1 ? qs : qs.mul(1 / temp)) : qs.div(temp);
}

/**
 * Logits [B, heads, L, S] from a scaled q [B, heads, L, d] and kᵀ [B, kvHeads, d, S]. The query
 * heads of a group share their key head, so they are stacked along L: one matmul, no repeated keys.
 */
function scores(q: Arr, kT: Arr): Arr {
  // Batched matmuls run faster over one merged batch axis than over (B, heads) on wasm (~16%).
  const [b, h, l, d] = q.shape as [number, number, number, number];
  const [kv, s] = [kT.shape[1]!, kT.shape[3]!];
  return np.matmul(q.reshape([b * kv, (h / kv) * l, d]), kT.reshape([b * kv, d, s])).reshape([b, h, l, s]);
}

/** probs [B, heads, L, S] times values [B, kvHeads, S, d], over one merged batch axis. */
function weighted(probs: Arr, v: Arr): Arr {
  const [b, h, l, s] = probs.shape as [number, number, number, number];
  const [kv, d] = [v.shape[1]!, v.shape[3]!];
  return np.matmul(probs.reshape([b * kv, (h / kv) * l, s]), v.reshape([b * kv, s, d])).reshape([b, h, l, d]);
}

/**
 * Softmax attention of q over (k, v), with logits scaled by 1/(sqrt(d)·temp). `temp` may be an
 * array broadcastable to [B, 1, 1, 1], so rows of one batch can use different temperatures.
 * `mask` [L, S] says which key slots each query sees.
 */
function attend(q: Arr, kT: Arr, v: Arr, mask: Arr, temp: number | Arr, headDim: number): Arr {
  return weighted(jnn.softmax(np.where(mask, scores(scaledQuery(q, temp, headDim), kT), -Infinity), -1), v);
}

/** [B, heads, L, d] → [B, L, heads·d], materialised for the output projection's matmul. */
function mergeHeads(o: Arr): Arr {
  const [b, h, l, d] = o.shape as [number, number, number, number];
  return materialize(o.transpose([0, 2, 1, 3]).reshape([b, l, h * d]));
}

/** Causal self-attention over a whole sequence (token i sees tokens ≤ i). */
export function causalSelfAttention(p: Attention, x: Arr, s: AttentionShape, temp: number | Arr = 1, rot?: Rotation): Arr {
  const t = x.shape[1]!;
  const slots = keySlots(t);
  const [q, kT, v] = projectQkv(p, x, s, slots, rot);
  const mask = np.tri(t, slots, 0, { dtype: np.bool }); // padded slots lie above the diagonal
  return linear(p.proj, mergeHeads(attend(q, kT, v, mask, temp, s.headDim)));
}

/** Self-attention where every token sees every token (a text encoder's). */
export function selfAttention(p: Attention, x: Arr, s: AttentionShape): Arr {
  const t = x.shape[1]!;
  const slots = keySlots(t);
  const [q, kT, v] = projectQkv(p, x, s, slots);
  const mask = np.broadcastTo(np.arange(slots).less(t).reshape([1, slots]), [t, slots]); // padded slots (≥ t) masked
  return linear(p.proj, mergeHeads(attend(q, kT, v, mask, 1, s.headDim)));
}

/**
 * Joint attention over several streams of tokens (MM-DiT: text and image), each with its own
 * projections: every token of every stream sees every token. Returns each stream's output.
 */
export function jointSelfAttention(ps: Attention[], xs: Arr[], s: AttentionShape): Arr[] {
  const lens = xs.map((x) => x.shape[1]!);
  const total = lens.reduce((a, b) => a + b, 0);
  const slots = keySlots(total);
  const parts = ps.map((p, i) => projectQkv(p, xs[i]!, s, lens[i]!));
  const pad = (x: Arr, axis: number) => {
    const padding: [number, number][] = [[0, 0], [0, 0], [0, 0], [0, 0]];
    padding[axis] = [0, slots - total];
    return slots === total ? x : materialize(np.pad(x, padding));
  };
  const q = np.concatenate(parts.map((p) => p[0]), 2);
  const kT = pad(np.concatenate(parts.map((p) => p[1]), 3), 3);
  const v = pad(np.concatenate(parts.map((p) => p[2]), 2), 2);
  const mask = np.broadcastTo(np.arange(slots).less(total).reshape([1, slots]), [total, slots]);
  const out = mergeHeads(attend(q, kT, v, mask, 1, s.headDim));
  let at = 0;
  const outs = ps.map((p, i) => {
    const part = out.ref.slice([], [at, at + lens[i]!]);
    at += lens[i]!;
    return linear(p.proj, part);
  });
  out.dispose();
  return outs;
}

/** A cache for `length` positions written in chunks of `chunk` tokens (see keySlots; extra slots stay masked). */
export function emptyKvCache(batch: number, length: number, s: AttentionShape, chunk = 1): KvCache {
  const slots = keySlots(length, chunk);
  const kv = kvHeadsOf(s);
  return { kT: np.zeros([batch, kv, s.headDim, slots]), v: np.zeros([batch, kv, slots, s.headDim]) };
}

/** Room for a chunk of `n` tokens fed one at a time. */
export function emptyPendingKv(batch: number, n: number, s: AttentionShape): PendingKv {
  const kv = kvHeadsOf(s);
  return { kT: np.zeros([batch, kv, s.headDim, n]), v: np.zeros([batch, kv, n, s.headDim]), filled: 0 };
}

/**
 * Attention for L new tokens over a cache and the chunk's keys not yet written to it. The cache
 * holds positions 0..cacheEnd−1 (`cacheEnd`: int32 scalar array; later slots are masked, so stale
 * values never leak); `pending` holds positions cacheEnd.. up to the new tokens (a single new
 * token is then written into its next slot). Token i sees everything before it and itself.
 * `rot`: the new tokens' rotary tables (keys are stored rotated); `prefix`: keys and values every
 * token sees ahead of the cache (a text prefix), consumed.
 *
 * Returns the output and the chunk's keys and values so far; commitKv writes them into the cache.
 * The softmax is split over the two key sets, so decoding a token reads the cache but never
 * copies it: rewriting the whole cache per token cost ~20% of sampling at batch 64 (it is
 * memory-bound), and solvers commit once per call of several tokens. Consumes `cache`.
 */
export function cachedSelfAttention(
  p: Attention,
  x: Arr,
  cache: KvCache,
  cacheEnd: Arr,
  s: AttentionShape,
  temp: number | Arr = 1,
  pending?: PendingKv,
  rot?: Rotation,
  prefix?: KvCache,
): [Arr, PendingKv] {
  const l = x.shape[1]!;
  const size = cache.v.shape[2]!;
  const [q, kT, v] = projectQkv(p, x, s, l, rot);
  let recent: PendingKv;
  if (!pending) recent = { kT, v, filled: l };
  else {
    const n = pending.v.shape[2]!;
    if (l !== 1 || pending.filled >= n) throw new Error(`internal: pending keys take one token at a time into free slots (${pending.filled}/${n} used, ${l} new)`);
    // Blend into the slot with a constant 0/1 mask: a `where` or a concatenation here runs
    // scalar on wasm (masks from int `equal`, bounds-checked pads).
    const slot = np.array(Float32Array.from({ length: n }, (_, j) => (j === pending.filled ? 1 : 0)));
    const keep = slot.ref.neg().add(1);
    recent = {
      kT: pending.kT.mul(keep.ref).add(kT.mul(slot.ref)),
      v: pending.v.mul(keep.reshape([n, 1])).add(v.mul(slot.reshape([n, 1]))),
      filled: pending.filled + 1,
    };
  }
  const before = recent.filled - l; // pending positions ahead of the new tokens
  const n = recent.v.shape[2]!;
  const qs = scaledQuery(q, temp, s.headDim);
  // An additive mask fuses into the logits matmul; a `where` over the logits was its own kernel.
  const seen = np.arange(size, undefined, undefined, { dtype: np.int32 }).less(cacheEnd);
  const fromCache = scores(qs.ref, cache.kT).add(np.where(seen, 0, -Infinity).reshape([1, size]));
  const causal = np.tri(l, n, before, { dtype: np.bool }); // unfilled slots lie above the diagonal
  const fromRecent = np.where(causal, scores(qs.ref, recent.kT.ref), -Infinity);
  // A prefix (text states encoded once) is seen by every token: a third key set, unmasked.
  const fromPrefix = prefix && scores(qs.ref, prefix.kT);
  let top = np.maximum(fromCache.ref.max(-1, { keepdims: true }), fromRecent.ref.max(-1, { keepdims: true }));
  if (fromPrefix) top = np.maximum(top, fromPrefix.ref.max(-1, { keepdims: true }));
  qs.dispose();
  const eCache = np.exp(fromCache.sub(top.ref));
  const eRecent = np.exp(fromRecent.sub(top.ref));
  let total = eCache.ref.sum(-1, { keepdims: true }).add(eRecent.ref.sum(-1, { keepdims: true }));
  let out = weighted(eCache, cache.v).add(weighted(eRecent, recent.v.ref));
  if (fromPrefix && prefix) {
    const ePrefix = np.exp(fromPrefix.sub(top.ref));
    total = total.add(ePrefix.ref.sum(-1, { keepdims: true }));
    out = out.add(weighted(ePrefix, prefix.v));
  }
  top.dispose();
  out = out.div(total);
  return [linear(p.proj, mergeHeads(out)), recent];
}

/**
 * The cache with `recent` written at positions start..start+filled−1, in one pass over the
 * cache. `start` must be a multiple of `chunk` ≥ recent's slot count (solvers cut blocks into
 * chunks of that many tokens, the last possibly shorter), so slot j of the cache takes recent
 * slot j mod chunk: the recent keys tiled along the slots, with no one-hot matmul (3× slower).
 */
export function commitKv(cache: KvCache, recent: PendingKv, start: Arr, chunk: number): KvCache {
  const size = cache.v.shape[2]!;
  const n = chunk;
  if (recent.v.shape[2]! < n) {
    const extra = n - recent.v.shape[2]!;
    recent = {
      kT: materialize(np.pad(recent.kT, [[0, 0], [0, 0], [0, 0], [0, extra]])),
      v: materialize(np.pad(recent.v, [[0, 0], [0, 0], [0, extra], [0, 0]])),
      filled: recent.filled,
    };
  }
  const reps = Math.ceil(size / n);
  const [b, h, d] = recent.kT.shape as [number, number, number, number];
  const offset = np.arange(size, undefined, undefined, { dtype: np.int32 }).sub(start);
  const covered = np.logicalAnd(offset.ref.greater(-1), offset.less(recent.filled)); // [S]
  const tiledK = np.broadcastTo(recent.kT.reshape([b, h, d, 1, n]), [b, h, d, reps, n]).reshape([b, h, d, reps * n]);
  const tiledV = np.broadcastTo(recent.v.reshape([b, h, 1, n, d]), [b, h, reps, n, d]).reshape([b, h, reps * n, d]);
  const exact = reps * n === size;
  return {
    kT: np.where(covered.ref.reshape([1, 1, 1, size]), exact ? tiledK : tiledK.slice([], [], [], [0, size]), cache.kT),
    v: np.where(covered.reshape([1, 1, size, 1]), exact ? tiledV : tiledV.slice([], [], [0, size]), cache.v),
  };
}
