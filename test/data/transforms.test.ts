import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ImageDataset } from '../../src/data/dataset.js';
import { Rng } from '../../src/engine/rng.js';
import { addGaussianNoise, BatchSampler, dropLabels, makeBatch, parseDataSpec, uniformDequantize } from '../../src/data/transforms.js';

// 40 images, 2x3x4, with pixel value depending on (image, channel, row, col).
function toyDataset(): ImageDataset {
  const n = 40;
  const images = new Uint8Array(n * 24);
  for (let i = 0; i < images.length; i++) images[i] = (i * 7) % 256;
  images[0] = 0;
  images[1] = 255;
  return { images, labels: Int32Array.from({ length: n }, (_, i) => i % 5), n, channels: 2, height: 3, width: 4, numClasses: 5 };
}

test('makeBatch maps bytes to [-1, 1] as u8/255*2-1 and gathers labels', () => {
  const ds = toyDataset();
  const { x, y } = makeBatch(ds, [0, 7, 3]);
  assert.equal(x.length, 3 * 24);
  assert.deepEqual([...y], [0, 2, 3]);
  assert.equal(x[0], -1);
  assert.equal(x[1], 1);
  for (let k = 0; k < 24; k++) assert.ok(Math.abs(x[24 + k]! - ((ds.images[7 * 24 + k]! / 255) * 2 - 1)) < 1e-7);
  assert.ok(x.every((v) => v >= -1 && v <= 1));
  assert.throws(() => makeBatch(ds, [40]), /index 40 out of range/);
  assert.throws(() => makeBatch(ds, [0], { flip: true }), /flip needs an rng/);
});

test('flip mirrors whole images left-right, about half of them, deterministically', () => {
  const ds = toyDataset();
  const idx = Array.from({ length: 40 }, (_, i) => i);
  const plain = makeBatch(ds, idx).x;
  const a = makeBatch(ds, idx, { flip: true, rng: new Rng(11) }).x;
  assert.deepEqual(a, makeBatch(ds, idx, { flip: true, rng: new Rng(11) }).x);
  let flipped = 0;
  for (let i = 0; i < 40; i++) {
    const same = a.subarray(i * 24, (i + 1) * 24).every((v, k) => v === plain[i * 24 + k]);
    const mirrored = a.subarray(i * 24, (i + 1) * 24).every((v, k) => v === plain[i * 24 + k - (k % 4) + 3 - (k % 4)]);
    assert.ok(same !== mirrored, `image ${i} is neither unchanged nor mirrored`);
    if (mirrored) flipped++;
  }
  assert.ok(flipped > 10 && flipped < 30, `flipped ${flipped}/40`);
});

test('addGaussianNoise has the requested sigma and is seeded', () => {
  const x = new Float32Array(100_000).fill(0.25);
  const noisy = addGaussianNoise(x, 0.1, new Rng(5));
  assert.deepEqual(noisy, addGaussianNoise(x, 0.1, new Rng(5)));
  assert.equal(x[0], 0.25, 'input untouched');
  let s = 0;
  let s2 = 0;
  for (const v of noisy) {
    s += v - 0.25;
    s2 += (v - 0.25) ** 2;
  }
  assert.ok(Math.abs(s / x.length) < 2e-3);
  assert.ok(Math.abs(Math.sqrt(s2 / x.length) - 0.1) < 2e-3);
});

test('uniformDequantize stays in its byte bin, in [-1, 1), with mean at the bin centre', () => {
  const ds = toyDataset();
  const { x } = makeBatch(ds, Array.from({ length: 40 }, (_, i) => i));
  const reps = 50;
  const big = new Float32Array(x.length * reps);
  for (let r = 0; r < reps; r++) big.set(x, r * x.length);
  const d = uniformDequantize(big, new Rng(2));
  assert.deepEqual(d, uniformDequantize(big, new Rng(2)));
  let meanErr = 0;
  for (let i = 0; i < d.length; i++) {
    const k = ds.images[i % x.length]!;
    const v = d[i]!;
    assert.ok(v >= -1 && v < 1);
    const u = ((v + 1) * 256) / 2 - k;
    assert.ok(u >= -1e-4 && u < 1 + 1e-4, `offset ${u} for byte ${k}`);
    meanErr += u - 0.5;
  }
  assert.ok(Math.abs(meanErr / d.length) < 0.01);
  const extremes = uniformDequantize(new Float32Array([-1, 1]), new Rng(0));
  assert.ok(extremes[0]! >= -1 && extremes[0]! < -1 + 2 / 256);
  assert.ok(extremes[1]! >= 1 - 2 / 256 && extremes[1]! < 1);
});

