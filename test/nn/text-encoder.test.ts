// The text encoder: every token sees every other (a later word changes an earlier word's state),
// rows of a batch are independent, and shapes are checked with clear messages.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import '../setup.js';
import { fromI32, toF32, keep } from '../../src/engine/index.js';
import { Rng } from '../../src/engine/rng.js';
import { checkTextEncoderShape, encodeText, initTextEncoder, type TextEncoderShape } from '../../src/nn/text-encoder.js';

const s: TextEncoderShape = { vocabSize: 9, maxTokens: 4, width: 16, layers: 2, heads: 2 };
const p = initTextEncoder(new Rng(1), s);

test('states: bidirectional, per row, [B, L, width]', async () => {
  const ids = fromI32([3, 5, 0, 0, 3, 5, 7, 0, 3, 5, 0, 0], [3, 4]);
  const out = encodeText(keep(p), s, ids);
  assert.deepEqual(out.shape, [3, 4, 16]);
  const h = await toF32(out);
  const row = (b: number, t: number) => h.subarray((b * 4 + t) * 16, (b * 4 + t + 1) * 16);
  assert.deepEqual(row(0, 0), row(2, 0), 'the same text, the same states in any row');
  const moved = Math.max(...row(0, 0).map((v, i) => Math.abs(v - row(1, 0)[i]!)));
  assert.ok(moved > 1e-3, `a third word changes the first word's state (by ${moved})`);
  // LayerNorm at the end: each state has mean 0 and unit variance over its features.
  for (const t of [0, 1, 2, 3]) {
    const v = row(1, t);
    const mean = v.reduce((a, b) => a + b, 0) / 16;
    const variance = v.reduce((a, b) => a + (b - mean) ** 2, 0) / 16;
    assert.ok(Math.abs(mean) < 1e-5 && Math.abs(variance - 1) < 1e-3, `state ${t}: mean ${mean}, variance ${variance}`);
  }
});

test('a text of the wrong length, or a malformed shape, is refused', () => {
  assert.throws(() => encodeText(keep(p), s, fromI32([1, 2, 3], [1, 3])), /3 tokens per text, expected 4/);
  const fail = (m: string): never => {
    throw new Error(m);
  };
  assert.throws(() => checkTextEncoderShape({ ...s, width: 15 }, fail), /'width' \(15\) must be a multiple of 'heads' \(2\)/);
  assert.throws(() => checkTextEncoderShape({ ...s, vocabSize: 0 }, fail), /'vocabSize' must be a positive integer, got 0/);
  assert.throws(() => checkTextEncoderShape({ ...s, layers: -1 }, fail), /'layers' must be a non-negative integer/);
  assert.doesNotThrow(() => checkTextEncoderShape(s, fail));
});
