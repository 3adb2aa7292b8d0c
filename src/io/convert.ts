// Converting apple/ml-tarflow checkpoints (torch.save state dicts, or safetensors with the same
// names) into our model directories: read the tensors safely (./torch-checkpoint.ts), infer the
// architecture from their shapes and the reference's file-name convention, rename and transpose
// (./reference-names.ts), and save config.json + model.safetensors.
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { readStateDict, TorchCheckpointError, type StateDict, type TorchReadOptions } from './torch-checkpoint.js';
import { fromReferenceStateDict, referenceRules, transpose2d } from './reference-names.js';
import { readStarflowArgs, flowConfigFromStarflowArgs } from './starflow-config.js';
import { saveCheckpoint, loadCheckpoint } from './checkpoint.js';
import { splitConfigJson } from './model.js';
import { makeDirs, writeFileAtomic } from './files.js';
import { torchSave } from './torch-save.js';
import { ConfigError } from '../models/config.js';
import { parseFlowConfig, tarflow, tokenShape, type FlowConfig } from '../models/flow.js';

export class ConvertError extends Error {
  override name = 'ConvertError';
}

/** Architecture facts a user can supply (flags) when the file does not determine them. */
export type ConvertOverrides = Partial<Pick<FlowConfig, 'inChannels' | 'imgSize' | 'patchSize' | 'noiseStd' | 'headDim'>>;

/** What the reference's file names say: `{dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise}.pth`. */
export type ReferenceFileName = {
  dataset: string;
  patchSize: number;
  width: number;
  numBlocks: number;
  layersPerBlock: number;
  /** The training noise σ, or 'uniform' for uniform dequantisation. */
  noise: number | 'uniform';
};

