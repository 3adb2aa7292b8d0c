// One autoregressive flow model for TARFlow ("Normalizing Flows are Capable Generative Models",
// apple/ml-tarflow) and STARFlow ("Scaling Latent Normalizing Flows", apple/ml-starflow): a stack
// of Transformer flow blocks over image patches. TARFlow is a configuration of it (uniform blocks,
// one-token shift, learned positions, exp scales); STARFlow adds a deep block next to the prior
// (optionally wider), a learned start token, RoPE, softplus scales with soft clipping, RMSNorm,
// SwiGLU, qk-norm, grouped-query attention, and conditioning in the deep block only. The whole
// method is here: the config, patchify, the block (forward = data → noise), the likelihood and
// loss, guidance, and the block's inverse step that every solver (sequential, Jacobi, GS-Jacobi) runs.
//
// Semantics follow the references exactly (see the parity tests): feature order c·p² + ki·p + kj;
// learned position embeddings permuted with the tokens, rotary positions by sequence index; a
// class embedding added to every token, label −1 meaning the mean class embedding; pre-norm
// layers; zero-initialised output projection; without a start token the outputs shift one token
// (token 0 passes through), with one every token is transformed; z = (x − b)/σ with σ = exp(a) or
// softplus(a + log(e − 1)); log-det = −mean(log σ) over tokens and features.
import { np, jnn, keep, release, Rng, type Arr } from '../engine/index.js';
import { layerNorm, rmsNorm, mlp, linear, embed, initLinear, initNorm, initNormal, type Linear, type Norm, type Mlp } from '../nn/layers.js';
import { ropeTables } from '../nn/rope.js';
import { patchify, unpatchify } from '../nn/patches.js';
import {
  causalSelfAttention,
  cachedSelfAttention,
  commitKv,
  emptyKvCache,
  emptyPendingKv,
  initAttention,
  type Attention,
  type AttentionShape,
  type KvCache,
  type PendingKv,
  type Rotation,
} from '../nn/attention.js';
import { shapesOf } from '../nn/params.js';
import { encodeText, initTextEncoder, parseTextEncoder, textEncoderShape, type TextEncoder, type TextEncoderConfig } from '../nn/text-encoder.js';
import { asObject, boolField, ConfigError, intField, numberField, withDefaults } from './config.js';
import { HALF_LOG_2PI, type AutoregressiveSampler, type BlockInverse, type FlowSteps, type Guidance, type GuidanceRule, type ModelFamily } from './model.js';

// ---- config ----

export type NormKind = 'layer' | 'rms' | 'none';

export type FlowConfig = {
  /** 'tarflow' and 'starflow' name the same model with different defaults. */
  model: 'tarflow' | 'starflow';
  inChannels: number;
  imgSize: number;
  patchSize: number;
  /** Transformer width ("channels" in the references). */
  width: number;
  numBlocks: number;
  /** Layers of each block in data → noise order; the last block, next to the prior, is the deep one; 0 = an identity block. */
  layersPerBlock: number[];
  /** Width of the deep block (ml-starflow's top_block_channels). */
  deepWidth: number;
  /** Head size; heads = width / headDim. */
  headDim: number;
  /** Key/value heads (grouped-query attention); 0 = one per query head. */
  kvHeads: number;
  mlpRatio: number;
  /** 'swiglu': down(gelu_tanh(gate(x)) · up(x)). */
  mlp: 'gelu' | 'swiglu';
  /** Pre-norm of attention and MLP: LayerNorm, RMSNorm with (1 + g) weights, or none. */
  norm: NormKind;
  qkNorm: boolean;
  /** RMSNorm after attention and MLP, before the residual add. */
  postNorm: boolean;
  /** Biases of the attention and MLP projections. */
  bias: boolean;
  /** RMSNorm before the output projection. */
  finalNorm: boolean;
  /** A learned start token (every token transformed) instead of the one-token shift. */
  startToken: boolean;
  positions: 'learned' | 'rope';
  /** RoPE positions are scaled to this many tokens per side (pt_seq_len). */
  ropeSeqLen: number;
  /** σ = exp(a) or softplus(a + log(e − 1)). */
  scale: 'exp' | 'softplus';
  /** > 0: the output projection is c·tanh(out / c) first. */
  softClip: number;
  /** Token order of the blocks: R2L flips odd blocks (TARFlow), L2R flips even ones (the deep block of an even stack reads in raster order). */
  order: 'R2L' | 'L2R';
  /** 0 for an unconditional (or text-conditional) model. */
  numClasses: number;
  /** Text prefix: tokens and features of text-encoder states (0, 0: none). */
  textTokens: number;
  textDim: number;
  /**
   * The model's own text encoder (src/nn/text-encoder.ts, width textDim over textTokens words of
   * this vocabulary), trained with the flow: its conditioning input is then token ids [B,
   * textTokens] (data/tokenizer.ts) instead of precomputed states. null: states come from outside.
   */
  textEncoder: TextEncoderConfig | null;
  /** Only the deep block is conditioned (labels or text). */
  condTopOnly: boolean;
  /** false: volume-preserving flow (shift only). */
  nvp: boolean;
  /** The σ of the Gaussian noise the model was trained with; used for score denoising. */
  noiseStd: number;
  /** Training: weight of Σ mean(z²) over the input and the shallow blocks' outputs. */
  latentNormReg: number;
  /** A latent flow: the directory of the autoencoder whose latents it models (relative to the model's directory); null: pixels. */
  autoencoder: string | null;
};

