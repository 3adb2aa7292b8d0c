// TARFlow ("Normalizing Flows are Capable Generative Models"): a stack of autoregressive
// Transformer flow blocks over image patches, alternating token order. The whole method is here:
// the config, patchify, the block (forward = data → noise), the likelihood and loss, guidance,
// and the block's inverse step that every solver (sequential, Jacobi, GS-Jacobi) runs.
//
// Semantics follow apple/ml-tarflow exactly (see the parity test): feature order c·p² + ki·p + kj;
// learned position embeddings permuted with the tokens; a class embedding added to every token,
// label −1 meaning the mean class embedding; pre-norm layers; zero-initialised output projection;
// outputs shifted one token so token t depends on tokens < t (token 0 passes through);
// z = (x − b)·exp(−a); log-det = −mean(a) over tokens and features.
import { np, keep, Rng, type Arr } from '../engine/index.js';
import { layerNorm, mlp, linear, embed, initLinear, initNorm, initNormal, initMlp, type Linear, type Norm, type Mlp } from '../nn/layers.js';
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
} from '../nn/attention.js';
import { shapesOf } from '../nn/params.js';
import { asObject, boolField, ConfigError, intField, numberField, withDefaults } from './config.js';
import { HALF_LOG_2PI, type AutoregressiveSampler, type BlockInverse, type FlowSteps, type Guidance, type GuidanceRule, type ModelFamily } from './model.js';

// ---- config ----

export type TarFlowConfig = {
  model: 'tarflow';
  inChannels: number;
  imgSize: number;
  patchSize: number;
  /** Transformer width ("channels" in the reference). */
  width: number;
  numBlocks: number;
  layersPerBlock: number;
  /** Head size; the reference fixes 64, here it is free (width must be a multiple). */
  headDim: number;
  mlpRatio: number;
  /** 0 for an unconditional model. */
  numClasses: number;
  /** false: volume-preserving flow (shift only). */
  nvp: boolean;
  /** The σ of the Gaussian noise the model was trained with; used for score denoising. */
  noiseStd: number;
};

const DEFAULTS = { model: 'tarflow', headDim: 64, mlpRatio: 4, numClasses: 0, nvp: true, noiseStd: 0 };
const REQUIRED = ['inChannels', 'imgSize', 'patchSize', 'width', 'numBlocks', 'layersPerBlock'] as const;

export function parseTarFlowConfig(raw: unknown, where = 'model config'): TarFlowConfig {
  const o = withDefaults(asObject(raw, where), DEFAULTS, REQUIRED, where);
  const int = (k: string, min: number) => intField(o, k, where, min);
  const cfg: TarFlowConfig = {
    model: 'tarflow',
    inChannels: int('inChannels', 1),
    imgSize: int('imgSize', 1),
    patchSize: int('patchSize', 1),
    width: int('width', 1),
    numBlocks: int('numBlocks', 1),
    layersPerBlock: int('layersPerBlock', 1),
    headDim: int('headDim', 1),
    mlpRatio: int('mlpRatio', 1),
    numClasses: int('numClasses', 0),
    nvp: boolField(o, 'nvp', where),
    noiseStd: numberField(o, 'noiseStd', where, 0),
  };
  if (cfg.imgSize % cfg.patchSize !== 0) {
    throw new ConfigError(`${where}: 'imgSize' (${cfg.imgSize}) must be a multiple of 'patchSize' (${cfg.patchSize})`);
  }
  if (cfg.width % cfg.headDim !== 0) {
    throw new ConfigError(`${where}: 'width' (${cfg.width}) must be a multiple of 'headDim' (${cfg.headDim})`);
  }
  if ((cfg.imgSize / cfg.patchSize) ** 2 < 2) throw new ConfigError(`${where}: the image must have at least 2 patches`);
  return cfg;
}

/** Sizes derived from a config. */
export function tokenShape(cfg: TarFlowConfig): { tokens: number; tokenDim: number; dims: number } {
  const side = cfg.imgSize / cfg.patchSize;
  return {
    tokens: side * side,
    tokenDim: cfg.inChannels * cfg.patchSize * cfg.patchSize,
    dims: cfg.inChannels * cfg.imgSize * cfg.imgSize,
  };
}

