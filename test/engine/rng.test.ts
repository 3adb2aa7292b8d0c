import assert from 'node:assert/strict';
import { test } from 'node:test';
import { epochOrder, Rng } from '../../src/engine/rng.js';

test('same seed gives the same stream, different seeds differ', () => {
  const a = new Rng(42);
  const b = new Rng(42);
  const c = new Rng(43);
  const sa = Array.from({ length: 8 }, () => a.nextU32());
  assert.deepEqual(sa, Array.from({ length: 8 }, () => b.nextU32()));
  assert.notDeepEqual(sa, Array.from({ length: 8 }, () => c.nextU32()));
});

test('seeds above 2^32 are not truncated', () => {
  assert.notEqual(new Rng(2 ** 32 + 5).nextU32(), new Rng(5).nextU32());
});

test('uniform lies in [0, 1) with mean 1/2; normal has mean 0, variance 1', () => {
  const r = new Rng(1);
  const n = 200_000;
  let su = 0;
  let sn = 0;
  let sn2 = 0;
  for (let i = 0; i < n; i++) {
    const u = r.uniform();
    assert.ok(u >= 0 && u < 1);
    su += u;
    const z = r.normal();
    assert.ok(Number.isFinite(z));
    sn += z;
    sn2 += z * z;
  }
  assert.ok(Math.abs(su / n - 0.5) < 0.005);
  assert.ok(Math.abs(sn / n) < 0.01);
  assert.ok(Math.abs(sn2 / n - 1) < 0.02);
});

test('int(n) stays in range and hits every value', () => {
  const r = new Rng(3);
  const counts = new Array<number>(7).fill(0);
  for (let i = 0; i < 7000; i++) counts[r.int(7)]!++;
  for (const c of counts) assert.ok(c > 800 && c < 1200, `count ${c}`);
  assert.throws(() => r.int(0), /bad bound/);
});

test('fork depends on seed and stream only, not on draws from the parent', () => {
  const a = new Rng(9);
  const before = a.fork(5).nextU32();
  for (let i = 0; i < 10; i++) a.nextU32();
  assert.equal(a.fork(5).nextU32(), before);
  assert.notEqual(a.fork(6).nextU32(), before);
  assert.notEqual(new Rng(10).fork(5).nextU32(), before);
});

test('shuffle is a deterministic permutation', () => {
  const x = new Rng(4).shuffle(Array.from({ length: 50 }, (_, i) => i));
  const y = new Rng(4).shuffle(Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(x, y);
  assert.deepEqual([...x].sort((p, q) => p - q), Array.from({ length: 50 }, (_, i) => i));
  assert.notDeepEqual(x, Array.from({ length: 50 }, (_, i) => i));
});

test('epochOrder is a permutation fixed by (seed, epoch)', () => {
  const o = epochOrder(1000, 7, 3);
  assert.deepEqual(o, epochOrder(1000, 7, 3));
  assert.notDeepEqual(o, epochOrder(1000, 7, 4));
  assert.notDeepEqual(o, epochOrder(1000, 8, 3));
  const seen = new Uint8Array(1000);
  for (const i of o) seen[i]!++;
  assert.ok(seen.every((c) => c === 1));
  assert.equal(epochOrder(0, 1, 0).length, 0);
});
