// apple/ml-starflow's model arguments ↔ our flow config. ml-starflow writes them as a YAML file
// whose `arguments:` is a list of one-key maps (its training script's flag names: `channel_size`,
// `blocks`, `layers_per_block: 2 2 24`, …); its `Model(...)` takes the same under other names
// (`in_channels`, `num_blocks`). Both spellings are read. Options this project does not build
// (a pretrained-LLM deep block, adaLN, video) are refused by name.
import { parse as parseYaml } from 'yaml';
import { ConfigError } from '../models/config.js';
import { parseFlowConfig, type FlowConfig } from '../models/flow.js';

/** train.py's flag names → Model's keyword names. */
const ALIASES: Record<string, string> = { channel_size: 'in_channels', blocks: 'num_blocks' };

/** Options not built here, refused when set (other arguments, training-only ones included, are read or ignored). */
const UNSUPPORTED: Record<string, (v: unknown) => boolean> = {
  adaln: (v) => Boolean(Number(v)),
  use_adaln: (v) => Boolean(Number(v)),
  use_pretrained_lm: (v) => v !== null && v !== undefined && v !== '' && v !== 'none',
  use_mm_attn: (v) => Boolean(Number(v)),
  hf_style_rope: (v) => Boolean(Number(v)),
  temporal_causal: (v) => Boolean(Number(v)),
  shallow_block_local: (v) => Boolean(Number(v)),
  learnable_self_denoiser: (v) => Boolean(Number(v)),
  local_attn_window: (v) => v !== null && v !== undefined && Number(v) > 0,
  num_heads: (v) => v !== null && v !== undefined,
};

export class StarflowConfigError extends ConfigError {
  override name = 'StarflowConfigError';
}

/** A YAML text (ml-starflow's `arguments:` list, or a flat map) → one map of Model argument names. */
export function readStarflowArgs(text: string, where: string): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new StarflowConfigError(`${where}: not valid YAML (${(e as Error).message.split('\n')[0]})`);
  }
  const root = (doc && typeof doc === 'object' && !Array.isArray(doc) && 'arguments' in doc ? (doc as { arguments: unknown }).arguments : doc) as unknown;
  const entries: [string, unknown][] = [];
  if (Array.isArray(root)) {
    for (const item of root) {
      if (!item || typeof item !== 'object' || Array.isArray(item)) throw new StarflowConfigError(`${where}: 'arguments' must be a list of 'name: value' entries, got ${JSON.stringify(item)}`);
      entries.push(...Object.entries(item as Record<string, unknown>));
    }
  } else if (root && typeof root === 'object') entries.push(...Object.entries(root as Record<string, unknown>));
  else throw new StarflowConfigError(`${where}: expected 'arguments:' with a list of model arguments`);
  return Object.fromEntries(entries.map(([k, v]) => [ALIASES[k] ?? k, v]));
}

const flag = (v: unknown) => Boolean(Number(v ?? 0));

function intList(v: unknown, name: string, where: string): number[] {
  const parts = typeof v === 'number' ? [v] : typeof v === 'string' ? v.trim().split(/[\s,]+/).map(Number) : Array.isArray(v) ? v.map(Number) : [NaN];
  if (parts.length === 0 || parts.some((n) => !Number.isInteger(n) || n < 0)) throw new StarflowConfigError(`${where}: '${name}' must be integers, got ${JSON.stringify(v)}`);
  return parts;
}

/**
 * ml-starflow Model arguments → our config (model 'starflow'). `textDim` comes from the weights when
 * the arguments do not give it (the training YAML leaves it to the text encoder).
 */
