import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { encode as fastPngEncode } from 'fast-png';
import jpeg from 'jpeg-js';
import { loadImageFolder, resizeShortSideCenterCrop } from '../../src/data/image-folder.js';

let root: string;

function rgbPng(w: number, h: number, pixel: (x: number, y: number) => [number, number, number]): Uint8Array {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data.set(pixel(x, y), (y * w + x) * 3);
  return fastPngEncode({ width: w, height: h, channels: 3, depth: 8, data });
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'starflow-imgfolder-'));
  const ok = join(root, 'ok');
  // 'b_red' sorts after 'a_mixed', so it gets label 1 regardless of creation order.
  await mkdir(join(ok, 'b_red'), { recursive: true });
  await mkdir(join(ok, 'a_mixed'), { recursive: true });
  await mkdir(join(ok, '.hidden'), { recursive: true });
  // 8x4 with 2-pixel-wide stripes: red, green, blue, white → crop keeps green|blue.
  const stripes: [number, number, number][] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
  await writeFile(join(ok, 'a_mixed', '2_stripes.png'), rgbPng(8, 4, (x) => stripes[x >> 1]!));
  // Gray + alpha, fully transparent: composited onto white.
  await writeFile(
    join(ok, 'a_mixed', '1_clear.png'),
    fastPngEncode({ width: 4, height: 4, channels: 2, depth: 8, data: new Uint8Array(32).fill(0) }),
  );
  await writeFile(join(ok, 'a_mixed', 'notes.txt'), 'not an image');
  const jpg = jpeg.encode({ width: 16, height: 16, data: new Uint8Array(16 * 16 * 4).fill(255).map((v, i) => (i % 4 === 0 ? 200 : i % 4 === 3 ? 255 : 40)) }, 100);
  await writeFile(join(ok, 'b_red', 'x.JPG'), jpg.data);
  await mkdir(join(root, 'empty'));
  await mkdir(join(root, 'noimages', 'cls'), { recursive: true });
  await writeFile(join(root, 'noimages', 'cls', 'readme.md'), '#');
  await mkdir(join(root, 'broken', 'cls'), { recursive: true });
  await writeFile(join(root, 'broken', 'cls', 'bad.png'), new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4, 5]));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

test('classes sorted by name, files sorted, RGB resize + centre crop', async () => {
  const ds = await loadImageFolder(join(root, 'ok'), { size: 4, channels: 3 });
  assert.deepEqual(ds.classNames, ['a_mixed', 'b_red']);
  assert.deepEqual([ds.n, ds.channels, ds.height, ds.width, ds.numClasses], [3, 3, 4, 4, 2]);
  assert.deepEqual([...ds.labels], [0, 0, 1]);
  const plane = 16;
  const img = (i: number, ch: number) => [...ds.images.subarray((i * 3 + ch) * plane, (i * 3 + ch + 1) * plane)];
  // 1_clear.png: transparent → white.
  for (let ch = 0; ch < 3; ch++) assert.ok(img(0, ch).every((v) => v === 255));
  // 2_stripes.png: short side is already 4, so the crop takes columns 2..5 unchanged.
  const row = [0, 1, 2, 3].map((x) => [img(1, 0)[x], img(1, 1)[x], img(1, 2)[x]]);
  assert.deepEqual(row, [[0, 255, 0], [0, 255, 0], [0, 0, 255], [0, 0, 255]]);
  // x.JPG: 16x16 → 4x4 of a flat colour stays that colour (JPEG error aside).
  for (const [ch, want] of [[0, 200], [1, 40], [2, 40]] as const) {
    for (const v of img(2, ch)) assert.ok(Math.abs(v - want) <= 3, `channel ${ch}: ${v} vs ${want}`);
  }
});

test('luminance output and antialiased downscaling', async () => {
  const ds = await loadImageFolder(join(root, 'ok'), { size: 2, channels: 1 });
  assert.deepEqual([ds.channels, ds.height, ds.width], [1, 2, 2]);
  // Stripes 8x4 → 4x2, keep resized columns 1..2. Halving widens the triangle
  // filter to 4 source pixels with weights 1/8, 3/8, 3/8, 1/8.
  const [r, g, b, w] = [0.299 * 255, 0.587 * 255, 0.114 * 255, 255];
  const want = [(r + 6 * g + b) / 8, (g + 6 * b + w) / 8].map(Math.round);
  assert.deepEqual([...ds.images.subarray(4, 8)], [...want, ...want]);
});

test('resize is exact on constants, bilinear on upscale and deterministic', () => {
  const flat = resizeShortSideCenterCrop(new Float32Array(30 * 20).fill(77), 30, 20, 1, 7);
  assert.ok(flat.every((v) => Math.abs(v - 77) < 1e-4));
  // 2x1 ramp [0, 100] upscaled to short side 4 → 8x4, crop columns 2..5.
  const up = resizeShortSideCenterCrop(new Float32Array([0, 100]), 2, 1, 1, 4);
  assert.deepEqual([...up.subarray(0, 4)].map((v) => Math.round(v)), [13, 38, 63, 88]);
  assert.deepEqual([...up.subarray(12, 16)], [...up.subarray(0, 4)]);
  const src = Float32Array.from({ length: 13 * 9 * 3 }, (_, i) => (i * 37) % 256);
  assert.deepEqual(resizeShortSideCenterCrop(src, 13, 9, 3, 5), resizeShortSideCenterCrop(src, 13, 9, 3, 5));
});

test('clear errors for bad folders and files', async () => {
  await assert.rejects(loadImageFolder(join(root, 'nope'), { size: 4, channels: 3 }), /^Error: image folder not found: .*nope$/);
  await assert.rejects(loadImageFolder(join(root, 'empty'), { size: 4, channels: 3 }), /image folder has no class subfolders/);
  await assert.rejects(loadImageFolder(join(root, 'noimages'), { size: 4, channels: 3 }), /class 'cls' has no PNG\/JPEG images/);
  await assert.rejects(loadImageFolder(join(root, 'broken'), { size: 4, channels: 3 }), /cannot decode image .*bad\.png: /);
  await assert.rejects(loadImageFolder(join(root, 'ok'), { size: 0, channels: 3 }), /size must be a positive integer/);
});
