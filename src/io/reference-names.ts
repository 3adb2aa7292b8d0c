// apple/ml-tarflow's parameter names and layouts ↔ ours. The reference stores Linear weights as
// [out, in] and class embeddings as [K, 1, C]; we store [in, out] and [K, C].
import type { FlowConfig } from '../models/flow.js';

import type { HostTensor } from '../engine/index.js';

type Rule = { ours: string; transpose?: boolean; shape?: (s: number[]) => number[] };

function layerRules(b: number, l: number): [string, Rule][] {
  const ref = `blocks.${b}.attn_blocks.${l}`;
  const our = `blocks.${b}.layers.${l}`;
  const lin = (r: string, o: string): [string, Rule][] => [
    [`${ref}.${r}.weight`, { ours: `${our}.${o}.w`, transpose: true }],
    [`${ref}.${r}.bias`, { ours: `${our}.${o}.b` }],
  ];
  const norm = (r: string, o: string): [string, Rule][] => [
    [`${ref}.${r}.weight`, { ours: `${our}.${o}.g` }],
    [`${ref}.${r}.bias`, { ours: `${our}.${o}.b` }],
  ];
  return [
    ...norm('attention.norm', 'attnNorm'),
    ...lin('attention.qkv', 'attn.qkv'),
    ...lin('attention.proj', 'attn.proj'),
    ...norm('mlp.norm', 'mlpNorm'),
    ...lin('mlp.main.0', 'mlp.fc1'),
    ...lin('mlp.main.2', 'mlp.fc2'),
  ];
}

/** The reference's state-dict names for a config, in its `named_parameters()` order. */
export function referenceRules(cfg: FlowConfig): Map<string, Rule> {
  const rules: [string, Rule][] = [];
  for (let b = 0; b < cfg.numBlocks; b++) {
    rules.push([`blocks.${b}.pos_embed`, { ours: `blocks.${b}.pos` }]);
    if (cfg.numClasses > 0) {
      rules.push([`blocks.${b}.class_embed`, { ours: `blocks.${b}.classEmbed`, shape: (s) => [s[0]!, s[2]!] }]);
    }
    rules.push([`blocks.${b}.proj_in.weight`, { ours: `blocks.${b}.projIn.w`, transpose: true }]);
    rules.push([`blocks.${b}.proj_in.bias`, { ours: `blocks.${b}.projIn.b` }]);
    for (let l = 0; l < cfg.layersPerBlock[b]!; l++) rules.push(...layerRules(b, l));
    rules.push([`blocks.${b}.proj_out.weight`, { ours: `blocks.${b}.projOut.w`, transpose: true }]);
    rules.push([`blocks.${b}.proj_out.bias`, { ours: `blocks.${b}.projOut.b` }]);
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
    if (r.shape) v = { shape: r.shape(v.shape), data: v.data };
    out.set(r.ours, v);
  }
  return out;
}
