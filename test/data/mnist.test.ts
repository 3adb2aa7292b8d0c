import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fashionMnistDir, loadMnist, loadMnistLike, mnistFromIdx, parseIdx } from '../../src/data/mnist.js';

function idx(dims: number[], payload: number[], magicType = 0x08): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, (magicType << 8) | dims.length, false);
  dims.forEach((d, i) => v.setUint32(4 + 4 * i, d, false));
  out.set(payload, 4 + 4 * dims.length);
  return out;
}

test('MNIST train: 60000 labelled 28x28 digits with the usual pixel statistics', async () => {
  const ds = await loadMnist('train');
  assert.equal(ds.n, 60000);
  assert.deepEqual([ds.channels, ds.height, ds.width, ds.numClasses], [1, 28, 28, 10]);
  assert.equal(ds.images.length, 60000 * 784);
  assert.equal(ds.labels.length, 60000);
  const counts = new Array<number>(10).fill(0);
  for (const y of ds.labels) {
    assert.ok(y >= 0 && y <= 9);
    counts[y]!++;
  }
  assert.equal(counts[1], 6742);
  assert.equal(ds.labels[0], 5);
  let sum = 0;
  let sum2 = 0;
  for (const p of ds.images) {
    sum += p;
    sum2 += p * p;
  }
  const mean = sum / ds.images.length / 255;
  const std = Math.sqrt(sum2 / ds.images.length / 255 / 255 - mean * mean);
  assert.ok(Math.abs(mean - 0.1307) < 5e-4, `mean ${mean}`);
  assert.ok(Math.abs(std - 0.3081) < 5e-4, `std ${std}`);
  assert.equal(await loadMnist('train'), ds, 'cached per process');
});

test('MNIST test: 10000 digits', async () => {
  const ds = await loadMnist('test');
  assert.equal(ds.n, 10000);
  assert.equal(ds.images.length, 10000 * 784);
  assert.equal(ds.labels[0], 7);
  assert.ok(ds.labels.every((y) => y >= 0 && y <= 9));
});

test('parseIdx reads dims and payload, plain or gzipped', () => {
  const raw = idx([2, 3], [1, 2, 3, 4, 5, 6]);
  for (const bytes of [raw, new Uint8Array(gzipSync(raw))]) {
    const a = parseIdx(bytes);
    assert.deepEqual(a.dims, [2, 3]);
    assert.deepEqual([...a.data], [1, 2, 3, 4, 5, 6]);
    assert.equal(a.data.byteOffset, 0);
    assert.equal(a.data.constructor, Uint8Array);
  }
});

test('parseIdx rejects hostile input with clear errors', () => {
  assert.throws(() => parseIdx(new Uint8Array([0, 0]), 'f'), /f: too short/);
  const badMagic = idx([1], [0]);
  badMagic[0] = 0x12;
  assert.throws(() => parseIdx(badMagic, 'f'), /f: bad IDX magic 0x12000801/);
  assert.throws(() => parseIdx(idx([1], [0], 0x0d)), /unsupported IDX element type 0xd/);
  assert.throws(() => parseIdx(idx([4, 4], [1, 2, 3])), /truncated IDX data \(15 bytes, dims \[4, 4\] need 28\)/);
  assert.throws(() => parseIdx(idx([3, 3], []).subarray(0, 8)), /truncated IDX header/);
  assert.throws(() => parseIdx(idx([2], [1, 2, 3])), /1 unexpected trailing bytes/);
  assert.throws(() => parseIdx(new Uint8Array([0x1f, 0x8b, 1, 2, 3]), 'g'), /g: corrupt gzip stream/);
  // Huge declared dims must fail on size, not allocate.
  assert.throws(() => parseIdx(idx([0xffffffff, 0xffffffff], [])), /truncated IDX data/);
});

test('mnistFromIdx validates shapes and labels', () => {
  const images = parseIdx(idx([2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7]));
  assert.throws(() => mnistFromIdx(images, parseIdx(idx([3], [1, 2, 3]))), /labels must have dims \[2\]/);
  assert.throws(() => mnistFromIdx(images, parseIdx(idx([2], [1, 10]))), /label 10 at index 1 is outside 0..9/);
  assert.throws(() => mnistFromIdx(parseIdx(idx([8], [0, 1, 2, 3, 4, 5, 6, 7])), images), /images must have 3 dims/);
  const ds = mnistFromIdx(images, parseIdx(idx([2], [3, 9])));
  assert.deepEqual([ds.n, ds.height, ds.width], [2, 2, 2]);
  assert.deepEqual([...ds.labels], [3, 9]);
});

test('Fashion-MNIST: read from a directory of gzipped IDX files, with its class names', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fashion-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const pixels = Array.from({ length: 3 * 28 * 28 }, (_, i) => i % 256);
  writeFileSync(path.join(dir, 't10k-images-idx3-ubyte.gz'), gzipSync(idx([3, 28, 28], pixels)));
  writeFileSync(path.join(dir, 't10k-labels-idx1-ubyte.gz'), gzipSync(idx([3], [0, 9, 8], 0x08)));
  const saved = process.env.STARFLOW_FASHION_MNIST_DIR;
  process.env.STARFLOW_FASHION_MNIST_DIR = dir;
  t.after(() => (saved === undefined ? delete process.env.STARFLOW_FASHION_MNIST_DIR : (process.env.STARFLOW_FASHION_MNIST_DIR = saved)));
  const ds = await loadMnistLike('fashion-mnist', 'test');
  assert.equal(ds.n, 3);
  assert.deepEqual([...ds.labels], [0, 9, 8]);
  assert.deepEqual([ds.classNames?.[0], ds.classNames?.[9]], ['T-shirt/top', 'Ankle boot']);
  assert.deepEqual([...ds.images.subarray(0, 4)], [0, 1, 2, 3]);
  // The train split is missing here: the error names the file and how to install the data.
  await assert.rejects(loadMnistLike('fashion-mnist', 'train'), /Fashion-MNIST: file not found: .*train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist/);
});

test('Fashion-MNIST from Debian\'s dataset-fashion-mnist, when installed: 60000 + 10000 balanced classes', { skip: !existsSync(path.join(fashionMnistDir(), 'train-images-idx3-ubyte.gz')) && 'dataset-fashion-mnist is not installed' }, async () => {
  const train = await loadMnistLike('fashion-mnist', 'train');
  const test = await loadMnistLike('fashion-mnist', 'test');
  assert.deepEqual([train.n, test.n, train.height, train.width], [60000, 10000, 28, 28]);
  const counts = new Array<number>(10).fill(0);
  for (const y of train.labels) counts[y]!++;
  assert.deepEqual(counts, new Array(10).fill(6000));
});
