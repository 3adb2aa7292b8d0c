// apple/ml-tarflow's and apple/ml-starflow's parameter names and layouts ↔ ours (ml-starflow's
// Model keeps ml-tarflow's names and adds its options'). The references store Linear weights as
// [out, in], class embeddings as [K, 1, C] and the start token as [1, 1, D]; we store [in, out],
// [K, C] and [1, D].
import { blockSpec, type FlowConfig } from '../models/flow.js';

import type { HostTensor } from '../engine/index.js';

/** `transpose`: a Linear weight ([out, in] there); `unsqueeze`: the reference has an extra axis of size 1 at position 1. */
export type Rule = { ours: string; transpose?: boolean; unsqueeze?: boolean };

function layerRules(cfg: FlowConfig, b: number, l: number): [string, Rule][] {
  const ref = `blocks.${b}.attn_blocks.${l}`;
  const our = `blocks.${b}.layers.${l}`;
  const lin = (r: string, o: string, bias = cfg.bias): [string, Rule][] => [
    [`${ref}.${r}.weight`, { ours: `${our}.${o}.w`, transpose: true }],
    ...(bias ? [[`${ref}.${r}.bias`, { ours: `${our}.${o}.b` }] as [string, Rule]] : []),
  ];
  const gain = (r: string, o: string): [string, Rule] => [`${ref}.${r}.weight`, { ours: `${our}.${o}.g` }];
  // Pre-norms: LayerNorm has a weight and a bias (whatever the projections' bias), RMSNorm a weight.
  const norm = (r: string, o: string): [string, Rule][] =>
    cfg.norm === 'none' ? [] : cfg.norm === 'rms' ? [gain(r, o)] : [gain(r, o), [`${ref}.${r}.bias`, { ours: `${our}.${o}.b` }]];
  return [
    ...norm('attention.norm', 'attnNorm'),
    ...lin('attention.qkv', 'attn.qkv'),
    ...lin('attention.proj', 'attn.proj'),
    ...(cfg.qkNorm ? [gain('attention.query_norm', 'attn.qNorm'), gain('attention.key_norm', 'attn.kNorm')] : []),
    ...(cfg.postNorm ? [gain('attention.post_norm', 'attnPost')] : []),
    ...norm('mlp.norm', 'mlpNorm'),
    ...(cfg.mlp === 'gelu'
      ? [...lin('mlp.main.0', 'mlp.fc1'), ...lin('mlp.main.2', 'mlp.fc2')]
      : [...lin('mlp.gate_proj', 'mlp.gate'), ...lin('mlp.up_proj', 'mlp.up'), ...lin('mlp.down_proj', 'mlp.down')]),
    ...(cfg.postNorm ? [gain('mlp.post_norm', 'mlpPost')] : []),
  ];
}

/** The references' state-dict names for a config (ml-tarflow's, and ml-starflow's for its options), in `named_parameters()` order. */
export function referenceRules(cfg: FlowConfig): Map<string, Rule> {
  const rules: [string, Rule][] = [];
  for (let b = 0; b < cfg.numBlocks; b++) {
    const spec = blockSpec(cfg, b);
    if (spec.layers === 0) continue; // an identity block has no parameters
    const lin = (r: string, o: string): [string, Rule][] => [
      [`blocks.${b}.${r}.weight`, { ours: `blocks.${b}.${o}.w`, transpose: true }],
      [`blocks.${b}.${r}.bias`, { ours: `blocks.${b}.${o}.b` }],
    ];
    if (cfg.startToken) rules.push([`blocks.${b}.sos_embed`, { ours: `blocks.${b}.start`, unsqueeze: true }]);
    rules.push(...lin('proj_in', 'projIn'));
    rules.push(...lin('proj_out', 'projOut'));
    if (cfg.positions === 'learned') rules.push([`blocks.${b}.pos_embed`, { ours: `blocks.${b}.pos` }]);
    if (spec.text) rules.push(...lin('proj_txt', 'projText'));
    if (cfg.numClasses > 0 && spec.conditioned) {
      rules.push([`blocks.${b}.class_embed`, { ours: `blocks.${b}.classEmbed`, unsqueeze: true }]);
    }
    for (let l = 0; l < spec.layers; l++) rules.push(...layerRules(cfg, b, l));
    if (cfg.finalNorm) rules.push([`blocks.${b}.final_norm.weight`, { ours: `blocks.${b}.finalNorm.g` }]);
  }
  return new Map(rules);
}

export function transpose2d(t: HostTensor): HostTensor {
  const [r, c] = t.shape as [number, number];
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j]!;
  return { shape: [c, r], data: out };
}

/** Converts a reference state dict to our flat names; unknown or missing names are errors. */
export function fromReferenceStateDict(sd: Map<string, HostTensor>, cfg: FlowConfig): Map<string, HostTensor> {
  const rules = referenceRules(cfg);
  const out = new Map<string, HostTensor>();
  const missing = [...rules.keys()].filter((k) => !sd.has(k));
  if (missing.length) throw new Error(`state dict lacks ${missing.length} parameter(s): ${missing.slice(0, 5).join(', ')}`);
  for (const [name, t] of sd) {
    const r = rules.get(name);
    if (!r) continue; // buffers such as the prior's `var` and attention masks are not parameters
    let v = r.transpose ? transpose2d(t) : t;
    if (r.unsqueeze) v = { shape: [v.shape[0]!, ...v.shape.slice(2)], data: v.data };
    out.set(r.ours, v);
  }
  return out;
}
