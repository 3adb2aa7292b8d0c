// The model interface: what every family (TARFlow, a test's tiny Gaussian, later STARFlow and
// rectified flow) implements, and all that the trainer, the samplers, evaluation, checkpoint I/O
// and the CLI know about a model. A family is one file plus a `registerFamily` call; `config.json`'s
// `model` field names it (registry.ts).
import type { TokenizerConfig } from '../nn/tokenizer.js';
import type { Arr, Params } from '../engine/index.js';
import type { Autoencoder } from './autoencoder.js';

/** Fields every family's config has: the images it models and how it was conditioned. */
export type ModelConfig = {
  /** The family's registered name. */
  model: string;
  inChannels: number;
  imgSize: number;
  /** 0 for an unconditional model. */
  numClasses: number;
  /** σ of the Gaussian noise the training images carried (0: none); score denoising undoes it. */
  noiseStd: number;
  /** Text conditioning: encoder states of textTokens × textDim (absent or 0: none). */
  textTokens?: number;
  textDim?: number;
  /**
   * A latent model: the directory of its autoencoder (relative to the model's directory). Its
   * inChannels and imgSize are then the latents'; the images are the autoencoder's.
   */
  autoencoder?: string | null;
};

// ---- guidance ----

export type GuidanceRule = 'tarflow' | 'starflow';

export type Guidance = {
  weight: number;
  rule: GuidanceRule;
  /** Ramp the weight linearly along the sequence, (t/(T−1))·w for token t. */
  annealed: boolean;
  /** Attention temperature of the unconditional branch. */
  attnTemp: number;
  /** Model block indices that get guidance; all when absent. */
  blocks?: number[];
};

/** Text conditioning for sampling: encoder states [B, L, D] and, for guidance, the negative (e.g. the empty caption's) [B, L, D]. Borrowed, not consumed. */
export type TextConditioning = { states: Arr; negative?: Arr };

export const NO_GUIDANCE: Guidance = { weight: 0, rule: 'tarflow', annealed: false, attnTemp: 1 };

// ---- how a family samples ----

/**
 * One block of an autoregressive flow, as the solvers (sampling/solvers.ts) see it. The block is a
 * triangular system over a sequence of S positions: position 0 is an input only (TARFlow: token
 * 0, which passes through; with a learned start token, a placeholder the model replaces), and
 * the output for position j + 1 depends on positions ≤ j. The model owns everything inside a
 * step; the solvers own the order of the steps (sequential, Jacobi, GS-Jacobi) and the cache
 * writes.
 */
export interface BlockInverse<B = unknown> {
  /** Parameters the jitted step takes as an input (the block's weights in processing order). */
  params: B;
  /** The block's noise [B, T, D] (natural token order) → the solver sequence [B, S, D]. */
  toSequence(z: Arr): Arr;
  /** A solved sequence [B, S, D] → the block's input tokens [B, T, D] (natural order). */
  fromSequence(x: Arr): Arr;
  /** Conditioning rows for the step: labels (int32) and attention temperatures, [rows] and [rows, 1, 1, 1]. */
  conditioning: { labels: Arr; temps: Arr; rows: number };
}

/** What the solvers call inside a jitted step: pure functions of the static options. */
export interface FlowSteps<B = unknown, C = unknown, Pd = unknown> {
  /** Blocks whose steps share this key share compiled steps (with the model config). */
  shapeKey: string;
  /** A KV cache for `rows` rows written in chunks of `chunk` positions. */
  emptyCache(rows: number, chunk: number): C;
  /** Room for `n` positions fed one at a time before they are committed. */
  emptyPending(rows: number, n: number): Pd;
  /** The cache with `recent` written at positions start.. (a multiple of `chunk`); consumes all three. */
  commit(cache: C, recent: Pd, start: Arr, chunk: number): C;
  /**
   * Inverts L positions at once: from inputs u [B, L, D] at positions first..first+L−1 (after the
   * cache's 0..cacheEnd−1 and `pending`) and the noise z [B, L, D] of positions first+1..first+L,
   * the block's inputs at those positions. Guidance (when `guided`) combines a conditional and an
   * unconditional branch in the model's own parameter space; `weights` is [1, L, 1].
   */
  invert(
    params: B,
    io: { u: Arr; z: Arr; first: Arr; cacheEnd: Arr; cache: C; pending?: Pd; labels: Arr; temps: Arr; weights: Arr },
    how: { guided: boolean; rule: GuidanceRule },
  ): { x: Arr; recent: Pd };
}