const FILE_NAME = /^(.+?)_model_(\d+)_(\d+)_(\d+)_(\d+)_(uniform|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\.(?:pth|pt|bin|ckpt|safetensors)$/;

export function parseReferenceFileName(path: string): ReferenceFileName | undefined {
  const m = FILE_NAME.exec(basename(path));
  if (!m) return undefined;
  const [, dataset, p, c, b, l, noise] = m as unknown as [string, string, string, string, string, string, string];
  return {
    dataset,
    patchSize: Number(p),
    width: Number(c),
    numBlocks: Number(b),
    layersPerBlock: Number(l),
    noise: noise === 'uniform' ? 'uniform' : Number(noise),
  };
}

export type Inferred = { cfg: FlowConfig; notes: string[]; prefix: string };

/** Wrappers that training code puts in front of every name (DDP, torch.compile). */
const PREFIXES = ['module.', '_orig_mod.', 'model.'];

function shapeOf(sd: StateDict, name: string): number[] | undefined {
  return sd.get(name)?.shape;
}

/**
 * Infers a FlowConfig from a reference state dict: blocks, layers, width, token dimension,
 * classes, tokens, MLP ratio and nvp from shapes; patch size and noise from the file name;
 * `overrides` (flags) win. The token dimension C·p² is ambiguous on its own (12 = 3·2² = 12·1²):
 * when nothing settles it, the error names the flag to pass.
 */
export function inferConfig(sd: StateDict, opts: { fileName?: string; overrides?: ConvertOverrides } = {}): Inferred {
  const ov = opts.overrides ?? {};
  const notes: string[] = [];
  const fail = (msg: string): never => {
    throw new ConvertError(msg);
  };
  let prefix = '';
  for (;;) {
    const p = PREFIXES.find((x) => [...sd.keys()].every((k) => k.startsWith(prefix + x)));
    if (!p || sd.size === 0) break;
    prefix += p;
  }
  if (prefix) {
    notes.push(`names carry the prefix '${prefix}' (removed)`);
    sd = new Map([...sd].map(([k, v]) => [k.slice(prefix.length), v]));
  }

  let numBlocks = 0;
  while (sd.has(`blocks.${numBlocks}.proj_in.weight`)) numBlocks++;
  if (numBlocks === 0) {
    const some = [...sd.keys()].slice(0, 5).join(', ');
    fail(`not an ml-tarflow state dict: no 'blocks.0.proj_in.weight' (it has ${sd.size} tensors${some ? `: ${some}, …` : ''})`);
  }
  let layersPerBlock = 0;
  while (sd.has(`blocks.0.attn_blocks.${layersPerBlock}.attention.qkv.weight`)) layersPerBlock++;
  if (layersPerBlock === 0) fail("not an ml-tarflow state dict: no 'blocks.0.attn_blocks.0.attention.qkv.weight'");

  const projIn = shapeOf(sd, 'blocks.0.proj_in.weight')!;
  if (projIn.length !== 2) fail(`blocks.0.proj_in.weight has shape [${projIn}], expected [width, token dim]`);
  const [width, tokenDim] = projIn as [number, number];
  const pos = shapeOf(sd, 'blocks.0.pos_embed');
  if (!pos || pos.length !== 2 || pos[1] !== width) fail(`blocks.0.pos_embed has shape [${pos ?? 'missing'}], expected [tokens, ${width}]`);
  const tokens = pos![0]!;
  const side = Math.round(Math.sqrt(tokens));
  if (side * side !== tokens) fail(`blocks.0.pos_embed has ${tokens} rows, not a square number of patches`);
  const cls = shapeOf(sd, 'blocks.0.class_embed');
  const numClasses = cls ? cls[0]! : 0;
  const fc1 = shapeOf(sd, 'blocks.0.attn_blocks.0.mlp.main.0.weight');
  if (!fc1 || fc1.length !== 2 || fc1[0]! % width !== 0) fail(`blocks.0.attn_blocks.0.mlp.main.0.weight has shape [${fc1 ?? 'missing'}], expected [ratio·${width}, ${width}]`);
  const mlpRatio = fc1![0]! / width;
  const projOut = shapeOf(sd, 'blocks.0.proj_out.weight');
  let nvp: boolean;
  if (projOut?.[0] === 2 * tokenDim) nvp = true;
  else if (projOut?.[0] === tokenDim) nvp = false;
  else nvp = fail(`blocks.0.proj_out.weight has shape [${projOut ?? 'missing'}], expected [${2 * tokenDim} or ${tokenDim}, ${width}]`);

  // Patch size and channels: token dim = C·p², image side = p·√T.
  const name = opts.fileName ? parseReferenceFileName(opts.fileName) : undefined;
  const candidates: number[] = [];
  for (let p = 1; p * p <= tokenDim; p++) if (tokenDim % (p * p) === 0) candidates.push(p);
  const settle = (p: number, why: string): number => {
    if (!candidates.includes(p)) fail(`${why} gives patch size ${p}, but the token dimension ${tokenDim} is not a multiple of ${p}² (channels·patch²)`);
    return p;
  };
  let patchSize: number;
  if (ov.patchSize !== undefined) patchSize = settle(ov.patchSize, '--patch-size');
  else if (ov.imgSize !== undefined) {
    if (ov.imgSize % side !== 0) fail(`--img-size ${ov.imgSize} is not a multiple of the ${side} patches per side the weights have`);
    patchSize = settle(ov.imgSize / side, `--img-size ${ov.imgSize} over ${side} patches per side`);
  } else if (ov.inChannels !== undefined) {
    const p = Math.round(Math.sqrt(tokenDim / ov.inChannels));
    if (p * p * ov.inChannels !== tokenDim) fail(`--in-channels ${ov.inChannels} does not divide the token dimension ${tokenDim} into channels·patch²`);
    patchSize = p;
  } else if (name) {
    patchSize = settle(name.patchSize, `the file name (${basename(opts.fileName!)})`);
  } else if (candidates.length === 1) {
    patchSize = candidates[0]!;
  } else {
    patchSize = fail(
      `cannot tell channels from patch size: the token dimension ${tokenDim} is channels·patch² for patch sizes ${candidates.join(', ')} ` +
        `(${candidates.map((p) => `${tokenDim / (p * p)}·${p}²`).join(' or ')}); pass --patch-size P or --in-channels C ` +
        '(or name the file {dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise}.pth as the reference does)',
    );
  }
  const inChannels = tokenDim / (patchSize * patchSize);
  if (ov.inChannels !== undefined && ov.inChannels !== inChannels) fail(`--in-channels ${ov.inChannels} contradicts patch size ${patchSize} (token dimension ${tokenDim} = ${inChannels}·${patchSize}²)`);
  const imgSize = patchSize * side;
  if (ov.imgSize !== undefined && ov.imgSize !== imgSize) fail(`--img-size ${ov.imgSize} contradicts ${side} patches of size ${patchSize}`);

  if (name) {
    const check = (what: string, fromName: number, fromWeights: number) => {
      if (fromName !== fromWeights) fail(`the file name says ${what} ${fromName} but the weights have ${fromWeights}`);
    };
    check('patch size', name.patchSize, patchSize);
    check('channels', name.width, width);
    check('blocks', name.numBlocks, numBlocks);
    check('layers per block', name.layersPerBlock, layersPerBlock);
  }
  let noiseStd: number;
  if (ov.noiseStd !== undefined) noiseStd = ov.noiseStd;
  else if (name && typeof name.noise === 'number') noiseStd = name.noise;
  else {
    noiseStd = 0;
    notes.push(
      name?.noise === 'uniform'
        ? 'trained with uniform dequantisation noise: noiseStd set to 0 (no score denoising)'
        : 'training noise unknown: noiseStd set to 0 (pass --noise-std S to enable sample --denoise)',
    );
  }
  const headDim = ov.headDim ?? 64;
  if (width % headDim !== 0) fail(`width ${width} is not a multiple of the head dimension ${headDim}: pass --head-dim D`);

  let cfg: FlowConfig;
  try {
    cfg = parseFlowConfig({ model: 'tarflow', inChannels, imgSize, patchSize, width, numBlocks, layersPerBlock, headDim, mlpRatio, numClasses, nvp, noiseStd }, 'inferred config');
  } catch (e) {
    throw new ConvertError((e as ConfigError).message);
  }
  const v = sd.get('var');
  if (v && v.data.some((x) => x !== 1)) {
    notes.push("the prior variance 'var' is not all ones (a learned prior): likelihoods are unaffected, but samples are not rescaled by √var here");
  }
  return { cfg, notes, prefix };
}

/** The reference's parameter shapes for a config: ours, in its layouts. */
export function referenceShapes(cfg: FlowConfig): Map<string, number[]> {
  const ours = tarflow.paramShapes(cfg);
  const out = new Map<string, number[]>();
  for (const [name, rule] of referenceRules(cfg)) {
    let shape = ours.get(rule.ours);
    if (!shape) throw new Error(`internal: no parameter ${rule.ours} for ${name}`);
    if (rule.transpose) shape = [...shape].reverse();
    if (rule.unsqueeze) shape = [shape[0]!, 1, ...shape.slice(1)];
    out.set(name, name.endsWith('proj_out.weight') || name.endsWith('proj_out.bias') ? (cfg.nvp ? shape : [shape[0]! / 2, ...shape.slice(1)]) : shape);
  }
  return out;
}

/**
 * A reference state dict to our flat parameters for `cfg`: every parameter present with the
 * reference's shape, then renamed and transposed. A volume-preserving (nvp: false) reference
 * projects to D shift values; ours to [a, b] with a ignored, so its rows go to the b half.
 */
export function convertStateDict(sd: StateDict, cfg: FlowConfig, prefix = ''): StateDict {
  if (prefix) sd = new Map([...sd].map(([k, v]) => [k.startsWith(prefix) ? k.slice(prefix.length) : k, v]));
  const problems: string[] = [];
  const expected = referenceShapes(cfg);
  for (const name of sd.keys()) {
    if (name.startsWith('blocks.') && !expected.has(name) && !/^blocks\.\d+\.attn_mask$/.test(name)) {
      problems.push(`${name}: unexpected tensor (not part of the inferred architecture)`);
    }
  }
  for (const [name, shape] of expected) {
    const t = sd.get(name);
    if (!t) problems.push(`${name}: missing (expected [${shape}])`);
    else if (t.shape.join(',') !== shape.join(',')) problems.push(`${name}: expected [${shape}], file has [${t.shape}]`);
    else if (t.data.some((x) => !Number.isFinite(x))) problems.push(`${name}: contains NaN or infinite values`);
  }
  if (problems.length) {
    const more = problems.length > 10 ? `\n  and ${problems.length - 10} more` : '';
    throw new ConvertError(`weights do not match the inferred architecture (${problems.length} problem(s)):\n  ${problems.slice(0, 10).join('\n  ')}${more}`);
  }
  if (!cfg.nvp) {
    sd = new Map(sd);
    for (let b = 0; b < cfg.numBlocks; b++) {
      for (const leaf of ['weight', 'bias']) {
        const name = `blocks.${b}.proj_out.${leaf}`;
        const t = sd.get(name)!;
        const data = new Float32Array(2 * t.data.length);
        data.set(t.data, t.data.length);
        sd.set(name, { shape: [2 * t.shape[0]!, ...t.shape.slice(1)], data });
      }
    }
  }
  return fromReferenceStateDict(sd, cfg);
}

/** Node's DEFLATE decompressor, bounded by the declared size. */
export const nodeInflateRaw = (data: Uint8Array, size: number): Uint8Array => inflateRawSync(data, { maxOutputLength: Math.max(1, size) });

/** Reads a torch.save file or a safetensors file into a state dict. */
export async function readStateDictFile(path: string, opts: TorchReadOptions = {}): Promise<StateDict> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new TorchCheckpointError(code === 'ENOENT' ? `no such file: ${path}` : `cannot read ${path}: ${(e as Error).message}`);
  }
  return readStateDict(bytes, path, { inflateRaw: nodeInflateRaw, ...opts });
}