const TARFLOW_DEFAULTS = {
  headDim: 64, kvHeads: 0, mlpRatio: 4, mlp: 'gelu', norm: 'layer', qkNorm: false, postNorm: false, bias: true, finalNorm: false,
  startToken: false, positions: 'learned', scale: 'exp', softClip: 0, order: 'R2L', numClasses: 0, textTokens: 0, textDim: 0,
  condTopOnly: false, nvp: true, noiseStd: 0, latentNormReg: 0, textEncoder: null, autoencoder: null,
};
/** STARFlow's released image configuration, where it differs. */
const STARFLOW_DEFAULTS = { ...TARFLOW_DEFAULTS, startToken: true, positions: 'rope', scale: 'softplus', softClip: 4, order: 'L2R', finalNorm: true };
const REQUIRED = ['inChannels', 'imgSize', 'patchSize', 'width', 'numBlocks', 'layersPerBlock'] as const;

function choice<T extends string>(o: Record<string, unknown>, k: string, options: readonly T[], where: string): T {
  const v = o[k];
  if (typeof v !== 'string' || !(options as readonly string[]).includes(v)) {
    throw new ConfigError(`${where}: '${k}' must be one of ${options.map((x) => `'${x}'`).join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as T;
}

export function parseFlowConfig(raw: unknown, where = 'model config'): FlowConfig {
  const obj = asObject(raw, where);
  const model = obj.model ?? 'tarflow';
  if (model !== 'tarflow' && model !== 'starflow') throw new ConfigError(`${where}: 'model' must be 'tarflow' or 'starflow', got ${JSON.stringify(model)}`);
  const side = typeof obj.imgSize === 'number' && typeof obj.patchSize === 'number' ? obj.imgSize / obj.patchSize : 0;
  const defaults = { ...(model === 'starflow' ? STARFLOW_DEFAULTS : TARFLOW_DEFAULTS), model, deepWidth: obj.width, ropeSeqLen: side };
  const o = withDefaults(obj, defaults, REQUIRED, where);
  const int = (k: string, min: number) => intField(o, k, where, min);
  const numBlocks = int('numBlocks', 1);
  const lpb = o.layersPerBlock;
  // A single count (TARFlow configs) means the same for every block.
  const layersPerBlock = typeof lpb === 'number' ? new Array<number>(numBlocks).fill(lpb) : lpb;
  if (!Array.isArray(layersPerBlock) || layersPerBlock.length !== numBlocks || layersPerBlock.some((n) => !Number.isInteger(n) || (n as number) < 0)) {
    throw new ConfigError(`${where}: 'layersPerBlock' must be an integer ≥ 1 or a list of ${numBlocks} integers ≥ 0, got ${JSON.stringify(lpb)}`);
  }
  if ((layersPerBlock as number[]).at(-1) === 0) throw new ConfigError(`${where}: 'layersPerBlock': the last (deep) block cannot be an identity block`);
  const cfg: FlowConfig = {
    model,
    inChannels: int('inChannels', 1),
    imgSize: int('imgSize', 1),
    patchSize: int('patchSize', 1),
    width: int('width', 1),
    numBlocks,
    layersPerBlock: layersPerBlock as number[],
    deepWidth: int('deepWidth', 1),
    headDim: int('headDim', 1),
    kvHeads: int('kvHeads', 0),
    mlpRatio: numberField(o, 'mlpRatio', where, 0),
    mlp: choice(o, 'mlp', ['gelu', 'swiglu'], where),
    norm: choice(o, 'norm', ['layer', 'rms', 'none'], where),
    qkNorm: boolField(o, 'qkNorm', where),
    postNorm: boolField(o, 'postNorm', where),
    bias: boolField(o, 'bias', where),
    finalNorm: boolField(o, 'finalNorm', where),
    startToken: boolField(o, 'startToken', where),
    positions: choice(o, 'positions', ['learned', 'rope'], where),
    ropeSeqLen: numberField(o, 'ropeSeqLen', where, 0),
    scale: choice(o, 'scale', ['exp', 'softplus'], where),
    softClip: numberField(o, 'softClip', where, 0),
    order: choice(o, 'order', ['R2L', 'L2R'], where),
    numClasses: int('numClasses', 0),
    textTokens: int('textTokens', 0),
    textDim: int('textDim', 0),
    condTopOnly: boolField(o, 'condTopOnly', where),
    nvp: boolField(o, 'nvp', where),
    noiseStd: numberField(o, 'noiseStd', where, 0),
    latentNormReg: numberField(o, 'latentNormReg', where, 0),
    textEncoder: null,
    autoencoder: null,
  };
  const fail = (msg: string) => {
    throw new ConfigError(`${where}: ${msg}`);
  };
  if (cfg.imgSize % cfg.patchSize !== 0) fail(`'imgSize' (${cfg.imgSize}) must be a multiple of 'patchSize' (${cfg.patchSize})`);
  for (const k of ['width', 'deepWidth'] as const) if (cfg[k] % cfg.headDim !== 0) fail(`'${k}' (${cfg[k]}) must be a multiple of 'headDim' (${cfg.headDim})`);
  if ((cfg.imgSize / cfg.patchSize) ** 2 < 2) fail('the image must have at least 2 patches');
  if (cfg.mlpRatio <= 0 || Math.floor(cfg.width * cfg.mlpRatio) < 1) fail(`'mlpRatio' must be > 0, got ${cfg.mlpRatio}`);
  for (const w of [cfg.width, cfg.deepWidth]) {
    const heads = w / cfg.headDim;
    if (cfg.kvHeads > 0 && heads % cfg.kvHeads !== 0) fail(`'kvHeads' (${cfg.kvHeads}) must divide the heads of every block (${heads} at width ${w})`);
  }
  if ((cfg.textTokens > 0) !== (cfg.textDim > 0)) fail(`'textTokens' and 'textDim' are both 0 (no text) or both > 0, got ${cfg.textTokens} and ${cfg.textDim}`);
  if (cfg.textDim > 0 && cfg.numClasses > 0) fail('a model is conditioned by class labels or by text, not both');
  if (o.autoencoder !== null) {
    if (typeof o.autoencoder !== 'string' || o.autoencoder.trim() === '') fail(`'autoencoder' must be null or the directory of an autoencoder, got ${JSON.stringify(o.autoencoder)}`);
    cfg.autoencoder = o.autoencoder as string;
  }
  if (o.textEncoder !== null) cfg.textEncoder = parseTextEncoder(o.textEncoder, cfg, fail);
  if (cfg.condTopOnly && cfg.numClasses === 0 && cfg.textDim === 0) fail("'condTopOnly' needs a conditional model (numClasses or textTokens)");
  if (cfg.positions === 'rope') {
    const half = cfg.headDim / 2;
    if (half % 2 !== 0) fail(`RoPE needs 'headDim' divisible by 4, got ${cfg.headDim}`);
    if (cfg.textTokens > 0 && half - 8 < 2) fail(`RoPE with text needs 'headDim' ≥ 20 (8 rotary frequencies go to the text axis), got ${cfg.headDim}`);
  }
  return cfg;
}

/** Sizes derived from a config. */
export function tokenShape(cfg: FlowConfig): { tokens: number; tokenDim: number; dims: number } {
  const side = cfg.imgSize / cfg.patchSize;
  return {
    tokens: side * side,
    tokenDim: cfg.inChannels * cfg.patchSize * cfg.patchSize,
    dims: cfg.inChannels * cfg.imgSize * cfg.imgSize,
  };
}

/** What block i is: its layers and width, whether it reads tokens reversed, whether it is conditioned. */
export type BlockSpec = { index: number; layers: number; width: number; deep: boolean; flipped: boolean; conditioned: boolean; text: boolean };

export function blockSpec(cfg: FlowConfig, i: number): BlockSpec {
  const deep = i === cfg.numBlocks - 1;
  const conditioned = (cfg.numClasses > 0 || cfg.textDim > 0) && (deep || !cfg.condTopOnly);
  return {
    index: i,
    layers: cfg.layersPerBlock[i]!,
    width: deep ? cfg.deepWidth : cfg.width,
    deep,
    flipped: cfg.order === 'R2L' ? i % 2 === 1 : i % 2 === 0,
    conditioned,
    text: conditioned && cfg.textDim > 0,
  };
}

/** Blocks that transform (identity blocks left out), in data → noise order. */
export function activeBlocks(cfg: FlowConfig): BlockSpec[] {
  return cfg.layersPerBlock.flatMap((n, i) => (n > 0 ? [blockSpec(cfg, i)] : []));
}

type SwiGlu = { gate: Linear; up: Linear; down: Linear };
export type Layer = { attnNorm?: Norm; attn: Attention; attnPost?: Norm; mlpNorm?: Norm; mlp: Mlp | SwiGlu; mlpPost?: Norm };
export type Block = {
  pos?: Arr;
  classEmbed?: Arr;
  /** The learned start token [1, D]. */
  start?: Arr;
  projIn: Linear;
  projText?: Linear;
  layers: Layer[];
  finalNorm?: Norm;
  projOut: Linear;
};
/** An identity block (0 layers) has no parameters: its entry is empty. `text`: the model's own text encoder. */
export type FlowParams = { blocks: Block[]; text?: TextEncoder };

// ---- parameters ----

function initLayerNorm(cfg: FlowConfig, width: number): Norm | undefined {
  if (cfg.norm === 'none') return undefined;
  return cfg.norm === 'layer' ? initNorm(width) : initNorm(width, { bias: false, zero: true });
}

export function initFlow(cfg: FlowConfig, seed: number): FlowParams {
  const { tokens, tokenDim } = tokenShape(cfg);
  const root = new Rng(seed);
  const blocks = Array.from({ length: cfg.numBlocks }, (_, b): Block => {
    const spec = blockSpec(cfg, b);
    if (spec.layers === 0) return {} as Block;
    const c = spec.width;
    const shape = attentionShape(cfg, c);
    const rng = root.fork(b);
    const rms = () => initNorm(c, { bias: false, zero: true });
    const layers = Array.from({ length: spec.layers }, (_, l): Layer => {
      const hidden = Math.floor(c * cfg.mlpRatio);
      const mrng = rng.fork(101 + 2 * l);
      const layer: Layer = {
        attnNorm: initLayerNorm(cfg, c),
        attn: initAttention(rng.fork(100 + 2 * l), c, shape, { bias: cfg.bias, qkNorm: cfg.qkNorm }),
        mlpNorm: initLayerNorm(cfg, c),
        mlp:
          cfg.mlp === 'gelu'
            ? { fc1: initLinear(mrng.fork(0), c, hidden, { bias: cfg.bias }), fc2: initLinear(mrng.fork(1), hidden, c, { bias: cfg.bias }) }
            : { gate: initLinear(mrng.fork(0), c, hidden, { bias: cfg.bias }), up: initLinear(mrng.fork(2), c, hidden, { bias: cfg.bias }), down: initLinear(mrng.fork(1), hidden, c, { bias: cfg.bias }) },
      };
      if (cfg.postNorm) Object.assign(layer, { attnPost: rms(), mlpPost: rms() });
      for (const k of Object.keys(layer) as (keyof Layer)[]) if (layer[k] === undefined) delete layer[k];
      return layer;
    });
    // Keys in a fixed order (position table first, as TARFlow checkpoints list them).
    const block: Block = {
      ...(cfg.positions === 'learned' ? { pos: initNormal(rng.fork(0), [tokens, c], 0.01) } : {}),
      ...(cfg.numClasses > 0 && spec.conditioned ? { classEmbed: initNormal(rng.fork(1), [cfg.numClasses, c], 0.01) } : {}),
      ...(cfg.startToken ? { start: initNormal(rng.fork(4), [1, tokenDim], 1) } : {}),
      projIn: initLinear(rng.fork(2), tokenDim, c),
      ...(spec.text ? { projText: initLinear(rng.fork(5), cfg.textDim, c) } : {}),
      layers,
      ...(cfg.finalNorm ? { finalNorm: rms() } : {}),
      // Zero weight, default bias: the untrained flow is close to, not exactly, the identity.
      projOut: initLinear(rng.fork(3), c, 2 * tokenDim, { zeroWeight: true }),
    };
    return block;
  });
  return cfg.textEncoder ? { blocks, text: initTextEncoder(root.fork(1000), textEncoderShape(cfg)) } : { blocks };
}

export function attentionShape(cfg: FlowConfig, width = cfg.width): AttentionShape {
  const heads = width / cfg.headDim;
  return cfg.kvHeads > 0 && cfg.kvHeads !== heads ? { heads, headDim: cfg.headDim, kvHeads: cfg.kvHeads } : { heads, headDim: cfg.headDim };
}

function flipTokens(x: Arr): Arr {
  return np.flip(x, 1);
}

// ---- the block ----

/** Conditioning shared by every token: the class embedding (mean row for label −1), [B, 1, C]. */
function classBias(block: Block, labels: Arr | undefined): Arr | undefined {
  if (!block.classEmbed) {
    labels?.dispose();
    return undefined;
  }
  if (!labels) throw new Error('a class-conditional model needs labels');
  const e = embed(block.classEmbed, labels);
  return e.reshape([e.shape[0]!, 1, e.shape[1]!]);
}

function normed(cfg: FlowConfig, p: Norm | undefined, h: Arr): Arr {
  if (!p) return h;
  return cfg.norm === 'layer' ? layerNorm(p, h) : rmsNorm(p, h, 1e-6, 1);
}

function post(p: Norm | undefined, h: Arr): Arr {
  return p ? rmsNorm(p, h, 1e-6, 1) : h;
}

function feedForward(cfg: FlowConfig, p: Mlp | SwiGlu, h: Arr): Arr {
  if (cfg.mlp === 'gelu') return mlp(p as Mlp, h);
  const g = p as SwiGlu;
  return linear(g.down, jnn.gelu(linear(g.gate, h.ref), { approximate: true }).mul(linear(g.up, h)));
}

function transformerLayer(cfg: FlowConfig, l: Layer, h: Arr, shape: AttentionShape, rot?: Rotation): Arr {
  h = h.ref.add(post(l.attnPost, causalSelfAttention(l.attn, normed(cfg, l.attnNorm, h), shape, 1, rot)));
  return h.ref.add(post(l.mlpPost, feedForward(cfg, l.mlp, normed(cfg, l.mlpNorm, h))));
}

/**
 * The output projection's affine parameters: log σ and the shift b (log σ = 0 for a
 * volume-preserving flow). Soft clipping bounds the whole projection before the split.
 */
function affineOf(out: Arr, cfg: FlowConfig): [Arr, Arr] {
  if (cfg.softClip > 0) out = np.tanh(out.mul(1 / cfg.softClip)).mul(cfg.softClip);
  const d = out.shape[2]! / 2;
  const a = out.ref.slice([], [], [0, d]);
  const b = out.slice([], [], [d, 2 * d]);
  if (!cfg.nvp) return [np.zerosLike(a), b];
  return [cfg.scale === 'exp' ? a : np.log(jnn.softplus(a.add(INV_SOFTPLUS_1))), b];
}

/** softplus(log(e − 1)) = 1: σ = 1 where the projection is 0. */
const INV_SOFTPLUS_1 = Math.log(Math.E - 1);

/** Rotary tables of a block's sequence (text prefix first), or undefined with learned positions. */
export function blockRotation(cfg: FlowConfig, spec: BlockSpec): Rotation | undefined {
  if (cfg.positions !== 'rope') return undefined;
  return ropeTables({ side: cfg.imgSize / cfg.patchSize, headDim: cfg.headDim, ptSeqLen: cfg.ropeSeqLen, textTokens: cfg.textTokens, textPrefix: spec.text });
}

/**
 * One flow block, data → noise. x: [B, T, D] tokens in natural order; text: [B, L, textDim]
 * encoder states for a text-conditioned block. Returns z (same order) and the per-sample
 * log-determinant per dimension, −mean(log σ).
 */
export function blockForward(
  block: Block,
  x: Arr,
  labels: Arr | undefined,
  spec: BlockSpec,
  cfg: FlowConfig,
  text?: Arr,
): { z: Arr; logdet: Arr } {
  const shape = attentionShape(cfg, spec.width);
  const [batch, t] = x.shape as [number, number, number];
  if (spec.flipped) x = flipTokens(x);
  // With a start token the network reads [start, x₀ … x_{T−2}] and transforms every token;
  // without one it reads x and its outputs shift by one token (token 0 passes through).
  const input = block.start
    ? np.concatenate([np.broadcastTo(block.start.reshape([1, 1, -1]), [batch, 1, x.shape[2]!]), x.ref.slice([], [0, t - 1])], 1)
    : x.ref;
  let h = linear(block.projIn, input);
  if (block.pos) h = h.add(spec.flipped ? np.flip(block.pos, 0) : block.pos); // embeddings stay tied to their patches
  const cls = classBias(block, labels);
  if (cls) h = h.add(cls);
  let prefix = 0;
  if (spec.text) {
    if (!text || !block.projText) throw new Error('a text-conditioned block needs text states');
    const y = linear(block.projText, text);
    prefix = y.shape[1]!;
    h = np.concatenate([y, h], 1);
  } else text?.dispose();
  const rot = blockRotation(cfg, spec);
  for (const l of block.layers) h = transformerLayer(cfg, l, h, shape, rot && { cos: rot.cos.ref, sin: rot.sin.ref });
  if (rot) {
    rot.cos.dispose();
    rot.sin.dispose();
  }
  if (prefix) h = h.slice([], [prefix, prefix + t]);
  if (block.finalNorm) h = rmsNorm(block.finalNorm, h, 1e-6, 1);
  let out = linear(block.projOut, h);
  if (!block.start) out = np.pad(out.slice([], [0, t - 1]), [[0, 0], [1, 0], [0, 0]]); // token 0 gets a = b = 0
  const [logScale, b] = affineOf(out, cfg);
  let z = cfg.scale === 'exp' ? x.sub(b).mul(np.exp(logScale.ref.neg())) : x.sub(b).div(np.exp(logScale.ref));
  if (spec.flipped) z = flipTokens(z);
  return { z, logdet: logScale.mean([1, 2]).neg() };
}

// ---- the model ----

export type ForwardResult = {
  /** Noise tokens [B, T, D]. */
  z: Arr;
  /** Σ over blocks of the per-dimension log-determinant, [B]. */
  logdet: Arr;
  /** Σ over the input and the shallow blocks' outputs of mean(x²) per sample, [B] (the latent-norm regulariser's term). */
  latentNorm?: Arr;
};

/**
 * Data → noise through every block. x: images [B, C, H, W]; labels: int32 [B] (−1 = dropped);
 * text: [B, L, textDim] for text-conditioned models.
 */
export function forward(params: FlowParams, cfg: FlowConfig, x: Arr, labels?: Arr, text?: Arr, withLatentNorm = false): ForwardResult {
  let z = patchify(x, cfg.patchSize);
  let logdet: Arr | undefined;
  let latentNorm: Arr | undefined;
  const addNorm = (v: Arr) => {
    const m = np.square(v).mean([1, 2]);
    latentNorm = latentNorm ? latentNorm.add(m) : m;
  };
  for (let i = 0; i < cfg.numBlocks; i++) {
    const spec = blockSpec(cfg, i);
    if (withLatentNorm && !spec.deep) addNorm(z.ref);
    if (spec.layers === 0) continue; // identity: z unchanged, log-det 0
    const r = blockForward(params.blocks[i]!, z, labels?.ref, spec, cfg, text?.ref);
    z = r.z;
    logdet = logdet ? logdet.add(r.logdet) : r.logdet;
  }
  labels?.dispose();
  text?.dispose();
  return { z, logdet: logdet!, ...(latentNorm ? { latentNorm } : {}) };
}

/** The reference's training loss, 0.5·mean(z²) − mean(logdet): the NLL per dimension minus ½·log 2π. */
export function flowLoss(z: Arr, logdet: Arr): Arr {
  return np.square(z).mean().mul(0.5).sub(logdet.mean());
}

/** Negative log-likelihood per sample in nats per dimension of the density, [B]. */
export function flowNll(z: Arr, logdet: Arr): Arr {
  return np.square(z).mean([1, 2]).mul(0.5).add(HALF_LOG_2PI).sub(logdet);
}

const conditional = (cfg: FlowConfig, y: Arr): Arr | undefined => (cfg.numClasses > 0 ? y : (y.dispose(), undefined));

/**
 * The text states of a batch: given (`text`), or, for a model with its own encoder, encoded from
 * the token ids in `y` [B, textTokens]. Consumes `params.text` when it encodes.
 */
function textOf(params: FlowParams, cfg: FlowConfig, y: Arr, text?: Arr): Arr | undefined {
  if (text || !cfg.textEncoder) {
    if (params.text) release(params.text);
    return text;
  }
  if (!params.text) throw new Error('a model with a text encoder needs its weights (params.text)');
  return encodeText(params.text, textEncoderShape(cfg), y.ref);
}


// ---- guidance ----

/**
 * Combines the conditional and unconditional predictions of log-scale a and shift b.
 * - tarflow: linear extrapolation of a and b separately, a + w(a − a_u), b + w(b − b_u).
 * - starflow: the Gaussian N(μ_c, σ_c²)^(1+w) / N(μ_u, σ_u²)^w, with the precision kept
 *   ≥ 1/σ_c² by clipping σ_c/σ_u at 1.
 * `w` may be an array (per position, for annealed guidance).
 */
export function guide(rule: GuidanceRule, ac: Arr, bc: Arr, au: Arr, bu: Arr, w: Arr): [Arr, Arr] {
  if (rule === 'tarflow') {
    const a = ac.ref.add(ac.sub(au).mul(w.ref));
    const b = bc.ref.add(bc.sub(bu).mul(w));
    return [a, b];
  }
  const ratio = np.minimum(np.exp(ac.ref.sub(au)), 1);
  const s = np.square(ratio);
  const denom = w.ref.add(1).sub(w.ref.mul(s.ref)); // 1 + w − w·s ≥ 1
  const a = ac.sub(np.log(denom.ref).mul(0.5));
  const b = w.ref.add(1).mul(bc).sub(w.mul(s).mul(bu)).div(denom);
  return [a, b];
}

// ---- the inverse: one block step for the solvers ----

/** Per-block sampling state: one KV cache per layer. */
export type BlockCache = KvCache[];
/** A block as the sampling steps take it: its weights in processing order and, for a text-conditioned block, the text prefix's keys and values per layer. */
export type StepBlock = Block & { prefix?: BlockCache };

/**
 * The text prefix through a block's layers, as ml-starflow encodes it into the KV cache before
 * sampling: the text tokens see only each other (causally). Returns each layer's keys and values.
 * Consumes `block` (its text projection and layers) and `text` ([R, L, textDim]).
 */
function encodeTextPrefix(block: Pick<Block, 'projText' | 'layers'>, text: Arr, cfg: FlowConfig, spec: BlockSpec): BlockCache {
  const shape = attentionShape(cfg, spec.width);
  const [rows, l] = text.shape as [number, number, number];
  let h = linear(block.projText!, text);
  const rot = blockRotation(cfg, spec);
  const prefix: BlockCache = [];
  for (const layer of block.layers) {
    const r = rot && { cos: rot.cos.ref.slice([0, l]), sin: rot.sin.ref.slice([0, l]) };
    let kv: PendingKv;
    [h, kv] = cachedLayer(cfg, layer, h, { cache: emptyKvCache(rows, 1, shape), cacheEnd: np.array(0, { dtype: np.int32 }), shape, temp: 1, rot: r });
    prefix.push({ kT: kv.kT, v: kv.v });
  }
  h.dispose();
  if (rot) {
    rot.cos.dispose();
    rot.sin.dispose();
  }
  return prefix;
}
/** Per layer, a chunk's keys and values not yet in the cache. */
export type BlockPending = PendingKv[];

/** One layer over new tokens h with cached attention (nn/attention.ts: cachedSelfAttention); returns h and the new keys and values. */
function cachedLayer(
  cfg: FlowConfig,
  layer: Layer,
  h: Arr,
  a: { cache: KvCache; cacheEnd: Arr; shape: AttentionShape; temp: number | Arr; pending?: PendingKv; rot?: Rotation; prefix?: KvCache },
): [Arr, PendingKv] {
  const [att, kv] = cachedSelfAttention(layer.attn, normed(cfg, layer.attnNorm, h.ref), a.cache, a.cacheEnd, a.shape, a.temp, a.pending, a.rot, a.prefix);
  h = h.add(post(layer.attnPost, att));
  return [h.ref.add(post(layer.mlpPost, feedForward(cfg, layer.mlp, normed(cfg, layer.mlpNorm, h)))), kv];
}

/** One-hot [L, n] rows picking positions first..first+L−1, so shapes stay static. */
function positionRows(first: Arr, l: number, n: number): Arr {
  const rows = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(first);
  return rows.reshape([l, 1]).equal(np.arange(n, undefined, undefined, { dtype: np.int32 }).reshape([1, n])).astype(np.float32);
}

/**
 * Runs L input tokens u (processing order, [B, L, D]) through a block and returns the affine
 * parameters (log σ, b) they predict for the tokens one position later. The tokens come right
 * after `pending` (per layer: keys and values of positions cacheEnd.. not yet in the cache), which
 * comes right after the cache's positions 0..cacheEnd−1. Also returns `pending` extended by u.
 * The cache itself is only read. `block.pos` is the position table in processing order.
 */
export function blockStep(
  block: StepBlock,
  u: Arr,
  cacheEnd: Arr,
  cache: BlockCache,
  labels: Arr | undefined,
  cfg: FlowConfig,
  spec: BlockSpec,
  temp: number | Arr = 1,
  pending?: BlockPending,
): { a: Arr; b: Arr; recent: BlockPending } {
  const shape = attentionShape(cfg, spec.width);
  const l = u.shape[1]!;
  const first = cacheEnd.ref.add(pending?.[0]?.filled ?? 0);
  let h = linear(block.projIn, u);
  if (block.pos) h = h.add(np.matmul(positionRows(first.ref, l, block.pos.shape[0]!), block.pos));
  const rot = blockRotation(cfg, spec);
  const prefixLength = block.prefix?.[0]?.v.shape[2] ?? 0; // rotary rows of the text come first
  let pick: Arr | undefined;
  if (rot) pick = positionRows(first.add(prefixLength), l, rot.cos.shape[0]!);
  else first.dispose();
  const cls = classBias(block, labels);
  if (cls) h = h.add(cls);
  const recent: BlockPending = [];
  block.layers.forEach((layer, i) => {
    const t = typeof temp === 'number' ? temp : temp.ref;
    const c = cache[i]!;
    const r = rot && pick && { cos: np.matmul(pick.ref, rot.cos.ref), sin: np.matmul(pick.ref, rot.sin.ref) };
    let kv: PendingKv;
    [h, kv] = cachedLayer(cfg, layer, h, { cache: { kT: c.kT.ref, v: c.v.ref }, cacheEnd: cacheEnd.ref, shape, temp: t, pending: pending?.[i], rot: r, prefix: block.prefix?.[i] });
    recent.push(kv);
  });
  pick?.dispose();
  if (rot) {
    rot.cos.dispose();
    rot.sin.dispose();
  }
  cacheEnd.dispose();
  if (typeof temp !== 'number') temp.dispose();
  if (block.finalNorm) h = rmsNorm(block.finalNorm, h, 1e-6, 1);
  const [a, b] = affineOf(linear(block.projOut, h), cfg);
  return { a, b, recent };
}

/** The solvers' step functions for one block: x = z·σ + b with (σ, b) from the block, guided. */
function flowSteps(cfg: FlowConfig, spec: BlockSpec): FlowSteps<Block, BlockCache, BlockPending> {
  const { tokens } = tokenShape(cfg);
  const shape = attentionShape(cfg, spec.width);
  return {
    shapeKey: `${spec.width}x${spec.layers}${spec.conditioned ? 'c' : ''}`,
    emptyCache: (rows, chunk) => Array.from({ length: spec.layers }, () => emptyKvCache(rows, tokens, shape, chunk)),
    emptyPending: (rows, n) => Array.from({ length: spec.layers }, () => emptyPendingKv(rows, n, shape)),
    commit(cache, recent, start, chunk) {
      const out = cache.map((c, i) => commitKv(c, recent[i]!, start.ref, chunk));
      start.dispose();
      return out;
    },
    invert(block, io, how) {
      const batch = io.z.shape[0]!;
      const labels = conditional(cfg, io.labels);
      const rows = how.guided ? np.concatenate([io.u.ref, io.u], 0) : io.u;
      const r = blockStep(block, rows, io.cacheEnd, io.cache, labels, cfg, spec, io.temps, io.pending);
      let a = r.a;
      let b = r.b;
      if (how.guided) {
        const half = (v: Arr, i: number) => v.slice([i * batch, (i + 1) * batch]);
        [a, b] = guide(how.rule, half(a.ref, 0), half(b.ref, 0), half(a, 1), half(b, 1), io.weights);
      } else io.weights.dispose();
      io.first.dispose();
      return { x: io.z.mul(np.exp(a)).add(b), recent: r.recent };
    },
  };
}

/** Block `bi`'s parameters (new references) with its position table in processing order. */
export function blockInOrder(params: FlowParams, cfg: FlowConfig, bi: number): Block {
  const { pos, ...rest } = params.blocks[bi]!;
  const block = keep(rest) as Block;
  if (pos) block.pos = blockSpec(cfg, bi).flipped ? np.flip(pos.ref, 0) : pos.ref;
  return block;
}

function flowSampler(cfg: FlowConfig): AutoregressiveSampler<FlowParams> {
  const { tokens } = tokenShape(cfg);
  const active = activeBlocks(cfg);
  const isGuided = (g: Guidance, k: number) => {
    const spec = active[k]!;
    if (g.weight === 0) return false;
    if (!spec.conditioned && g.attnTemp === 1) return false; // both branches would be identical
    return !g.blocks || g.blocks.includes(spec.index);
  };
  // One step-function set per block shape (shallow and deep blocks differ in width and depth).
  const steps = active.map((spec) => flowSteps(cfg, spec) as FlowSteps);
  return {
    kind: 'autoregressive',
    numBlocks: active.length,
    guidanceRule: cfg.model === 'starflow' ? 'starflow' : 'tarflow',
    // With a start token the solver sequence is [start, x₀ … x_{T−1}]: position 0 known, T to solve.
    length: cfg.startToken ? tokens + 1 : tokens,
    steps: (k) => steps[k]!,
    isGuided,
    block(params, k, z, labels, g, text): BlockInverse<StepBlock> {
      const spec = active[k]!;
      const flipped = spec.flipped;
      const guided = isGuided(g, k);
      const batch = z.shape[0]!;
      const rows = guided ? 2 * batch : batch;
      const ys = labels ?? new Array<number>(batch).fill(0);
      const block: StepBlock = blockInOrder(params, cfg, spec.index);
      if (spec.text) {
        if (!text) throw new Error('a text-conditioned block needs text states');
        // Guided rows: the conditional batch, then the negative (ml-starflow's [text; negative] batch).
        const states = guided ? np.concatenate([text.states.ref, text.negative!.ref], 0) : text.states.ref;
        block.prefix = encodeTextPrefix(keep({ projText: block.projText!, layers: block.layers } as never) as Pick<Block, 'projText' | 'layers'>, states, cfg, spec);
      }
      const start = block.start;
      const order = (x: Arr) => (flipped ? flipTokens(x) : x);
      return {
        params: block,
        toSequence: (x) => (start ? np.concatenate([np.broadcastTo(start.ref.reshape([1, 1, -1]), [batch, 1, x.shape[2]!]), order(x)], 1) : order(x)),
        fromSequence: (x) => order(start ? x.slice([], [1, tokens + 1]) : x),
        conditioning: {
          rows,
          labels: np.array(Int32Array.from(guided ? [...ys, ...ys.map(() => -1)] : ys), { dtype: np.int32 }),
          temps: np.array(Float32Array.from({ length: rows }, (_, r) => (r >= batch ? g.attnTemp : 1)), { shape: [rows, 1, 1, 1] }),
        },
      };
    },
    toImages: (x) => unpatchify(x, cfg),
  };
}

// ---- the families: one model, two names ----

const samplers = new Map<string, AutoregressiveSampler<FlowParams>>();

function describeFlow(cfg: FlowConfig): string {
  const layers = new Set(cfg.layersPerBlock).size === 1 ? `${cfg.numBlocks} blocks × ${cfg.layersPerBlock[0]} layers` : `blocks of ${cfg.layersPerBlock.join(', ')} layers`;
  const deep = cfg.deepWidth !== cfg.width ? ` (deep block ${cfg.deepWidth})` : '';
  const encoder = cfg.textEncoder ? `, its own ${cfg.textEncoder.layers}-layer encoder over ${cfg.textEncoder.vocab.length} words` : '';
  const cond = cfg.textDim > 0 ? `text (${cfg.textTokens} × ${cfg.textDim}${encoder})` : `${cfg.numClasses} classes`;
  const space = cfg.autoencoder ? `latents (of the autoencoder in ${cfg.autoencoder}/)` : 'images';
  return `${cfg.model === 'starflow' ? 'STARFlow' : 'TARFlow'}: ${layers}, width ${cfg.width}${deep}, ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize} ${space} in ${cfg.patchSize}×${cfg.patchSize} patches, ${cond}`;
}

function flowFamily(name: 'tarflow' | 'starflow'): ModelFamily<FlowConfig, FlowParams> {
  return {
    name,
    source: import.meta.url,
    describe: describeFlow,
    parseConfig: (raw, where) => parseFlowConfig({ model: name, ...(raw as object) }, where),
    init: initFlow,
    paramShapes: (cfg) => shapesOf(() => initFlow(cfg, 0)),
    noiseShape: (cfg) => {
      const { tokens, tokenDim } = tokenShape(cfg);
      return [tokens, tokenDim];
    },
    noiseFromImages: (cfg, x) => patchify(x, cfg.patchSize),
    loss(params, cfg, x, y) {
      const text = textOf(params, cfg, y);
      const r = forward(params, cfg, x, conditional(cfg, y), text, cfg.latentNormReg > 0);
      const nll = flowLoss(r.z, r.logdet).add(HALF_LOG_2PI);
      return r.latentNorm ? nll.add(r.latentNorm.mean().mul(cfg.latentNormReg)) : nll;
    },
    encode: (params, cfg, x, y, text) => {
      const states = textOf(params, cfg, y, text);
      return forward(params, cfg, x, conditional(cfg, y), states);
    },
    nll(params, cfg, x, y, text) {
      const states = textOf(params, cfg, y, text);
      const r = forward(params, cfg, x, conditional(cfg, y), states);
      return flowNll(r.z, r.logdet);
    },
    textEncoder: (cfg) =>
      cfg.textEncoder
        ? { tokenizer: { vocab: cfg.textEncoder.vocab, maxTokens: cfg.textTokens }, encode: (params, ids) => encodeText(keep(params.text!), textEncoderShape(cfg), ids) }
        : null,
    sampler(cfg) {
      const key = JSON.stringify(cfg);
      let s = samplers.get(key);
      if (!s) samplers.set(key, (s = flowSampler(cfg)));
      return s;
    },
  };
}

export const tarflow = flowFamily('tarflow');
export const starflow = flowFamily('starflow');
