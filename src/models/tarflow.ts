// TARFlow ("Normalizing Flows are Capable Generative Models"): a stack of autoregressive
// Transformer flow blocks over image patches, alternating token order. The whole method is here:
// patchify, the block (forward = data → noise), the likelihood, and the one block step that every
// sampler (sequential, Jacobi, GS-Jacobi) uses to invert a block.
//
// Semantics follow apple/ml-tarflow exactly (see the parity test): feature order c·p² + ki·p + kj;
// learned position embeddings permuted with the tokens; a class embedding added to every token,
// label −1 meaning the mean class embedding; pre-norm layers; zero-initialised output projection;
// outputs shifted one token so token t depends on tokens < t (token 0 passes through);
// z = (x − b)·exp(−a); log-det = −mean(a) over tokens and features.
import { np, Rng, type Arr } from '../engine/index.js';
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
import { tokenShape, type TarFlowConfig } from './config.js';

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
  /** mean(z²) after each block, [numBlocks]: a health signal printed while training. */
  blockZ2: Arr;
};

/** Data → noise through every block. x: images [B, C, H, W]; labels: int32 [B] (−1 = dropped). */
export function forward(params: TarFlowParams, cfg: TarFlowConfig, x: Arr, labels?: Arr): ForwardResult {
  let z = patchify(x, cfg.patchSize);
  let logdet: Arr | undefined;
  const z2: Arr[] = [];
  params.blocks.forEach((block, i) => {
    const r = blockForward(block, z, labels?.ref, isFlipped(i), cfg);
    z = r.z;
    logdet = logdet ? logdet.add(r.logdet) : r.logdet;
    z2.push(np.square(z.ref).mean());
  });
  labels?.dispose();
  return { z, logdet: logdet!, blockZ2: np.stack(z2) };
}

/** The training loss: 0.5·mean(z²) − mean(logdet), the NLL per dimension minus ½·log 2π. */
export function flowLoss(z: Arr, logdet: Arr): Arr {
  return np.square(z).mean().mul(0.5).sub(logdet.mean());
}

/**
 * Bits per dimension per sample for data on [−1, 1] with 256 levels (uniform dequantisation):
 * the log 128 term turns the density on [−1, 1] into a probability of a bin of width 2/256.
 */
export function bitsPerDim(z: Arr, logdet: Arr): Arr {
  const logp = np.square(z).add(Math.log(2 * Math.PI)).mul(-0.5).mean([1, 2]).sub(Math.log(128));
  return logp.neg().sub(logdet).div(Math.LN2);
}

// ---- the block step shared by every sampler ----

/** Per-block sampling state: one KV cache per layer. */
export type BlockCache = KvCache[];
/** Per layer, a chunk's keys and values not yet in the cache. */
export type BlockPending = PendingKv[];

/** A block's cache for solvers that write chunks of `chunk` tokens. */
export function emptyBlockCache(cfg: TarFlowConfig, batch: number, chunk = 1): BlockCache {
  const { tokens } = tokenShape(cfg);
  return Array.from({ length: cfg.layersPerBlock }, () => emptyKvCache(batch, tokens, attentionShape(cfg), chunk));
}

/** Room for a chunk of `n` tokens fed to blockStep one at a time. */
export function emptyBlockPending(cfg: TarFlowConfig, batch: number, n: number): BlockPending {
  return Array.from({ length: cfg.layersPerBlock }, () => emptyPendingKv(batch, n, attentionShape(cfg)));
}

/**
 * Runs L input tokens u (model order, [B, L, D]) through a block and returns the affine
 * parameters (a, b) they predict for the tokens one position later. The tokens come right after
 * `pending` (per layer: keys and values of positions cacheEnd.. not yet in the cache), which
 * comes right after the cache's positions 0..cacheEnd−1. Also returns `pending` extended by u;
 * commitBlockCache writes it into the cache. The cache itself is only read (the caller keeps
 * it). `pos` is the block's position table already in model order. The sequential solver passes
 * one token at a time; Jacobi-style solvers pass whole chunks.
 */
export function blockStep(
  block: Block,
  pos: Arr,
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
  const t = pos.shape[0]!;
  const first = cacheEnd.ref.add(pending?.[0]?.filled ?? 0);
  // Position rows first..first+L−1, picked with a one-hot matrix so shapes stay static.
  const rows = np.arange(l, undefined, undefined, { dtype: np.int32 }).add(first);
  const pick = rows.reshape([l, 1]).equal(np.arange(t, undefined, undefined, { dtype: np.int32 }).reshape([1, t]));
  let h = linear(block.projIn, u).add(np.matmul(pick.astype(np.float32), pos));
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

/** Every layer's cache with `recent` written at positions start.. (a multiple of `chunk`). Consumes all three. */
export function commitBlockCache(cache: BlockCache, recent: BlockPending, start: Arr, chunk: number): BlockCache {
  const out = cache.map((c, i) => commitKv(c, recent[i]!, start.ref, chunk));
  start.dispose();
  return out;
}

/** Position table of block i in the order its tokens are processed. */
export function blockPositions(pos: Arr, blockIndex: number): Arr {
  return isFlipped(blockIndex) ? np.flip(pos, 0) : pos;
}