export type ConvertResult = { cfg: FlowConfig; notes: string[]; tensors: number; parameters: number };

/**
 * An ml-starflow state dict and the YAML of its model arguments → our config ('starflow') and flat
 * parameters. The text width comes from the deep block's proj_txt when the YAML leaves it out.
 */
export function convertStarflowStateDict(sd: StateDict, yamlText: string, where: string): { cfg: FlowConfig; model: StateDict } {
  const args = readStarflowArgs(yamlText, where);
  const projText = [...sd].find(([k]) => /^blocks\.\d+\.proj_txt\.weight$/.test(k))?.[1];
  const cfg = flowConfigFromStarflowArgs(args, where, { textDim: projText?.shape[1] });
  return { cfg, model: convertStateDict(sd, cfg) };
}

/**
 * Converts a reference checkpoint file to a model directory (config.json + model.safetensors):
 * ml-tarflow's (architecture inferred from the shapes and the file name) or, with `starflowConfig`
 * (its YAML), ml-starflow's.
 */
export async function convertCheckpoint(from: string, outDir: string, overrides: ConvertOverrides = {}, starflowConfig?: string): Promise<ConvertResult> {
  const sd = await readStateDictFile(from);
  let cfg: FlowConfig;
  let model: StateDict;
  let notes: string[] = [];
  if (starflowConfig !== undefined) {
    const text = await readFile(starflowConfig, 'utf8').catch((e: NodeJS.ErrnoException) => {
      throw new ConvertError(e.code === 'ENOENT' ? `no such file: ${starflowConfig}` : `cannot read ${starflowConfig}: ${e.message}`);
    });
    ({ cfg, model } = convertStarflowStateDict(sd, text, starflowConfig));
    notes = [`ml-starflow arguments from ${basename(starflowConfig)}`];
  } else {
    const inferred = inferConfig(sd, { fileName: from, overrides });
    ({ cfg, notes } = inferred);
    model = convertStateDict(sd, cfg, inferred.prefix);
  }
  const provenance = { software: 'starflow-ts', convertedFrom: basename(from), notes };
  await saveCheckpoint(outDir, { config: { ...cfg, provenance }, model });
  let parameters = 0;
  for (const t of model.values()) parameters += t.data.length;
  return { cfg, notes, tensors: model.size, parameters };
}

