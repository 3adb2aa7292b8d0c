// KV-cached decoding against full causal attention, with a head size other than 64 and a
// temperature ≠ 1; and the static-shape promise: one compiled step serves every position.
// Two ways of feeding a chunk: all its tokens at once, or one at a time with the keys not yet
// committed passed along as `pending` (the sequential solver); both commit once per chunk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { np, fromF32, fromI32, toF32, jit, keep, normalArray, Rng, type Arr } from '../../src/engine/index.js';
import { causalSelfAttention, cachedSelfAttention, commitKv, emptyPendingKv, initAttention, type Attention, type AttentionShape, type KvCache, type PendingKv } from '../../src/nn/attention.js';

const shape: AttentionShape = { heads: 3, headDim: 5 };
const WIDTH = 12;
const B = 2;
const T = 7;
const TEMP = 0.6;

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Columns [from, to) of [B, T, C] host data. */
function tokens(x: Float32Array, from: number, to: number): Float32Array {
  const out = new Float32Array(B * (to - from) * WIDTH);
  for (let b = 0; b < B; b++) out.set(x.subarray((b * T + from) * WIDTH, (b * T + to) * WIDTH), b * (to - from) * WIDTH);
  return out;
}

async function setup() {
  const params = initAttention(new Rng(11), WIDTH, shape);
  const x = await toF32(normalArray(new Rng(12), [B, T, WIDTH]));
  const full = await toF32(causalSelfAttention(keep(params), fromF32(x, [B, T, WIDTH]), shape, TEMP));
  // Stale garbage in the cache: masking, not zeros, must keep it out.
  const garbage = (shape4: number[]) => normalArray(new Rng(13), shape4, 5);
  const cache = { kT: garbage([B, shape.heads, shape.headDim, T]), v: garbage([B, shape.heads, T, shape.headDim]) };
  return { params, x, full, cache };
}

/**
 * A jitted decoding step for a chunk that counts how often its body runs (once per trace). With
 * `oneByOne`, the chunk's tokens go through one at a time, each seeing the earlier ones as pending.
 * Chunks start at multiples of `size`, as the solvers cut them.
 */
function countingStep(oneByOne: boolean, size: number) {
  let traces = 0;
  const step = jit((p: Attention, x: Arr, kT: Arr, v: Arr, start: Arr) => {
    traces++;
    const l = x.shape[1]!;
    const cache = (): KvCache => ({ kT: kT.ref, v: v.ref });
    let out: Arr;
    let recent: PendingKv;
    if (!oneByOne) [out, recent] = cachedSelfAttention(p, x, cache(), start.ref, shape, TEMP);
    else {
      recent = emptyPendingKv(B, size, shape);
      const outs: Arr[] = [];
      for (let i = 0; i < l; i++) {
        const [o, r] = cachedSelfAttention(i === l - 1 ? p : keep(p), x.ref.slice([], [i, i + 1]), cache(), start.ref, shape, TEMP, recent);
        outs.push(o);
        recent = r;
      }
      x.dispose();
      out = np.concatenate(outs, 1);
    }
    const next = commitKv({ kT, v }, recent, start, size);
    return { out, kT: next.kT, v: next.v };
  });
  return { step, traces: () => traces };
}

/** Decodes the sequence in chunks of the given lengths; returns outputs [B, T, C] and the cache. */
async function decode(chunks: number[], oneByOne = false) {
  const { params, x, full, cache } = await setup();
  const { step, traces } = countingStep(oneByOne, chunks[0]!);
  let { kT, v } = cache;
  const out = new Float32Array(B * T * WIDTH);
  let pos = 0;
  for (const l of chunks) {
    const r = step(keep(params), fromF32(tokens(x, pos, pos + l), [B, l, WIDTH]), kT, v, fromI32([pos], []));
    kT = r.kT;
    v = r.v;
    const o = await toF32(r.out);
    for (let b = 0; b < B; b++) out.set(o.subarray(b * l * WIDTH, (b + 1) * l * WIDTH), (b * T + pos) * WIDTH);
    pos += l;
  }
  assert.equal(pos, T);
  step.dispose();
  const result = { out, full, kT: await toF32(kT), v: await toF32(v), traces: traces() };
  for (const leaf of [params.qkv.w, params.qkv.b!, params.proj.w, params.proj.b!]) leaf.dispose();
  return result;
}

test('one token at a time (L = 1) equals full causal attention; one compilation for 7 positions', async (t) => {
  const r = await decode([1, 1, 1, 1, 1, 1, 1]);
  const err = maxAbsDiff(r.out, r.full);
  t.diagnostic(`max |cached − full| = ${err.toExponential(2)}; the step body ran ${r.traces} time(s)`);
  assert.ok(err < 1e-5, `cached decoding differs by ${err}`);
  assert.ok(r.traces <= 2, `the step was traced ${r.traces} times for 7 positions`);
  assert.equal(r.traces, 1);
});

test('chunks (L = 4 then L = 3) equal full attention and leave the same cache as L = 1', async (t) => {
  const r = await decode([4, 3]);
  const err = maxAbsDiff(r.out, r.full);
  t.diagnostic(`max |cached − full| = ${err.toExponential(2)}; ${r.traces} compilations (two chunk shapes)`);
  assert.ok(err < 1e-5, `chunked decoding differs by ${err}`);
  assert.equal(r.traces, 2);
  const one = await decode([1, 1, 1, 1, 1, 1, 1]);
  assert.ok(maxAbsDiff(r.kT, one.kT) < 1e-6 && maxAbsDiff(r.v, one.v) < 1e-6);
});

test('chunks of 3 (3, 3, 1) also match', async () => {
  const r = await decode([3, 3, 1]);
  assert.ok(maxAbsDiff(r.out, r.full) < 1e-5);
});

test('one token at a time inside each call (chunks 4, 3 with pending keys) matches and leaves the same cache', async (t) => {
  const r = await decode([4, 3], true);
  const err = maxAbsDiff(r.out, r.full);
  t.diagnostic(`max |cached − full| = ${err.toExponential(2)}; ${r.traces} compilations`);
  assert.ok(err < 1e-5, `decoding with pending keys differs by ${err}`);
  assert.equal(r.traces, 2);
  const one = await decode([1, 1, 1, 1, 1, 1, 1]);
  assert.ok(maxAbsDiff(r.kT, one.kT) < 1e-6 && maxAbsDiff(r.v, one.v) < 1e-6);
});