test('dropLabels drops about p of the labels to -1, seeded', () => {
  const y = Int32Array.from({ length: 20_000 }, (_, i) => i % 10);
  const d = dropLabels(y, 0.1, new Rng(8));
  assert.deepEqual(d, dropLabels(y, 0.1, new Rng(8)));
  let dropped = 0;
  d.forEach((v, i) => {
    if (v === -1) dropped++;
    else assert.equal(v, y[i]);
  });
  assert.ok(Math.abs(dropped / y.length - 0.1) < 0.01, `rate ${dropped / y.length}`);
  assert.ok(dropLabels(y, 0, new Rng(1)).every((v, i) => v === y[i]));
  assert.ok(dropLabels(y, 1, new Rng(1)).every((v) => v === -1));
  assert.throws(() => dropLabels(y, 1.5, new Rng(1)), /p must be in \[0, 1\]/);
});

test('BatchSampler is a pure function of (seed, step)', () => {
  const a = new BatchSampler(103, 10, 123);
  const b = new BatchSampler(103, 10, 123);
  const steps = [0, 5, 9, 10, 11, 57, 3, 0];
  const fromA = steps.map((s) => [...a.batchIndices(s)]);
  // Query b in another order: caching must not leak into results.
  const fromB = [...steps].reverse().map((s) => [...b.batchIndices(s)]).reverse();
  assert.deepEqual(fromA, fromB);
  assert.notDeepEqual([...new BatchSampler(103, 10, 124).batchIndices(0)], fromA[0]);
  assert.equal(a.batchesPerEpoch, 10);
  assert.equal(a.epochOf(9), 0);
  assert.equal(a.epochOf(10), 1);
});

test('BatchSampler covers each index at most once per epoch, dropping the tail', () => {
  const s = new BatchSampler(103, 10, 1);
  for (const epoch of [0, 1, 2]) {
    const seen = new Uint8Array(103);
    for (let k = 0; k < s.batchesPerEpoch; k++) {
      const idx = s.batchIndices(epoch * s.batchesPerEpoch + k);
      assert.equal(idx.length, 10);
      for (const i of idx) seen[i]!++;
    }
    assert.ok(seen.every((c) => c <= 1));
    assert.equal(seen.reduce((p, c) => p + c, 0), 100);
  }
  const exact = new BatchSampler(40, 8, 3);
  const all = new Uint8Array(40);
  for (let k = 0; k < 5; k++) for (const i of exact.batchIndices(k)) all[i]!++;
  assert.ok(all.every((c) => c === 1), 'n divisible by B: every index exactly once');
  assert.notDeepEqual([...exact.batchIndices(0)], [...exact.batchIndices(5)], 'reshuffled next epoch');
  assert.throws(() => new BatchSampler(5, 8, 0), /smaller than batch size/);
  assert.throws(() => s.batchIndices(-1), /non-negative integer/);
});

test('parseDataSpec', () => {
  assert.deepEqual(parseDataSpec('mnist:train'), { kind: 'mnist', split: 'train' });
  assert.deepEqual(parseDataSpec('mnist'), { kind: 'mnist', split: 'train' });
  assert.deepEqual(parseDataSpec('mnist:test'), { kind: 'mnist', split: 'test' });
  assert.deepEqual(parseDataSpec('folder:/data/faces'), { kind: 'folder', dir: '/data/faces' });
  assert.deepEqual(parseDataSpec('/data/faces'), { kind: 'folder', dir: '/data/faces' });
  assert.deepEqual(parseDataSpec('./imgs'), { kind: 'folder', dir: './imgs' });
  assert.deepEqual(parseDataSpec('C:\\imgs'), { kind: 'folder', dir: 'C:\\imgs' });
  assert.deepEqual(parseDataSpec('fashion-mnist'), { kind: 'fashion-mnist', split: 'train' });
  assert.deepEqual(parseDataSpec('fashion-mnist:test'), { kind: 'fashion-mnist', split: 'test' });
  assert.throws(() => parseDataSpec('mnist:val'), /unknown split .* mnist:train or mnist:test/);
  assert.throws(() => parseDataSpec('fashion-mnist:val'), /fashion-mnist:train or fashion-mnist:test/);
  assert.throws(() => parseDataSpec('cifar:train'), /unknown data source 'cifar:'/);
  assert.throws(() => parseDataSpec('folder:'), /names no folder/);
  assert.throws(() => parseDataSpec('  '), /empty/);
});
