// Converting apple/ml-tarflow checkpoints (torch.save state dicts, or safetensors with the same
// names) into our model directories: read the tensors safely (./torch-checkpoint.ts), infer the
// architecture from their shapes and the reference's file-name convention, rename and transpose
// (./reference-names.ts), and save config.json + model.safetensors.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { inflateRawSync } from 'node:zlib';
import { readStateDict, TorchCheckpointError, type StateDict, type TorchReadOptions } from './torch-checkpoint.js';
import { fromReferenceStateDict, referenceRules } from './reference-names.js';
import { readStarflowArgs, flowConfigFromStarflowArgs } from './starflow-config.js';
import { saveCheckpoint } from './checkpoint.js';
import { ConfigError } from '../models/config.js';
import { parseFlowConfig, tarflow, type FlowConfig } from '../models/flow.js';

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