export type ReferenceFormat = 'ml-tarflow' | 'ml-starflow';

/** Why a config cannot be written for a reference's Model, or null. */
function unexportable(cfg: FlowConfig, format: ReferenceFormat): string | null {
  if (format === 'ml-starflow') {
    if (cfg.numClasses > 0) return "ml-starflow's Model has no class embeddings (export class-conditional TARFlow configs as ml-tarflow)";
    if (!cfg.nvp) return "ml-starflow's Model has no volume-preserving blocks (nvp false)";
    return null;
  }
  const tarflowOnly: [boolean, string][] = [
    [cfg.startToken, 'a start token'], [cfg.positions !== 'learned', 'RoPE'], [cfg.scale !== 'exp', 'softplus scales'], [cfg.softClip > 0, 'soft clipping'],
    [cfg.norm !== 'layer', `norm '${cfg.norm}'`], [cfg.mlp !== 'gelu', 'SwiGLU'], [cfg.qkNorm, 'qk-norm'], [cfg.postNorm, 'post-norm'], [cfg.finalNorm, 'a final norm'],
    [!cfg.bias, 'no biases'], [cfg.kvHeads > 0, 'grouped-query attention'], [cfg.order !== 'R2L', 'L2R order'], [cfg.deepWidth !== cfg.width, 'a wider deep block'],
    [new Set(cfg.layersPerBlock).size > 1 || cfg.layersPerBlock.includes(0), 'blocks of different depths'], [cfg.textDim > 0, 'text conditioning'], [cfg.condTopOnly, 'deep-only conditioning'],
    [cfg.headDim !== 64, `head size ${cfg.headDim} (ml-tarflow's is 64)`],
  ];
  const bad = tarflowOnly.filter(([on]) => on).map(([, what]) => what);
  return bad.length ? `ml-tarflow's Model has no ${bad.join(', ')} (export to ml-starflow)` : null;
}