export type Layer = { attnNorm: Norm; attn: Attention; mlpNorm: Norm; mlp: Mlp };
export type Block = { pos: Arr; classEmbed?: Arr; projIn: Linear; layers: Layer[]; projOut: Linear };
export type TarFlowParams = { blocks: Block[] };

// ---- parameters ----

export function initTarFlow(cfg: TarFlowConfig, seed: number): TarFlowParams {
  const { tokens, tokenDim } = tokenShape(cfg);
  const c = cfg.width;
  const shape = attentionShape(cfg);
  const root = new Rng(seed);
  const blocks = Array.from({ length: cfg.numBlocks }, (_, b): Block => {
    const rng = root.fork(b);
    const layers = Array.from({ length: cfg.layersPerBlock }, (_, l): Layer => ({
      attnNorm: initNorm(c),
      attn: initAttention(rng.fork(100 + 2 * l), c, shape),
      mlpNorm: initNorm(c),
      mlp: initMlp(rng.fork(101 + 2 * l), c, cfg.mlpRatio * c),
    }));
    const block: Block = {
      pos: initNormal(rng.fork(0), [tokens, c], 0.01),
      projIn: initLinear(rng.fork(2), tokenDim, c),
      layers,
      // Zero weight, default bias: the untrained flow is close to, not exactly, the identity.
      projOut: initLinear(rng.fork(3), c, 2 * tokenDim, { zeroWeight: true }),
    };
    if (cfg.numClasses > 0) block.classEmbed = initNormal(rng.fork(1), [cfg.numClasses, c], 0.01);
    return block;
  });
  return { blocks };
}

export function attentionShape(cfg: TarFlowConfig): AttentionShape {
  return { heads: cfg.width / cfg.headDim, headDim: cfg.headDim };
}

/** Block i reads its tokens in raster order if i is even, reversed if odd. */
export function isFlipped(blockIndex: number): boolean {
  return blockIndex % 2 === 1;
}

// ---- patches ----

/** [B, C, H, W] → [B, T, C·p²], tokens in raster order, features ordered c·p² + ki·p + kj. */
export function patchify(x: Arr, p: number): Arr {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  return x
    .reshape([b, c, h / p, p, w / p, p])
    .transpose([0, 2, 4, 1, 3, 5])
    .reshape([b, (h / p) * (w / p), c * p * p]);
}