/** An autoregressive flow: blocks inverted last to first, each by the solvers. */
export interface AutoregressiveSampler<P = Params> {
  kind: 'autoregressive';
  numBlocks: number;
  /** Positions S of every block's solver sequence (the first one known). */
  length: number;
  /** Block `blockIndex`'s step functions, which the solvers jit (pure given the config; compiled once per config, shapeKey and chunk shape). */
  steps(blockIndex: number): FlowSteps;
  /** The guidance rule the model samples with unless told otherwise. */
  guidanceRule: GuidanceRule;
  /** Whether block `blockIndex` samples with two branches under this guidance. */
  isGuided(g: Guidance, blockIndex: number): boolean;
  /** Block `blockIndex` set up for inverting noise z with these labels (or text) and guidance. */
  block(params: P, blockIndex: number, z: Arr, labels: number[] | undefined, g: Guidance, text?: TextConditioning): BlockInverse;
  /** Tokens [B, T, D] → images [B, C, H, W]. */
  toImages(x: Arr): Arr;
}

/** A family that maps noise to images in one call (closed-form or a fixed number of steps). */
export interface DirectSampler<P = Params> {
  kind: 'direct';
  /** Noise [B, ...noiseShape] → images [B, C, H, W]. */
  sample(params: P, z: Arr, labels: number[] | undefined, g: Guidance): Arr;
}

/** Integrators of a velocity field: Euler (one evaluation per step) and Heun (two). */
export type OdeSolverName = 'euler' | 'heun';

/**
 * A family that carries noise (time 1) to data (time 0) along a velocity field, in steps
 * (sampling/ode.ts): rectified flow's instantaneous velocity v(x, t), or MeanFlow's average
 * velocity u(x, r, t) over [r, t], for which one Euler step from t = 1 to r = 0 is a sample.
 */
export interface VelocitySampler<P = Params> {
  kind: 'velocity';
  /** The solvers that apply (Heun needs the instantaneous velocity). */
  solvers: readonly OdeSolverName[];
  /** Steps when the caller gives none. */
  defaultSteps: number;
  /** SD3's time shift s of the step schedule, t ↦ s·t / (1 + (s − 1)·t) (1: uniform steps). */
  timeShift: number;
  /**
   * The velocity [B, ...noiseShape] at x (time t [B]) for a step to time r [B]; labels int32 [B]
   * (−1: none) and text states [B, L, D] condition it. Consumes every argument but `params`'s
   * caller-held reference (the sampler passes a kept copy).
   */
  velocity(params: P, x: Arr, t: Arr, r: Arr, labels: Arr, text?: Arr): Arr;
  /** Samples [B, ...noiseShape] → images [B, C, H, W]. */
  toImages(x: Arr): Arr;
}

// ---- the family ----

