import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { fromF32, fromI32, toF32 } from '../../src/engine/index.js';
import {
  applyRope,
  ropeTables,
  ropeFrequencies,
  ropeImageAndThird,
  rope1d,
  ropeRows,
  sequencePositions,
  gridPositions,
  RopeError,
} from '../../src/nn/rope.js';

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function randomData(n: number, seed: number): Float32Array {
  const r = lcg(seed);
  return Float32Array.from({ length: n }, () => 2 * r());
}

test('frequencies: 1-D is 10000^(−2k/d); STARFlow d=64 splits 12 + 12 (10000^(−2k/24)) + 8 (10000^(−k/8))', () => {
  const f1 = ropeFrequencies(rope1d(8));
  assert.deepEqual([...f1], [0, 1, 2, 3].map((k) => 10000 ** (-(2 * k) / 8)));
  const spec = ropeImageAndThird(64);
  assert.deepEqual(spec.map((a) => a.slots), [12, 12, 8]);
  const f = ropeFrequencies(spec);
  assert.equal(f.length, 32);
  for (let k = 0; k < 12; k++) {
    assert.ok(Math.abs(f[k]! - 10000 ** (-(2 * k) / 24)) < 1e-15);
    assert.ok(Math.abs(f[12 + k]! - 10000 ** (-(2 * k) / 24)) < 1e-15);
  }
  for (let k = 0; k < 8; k++) assert.ok(Math.abs(f[24 + k]! - 10000 ** (-k / 8)) < 1e-15);
  assert.throws(() => rope1d(7), RopeError);
  assert.throws(() => ropeImageAndThird(64, 32), RopeError);
});

test('rotation preserves the norm of every feature pair', async () => {
  const [b, h, t, d] = [2, 3, 6, 8];
  const data = randomData(b * h * t * d, 1);
  const { cos, sin } = ropeTables(sequencePositions(t).map(([p]) => [p! * 3.7]), rope1d(d));
  const y = await toF32(applyRope(fromF32(data, [b, h, t, d]), cos, sin));
  let maxErr = 0;
  for (let i = 0; i < data.length; i += 2) {
    const n0 = Math.hypot(data[i]!, data[i + 1]!);
    const n1 = Math.hypot(y[i]!, y[i + 1]!);
    maxErr = Math.max(maxErr, Math.abs(n0 - n1));
  }
  assert.ok(maxErr < 1e-6, `pair norms differ by ${maxErr}`);
  // Position 0 is the identity.
  for (let i = 0; i < d; i++) assert.ok(Math.abs(y[i]! - data[i]!) < 1e-7);
});

test('1-D: q·k after rope depends only on the position difference', async () => {
  const d = 16;
  const t = 20;
  const q = randomData(d, 2);
  const k = randomData(d, 3);
  // Tokens 0..T−1 all carry q (head 0) and k (head 1): rotate both at every position.
  const data = new Float32Array(2 * t * d);
  for (let i = 0; i < t; i++) {
    data.set(q, i * d);
    data.set(k, (t + i) * d);
  }
  const { cos, sin } = ropeTables(sequencePositions(t), rope1d(d));
  const y = await toF32(applyRope(fromF32(data, [1, 2, t, d]), cos, sin));
  const dot = (m: number, n: number) => {
    let s = 0;
    for (let j = 0; j < d; j++) s += y[m * d + j]! * y[(t + n) * d + j]!;
    return s;
  };
  for (const delta of [0, 1, 3, -2, 7]) {
    const ref = dot(Math.max(delta, 0), Math.max(-delta, 0));
    for (let m = Math.max(delta, 0); m < Math.min(t, t + delta); m += 3) {
      const got = dot(m, m - delta);
      assert.ok(Math.abs(got - ref) < 2e-5 * (1 + Math.abs(ref)), `Δ=${delta}, m=${m}: ${got} vs ${ref}`);
    }
  }
  // ...and does change with the difference.
  assert.ok(Math.abs(dot(5, 5) - dot(5, 2)) > 1e-3);
});

test('2-D + third axis: the slot split matches a hand computation', async () => {
  // d = 16: 8 slots = 2 (row) + 2 (column) + 4 (third).
  // Row and column frequencies: 10000^(−k/2) = [1, 0.01]; third: 10000^(−k/4) = [1, 0.1, 0.01, 0.001].
  const d = 16;
  const spec = ropeImageAndThird(d, 4);
  const freqs = [1, 0.01, 1, 0.01, 1, 0.1, 0.01, 0.001];
  const axisOf = [0, 0, 1, 1, 2, 2, 2, 2];
  const positions = gridPositions(2, 3, 5); // [row, col, 5]
  const t = positions.length;
  const x = randomData(t * d, 4);
  const expected = new Float64Array(t * d);
  for (let i = 0; i < t; i++) {
    for (let s = 0; s < 8; s++) {
      const angle = positions[i]![axisOf[s]!]! * freqs[s]!;
      const a = x[i * d + 2 * s]!;
      const b = x[i * d + 2 * s + 1]!;
      expected[i * d + 2 * s] = a * Math.cos(angle) - b * Math.sin(angle);
      expected[i * d + 2 * s + 1] = a * Math.sin(angle) + b * Math.cos(angle);
    }
  }
  assert.deepEqual(positions[4], [1, 1, 5]);
  const { cos, sin } = ropeTables(positions, spec);
  const y = await toF32(applyRope(fromF32(x, [1, 1, t, d]), cos, sin));
  let maxErr = 0;
  for (let i = 0; i < y.length; i++) maxErr = Math.max(maxErr, Math.abs(y[i]! - expected[i]!));
  assert.ok(maxErr < 1e-6, `max error ${maxErr}`);
  assert.throws(() => ropeTables([[0, 1]], spec), RopeError);
  const wrong = ropeTables(positions, spec);
  assert.throws(() => applyRope(fromF32(new Float32Array(t * 8), [1, 1, t, 8]), wrong.cos, wrong.sin), RopeError);
});

test('ropeRows picks table rows at a dynamic start', async () => {
  const full = ropeTables(sequencePositions(9), rope1d(6));
  const cosAll = await toF32(full.cos.ref);
  const rows = ropeRows(full, fromI32([4], []), 3);
  const cos = await toF32(rows.cos);
  const sin = await toF32(rows.sin);
  assert.deepEqual([...cos], [...cosAll.slice(4 * 3, 7 * 3)]);
  assert.equal(sin.length, 9);
});
