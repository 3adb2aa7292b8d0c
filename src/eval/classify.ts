// Classification by Bayes' rule with a class-conditional model that has a likelihood: with a
// uniform class prior, argmax_k p(x | k) = argmin_k of the per-image NLL under label k (a latent
// model: of the image's latents).
import { fromF32, fromI32, toF32 } from '../engine/index.js';
import type { Model } from '../models/model.js';
import { makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';
import { flowInputs, nllOf, LikelihoodError } from './likelihood.js';

export async function classify(
  model: Model,
  ds: ImageDataset,
  n: number,
  opts: { batchSize?: number; onBatch?: (done: number, total: number) => void } = {},
): Promise<{ accuracy: number; predictions: Int32Array; n: number }> {
  const classes = model.cfg.numClasses;
  if (classes === 0) throw new LikelihoodError('classification needs a class-conditional model (this one has numClasses 0)');
  const total = Math.min(n, ds.n);
  const bs = Math.min(opts.batchSize ?? 200, total);
  const pred = new Int32Array(total);
  let correct = 0;
  for (let start = 0; start < total; start += bs) {
    const idx = Array.from({ length: bs }, (_, i) => Math.min(start + i, total - 1));
    const batch = makeBatch(ds, idx);
    const best = new Float32Array(bs).fill(Infinity);
    const x = flowInputs(model, fromF32(batch.x, [bs, ds.channels, ds.height, ds.width]));
    for (let k = 0; k < classes; k++) {
      const nll = await toF32(nllOf(model, x.ref, fromI32(new Int32Array(bs).fill(k), [bs])));
      for (let i = 0; i < bs; i++) {
        if (nll[i]! < best[i]!) {
          best[i] = nll[i]!;
          if (start + i < total) pred[start + i] = k;
        }
      }
    }
    x.dispose();
    for (let i = 0; i < bs && start + i < total; i++) if (pred[start + i] === batch.y[i]) correct++;
    opts.onBatch?.(Math.min(start + bs, total), total);
  }
  return { accuracy: correct / total, predictions: pred, n: total };
}
