import { readdir, readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import jpeg from 'jpeg-js';
import { decodePng } from '../io/png.js';
import type { ImageDataset } from './dataset.js';

export interface ImageFolderOptions {
  /** Output side length: short side resized to this, then centre-cropped square. */
  size: number;
  /** 1 = luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), 3 = RGB. */
  channels: 1 | 3;
}

/** Decoded pixels as interleaved RGB floats in [0, 255]. */
export interface RgbFloatImage {
  width: number;
  height: number;
  data: Float32Array;
}

const IMAGE_EXT = new Set(['.png', '.jpg', '.jpeg']);

// Code-unit order, so class indices do not depend on the machine's locale.
const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

function isPng(b: Uint8Array): boolean {
  return b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47;
}

function isJpeg(b: Uint8Array): boolean {
  return b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;
}

/** Composites straight alpha onto white so transparent backgrounds become white, not black. */
function pngToRgb(bytes: Uint8Array): RgbFloatImage {
  const { width, height, channels, data } = decodePng(bytes);
  const npx = width * height;
  const rgb = new Float32Array(npx * 3);
  const hasAlpha = channels === 2 || channels === 4;
  const colour = channels >= 3;
  for (let i = 0; i < npx; i++) {
    const o = i * channels;
    const r = data[o]!;
    const g = colour ? data[o + 1]! : r;
    const b = colour ? data[o + 2]! : r;
    const a = hasAlpha ? data[o + channels - 1]! / 255 : 1;
    const bg = 255 * (1 - a);
    rgb[3 * i] = r * a + bg;
    rgb[3 * i + 1] = g * a + bg;
    rgb[3 * i + 2] = b * a + bg;
  }
  return { width, height, data: rgb };
}

function jpegToRgb(bytes: Uint8Array): RgbFloatImage {
  const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
  const npx = img.width * img.height;
  const rgb = new Float32Array(npx * 3);
  for (let i = 0; i < npx; i++) {
    rgb[3 * i] = img.data[4 * i]!;
    rgb[3 * i + 1] = img.data[4 * i + 1]!;
    rgb[3 * i + 2] = img.data[4 * i + 2]!;
  }
  return { width: img.width, height: img.height, data: rgb };
}

/** Decodes PNG or JPEG bytes (detected by signature) to RGB, alpha composited on white. */
export function decodeImageToRgb(bytes: Uint8Array): RgbFloatImage {
  if (isPng(bytes)) return pngToRgb(bytes);
  if (isJpeg(bytes)) return jpegToRgb(bytes);
  throw new Error('not a PNG or JPEG file');
}

interface AxisTaps {
  start: Int32Array;
  weights: Float32Array[];
}

/**
 * Linear (triangle) filter taps for output pixels offset..offset+n-1 of an
 * inLen → outLen resize. When shrinking, the triangle is widened by the scale
 * so every input pixel contributes (area-like antialiasing); when enlarging it
 * is plain bilinear interpolation with edge clamping.
 */
function axisTaps(inLen: number, outLen: number, offset: number, n: number): AxisTaps {
  const scale = inLen / outLen;
  const support = Math.max(scale, 1);
  const start = new Int32Array(n);
  const weights: Float32Array[] = [];
  for (let k = 0; k < n; k++) {
    const centre = (offset + k + 0.5) * scale;
    const lo = Math.max(0, Math.floor(centre - support));
    const hi = Math.min(inLen - 1, Math.ceil(centre + support));
    const w = new Float32Array(hi - lo + 1);
    let sum = 0;
    for (let j = lo; j <= hi; j++) {
      const t = Math.abs(j + 0.5 - centre) / support;
      const v = t < 1 ? 1 - t : 0;
      w[j - lo] = v;
      sum += v;
    }
    // The nearest input pixel always has t ≤ 0.5, so sum > 0.
    for (let j = 0; j < w.length; j++) w[j] = w[j]! / sum;
    start[k] = lo;
    weights.push(w);
  }
  return { start, weights };
}

/**
 * Resizes an interleaved (H, W, c) float image so its short side is `size`,
 * then centre-crops to size×size (crop offset rounded down). Returns (size, size, c).
 */
export function resizeShortSideCenterCrop(src: Float32Array, width: number, height: number, c: number, size: number): Float32Array {
  if (width < 1 || height < 1) throw new Error(`empty image ${width}x${height}`);
  let rw: number;
  let rh: number;
  if (width <= height) {
    rw = size;
    rh = Math.max(size, Math.round((height * size) / width));
  } else {
    rh = size;
    rw = Math.max(size, Math.round((width * size) / height));
  }
  const xt = axisTaps(width, rw, Math.floor((rw - size) / 2), size);
  const yt = axisTaps(height, rh, Math.floor((rh - size) / 2), size);

  const tmp = new Float32Array(height * size * c);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < size; x++) {
      const w = xt.weights[x]!;
      const s0 = xt.start[x]!;
      for (let ch = 0; ch < c; ch++) {
        let acc = 0;
        for (let j = 0; j < w.length; j++) acc += w[j]! * src[(y * width + s0 + j) * c + ch]!;
        tmp[(y * size + x) * c + ch] = acc;
      }
    }
  }
  const out = new Float32Array(size * size * c);
  for (let y = 0; y < size; y++) {
    const w = yt.weights[y]!;
    const s0 = yt.start[y]!;
    for (let x = 0; x < size; x++) {
      for (let ch = 0; ch < c; ch++) {
        let acc = 0;
        for (let j = 0; j < w.length; j++) acc += w[j]! * tmp[((s0 + j) * size + x) * c + ch]!;
        out[(y * size + x) * c + ch] = acc;
      }
    }
  }
  return out;
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((name) => !name.startsWith('.')).sort(byName);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`image folder not found: ${dir}`);
    if (code === 'ENOTDIR') throw new Error(`image folder is not a directory: ${dir}`);
    throw e;
  }
}

