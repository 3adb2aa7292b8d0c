// Animated GIFs (e.g. sampling progress) from grid images. No Node imports
// except inside writeGif, so encoding also runs in a browser.
import * as gifencModule from 'gifenc';
import type { GifPalette } from 'gifenc';
import type { RasterImage } from './png.js';

type GifencApi = Pick<typeof gifencModule, 'GIFEncoder' | 'quantize' | 'applyPalette'>;

const gifenc: GifencApi =
  typeof (gifencModule as Partial<GifencApi>).quantize === 'function'
    ? gifencModule
    : (gifencModule.default as GifencApi);

export interface GifOptions {
  /** Delay per frame in milliseconds (GIF stores hundredths; default 100). */
  delayMs?: number;
  /** 0 loops forever (default), -1 plays once, k > 0 repeats k times. */
  repeat?: number;
}

// Enough pixels for a stable palette without quantising every frame in full.
const PALETTE_SAMPLE_PIXELS = 1 << 18;

function toRgba(frame: RasterImage, out: Uint8Array, at: number, stride: number): number {
  const npx = frame.width * frame.height;
  for (let p = 0; p < npx; p += stride, at += 4) {
    const o = p * 3;
    out[at] = frame.data[o]!;
    out[at + 1] = frame.data[o + 1]!;
    out[at + 2] = frame.data[o + 2]!;
    out[at + 3] = 255;
  }
  return at;
}

/**
 * Encodes equally sized gray (1-channel) or RGB (3-channel) frames. Gray frames
 * use an exact 256-level gray palette; RGB frames share one palette quantised
 * from a sample of all frames.
 */
export function encodeGif(frames: readonly RasterImage[], opts: GifOptions = {}): Uint8Array {
  const { delayMs = 100, repeat = 0 } = opts;
  const first = frames[0];
  if (!first) throw new Error('encodeGif: no frames');
  const { width, height, channels } = first;
  if (channels !== 1 && channels !== 3) throw new Error(`encodeGif: frames must have 1 or 3 channels, got ${channels}`);
  for (const [i, f] of frames.entries()) {
    if (f.width !== width || f.height !== height || f.channels !== channels) {
      throw new Error(`encodeGif: frame ${i} is ${f.width}x${f.height}x${f.channels}, frame 0 is ${width}x${height}x${channels}`);
    }
    if (f.data.length !== width * height * channels) throw new Error(`encodeGif: frame ${i} has ${f.data.length} bytes, expected ${width * height * channels}`);
  }

  let palette: GifPalette;
  let indexOf: (f: RasterImage) => Uint8Array;
  if (channels === 1) {
    palette = Array.from({ length: 256 }, (_, v) => [v, v, v]);
    indexOf = (f) => f.data;
  } else {
    const npx = width * height;
    const stride = Math.max(1, Math.ceil((npx * frames.length) / PALETTE_SAMPLE_PIXELS));
    const perFrame = Math.ceil(npx / stride);
    const sample = new Uint8Array(perFrame * frames.length * 4);
    let at = 0;
    for (const f of frames) at = toRgba(f, sample, at, stride);
    palette = gifenc.quantize(sample.subarray(0, at), 256);
    indexOf = (f) => {
      const rgba = new Uint8Array(npx * 4);
      toRgba(f, rgba, 0, 1);
      return gifenc.applyPalette(rgba, palette);
    };
  }

  const gif = gifenc.GIFEncoder();
  frames.forEach((f, i) => {
    gif.writeFrame(indexOf(f), width, height, i === 0 ? { palette, delay: delayMs, repeat } : { delay: delayMs });
  });
  gif.finish();
  return gif.bytes();
}

export async function writeGif(path: string, frames: readonly RasterImage[], opts: GifOptions = {}): Promise<void> {
  const { writeFileAtomic } = await import('./files.js');
  await writeFileAtomic(path, encodeGif(frames, opts));
}
