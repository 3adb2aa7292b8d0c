// Node edge of the data layer: a data spec ('mnist:test', 'fashion-mnist:train', 'folder:/path') → an in-memory dataset.
import { loadMnistLike } from './mnist.js';
import { loadImageFolder } from './image-folder.js';
import { parseDataSpec } from './transforms.js';
import type { ImageDataset } from './dataset.js';

/** Loads a dataset shaped for a model: folders are resized to `size` with `channels`. */
export async function loadDataset(spec: string, shape: { size: number; channels: number }): Promise<ImageDataset> {
  const s = parseDataSpec(spec);
  const ds = s.kind === 'folder' ? await loadImageFolder(s.dir, { size: shape.size, channels: shape.channels === 1 ? 1 : 3 }) : await loadMnistLike(s.kind, s.split);
  if (ds.channels !== shape.channels || ds.height !== shape.size || ds.width !== shape.size) {
    throw new Error(
      `data '${spec}' has ${ds.channels}×${ds.height}×${ds.width} images but the model expects ${shape.channels}×${shape.size}×${shape.size}`,
    );
  }
  return ds;
}