/**
 * Loads `dir/<class>/<image>.{png,jpg,jpeg}`: classes sorted by name give the
 * label indices, files are sorted within a class. Hidden entries and other
 * file types are ignored; an empty class is an error.
 */
export async function loadImageFolder(dir: string, opts: ImageFolderOptions): Promise<ImageDataset> {
  const { size, channels } = opts;
  if (!Number.isInteger(size) || size < 1) throw new Error(`image folder: size must be a positive integer, got ${size}`);
  if (channels !== 1 && channels !== 3) throw new Error(`image folder: channels must be 1 or 3, got ${String(channels)}`);

  const classNames: string[] = [];
  for (const name of await listDir(dir)) if (await isDir(join(dir, name))) classNames.push(name);
  if (classNames.length === 0) throw new Error(`image folder has no class subfolders: ${dir}`);

  const files: { path: string; label: number }[] = [];
  for (let label = 0; label < classNames.length; label++) {
    const classDir = join(dir, classNames[label]!);
    const names = (await listDir(classDir)).filter((f) => IMAGE_EXT.has(extname(f).toLowerCase()));
    if (names.length === 0) throw new Error(`image folder class '${classNames[label]}' has no PNG/JPEG images: ${classDir}`);
    for (const f of names) files.push({ path: join(classDir, f), label });
  }

  const n = files.length;
  const plane = size * size;
  const images = new Uint8Array(n * channels * plane);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const { path, label } = files[i]!;
    let rgb: RgbFloatImage;
    try {
      rgb = decodeImageToRgb(await readFile(path));
    } catch (e) {
      throw new Error(`cannot decode image ${path}: ${(e as Error).message}`);
    }
    let src = rgb.data;
    if (channels === 1) {
      src = new Float32Array(rgb.width * rgb.height);
      for (let p = 0; p < src.length; p++) {
        src[p] = 0.299 * rgb.data[3 * p]! + 0.587 * rgb.data[3 * p + 1]! + 0.114 * rgb.data[3 * p + 2]!;
      }
    }
    const hwc = resizeShortSideCenterCrop(src, rgb.width, rgb.height, channels, size);
    const base = i * channels * plane;
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < channels; ch++) {
        const v = Math.round(hwc[p * channels + ch]!);
        images[base + ch * plane + p] = v < 0 ? 0 : v > 255 ? 255 : v;
      }
    }
    labels[i] = label;
  }
  return { images, labels, n, channels, height: size, width: size, numClasses: classNames.length, classNames };
}
