// Writing samples where `starflow sample --out` says, by extension: `.png` a grid, `.safetensors`
// the raw tensor `samples` [n, C, H, W], anything else a directory of one PNG per sample.
import path from 'node:path';
import { writePngGrid, imageGrid, encodePng } from './png.js';
import { makeDirs, writeFileAtomic, writeSafetensorsFile } from './files.js';
import { fromFloat32 } from './safetensors.js';

/** Makes the place `saveSamples` will write to (parent directories; the directory itself for a directory output), before any work. */
export async function prepareSamplesOutput(out: string): Promise<void> {
  const isFile = out.endsWith('.png') || out.endsWith('.safetensors');
  await makeDirs(isFile ? path.dirname(path.resolve(out)) : out);
}

export async function saveSamples(
  out: string,
  images: Float32Array,
  shape: [number, number, number, number],
  opts: { nrow: number; metadata?: Record<string, string> },
): Promise<void> {
  if (out.endsWith('.safetensors')) return writeSafetensorsFile(out, { samples: fromFloat32(images, shape) }, opts.metadata);
  if (out.endsWith('.png')) return writePngGrid(out, images, shape, { nrow: opts.nrow });
  await makeDirs(out);
  const [n, c, h, w] = shape;
  const per = c * h * w;
  for (let i = 0; i < n; i++) {
    const img = imageGrid(images.subarray(i * per, (i + 1) * per), [1, c, h, w], { nrow: 1, padding: 0 });
    await writeFileAtomic(path.join(out, `${String(i).padStart(5, '0')}.png`), encodePng(img));
  }
}
