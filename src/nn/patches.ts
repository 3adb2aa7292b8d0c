// Images as sequences of patches, the token layout of every Transformer model here (the flows'
// and the DiT's).
import type { Arr } from '../engine/index.js';

/** What the patch layout needs from a model config. */
export type PatchShape = { inChannels: number; imgSize: number; patchSize: number };

/** [B, C, H, W] → [B, T, C·p²], tokens in raster order, features ordered c·p² + ki·p + kj. */
export function patchify(x: Arr, p: number): Arr {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  return x
    .reshape([b, c, h / p, p, w / p, p])
    .transpose([0, 2, 4, 1, 3, 5])
    .reshape([b, (h / p) * (w / p), c * p * p]);
}

/** [B, T, C·p²] → [B, C, H, W], the inverse of patchify for a model's image shape. */
export function unpatchify(z: Arr, cfg: PatchShape): Arr {
  const b = z.shape[0]!;
  const p = cfg.patchSize;
  const s = cfg.imgSize / p;
  return z
    .reshape([b, s, s, cfg.inChannels, p, p])
    .transpose([0, 3, 1, 4, 2, 5])
    .reshape([b, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
}
