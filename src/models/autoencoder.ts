// The latent autoencoder of STARFlow's recipe, at this machine's scale: a convolutional encoder
// that shrinks images 2× per level into a few latent channels, and a decoder back. A latent flow
// (a flow config with `autoencoder`) models the encoder's latents, scaled to unit variance by
// `latentScale`; samples are decoded. Like STARFlow, the decoder is then fine-tuned on noisy
// latents, decode(encode(x) + σε) ≈ x at the flow's noise level σ, so that decoded samples need no
// score-denoising step (train/autoencoder.ts trains both phases).
//
//   encoder: per level i: 2×2 stride-2 conv (→ c_i) · GELU · conv3×3 · GELU; conv3×3 → latent
//            channels; × latentScale
//   decoder: ÷ latentScale; conv3×3 → c_last · GELU · conv3×3 · GELU, then per level back:
//            2×2 stride-2 transposed conv (→ c_{i−1}) · GELU · conv3×3 · GELU; the first level's
//            transposed conv gives the image (no activation)
//
// Every level halves the side, so no 3×3 convolution runs at full resolution: there its im2col
// copies (nine shifted views) cost more than the products. Images are [B, C, H, W] in [−1, 1];
// latents [B, latentChannels, H/f, W/f] with f = 2^levels.
import { np, cachedJit, keep, Rng, type Arr } from '../engine/index.js';
import { gelu, initLinear, type Linear } from '../nn/layers.js';
import { conv3x3, downsample2, upsample2 } from '../nn/conv.js';
import { shapesOf } from '../nn/params.js';
import { asObject, ConfigError, intField, numberField, withDefaults } from './config.js';

export type AutoencoderConfig = {
  model: 'autoencoder';
  inChannels: number;
  imgSize: number;
  /** Channels per level, the finest first; each level halves the side. */
  channels: number[];
  latentChannels: number;
  /** Multiplies the encoder's output so that latents have unit variance over the training images (1 until measured). */
  latentScale: number;
  /** σ of the latent noise the decoder was fine-tuned on (0: not fine-tuned). */
  decoderNoiseStd: number;
};

export type AutoencoderParams = {
  encoder: { down: Linear[]; convs: Linear[]; output: Linear };
  decoder: { input: Linear; mid: Linear; up: Linear[]; convs: Linear[] };
};

/** An autoencoder with its weights (what a latent model carries). */
export type Autoencoder = { cfg: AutoencoderConfig; params: AutoencoderParams };

const DEFAULTS = { model: 'autoencoder', channels: [32, 64], latentChannels: 4, latentScale: 1, decoderNoiseStd: 0 };

export function parseAutoencoderConfig(raw: unknown, where = 'autoencoder config'): AutoencoderConfig {
  const o = withDefaults(asObject(raw, where), DEFAULTS, ['inChannels', 'imgSize'], where);
  if (o.model !== 'autoencoder') throw new ConfigError(`${where}: not an autoencoder config ('model' must be "autoencoder", got ${JSON.stringify(o.model)})`);
  const channels = o.channels;
  if (!Array.isArray(channels) || channels.length < 1 || channels.some((c) => !Number.isInteger(c) || (c as number) < 1)) {
    throw new ConfigError(`${where}: 'channels' must be a non-empty list of positive integers (one per level), got ${JSON.stringify(channels)}`);
  }
  const cfg: AutoencoderConfig = {
    model: 'autoencoder',
    inChannels: intField(o, 'inChannels', where, 1),
    imgSize: intField(o, 'imgSize', where, 1),
    channels: channels as number[],
    latentChannels: intField(o, 'latentChannels', where, 1),
    latentScale: numberField(o, 'latentScale', where, Number.MIN_VALUE),
    decoderNoiseStd: numberField(o, 'decoderNoiseStd', where, 0),
  };
  const factor = downFactor(cfg);
  if (cfg.imgSize % factor !== 0) throw new ConfigError(`${where}: imgSize ${cfg.imgSize} is not divisible by the ${factor}× reduction of ${channels.length} levels`);
  return cfg;
}

/** How much the encoder shrinks each side. */
export function downFactor(cfg: Pick<AutoencoderConfig, 'channels'>): number {
  return 2 ** cfg.channels.length;
}

/** The latents' shape: what a latent flow's inChannels and imgSize must be. */
export function latentShape(cfg: AutoencoderConfig): { channels: number; size: number } {
  return { channels: cfg.latentChannels, size: cfg.imgSize / downFactor(cfg) };
}

