// KV-cached decoding against full causal attention, with a head size other than 64 and a
// temperature ≠ 1; and the static-shape promise: one compiled step serves every position.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { fromF32, fromI32, toF32, jit, keep, normalArray, Rng, type Arr } from '../../src/engine/index.js';
import { causalSelfAttention, cachedSelfAttention, initAttention, type Attention, type AttentionShape } from '../../src/nn/attention.js';

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
  const garbage = () => normalArray(new Rng(13), [B, shape.heads, T, shape.headDim], 5);
  return { params, x, full, cache: { k: garbage(), v: garbage() } };
}

/** A jitted decoding step that counts how often its body runs (once per trace). */
function countingStep() {
  let traces = 0;
  const step = jit((p: Attention, x: Arr, k: Arr, v: Arr, start: Arr) => {
    traces++;
    const [out, cache] = cachedSelfAttention(p, x, { k, v }, start, shape, TEMP);
    return { out, k: cache.k, v: cache.v };
  });
  return { step, traces: () => traces };
}

/** Decodes the sequence in chunks of the given lengths; returns outputs [B, T, C] and the cache. */
async function decode(chunks: number[]) {
  const { params, x, full, cache } = await setup();
  const { step, traces } = countingStep();
  let { k, v } = cache;
  const out = new Float32Array(B * T * WIDTH);
  let pos = 0;
  for (const l of chunks) {
    const r = step(keep(params), fromF32(tokens(x, pos, pos + l), [B, l, WIDTH]), k, v, fromI32([pos], []));
    k = r.k;
    v = r.v;
    const o = await toF32(r.out);
    for (let b = 0; b < B; b++) out.set(o.subarray(b * l * WIDTH, (b + 1) * l * WIDTH), (b * T + pos) * WIDTH);
    pos += l;
  }
  assert.equal(pos, T);
  step.dispose();
  const result = { out, full, k: await toF32(k), v: await toF32(v), traces: traces() };
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

test('chunks (L = 3 then L = 4) equal full attention and leave the same cache as L = 1', async (t) => {
  const r = await decode([3, 4]);
  const err = maxAbsDiff(r.out, r.full);
  t.diagnostic(`max |cached − full| = ${err.toExponential(2)}; ${r.traces} compilations (two chunk shapes)`);
  assert.ok(err < 1e-5, `chunked decoding differs by ${err}`);
  assert.equal(r.traces, 2);
  const one = await decode([1, 1, 1, 1, 1, 1, 1]);
  assert.ok(maxAbsDiff(r.k, one.k) < 1e-6 && maxAbsDiff(r.v, one.v) < 1e-6);
});

test('a mixed schedule (2, 1, 4) also matches', async () => {
  const r = await decode([2, 1, 4]);
  assert.ok(maxAbsDiff(r.out, r.full) < 1e-5);
});
