// Multi-head attention with a free head size and an attention temperature, plus a fixed-size KV
// cache. The cache has static shapes, so decoding any position reuses one compiled step: new keys
// are written through a one-hot matrix and later slots are masked, never sliced or concatenated.
import { np, jnn, materialize, type Arr, type Rng } from '../engine/index.js';
import { linear, initLinear, type Linear } from './layers.js';

export type Attention = { qkv: Linear; proj: Linear };
export type AttentionShape = { heads: number; headDim: number };
/** Keys and values per layer, [B, heads, S, headDim]. */
export type KvCache = { k: Arr; v: Arr };

export function initAttention(rng: Rng, width: number, s: AttentionShape, opts: { bias?: boolean } = {}): Attention {
  const inner = s.heads * s.headDim;
  return { qkv: initLinear(rng.fork(0), width, 3 * inner, opts), proj: initLinear(rng.fork(1), inner, width, opts) };
}

/** Key slots for `n` positions: a multiple of 4, because jax-js's wasm backend vectorises a
 * reduction or an output axis only at multiples of 4. With MNIST's 49 tokens, unpadded keys made
 * the attention kernels run scalar (~7× slower); the extra slots are always masked out. */
export function keySlots(n: number): number {
  return Math.ceil(n / 4) * 4;
}

/**
 * q, k, v as [B, heads, L, headDim] (k and v zero-padded to `slots` positions); the qkv features
 * are ordered [q heads | k heads | v heads]. Three matmuls on column slices of the weight:
 * splitting one projection's output instead makes the backward sum three padded copies of the
 * full qkv gradient (~10% of an attention layer). Materialised, padding included: a pad left as
 * a view is read with bounds checks, which also runs scalar.
 */
function projectQkv(p: Attention, x: Arr, s: AttentionShape, slots: number): [Arr, Arr, Arr] {
  const [b, l] = x.shape as [number, number, number];
  const inner = s.heads * s.headDim;
  const part = (i: number, input: Arr, to: number): Arr => {
    const w = p.qkv.w.ref.slice([], [i * inner, (i + 1) * inner]);
    const bias = p.qkv.b?.ref.slice([i * inner, (i + 1) * inner]);
    const heads = linear(bias ? { w, b: bias } : { w }, input).reshape([b, l, s.heads, s.headDim]).transpose([0, 2, 1, 3]);
    return materialize(to === l ? heads : np.pad(heads, [[0, 0], [0, 0], [0, to - l], [0, 0]]));
  };
  const out: [Arr, Arr, Arr] = [part(0, x.ref, l), part(1, x.ref, slots), part(2, x, slots)];
  p.qkv.w.dispose();
  p.qkv.b?.dispose();
  return out;
}

/**
 * Softmax attention of q over (k, v), with logits scaled by 1/(sqrt(d)·temp). `temp` may be an
 * array broadcastable to [B, 1, 1, 1], so rows of one batch can use different temperatures.
 * `mask` [L, S] says which key slots each query sees.
 */
function attend(q: Arr, k: Arr, v: Arr, mask: Arr, temp: number | Arr, headDim: number): Arr {
  // Batched matmuls run faster over one merged batch axis than over (B, heads) on wasm (~16%).
  const [b, h, l, d] = q.shape as [number, number, number, number];
  const s = k.shape[2]!;
  const kT = np.swapaxes(k.reshape([b * h, s, d]), -1, -2);
  let logits = np.matmul(q.reshape([b * h, l, d]), kT).reshape([b, h, l, s]).mul(1 / Math.sqrt(headDim));
  if (typeof temp !== 'number' || temp !== 1) logits = logits.div(temp);
  const probs = jnn.softmax(np.where(mask, logits, -Infinity), -1);
  return np.matmul(probs.reshape([b * h, l, s]), v.reshape([b * h, s, d])).reshape([b, h, l, d]);
}

/** [B, heads, L, d] → [B, L, heads·d], materialised for the output projection's matmul. */
function mergeHeads(o: Arr): Arr {
  const [b, h, l, d] = o.shape as [number, number, number, number];
  return materialize(o.transpose([0, 2, 1, 3]).reshape([b, l, h * d]));
}

/** Causal self-attention over a whole sequence (token i sees tokens ≤ i). */
export function causalSelfAttention(p: Attention, x: Arr, s: AttentionShape, temp: number | Arr = 1): Arr {
  const t = x.shape[1]!;
  const slots = keySlots(t);
  const [q, k, v] = projectQkv(p, x, s, slots);
  const mask = np.tri(t, slots, 0, { dtype: np.bool }); // padded slots lie above the diagonal
  return linear(p.proj, mergeHeads(attend(q, k, v, mask, temp, s.headDim)));
}

/** A cache for `length` positions, allocated at keySlots(length) (the extra slots stay masked). */
export function emptyKvCache(batch: number, length: number, s: AttentionShape): KvCache {
  const slots = keySlots(length);
  return { k: np.zeros([batch, s.heads, slots, s.headDim]), v: np.zeros([batch, s.heads, slots, s.headDim]) };
}

/**
 * Attention for L new tokens at positions start..start+L-1 (`start`: int32 scalar array), given a
 * cache holding earlier positions. Returns the output and the cache with the new keys written.
 * New token i sees cache slots ≤ start+i; slots beyond are masked, so stale values never leak.
 */
export function cachedSelfAttention(
  p: Attention,
  x: Arr,
  cache: KvCache,
  start: Arr,
  s: AttentionShape,
  temp: number | Arr = 1,
): [Arr, KvCache] {
  const l = x.shape[1]!;
  const size = cache.k.shape[2]!;
  const [q, k, v] = projectQkv(p, x, s, l);
  const positions = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(start); // [L]
  const slots = np.arange(size, undefined, undefined, { dtype: np.int32 });
  // Slots start..start+L−1 take the new keys; a single token broadcasts, a chunk is placed by a
  // one-hot matmul. `where` rewrites the cache in one pass (a mask-multiply-add took 2–3× longer).
  const covered = np.logicalAnd(
    slots.ref.reshape([1, 1, size, 1]).greaterEqual(positions.ref.slice(0)),
    slots.ref.reshape([1, 1, size, 1]).lessEqual(positions.ref.slice(l - 1)),
  );
  const place = (fresh: Arr): Arr => {
    if (l === 1) return fresh;
    const onehot = slots.ref.reshape([size, 1]).equal(positions.ref.reshape([1, l])).astype(np.float32);
    return np.matmul(onehot.reshape([1, 1, size, l]), fresh);
  };
  const newK = np.where(covered.ref, place(k), cache.k);
  const newV = np.where(covered, place(v), cache.v);
  const mask = slots.reshape([1, size]).lessEqual(positions.reshape([l, 1])); // [L, S]
  const out = attend(q, newK.ref, newV.ref, mask, temp, s.headDim);
  return [linear(p.proj, mergeHeads(out)), { k: newK, v: newV }];
}