export interface ModelFamily<C extends ModelConfig = ModelConfig, P extends Params = Params> {
  /** The `model` field of its configs. */
  readonly name: string;
  /** One line for `starflow info` and reports. */
  describe(cfg: C): string;
  /**
   * The module that defines the family (its import.meta.url): data-parallel workers import it
   * to have the family registered in their thread too.
   */
  readonly source: string;
  /** Validates a raw config (JSON/YAML), filling defaults; every error names the field. */
  parseConfig(raw: Record<string, unknown>, where: string): C;
  init(cfg: C, seed: number): P;
  /** Parameter names (dotted) and shapes a config implies, for loading weights. */
  paramShapes(cfg: C): Map<string, number[]>;
  /** The shape of one sample's noise. */
  noiseShape(cfg: C): number[];
  /** Noise given image-shaped, [n, C, H, W] → [n, ...noiseShape] (families whose noise is laid out otherwise, e.g. patch tokens). */
  noiseFromImages?(cfg: C, x: Arr): Arr;
  /** Shape of the standard-normal draws the loss takes per batch of `batch` (drawn by the trainer from the run's seed and step); none when absent. */
  lossNoiseShape?(cfg: C, batch: number): number[];
  /**
   * The training loss (a scalar) on images x [B, C, H, W] in [−1, 1] with labels y int32 [B]
   * (−1 = dropped; ignored by unconditional models), or, for a model with its own text encoder,
   * caption token ids y int32 [B, L] (all 0: the empty caption). For a family with `nll`, the mean of it, so
   * that the trainer can report bits/dim, unless `lossIsNll` is false.
   */
  loss(params: P, cfg: C, x: Arr, y: Arr, eps?: Arr): Arr;
  /** false: the loss is not the NLL (a regression loss), so the trainer does not report it as bits/dim. Default true. */
  readonly lossIsNll?: boolean;
  /** Exact negative log-likelihood per sample in nats per dimension (continuous density), [B]. */
  nll?(params: P, cfg: C, x: Arr, y: Arr, text?: Arr): Arr;
  /** false: `nll` runs jitted programs of its own (an ODE integration is too large to jit whole); callers then call it directly. Default true. */
  readonly jitNll?: boolean;
  /** Flows: data → noise [B, ...noiseShape] and the per-sample log-determinant per dimension [B]. */
  encode?(params: P, cfg: C, x: Arr, y: Arr, text?: Arr): { z: Arr; logdet: Arr };
  /** How it turns noise into images (one object per config). */
  sampler(cfg: C): AutoregressiveSampler<P> | DirectSampler<P> | VelocitySampler<P>;
  /**
   * A model with its own text encoder: its tokenizer, and the states [B, textTokens, textDim] of
   * token ids [B, textTokens] (consumes the ids, not the params); null for other models.
   */
  textEncoder?(cfg: C): { tokenizer: TokenizerConfig; encode(params: P, ids: Arr): Arr } | null;
}

/** Bits per dimension of 8-bit data on [−1, 1] from the NLL in nats per dimension of its density: the log 128 term is the bin width 2/256. */
export function bitsPerDim(natsPerDim: number): number {
  return (natsPerDim + Math.log(128)) / Math.LN2;
}

/** ½·log 2π: a standard normal's NLL per dimension beyond ½z². */
export const HALF_LOG_2PI = 0.5 * Math.log(2 * Math.PI);

/** A family, its config and its weights: what the library's functions take. A latent model carries its autoencoder. */
export type Model<C extends ModelConfig = ModelConfig, P extends Params = Params> = { family: ModelFamily<C, P>; cfg: C; params: P; autoencoder?: Autoencoder };

/** The images a model makes and scores: its own shape, or its autoencoder's for a latent model. */
export function imageShapeOf(model: Pick<Model, 'cfg' | 'autoencoder'>): { channels: number; size: number } {
  const c = model.autoencoder?.cfg ?? model.cfg;
  return { channels: c.inChannels, size: c.imgSize };
}

/**
 * Bits per dimension of a model's NLL in nats per dimension: of 8-bit pixels (bitsPerDim), or, for
 * a latent model, of its continuous latents (−log₂ p per latent dimension, no bin term: it measures
 * the flow's fit to the autoencoder's noisy latents and is not comparable with pixel bits/dim).
 */
export function bitsPerDimOf(model: Pick<Model, 'autoencoder'>, natsPerDim: number): number {
  return model.autoencoder ? natsPerDim / Math.LN2 : bitsPerDim(natsPerDim);
}
