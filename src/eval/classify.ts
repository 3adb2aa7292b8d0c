// Classification by Bayes' rule with a class-conditional flow: with a uniform class prior,
// argmax_k p(x | k) = argmin_k of the per-image bits/dim under label k.
import { fromF32, fromI32, toF32 } from '../engine/index.js';
import type { TarFlowConfig } from '../models/config.js';
import type { TarFlowParams } from '../models/tarflow.js';
import { bitsPerDimOf } from '../train/trainer.js';
import { makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';

export async function classify(
  params: TarFlowParams,
  cfg: TarFlowConfig,
  ds: ImageDataset,
  n: number,
  opts: { batchSize?: number; onBatch?: (done: number, total: number) => void } = {},
): Promise<{ accuracy: number; predictions: Int32Array; n: number }> {
  if (cfg.numClasses === 0) throw new Error('classification needs a class-conditional model (this one has numClasses 0)');
  const total = Math.min(n, ds.n);
  const bs = Math.min(opts.batchSize ?? 200, total);
  const pred = new Int32Array(total);
  let correct = 0;
  for (let start = 0; start < total; start += bs) {
    const idx = Array.from({ length: bs }, (_, i) => Math.min(start + i, total - 1));
    const batch = makeBatch(ds, idx);
    const best = new Float32Array(bs).fill(Infinity);
    for (let k = 0; k < cfg.numClasses; k++) {
      const x = fromF32(batch.x, [bs, ds.channels, ds.height, ds.width]);
      const bpd = await toF32(bitsPerDimOf(params, cfg, x, fromI32(new Int32Array(bs).fill(k), [bs])));
      for (let i = 0; i < bs; i++) {
        if (bpd[i]! < best[i]!) {
          best[i] = bpd[i]!;
          if (start + i < total) pred[start + i] = k;
        }
      }
    }
    for (let i = 0; i < bs && start + i < total; i++) if (pred[start + i] === batch.y[i]) correct++;
    opts.onBatch?.(Math.min(start + bs, total), total);
  }
  return { accuracy: correct / total, predictions: pred, n: total };
}