export function unpatchify(z: Arr, cfg: TarFlowConfig): Arr {
  const b = z.shape[0]!;
  const p = cfg.patchSize;
  const s = cfg.imgSize / p;
  return z
    .reshape([b, s, s, cfg.inChannels, p, p])
    .transpose([0, 3, 1, 4, 2, 5])
    .reshape([b, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
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

function transformerLayer(l: Layer, h: Arr, shape: AttentionShape): Arr {
  h = h.ref.add(causalSelfAttention(l.attn, layerNorm(l.attnNorm, h), shape));
  return h.ref.add(mlp(l.mlp, layerNorm(l.mlpNorm, h)));
}

/** Splits the projection output into log-scale a and shift b (a = 0 for a volume-preserving flow). */
function splitAffine(out: Arr, cfg: TarFlowConfig): [Arr, Arr] {
  const d = out.shape[2]! / 2;
  const a = out.ref.slice([], [], [0, d]);
  const b = out.slice([], [], [d, 2 * d]);
  return cfg.nvp ? [a, b] : [np.zerosLike(a), b];
}

/**
 * One flow block, data → noise. x: [B, T, D] tokens in the model's order. Returns z (same order)
 * and the per-sample log-determinant per dimension, −mean(a).
 */
export function blockForward(
  block: Block,
  x: Arr,
  labels: Arr | undefined,
  flipped: boolean,
  cfg: TarFlowConfig,
): { z: Arr; logdet: Arr } {
  const shape = attentionShape(cfg);
  if (flipped) x = flipTokens(x);
  const pos = flipped ? np.flip(block.pos, 0) : block.pos; // embeddings stay tied to their patches
  let h = linear(block.projIn, x.ref).add(pos);
  const cls = classBias(block, labels);
  if (cls) h = h.add(cls);
  for (const l of block.layers) h = transformerLayer(l, h, shape);
  const out = linear(block.projOut, h);
  // Shift by one token: parameters for token t come from tokens < t; token 0 gets a = b = 0.
  const t = out.shape[1]!;
  const shifted = np.pad(out.slice([], [0, t - 1]), [[0, 0], [1, 0], [0, 0]]);
  const [a, b] = splitAffine(shifted, cfg);
  let z = x.sub(b).mul(np.exp(a.ref.neg()));
  if (flipped) z = flipTokens(z);
  return { z, logdet: a.mean([1, 2]).neg() };
}

// ---- the model ----

export type ForwardResult = {
  /** Noise tokens [B, T, D]. */
  z: Arr;
  /** Σ over blocks of the per-dimension log-determinant, [B]. */
  logdet: Arr;
};

/** Data → noise through every block. x: images [B, C, H, W]; labels: int32 [B] (−1 = dropped). */
export function forward(params: TarFlowParams, cfg: TarFlowConfig, x: Arr, labels?: Arr): ForwardResult {
  let z = patchify(x, cfg.patchSize);
  let logdet: Arr | undefined;
  params.blocks.forEach((block, i) => {
    const r = blockForward(block, z, labels?.ref, isFlipped(i), cfg);
    z = r.z;
    logdet = logdet ? logdet.add(r.logdet) : r.logdet;
  });
  labels?.dispose();
  return { z, logdet: logdet! };
}

/** The reference's training loss, 0.5·mean(z²) − mean(logdet): the NLL per dimension minus ½·log 2π. */
export function flowLoss(z: Arr, logdet: Arr): Arr {
  return np.square(z).mean().mul(0.5).sub(logdet.mean());
}

/** Negative log-likelihood per sample in nats per dimension of the density, [B]. */
export function flowNll(z: Arr, logdet: Arr): Arr {
  return np.square(z).mean([1, 2]).mul(0.5).add(HALF_LOG_2PI).sub(logdet);
}

const conditional = (cfg: TarFlowConfig, y: Arr): Arr | undefined => (cfg.numClasses > 0 ? y : (y.dispose(), undefined));

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
/** Per layer, a chunk's keys and values not yet in the cache. */
export type BlockPending = PendingKv[];

/**
 * Runs L input tokens u (model order, [B, L, D]) through a block and returns the affine
 * parameters (a, b) they predict for the tokens one position later. The tokens come right after
 * `pending` (per layer: keys and values of positions cacheEnd.. not yet in the cache), which
 * comes right after the cache's positions 0..cacheEnd−1. Also returns `pending` extended by u.
 * The cache itself is only read. `block.pos` is the position table in processing order.
 */
export function blockStep(
  block: Block,
  u: Arr,
  cacheEnd: Arr,
  cache: BlockCache,
  labels: Arr | undefined,
  cfg: TarFlowConfig,
  temp: number | Arr = 1,
  pending?: BlockPending,
): { a: Arr; b: Arr; recent: BlockPending } {
  const shape = attentionShape(cfg);
  const l = u.shape[1]!;
  const t = block.pos.shape[0]!;
  const first = cacheEnd.ref.add(pending?.[0]?.filled ?? 0);
  // The embeddings of positions first..first+L−1, picked with a one-hot matrix so shapes stay static.
  const rows = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(first);
  const pick = rows.reshape([l, 1]).equal(np.arange(t, undefined, undefined, { dtype: np.int32 }).reshape([1, t]));
  let h = linear(block.projIn, u).add(np.matmul(pick.astype(np.float32), block.pos));
  const cls = classBias(block, labels);
  if (cls) h = h.add(cls);
  const recent: BlockPending = [];
  block.layers.forEach((layer, i) => {
    const t = typeof temp === 'number' ? temp : temp.ref;
    const c = cache[i]!;
    const [att, r] = cachedSelfAttention(layer.attn, layerNorm(layer.attnNorm, h.ref), { kT: c.kT.ref, v: c.v.ref }, cacheEnd.ref, shape, t, pending?.[i]);
    recent.push(r);
    h = h.add(att);
    h = h.ref.add(mlp(layer.mlp, layerNorm(layer.mlpNorm, h)));
  });
  cacheEnd.dispose();
  if (typeof temp !== 'number') temp.dispose();
  const [a, b] = splitAffine(linear(block.projOut, h), cfg);
  return { a, b, recent };
}

/** The solvers' step functions for a config: x = z·exp(a) + b with (a, b) from the block, guided. */
function flowSteps(cfg: TarFlowConfig): FlowSteps<Block, BlockCache, BlockPending> {
  const { tokens } = tokenShape(cfg);
  const shape = attentionShape(cfg);
  return {
    emptyCache: (rows, chunk) => Array.from({ length: cfg.layersPerBlock }, () => emptyKvCache(rows, tokens, shape, chunk)),
    emptyPending: (rows, n) => Array.from({ length: cfg.layersPerBlock }, () => emptyPendingKv(rows, n, shape)),
    commit(cache, recent, start, chunk) {
      const out = cache.map((c, i) => commitKv(c, recent[i]!, start.ref, chunk));
      start.dispose();
      return out;
    },
    invert(block, io, how) {
      const batch = io.z.shape[0]!;
      const labels = conditional(cfg, io.labels);
      const rows = how.guided ? np.concatenate([io.u.ref, io.u], 0) : io.u;
      const r = blockStep(block, rows, io.cacheEnd, io.cache, labels, cfg, io.temps, io.pending);
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
export function blockInOrder(params: TarFlowParams, bi: number): Block {
  const { pos, ...rest } = params.blocks[bi]!;
  return { ...keep(rest), pos: isFlipped(bi) ? np.flip(pos.ref, 0) : pos.ref };
}

function tarflowSampler(cfg: TarFlowConfig): AutoregressiveSampler<TarFlowParams> {
  const { tokens } = tokenShape(cfg);
  const isGuided = (g: Guidance, blockIndex: number) => {
    if (g.weight === 0) return false;
    if (cfg.numClasses === 0 && g.attnTemp === 1) return false; // both branches would be identical
    return !g.blocks || g.blocks.includes(blockIndex);
  };
  return {
    kind: 'autoregressive',
    numBlocks: cfg.numBlocks,
    length: tokens,
    steps: flowSteps(cfg) as FlowSteps,
    isGuided,
    block(params, bi, z, labels, g): BlockInverse<Block> {
      const flipped = isFlipped(bi);
      const guided = isGuided(g, bi);
      const batch = z.shape[0]!;
      const rows = guided ? 2 * batch : batch;
      const ys = labels ?? new Array<number>(batch).fill(0);
      return {
        // Token 0 passes through, so the solver sequence is the tokens themselves in processing order.
        params: blockInOrder(params, bi),
        toSequence: (x) => (flipped ? flipTokens(x) : x),
        fromSequence: (x) => (flipped ? flipTokens(x) : x),
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

// ---- the family ----

const samplers = new Map<string, AutoregressiveSampler<TarFlowParams>>();

export const tarflow: ModelFamily<TarFlowConfig, TarFlowParams> = {
  name: 'tarflow',
  source: import.meta.url,
  describe: (cfg) =>
    `TARFlow: ${cfg.numBlocks} blocks × ${cfg.layersPerBlock} layers, width ${cfg.width}, ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize} images in ${cfg.patchSize}×${cfg.patchSize} patches, ${cfg.numClasses} classes`,
  parseConfig: (raw, where) => parseTarFlowConfig(raw, where),
  init: initTarFlow,
  paramShapes: (cfg) => shapesOf(() => initTarFlow(cfg, 0)),
  noiseShape: (cfg) => {
    const { tokens, tokenDim } = tokenShape(cfg);
    return [tokens, tokenDim];
  },
  loss(params, cfg, x, y) {
    const r = forward(params, cfg, x, conditional(cfg, y));
    return flowLoss(r.z, r.logdet).add(HALF_LOG_2PI);
  },
  encode: (params, cfg, x, y) => forward(params, cfg, x, conditional(cfg, y)),
  nll(params, cfg, x, y) {
    const r = forward(params, cfg, x, conditional(cfg, y));
    return flowNll(r.z, r.logdet);
  },
  sampler(cfg) {
    const key = JSON.stringify(cfg);
    let s = samplers.get(key);
    if (!s) samplers.set(key, (s = tarflowSampler(cfg)));
    return s;
  },
};
