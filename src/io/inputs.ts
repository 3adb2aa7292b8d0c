// Tensors given in a .safetensors file, checked against a model: images (and labels), the inputs
// of `starflow nll --input` and `starflow denoise`; noise (and labels, text states), the inputs of
// `starflow sample --noise`.
import { readSafetensorsFile } from './files.js';
import { toFloat32, toInt32, type TensorEntry } from './safetensors.js';
import { imageShapeOf, type Model, type ModelConfig } from '../models/model.js';
import { fromF32, toF32 } from '../engine/index.js';

export class InputError extends Error {
  override name = 'InputError';
}

export type ImageInputs = { x: Float32Array; shape: [number, number, number, number]; labels: number[] | undefined; text?: Float32Array };

/** `textKey`: text-encoder states [B, textTokens, textDim] of a text-conditioned model. */
export async function readImageInputs(file: string, xKey: string, yKey: string | undefined, model: Pick<Model, 'cfg' | 'autoencoder'>, textKey?: string): Promise<ImageInputs> {
  const { cfg } = model;
  const image = imageShapeOf(model);
  const f = await readSafetensorsFile(file);
  const get = (key: string): TensorEntry => {
    const t = f.tensors.get(key);
    if (!t) throw new InputError(`${file} has no tensor '${key}' (it has: ${[...f.tensors.keys()].join(', ') || 'none'})`);
    return t;
  };
  const xt = get(xKey);
  const want = [image.channels, image.size, image.size];
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
  const textDim = cfg.textDim ?? 0;
  if (textDim > 0 && !textKey) throw new InputError('this text-conditioned model needs text states: pass --text-key NAME');
  if (textDim === 0 && textKey) throw new InputError('this model is not text-conditioned: it takes no --text-key');
  let text: Float32Array | undefined;
  if (textKey) {
    const tt = get(textKey);
    const want = [b, cfg.textTokens ?? 0, textDim];
    if (tt.shape.join(',') !== want.join(',')) throw new InputError(`text '${textKey}' must have shape [${want.join(', ')}] for this model, got [${tt.shape}]`);
    text = toFloat32(tt, `${file}: '${textKey}'`);
  }
  return { x, shape: xt.shape as [number, number, number, number], labels, ...(text ? { text } : {}) };
}

export type NoiseInputs = { noise: Float32Array; n: number; labels?: number[]; text?: { states: Float32Array; negative?: Float32Array } };

/**
 * Noise for sampling from a file: `noiseKey` as the family lays noise out ([n, ...noiseShape]) or
 * image-shaped [n, C, H, W] where the family maps that (flows: patchified); optional labels
 * (int) and text-encoder states [n, textTokens, textDim] with their negative.
 */
export async function readNoiseInputs(
  file: string,
  keys: { noise: string; labels?: string; text?: string; negativeText?: string },
  model: Pick<Model, 'family' | 'cfg'>,
): Promise<NoiseInputs> {
  const { cfg, family } = model;
  const f = await readSafetensorsFile(file);
  const get = (key: string): TensorEntry => {
    const t = f.tensors.get(key);
    if (!t) throw new InputError(`${file} has no tensor '${key}' (it has: ${[...f.tensors.keys()].join(', ') || 'none'})`);
    return t;
  };
  const t = get(keys.noise);
  const noiseShape = family.noiseShape(cfg);
  const imageShape = [cfg.inChannels, cfg.imgSize, cfg.imgSize];
  const asImages = Boolean(family.noiseFromImages) && t.shape.length === 4 && t.shape.slice(1).join(',') === imageShape.join(',');
  if (!asImages && (t.shape.length !== noiseShape.length + 1 || t.shape.slice(1).join(',') !== noiseShape.join(','))) {
    const alt = family.noiseFromImages ? ` or image-shaped [n, ${imageShape.join(', ')}]` : '';
    throw new InputError(`noise '${keys.noise}' must have shape [n, ${noiseShape.join(', ')}]${alt} for this model, got [${t.shape}]`);
  }
  const n = t.shape[0]!;
  if (n === 0) throw new InputError(`noise '${keys.noise}' holds no samples`);
  let noise = toFloat32(t, `${file}: '${keys.noise}'`);
  if (noise.some((v) => !Number.isFinite(v))) throw new InputError(`noise '${keys.noise}' contains NaN or infinite values`);
  if (asImages) noise = await toF32(family.noiseFromImages!(cfg, fromF32(noise, t.shape)));
  const out: NoiseInputs = { noise, n };
  if (keys.labels) out.labels = [...toInt32(get(keys.labels), `${file}: '${keys.labels}'`)];
  if (keys.negativeText && !keys.text) throw new InputError('negative text states go with text states');
  if (keys.text) {
    const want = [n, cfg.textTokens ?? 0, cfg.textDim ?? 0];
    const states = (key: string) => {
      const s = get(key);
      if (s.shape.join(',') !== want.join(',')) throw new InputError(`text '${key}' must have shape [${want.join(', ')}] for this model, got [${s.shape}]`);
      return toFloat32(s, `${file}: '${key}'`);
    };
    out.text = { states: states(keys.text), ...(keys.negativeText ? { negative: states(keys.negativeText) } : {}) };
  }
  return out;
}
