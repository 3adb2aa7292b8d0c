// What the sample-quality report measures a model against, and the check that a model and a
// feature extractor see the same images. The floor (test images) needs no code of its own; the
// ceiling is a diagonal Gaussian fitted to the training pixels.
import { Rng } from '../engine/rng.js';
import type { ImageDataset } from '../data/dataset.js';
import { FeatureNetError, type FeatureNetConfig } from './features.js';

/** Checks that a generative model's images are what the extractor takes; `where` names the extractor in the error. */
export function checkModelAgainstExtractor(image: { channels: number; size: number }, fx: FeatureNetConfig, where: string): void {
  if (image.size !== fx.imgSize || image.channels !== fx.inChannels) {
    throw new FeatureNetError(
      `the model makes ${image.channels}×${image.size}×${image.size} images but the feature extractor (${where}) takes ${fx.inChannels}×${fx.imgSize}×${fx.imgSize}`,
    );
  }
}

/** n samples of a diagonal Gaussian fitted to the training pixels (per class when `labels`), clipped to [-1, 1]. */
export function diagonalGaussianSamples(ds: ImageDataset, n: number, labels: number[] | undefined, seed: number): Float32Array {
  const per = ds.channels * ds.height * ds.width;
  const groups = labels ? Math.max(ds.numClasses, ...labels.map((l) => l + 1)) : 1;
  const sum = new Float64Array(groups * per);
  const sq = new Float64Array(groups * per);
  const count = new Float64Array(groups);
  for (let i = 0; i < ds.n; i++) {
    const g = labels ? ds.labels[i]! : 0;
    count[g]!++;
    for (let j = 0; j < per; j++) {
      const v = ds.images[i * per + j]! / 127.5 - 1;
      sum[g * per + j]! += v;
      sq[g * per + j]! += v * v;
    }
  }
  const rng = new Rng(seed).fork(7);
  const out = new Float32Array(n * per);
  for (let i = 0; i < n; i++) {
    const g = labels ? Math.max(0, labels[i]!) : 0;
    const c = Math.max(1, count[g]!);
    for (let j = 0; j < per; j++) {
      const mu = sum[g * per + j]! / c;
      const sd = Math.sqrt(Math.max(0, sq[g * per + j]! / c - mu * mu));
      out[i * per + j] = Math.max(-1, Math.min(1, mu + sd * rng.normal()));
    }
  }
  return out;
}
