import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { encode as fastPngEncode } from 'fast-png';
import { encodeGif, writeGif } from '../../src/io/gif.js';
import { decodePng, encodePng, imageGrid, writePngGrid } from '../../src/io/png.js';

test('imageGrid lays out images with padding and maps [-1, 1] to bytes', () => {
  // 3 gray 2x2 images, 2 per row → 2 rows; padding 1.
  const x = new Float32Array([-1, 1, 0, 2, /**/ -2, -0.5, 0.5, NaN, /**/ 1, 1, 1, 1]);
  const g = imageGrid(x, [3, 1, 2, 2], { nrow: 2, padding: 1, padValue: 9 });
  assert.deepEqual([g.width, g.height, g.channels], [7, 7, 1]);
  const at = (px: number, py: number) => g.data[py * g.width + px];
  assert.deepEqual([at(1, 1), at(2, 1), at(1, 2), at(2, 2)], [0, 255, 128, 255]);
  assert.deepEqual([at(4, 1), at(5, 1), at(4, 2), at(5, 2)], [0, 64, 191, 0]);
  assert.deepEqual([at(1, 4), at(2, 5)], [255, 255]);
  assert.deepEqual([at(0, 0), at(3, 1), at(6, 6), at(4, 4)], [9, 9, 9, 9], 'padding and the empty cell');
  assert.throws(() => imageGrid(x, [3, 3, 2, 2]), /12 values do not match shape \[3, 3, 2, 2\]/);
  assert.throws(() => imageGrid(new Float32Array(8), [1, 2, 2, 2]), /channels must be 1 or 3/);
});

test('RGB grid: channels interleave and defaults match make_grid', () => {
  const x = new Float32Array(3 * 4).fill(-1);
  x.fill(1, 4, 8); // green plane of the single 2x2 image
  const g = imageGrid(x, [1, 3, 2, 2]);
  assert.deepEqual([g.width, g.height, g.channels], [6, 6, 3]);
  const o = (2 * 6 + 2) * 3;
  assert.deepEqual([...g.data.subarray(o, o + 3)], [0, 255, 0]);
  assert.deepEqual([...g.data.subarray(0, 3)], [0, 0, 0]);
});

test('PNG round trip of gray and RGB grids', () => {
  const x = Float32Array.from({ length: 5 * 3 * 4 * 6 }, (_, i) => Math.sin(i) * 1.1);
  for (const c of [1, 3] as const) {
    const grid = imageGrid(x.subarray(0, 5 * c * 24), [5, c, 4, 6], { nrow: 3 });
    const bytes = encodePng(grid);
    assert.deepEqual([...bytes.subarray(1, 4)], [0x50, 0x4e, 0x47]);
    const back = decodePng(bytes);
    assert.deepEqual([back.width, back.height, back.channels], [grid.width, grid.height, c]);
    assert.deepEqual(back.data, grid.data);
  }
  assert.throws(() => encodePng({ width: 2, height: 2, channels: 3, data: new Uint8Array(5) }), /5 bytes do not match 2x2x3/);
});

test('decodePng normalises 1-bit, palette and 16-bit images to 8-bit samples', () => {
  const bits = decodePng(fastPngEncode({ width: 3, height: 2, channels: 1, depth: 1, data: new Uint8Array([0b1010_0000, 0b0100_0000]) }));
  assert.deepEqual([...bits.data], [255, 0, 255, 0, 255, 0]);
  const pal = decodePng(
    fastPngEncode({ width: 3, height: 1, channels: 1, depth: 8, data: new Uint8Array([2, 0, 1]), palette: [[255, 0, 0], [0, 255, 0], [0, 0, 255]] }),
  );
  assert.equal(pal.channels, 3);
  assert.deepEqual([...pal.data], [0, 0, 255, 255, 0, 0, 0, 255, 0]);
  const deep = decodePng(fastPngEncode({ width: 1, height: 1, channels: 3, depth: 16, data: new Uint16Array([65535, 0, 32896]) }));
  assert.deepEqual([...deep.data], [255, 0, 128]);
});

test('writePngGrid and writeGif write whole files and leave no temporaries', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'starflow-png-'));
  try {
    const x = new Float32Array(2 * 3 * 8 * 8).fill(0.5);
    await writePngGrid(join(dir, 'grid.png'), x, [2, 3, 8, 8], { nrow: 1 });
    const back = decodePng(await readFile(join(dir, 'grid.png')));
    assert.deepEqual([back.width, back.height, back.channels], [12, 22, 3]);
    await writeGif(join(dir, 'anim.gif'), [imageGrid(x, [2, 3, 8, 8])], { delayMs: 50 });
    assert.equal(new TextDecoder().decode((await readFile(join(dir, 'anim.gif'))).subarray(0, 6)), 'GIF89a');
    assert.deepEqual((await readdir(dir)).sort(), ['anim.gif', 'grid.png']);
    await assert.rejects(writePngGrid(join(dir, 'missing', 'g.png'), x, [2, 3, 8, 8]), /ENOENT/);
    assert.deepEqual((await readdir(dir)).sort(), ['anim.gif', 'grid.png']);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('encodeGif: header, frame count, delays, and exact gray levels', () => {
  const frames = [0, 1, 2].map((k) => imageGrid(new Float32Array(4 * 16).fill(-1 + k), [4, 1, 4, 4], { nrow: 2 }));
  const gif = encodeGif(frames, { delayMs: 120 });
  assert.equal(new TextDecoder().decode(gif.subarray(0, 6)), 'GIF89a');
  assert.equal(gif[gif.length - 1], 0x3b, 'trailer');
  // Graphic control extensions: one per frame, delay in hundredths.
  let gce = 0;
  for (let i = 0; i + 5 < gif.length; i++) {
    if (gif[i] === 0x21 && gif[i + 1] === 0xf9 && gif[i + 2] === 4) {
      gce++;
      assert.equal(gif[i + 4]! | (gif[i + 5]! << 8), 12);
    }
  }
  assert.equal(gce, 3);
  // Global colour table of a gray GIF holds all 256 gray levels in order.
  assert.equal(gif[10]! & 0x87, 0x87, 'global table of 256 entries');
  assert.deepEqual([...gif.subarray(13 + 3 * 200, 13 + 3 * 201)], [200, 200, 200]);
  const rgb = encodeGif([imageGrid(Float32Array.from({ length: 48 }, (_, i) => (i % 7) / 3 - 1), [1, 3, 4, 4])]);
  assert.equal(new TextDecoder().decode(rgb.subarray(0, 6)), 'GIF89a');
  assert.throws(() => encodeGif([]), /no frames/);
  assert.throws(() => encodeGif([frames[0]!, imageGrid(new Float32Array(16), [1, 1, 4, 4])]), /frame 1 is 8x8x1, frame 0 is 14x14x1/);
});