export function flowConfigFromStarflowArgs(args: Record<string, unknown>, where: string, inferred: { textDim?: number } = {}): FlowConfig {
  for (const [k, bad] of Object.entries(UNSUPPORTED)) {
    if (k in args && bad(args[k])) throw new StarflowConfigError(`${where}: '${k}: ${JSON.stringify(args[k])}' is not supported (the pretrained-LLM deep block, adaLN and video options are not built)`);
  }
  const need = (k: string) => {
    if (args[k] === undefined || args[k] === null) throw new StarflowConfigError(`${where}: '${k}' is missing`);
    return Number(args[k]);
  };
  const numBlocks = need('num_blocks');
  let layers = intList(args.layers_per_block ?? NaN, 'layers_per_block', where);
  if (layers.length === 1) layers = new Array<number>(numBlocks).fill(layers[0]!);
  const textTokens = Number(args.txt_size ?? 0);
  const textDim = Number(args.txt_dim ?? inferred.textDim ?? 0);
  const norm = String(args.norm_type ?? 'layer_norm');
  const normKind = norm === 'layer_norm' ? 'layer' : norm === 'rms_norm' ? 'rms' : norm === 'none' ? 'none' : undefined;
  if (!normKind) throw new StarflowConfigError(`${where}: 'norm_type' must be layer_norm, rms_norm or none, got ${JSON.stringify(norm)}`);
  const imgSize = need('img_size');
  const patchSize = need('patch_size');
  const raw = {
    model: 'starflow',
    inChannels: need('in_channels'),
    imgSize,
    patchSize,
    width: need('channels'),
    numBlocks,
    layersPerBlock: layers,
    deepWidth: Number(args.top_block_channels ?? args.channels),
    headDim: Number(args.head_dim ?? 64),
    kvHeads: Number(args.num_kv_heads ?? 0),
    mlpRatio: Number(args.expansion ?? 4),
    mlp: flag(args.use_swiglu) ? 'swiglu' : 'gelu',
    norm: normKind,
    qkNorm: flag(args.use_qk_norm),
    postNorm: flag(args.use_post_norm),
    bias: flag(args.use_bias ?? 1),
    finalNorm: flag(args.use_final_norm),
    startToken: flag(args.sos),
    positions: flag(args.rope) ? 'rope' : 'learned',
    ropeSeqLen: Number(args.pt_seq_len ?? imgSize / patchSize),
    scale: flag(args.use_softplus) ? 'softplus' : 'exp',
    softClip: Number(args.soft_clip ?? 0),
    order: String(args.seq_order ?? 'R2L'),
    numClasses: 0,
    textTokens: textDim > 0 ? textTokens : 0,
    textDim: textTokens > 0 ? textDim : 0,
    condTopOnly: flag(args.cond_top_only),
    nvp: flag(args.nvp ?? 1),
    noiseStd: Number(args.noise_std ?? 0),
    latentNormReg: Number(args.latent_norm_regularization ?? 0),
  };
  if (textTokens > 0 && !(textDim > 0)) throw new StarflowConfigError(`${where}: 'txt_size' is ${textTokens} but the text width is unknown (no 'txt_dim' and no proj_txt weight)`);
  try {
    return parseFlowConfig(raw, where);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    // The user wrote ml-starflow's names: say them.
    const message = err.message.replace(/'(\w+)'/g, (quoted, ours: string) => (OUR_FIELD_TO_STARFLOW[ours] ? `'${OUR_FIELD_TO_STARFLOW[ours]}'` : quoted));
    throw new StarflowConfigError(message);
  }
}

/** Our config field → the ml-starflow argument it comes from, for error messages. */
const OUR_FIELD_TO_STARFLOW: Record<string, string> = {
  inChannels: 'in_channels', imgSize: 'img_size', patchSize: 'patch_size', width: 'channels', numBlocks: 'num_blocks',
  layersPerBlock: 'layers_per_block', deepWidth: 'top_block_channels', headDim: 'head_dim', kvHeads: 'num_kv_heads',
  mlpRatio: 'expansion', ropeSeqLen: 'pt_seq_len', softClip: 'soft_clip', order: 'seq_order', textTokens: 'txt_size',
  textDim: 'txt_dim', noiseStd: 'noise_std', latentNormReg: 'latent_norm_regularization',
};
