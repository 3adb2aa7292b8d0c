// PNG encode/decode and image grids. Only the write* helpers touch the file
// system, through a dynamic import, so the rest also runs in a browser.
import { decode as fastPngDecode, encode as fastPngEncode } from 'fast-png';

/** 8-bit raster, samples interleaved (H, W, channels). */
export interface RasterImage {
  width: number;
  height: number;
  /** 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. */
  channels: number;
  data: Uint8Array;
}

export interface GridOptions {
  /** Images per grid row (default 8, as torchvision's make_grid). */
  nrow?: number;
  /** Pixels between and around images (default 2). */
  padding?: number;
  /** Byte value 0..255 of the padding (default 0, black). */
  padValue?: number;
}

/**
 * Tiles a (B, C, H, W) batch with values in [-1, 1] into one image, mapping
 * v → round((v + 1) * 127.5) clamped to 0..255 (NaN → 0). C must be 1 or 3.
 */
export function imageGrid(x: Float32Array, shape: readonly [number, number, number, number], opts: GridOptions = {}): RasterImage {
  const [b, c, h, w] = shape;
  const { nrow = 8, padding = 2, padValue = 0 } = opts;
  if (c !== 1 && c !== 3) throw new Error(`imageGrid: channels must be 1 or 3, got ${c}`);
  if (b < 1 || h < 1 || w < 1) throw new Error(`imageGrid: empty batch shape [${shape.join(', ')}]`);
  if (x.length !== b * c * h * w) throw new Error(`imageGrid: ${x.length} values do not match shape [${shape.join(', ')}]`);
  if (!Number.isInteger(nrow) || nrow < 1) throw new Error(`imageGrid: nrow must be a positive integer, got ${nrow}`);
  if (!Number.isInteger(padding) || padding < 0) throw new Error(`imageGrid: padding must be a non-negative integer, got ${padding}`);
  const cols = Math.min(nrow, b);
  const rows = Math.ceil(b / cols);
  const width = cols * (w + padding) + padding;
  const height = rows * (h + padding) + padding;
  const data = new Uint8Array(width * height * c).fill(Math.max(0, Math.min(255, Math.round(padValue))));
  const plane = h * w;
  for (let i = 0; i < b; i++) {
    const ox = padding + (i % cols) * (w + padding);
    const oy = padding + Math.floor(i / cols) * (h + padding);
    for (let ch = 0; ch < c; ch++) {
      const src = (i * c + ch) * plane;
      for (let yy = 0; yy < h; yy++) {
        let dst = ((oy + yy) * width + ox) * c + ch;
        for (let xx = 0; xx < w; xx++, dst += c) {
          const v = Math.round((x[src + yy * w + xx]! + 1) * 127.5);
          data[dst] = v > 255 ? 255 : v >= 0 ? v : 0;
        }
      }
    }
  }
  return { width, height, channels: c, data };
}

export function encodePng(image: RasterImage): Uint8Array {
  const { width, height, channels, data } = image;
  if (channels < 1 || channels > 4) throw new Error(`encodePng: unsupported channel count ${channels}`);
  if (data.length !== width * height * channels) {
    throw new Error(`encodePng: ${data.length} bytes do not match ${width}x${height}x${channels}`);
  }
  return fastPngEncode({ width, height, channels, depth: 8, data });
}

// Rows are byte-aligned, so sub-byte samples are unpacked row by row.
function unpackSamples(data: ArrayLike<number>, width: number, height: number, perPixel: number, depth: number): Uint16Array {
  const rowSamples = width * perPixel;
  const out = new Uint16Array(rowSamples * height);
  if (depth >= 8) {
    if (data.length < out.length) throw new Error(`PNG pixel data too short (${data.length} < ${out.length} samples)`);
    for (let i = 0; i < out.length; i++) out[i] = data[i]!;
    return out;
  }
  const rowBytes = Math.ceil((rowSamples * depth) / 8);
  if (data.length < rowBytes * height) throw new Error(`PNG pixel data too short (${data.length} < ${rowBytes * height} bytes)`);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let k = 0; k < rowSamples; k++) {
      const bit = k * depth;
      out[y * rowSamples + k] = (data[y * rowBytes + (bit >>> 3)]! >>> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

/**
 * Decodes any PNG to 8-bit samples: palettes expand to RGB (RGBA when the
 * palette has transparency), 1/2/4/16-bit samples rescale to 0..255.
 */
export function decodePng(bytes: Uint8Array): RasterImage {
  const png = fastPngDecode(bytes);
  const { width, height, depth } = png;
  if (png.palette) {
    const palette = png.palette;
    const channels = palette.some((e) => e.length > 3) ? 4 : 3;
    const idx = unpackSamples(png.data, width, height, 1, depth);
    const data = new Uint8Array(width * height * channels);
    for (let i = 0; i < idx.length; i++) {
      const entry = palette[idx[i]!];
      if (!entry) throw new Error(`PNG palette index ${idx[i]} out of range (${palette.length} colours)`);
      for (let ch = 0; ch < channels; ch++) data[i * channels + ch] = entry[ch] ?? 255;
    }
    return { width, height, channels, data };
  }
  const channels = png.channels;
  if (channels < 1 || channels > 4) throw new Error(`PNG has unsupported channel count ${channels}`);
  const s = unpackSamples(png.data, width, height, channels, depth);
  const data = new Uint8Array(s.length);
  const scale = 255 / ((1 << depth) - 1);
  for (let i = 0; i < s.length; i++) data[i] = Math.round(s[i]! * scale);
  return { width, height, channels, data };
}

export async function writePngGrid(
  path: string,
  x: Float32Array,
  shape: readonly [number, number, number, number],
  opts: GridOptions = {},
): Promise<void> {
  const { writeFileAtomic } = await import('./files.js');
  await writeFileAtomic(path, encodePng(imageGrid(x, shape, opts)));
}