/**
 * Our flat parameters → a reference's state dict: its names and layouts, and the buffers its
 * `Model` registers (`var`, every block's `attn_mask`, the rotary module's deprecated tables), so
 * that `load_state_dict(strict=True)` takes it.
 */
export function toReferenceStateDict(cfg: FlowConfig, params: StateDict, format: ReferenceFormat): StateDict {
  const why = unexportable(cfg, format);
  if (why) throw new ConvertError(why);
  const { tokens, tokenDim } = tokenShape(cfg);
  const out: StateDict = new Map();
  const filled = (shape: number[], value: number) => ({ shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(value) });
  const lowerTriangle = (n: number) => {
    const t = filled([n, n], 0);
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) t.data[i * n + j] = 1;
    return t;
  };
  out.set('var', filled([tokens, tokenDim], 1));
  const side = format === 'ml-starflow' ? cfg.ropeSeqLen : Math.sqrt(tokens);
  const textTokens = format === 'ml-starflow' ? cfg.textTokens : 0;
  for (const [name, rule] of referenceRules(cfg)) {
    const t = params.get(rule.ours);
    if (!t) throw new ConvertError(`the model lacks ${rule.ours} (for ${name})`);
    let v = rule.transpose ? transpose2d(t) : t;
    if (rule.unsqueeze) v = { shape: [v.shape[0]!, 1, ...v.shape.slice(1)], data: v.data };
    if (!cfg.nvp && /proj_out\.(weight|bias)$/.test(name)) {
      // A volume-preserving reference projects to the shift only: the b half of ours.
      const rows = v.shape[0]! / 2;
      const per = v.data.length / v.shape[0]!;
      v = { shape: [rows, ...v.shape.slice(1)], data: v.data.slice(rows * per) };
    }
    out.set(name, v);
    const block = /^blocks\.(\d+)\.proj_in\.weight$/.exec(name);
    if (block) out.set(`blocks.${block[1]}.attn_mask`, lowerTriangle(side * side + textTokens));
  }
  if (format === 'ml-starflow' && cfg.positions === 'rope') {
    const rows = side * side + textTokens;
    out.set('feat_rope.freqs_cos', filled([rows, cfg.headDim], 0));
    out.set('feat_rope.freqs_sin', filled([rows, cfg.headDim], 0));
  }
  return out;
}

