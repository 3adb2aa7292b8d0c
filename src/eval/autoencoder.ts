// How well an autoencoder reconstructs: PSNR and the Fréchet distance (in the feature
// extractor's space) of reconstructions against the originals, from clean latents and from latents
// with the decoder's fine-tuning noise σ (what decoded flow samples look like). Recorded in the
// autoencoder's config.json under provenance.evaluation.reconstruction.
import path from 'node:path';
import { fromF32, toF32, Rng } from '../engine/index.js';
import { latentCodec, latentShape, type Autoencoder } from '../models/autoencoder.js';
import { loadDataset } from '../data/load.js';
import { datasetImages, extract, loadFeatureNet, SHIPPED_FEATURES } from './features.js';
import { featureSet, frechetDistance } from './metrics.js';
import { loadAutoencoder } from '../io/autoencoder.js';
import { recordEvaluation } from '../io/model.js';
import { shownPath } from './report.js';

export type ReconstructionFigures = {
  data: string;
  images: number;
  /** Peak signal-to-noise ratio in dB, images on [−1, 1] (peak-to-peak 2). */
  psnr: number;
  frechet: number | null;
  /** Decoded from latents + σε, σ = decoderNoiseStd (absent when the decoder was not fine-tuned). */
  noisy?: { sigma: number; psnr: number; frechet: number | null };
  features: string | null;
};

/** The test split of an MNIST-like training spec; a folder is scored on itself. */
function testSpecOf(data: string): string {
  return data.replace(/:train$/, ':test');
}

function psnr(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (Math.max(-1, Math.min(1, a[i]!)) - b[i]!) ** 2;
  return 10 * Math.log10(4 / (s / a.length));
}

/** Scores reconstructions of the first `n` images of `data`'s test split. */
export async function evaluateAutoencoder(ae: Autoencoder, data: string, opts: { n?: number; seed?: number; featuresDir?: string } = {}): Promise<ReconstructionFigures> {
  const spec = testSpecOf(data);
  const ds = await loadDataset(spec, { size: ae.cfg.imgSize, channels: ae.cfg.inChannels });
  const n = Math.min(opts.n ?? 1000, ds.n);
  const { x, shape } = datasetImages(ds, Array.from({ length: n }, (_, i) => i));
  const codec = latentCodec(ae);
  const bs = 250;
  const rng = new Rng(opts.seed ?? 0);
  const sigma = ae.cfg.decoderNoiseStd;
  const clean = new Float32Array(x.length);
  const noisy = sigma > 0 ? new Float32Array(x.length) : undefined;
  const per = x.length / n;
  const latent = latentShape(ae.cfg);
  for (let s = 0; s < n; s += bs) {
    const b = Math.min(bs, n - s);
    const zShape = [b, latent.channels, latent.size, latent.size];
    const z = await toF32(codec.encode(fromF32(x.slice(s * per, (s + b) * per), [b, ...shape.slice(1)])));
    clean.set(await toF32(codec.decode(fromF32(z.slice(), zShape))), s * per);
    if (noisy) noisy.set(await toF32(codec.decode(fromF32(z.map((v) => v + sigma * rng.normal()), zShape))), s * per);
  }
  // Fréchet distance where a feature extractor for these images exists (MNIST-like data).
  const fxDir = opts.featuresDir ?? (spec.startsWith('fashion-mnist') ? path.join(path.dirname(SHIPPED_FEATURES), 'fashion-mnist-features') : spec.startsWith('mnist') ? SHIPPED_FEATURES : undefined);
  let frechetOf: ((images: Float32Array) => Promise<number>) | undefined;
  if (fxDir) {
    const fx = await loadFeatureNet(fxDir);
    const featuresOf = async (images: Float32Array) => featureSet((await extract(fx.params, fx.cfg, images.map((v) => Math.max(-1, Math.min(1, v))), shape)).features, n, fx.cfg.hidden);
    const real = await featuresOf(x);
    frechetOf = async (images) => frechetDistance(real, await featuresOf(images));
  }
  return {
    data: spec,
    images: n,
    psnr: psnr(clean, x),
    frechet: frechetOf ? await frechetOf(clean) : null,
    ...(noisy ? { noisy: { sigma, psnr: psnr(noisy, x), frechet: frechetOf ? await frechetOf(noisy) : null } } : {}),
    features: fxDir ? shownPath(fxDir) : null,
  };
}

/** Loads an autoencoder directory, scores it on its training data's test split and records the figures in its config.json. */
export async function evaluateAutoencoderDir(dir: string, opts: { n?: number; seed?: number; featuresDir?: string } = {}): Promise<ReconstructionFigures> {
  const ae = await loadAutoencoder(dir);
  const data = typeof ae.provenance?.data === 'string' ? ae.provenance.data : 'mnist:train';
  const figures = await evaluateAutoencoder(ae, data, opts);
  await recordEvaluation(dir, 'reconstruction', { ...figures, measuredAt: new Date().toISOString().slice(0, 10) });
  return figures;
}
