// A small Transformer text encoder: token embeddings plus learned positions, pre-LayerNorm layers
// of bidirectional self-attention and a GELU MLP, a final LayerNorm. Its states [B, L, width] are a
// text-conditioned flow's prefix tokens; trained jointly with the flow, its gradient comes through
// them. Id 0 is padding and is embedded like any token: the empty caption (all padding) gets its
// own learned states, the negative of guidance.
import type { Arr, Rng } from '../engine/index.js';
import { initAttention, selfAttention, type Attention, type AttentionShape } from './attention.js';
import { embed, initLinear, initNorm, initNormal, layerNorm, mlp, type Mlp, type Norm } from './layers.js';
import { checkTokenizerConfig } from './tokenizer.js';

export type TextEncoderShape = { vocabSize: number; maxTokens: number; width: number; layers: number; heads: number };
export type TextEncoderLayer = { attnNorm: Norm; attn: Attention; mlpNorm: Norm; mlp: Mlp };
export type TextEncoder = { tokens: Arr; pos: Arr; layers: TextEncoderLayer[]; norm: Norm };

const MLP_RATIO = 4;

export function initTextEncoder(rng: Rng, s: TextEncoderShape): TextEncoder {
  const shape = attentionShapeOf(s);
  return {
    tokens: initNormal(rng.fork(0), [s.vocabSize, s.width], 0.02),
    pos: initNormal(rng.fork(1), [s.maxTokens, s.width], 0.01),
    layers: Array.from({ length: s.layers }, (_, l) => {
      const r = rng.fork(10 + l);
      return {
        attnNorm: initNorm(s.width),
        attn: initAttention(r.fork(0), s.width, shape),
        mlpNorm: initNorm(s.width),
        mlp: { fc1: initLinear(r.fork(1), s.width, MLP_RATIO * s.width), fc2: initLinear(r.fork(2), MLP_RATIO * s.width, s.width) },
      };
    }),
    norm: initNorm(s.width),
  };
}

function attentionShapeOf(s: TextEncoderShape): AttentionShape {
  return { heads: s.heads, headDim: s.width / s.heads };
}

/** States [B, L, width] of token ids [B, L] (int32, 0 ≤ id < vocabSize). Consumes `p` and `ids`. */
export function encodeText(p: TextEncoder, s: TextEncoderShape, ids: Arr): Arr {
  const [b, l] = ids.shape as [number, number];
  if (l !== s.maxTokens) throw new Error(`text encoder: ${l} tokens per text, expected ${s.maxTokens}`);
  let h = embed(p.tokens, ids.reshape([b * l])).reshape([b, l, s.width]).add(p.pos);
  const shape = attentionShapeOf(s);
  for (const layer of p.layers) {
    h = h.ref.add(selfAttention(layer.attn, layerNorm(layer.attnNorm, h), shape));
    h = h.ref.add(mlp(layer.mlp, layerNorm(layer.mlpNorm, h)));
  }
  return layerNorm(p.norm, h);
}

/** Checks a text encoder's shape (from a model config), with one message per problem. */
export function checkTextEncoderShape(s: TextEncoderShape, fail: (msg: string) => never): void {
  for (const k of ['vocabSize', 'maxTokens', 'width', 'layers', 'heads'] as const) {
    if (!Number.isInteger(s[k]) || s[k] < (k === 'layers' ? 0 : 1)) fail(`text encoder: '${k}' must be a ${k === 'layers' ? 'non-negative' : 'positive'} integer, got ${JSON.stringify(s[k])}`);
  }
  if (s.width % s.heads !== 0) fail(`text encoder: 'width' (${s.width}) must be a multiple of 'heads' (${s.heads})`);
}


/** A model's own text encoder, as its config names it. `vocab`: the words (a training config may name them as "captions:KIND": train/config.ts). */
export type TextEncoderConfig = { vocab: string[]; layers: number; heads: number };

/** The text fields of a model config that has (or may have) its own encoder. */
type TextFields = { textTokens: number; textDim: number };

/** Validates a model config's 'textEncoder' field; `fail` throws with the config's location. */
export function parseTextEncoder(raw: unknown, cfg: TextFields, fail: (msg: string) => never): TextEncoderConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail(`'textEncoder' must be null or an object { vocab, layers, heads }, got ${JSON.stringify(raw)?.slice(0, 60)}`);
  const { vocab, layers, heads, ...rest } = raw as Record<string, unknown>;
  const extra = Object.keys(rest);
  if (extra.length) fail(`'textEncoder': unknown field${extra.length > 1 ? 's' : ''} ${extra.map((k) => `'${k}'`).join(', ')} (expected vocab, layers, heads)`);
  if (cfg.textTokens === 0) fail("'textEncoder' needs 'textTokens' (the words per text) and 'textDim' (the encoder's width)");
  if (typeof vocab === 'string') fail(`'textEncoder': 'vocab' must be a list of words ("${vocab.slice(0, 40)}" names a vocabulary only in a training config, which resolves "captions:KIND")`);
  try {
    checkTokenizerConfig({ vocab, maxTokens: cfg.textTokens }, "'textEncoder'");
  } catch (e) {
    fail((e as Error).message);
  }
  const shape = { vocabSize: (vocab as string[]).length + 1, maxTokens: cfg.textTokens, width: cfg.textDim, layers: layers as number, heads: heads as number };
  checkTextEncoderShape(shape, (m) => fail(`'textEncoder': ${m.replace(/^text encoder: /, '')}`));
  return { vocab: vocab as string[], layers: layers as number, heads: heads as number };
}

/** The text encoder's shape in a model with its own encoder. */
export function textEncoderShape(cfg: TextFields & { textEncoder: TextEncoderConfig | null }): TextEncoderShape {
  const t = cfg.textEncoder!;
  return { vocabSize: t.vocab.length + 1, maxTokens: cfg.textTokens, width: cfg.textDim, layers: t.layers, heads: t.heads };
}
