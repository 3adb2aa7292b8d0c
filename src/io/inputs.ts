// Images (and labels) given as tensors in a .safetensors file, checked against a model's config:
// the inputs of `starflow nll --input` and `starflow denoise`.
import { readSafetensorsFile } from './files.js';
import { toFloat32, toInt32, type TensorEntry } from './safetensors.js';
import type { ModelConfig } from '../models/model.js';

export class InputError extends Error {
  override name = 'InputError';
}

export type ImageInputs = { x: Float32Array; shape: [number, number, number, number]; labels: number[] | undefined };

export async function readImageInputs(file: string, xKey: string, yKey: string | undefined, cfg: ModelConfig): Promise<ImageInputs> {
  const f = await readSafetensorsFile(file);
  const get = (key: string): TensorEntry => {
    const t = f.tensors.get(key);
    if (!t) throw new InputError(`${file} has no tensor '${key}' (it has: ${[...f.tensors.keys()].join(', ') || 'none'})`);
    return t;
  };
  const xt = get(xKey);
  const want = [cfg.inChannels, cfg.imgSize, cfg.imgSize];
  if (xt.shape.length !== 4 || xt.shape.slice(1).join(',') !== want.join(',') || xt.shape[0] === 0) {
    throw new InputError(`'${xKey}' must have shape [B, ${want.join(', ')}] for this model, got [${xt.shape}]`);
  }
  const x = toFloat32(xt, `${file}: '${xKey}'`);
  if (x.some((v) => !Number.isFinite(v))) throw new InputError(`'${xKey}' contains NaN or infinite values`);
  const b = xt.shape[0]!;
  let labels: number[] | undefined;
  if (cfg.numClasses > 0) {
    if (!yKey) throw new InputError('this class-conditional model needs labels: pass --y-key NAME');
    const yt = get(yKey);
    const ys = yt.dtype.startsWith('F') ? Array.from(toFloat32(yt, yKey)) : Array.from(toInt32(yt, `${file}: '${yKey}'`));
    if (ys.length !== b) throw new InputError(`'${yKey}' has ${ys.length} labels for ${b} images`);
    for (const y of ys) {
      if (!Number.isInteger(y) || y < -1 || y >= cfg.numClasses) throw new InputError(`label ${y} in '${yKey}' is not a class of this model (-1 to ${cfg.numClasses - 1})`);
    }
    labels = ys;
  }
  return { x, shape: xt.shape as [number, number, number, number], labels };
}