export function initAutoencoder(cfg: AutoencoderConfig, seed: number): AutoencoderParams {
  const rng = new Rng(seed);
  const enc = rng.fork(0);
  const dec = rng.fork(1);
  const c = cfg.channels;
  const last = c[c.length - 1]!;
  const conv = (r: Rng, cin: number, cout: number) => initLinear(r, 9 * cin, cout);
  const inputs = [cfg.inChannels, ...c.slice(0, -1)]; // each level's input channels
  return {
    encoder: {
      down: c.map((ci, i) => initLinear(enc.fork(100 + i), 4 * inputs[i]!, ci)),
      convs: c.map((ci, i) => conv(enc.fork(200 + i), ci, ci)),
      output: conv(enc.fork(1), last, cfg.latentChannels),
    },
    decoder: {
      input: conv(dec.fork(0), cfg.latentChannels, last),
      mid: conv(dec.fork(2), last, last),
      // Level i → its input channels, deepest first; the finest gives the image.
      up: c.map((ci, i) => initLinear(dec.fork(100 + i), ci, 4 * inputs[i]!)).reverse(),
      convs: c.slice(0, -1).map((ci, i) => conv(dec.fork(200 + i), ci, ci)).reverse(),
    },
  };
}

export function autoencoderShapes(cfg: AutoencoderConfig): Map<string, number[]> {
  return shapesOf(() => initAutoencoder(cfg, 0));
}

/** Latents [B, latentChannels, h, w] (scaled) of images [B, C, H, W]. Consumes x. */
export function encodeImages(p: AutoencoderParams, cfg: AutoencoderConfig, x: Arr): Arr {
  let h = x.transpose([0, 2, 3, 1]);
  for (let i = 0; i < p.encoder.down.length; i++) {
    h = gelu(downsample2(p.encoder.down[i]!, h));
    h = gelu(conv3x3(p.encoder.convs[i]!, h));
  }
  return conv3x3(p.encoder.output, h).mul(cfg.latentScale).transpose([0, 3, 1, 2]);
}

/** Images [B, C, H, W] of latents [B, latentChannels, h, w] (scaled). Consumes z. */
export function decodeLatents(p: AutoencoderParams, cfg: AutoencoderConfig, z: Arr): Arr {
  let h = gelu(conv3x3(p.decoder.input, z.mul(1 / cfg.latentScale).transpose([0, 2, 3, 1])));
  h = gelu(conv3x3(p.decoder.mid, h));
  const levels = p.decoder.up.length;
  for (let i = 0; i < levels - 1; i++) {
    h = gelu(upsample2(p.decoder.up[i]!, h));
    h = gelu(conv3x3(p.decoder.convs[i]!, h));
  }
  return upsample2(p.decoder.up[levels - 1]!, h).transpose([0, 3, 1, 2]);
}

function meanSquare(a: Arr, b: Arr): Arr {
  return np.square(a.sub(b)).mean();
}

/** Phase 1: mean squared reconstruction error of images x. */
export function reconstructionLoss(p: AutoencoderParams, cfg: AutoencoderConfig, x: Arr): Arr {
  return meanSquare(decodeLatents(p, cfg, encodeImages(p, cfg, x.ref)), x);
}

/**
 * Phase 2 (decoder only): mean squared error of decode(z + σ·eps) against the images the
 * latents z came from, σ = cfg.decoderNoiseStd.
 */
export function noisyDecoderLoss(decoder: AutoencoderParams['decoder'], cfg: AutoencoderConfig, z: Arr, images: Arr, eps: Arr): Arr {
  const p = { decoder } as AutoencoderParams;
  return meanSquare(decodeLatents(p, cfg, z.add(eps.mul(cfg.decoderNoiseStd))), images);
}

/** The autoencoder jitted (one program per config and batch shape): each call consumes its input. */
export function latentCodec(ae: Autoencoder): { encode(x: Arr): Arr; decode(z: Arr): Arr } {
  const key = JSON.stringify(ae.cfg);
  const enc = cachedJit(`ae-encode:${key}`, () => (p: AutoencoderParams, x: Arr) => encodeImages(p, ae.cfg, x));
  const dec = cachedJit(`ae-decode:${key}`, () => (p: AutoencoderParams, z: Arr) => decodeLatents(p, ae.cfg, z));
  return { encode: (x) => enc(keep(ae.params), x), decode: (z) => dec(keep(ae.params), z) };
}