/** ml-starflow's YAML for a config: the `arguments:` list its training script reads (train.py's flag names). */
export function starflowYaml(cfg: FlowConfig): string {
  const args: [string, unknown][] = [
    ['img_size', cfg.imgSize], ['channel_size', cfg.inChannels], ['patch_size', cfg.patchSize], ['channels', cfg.width], ['blocks', cfg.numBlocks],
    ['layers_per_block', cfg.layersPerBlock.join(' ')], ['head_dim', cfg.headDim], ['txt_size', cfg.textTokens], ['rope', Number(cfg.positions === 'rope')],
    ['sos', Number(cfg.startToken)], ['seq_order', cfg.order], ['use_softplus', Number(cfg.scale === 'softplus')], ['cond_top_only', Number(cfg.condTopOnly)],
    ['use_final_norm', Number(cfg.finalNorm)], ['soft_clip', cfg.softClip], ['nvp', Number(cfg.nvp)], ['adaln', 0],
    ['norm_type', { layer: 'layer_norm', rms: 'rms_norm', none: 'none' }[cfg.norm]], ['use_swiglu', Number(cfg.mlp === 'swiglu')], ['use_qk_norm', Number(cfg.qkNorm)],
    ['use_post_norm', Number(cfg.postNorm)], ['use_bias', Number(cfg.bias)], ['noise_std', cfg.noiseStd], ['latent_norm_regularization', cfg.latentNormReg],
  ];
  if (cfg.deepWidth !== cfg.width) args.push(['top_block_channels', cfg.deepWidth]);
  if (cfg.kvHeads > 0) args.push(['num_kv_heads', cfg.kvHeads]);
  if (cfg.ropeSeqLen !== cfg.imgSize / cfg.patchSize) args.push(['pt_seq_len', cfg.ropeSeqLen]);
  if (cfg.mlpRatio !== 4) args.push(['expansion', cfg.mlpRatio]);
  if (cfg.textDim > 0) args.push(['txt_dim', cfg.textDim]);
  return ['arguments:', ...args.map(([k, v]) => `- ${k}: ${typeof v === 'string' && /[:#]/.test(v) ? JSON.stringify(v) : v}`)].join('\n') + '\n';
}

export type ExportResult = { files: string[]; tensors: number };

/**
 * Writes a model directory for a reference's own code: `model.pth` (torch.save format, its names,
 * layouts and buffers) and, for ml-starflow, `config.yaml` (its arguments); for ml-tarflow the file
 * is named as its checkpoints are, {dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise}.pth.
 */
export async function exportModel(modelDir: string, outDir: string, format: ReferenceFormat): Promise<ExportResult> {
  const ck = await loadCheckpoint(modelDir);
  const { config, provenance } = splitConfigJson(ck.config);
  const cfg = parseFlowConfig(config, `${modelDir}/config.json`);
  const sd = toReferenceStateDict(cfg, ck.model, format);
  const train = (provenance?.train as { data?: { train?: string } } | undefined)?.data?.train;
  const dataset = train ? train.split(':')[0]!.replace(/[^a-z0-9-]/gi, '') || 'model' : 'model';
  const stem = format === 'ml-starflow' ? 'model' : `${dataset}_model_${cfg.patchSize}_${cfg.width}_${cfg.numBlocks}_${cfg.layersPerBlock[0]}_${cfg.noiseStd > 0 ? cfg.noiseStd : 'uniform'}`;
  await makeDirs(outDir);
  const files = [join(outDir, `${stem}.pth`)];
  await writeFileAtomic(files[0]!, torchSave(sd, stem));
  if (format === 'ml-starflow') {
    files.push(join(outDir, 'config.yaml'));
    await writeFileAtomic(files[1]!, starflowYaml(cfg));
  }
  return { files, tensors: sd.size };
}
