// Model directories (config.json + model.safetensors) ↔ a model (family, config, parameters on
// the device). config.json holds the model config and, under `provenance`, how the model was
// made (training config, steps, time, seed, commit, evaluation figures).
import { loadCheckpoint, saveCheckpoint, checkWeightsAgainst, CheckpointError, type CheckpointParts } from './checkpoint.js';
import { familyOf, parseModelConfig } from '../models/registry.js';
import type { Model, ModelConfig } from '../models/model.js';
import { latentShape } from '../models/autoencoder.js';
import { autoencoderParts, loadAutoencoder, type LoadedAutoencoder } from './autoencoder.js';
import { paramsFromHost, paramsToHost } from '../nn/params.js';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './files.js';

export type Provenance = Record<string, unknown>;
export type LoadedModel = Model & { provenance?: Provenance };

/** Splits a config.json object into the model config and its provenance. */
export function splitConfigJson(raw: unknown): { config: unknown; provenance?: Provenance } {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || !('provenance' in raw)) return { config: raw };
  const { provenance, ...config } = raw as Record<string, unknown>;
  if (typeof provenance !== 'object' || provenance === null || Array.isArray(provenance)) return { config: raw }; // the config's parser names the field
  return { config, provenance: provenance as Provenance };
}

/** Loads a model directory, validating the config and every tensor's name and shape. */
export async function loadModel(dir: string): Promise<LoadedModel> {
  const ck = await loadCheckpoint(dir);
  const { config, provenance } = splitConfigJson(ck.config);
  const cfg = parseModelConfig(config, `${dir}/config.json`);
  const family = familyOf(cfg);
  checkWeightsAgainst(family.paramShapes(cfg), ck.model, `${dir}/model.safetensors`);
  for (const [name, t] of ck.model) {
    if (t.data.some((v) => !Number.isFinite(v))) throw new CheckpointError(`${dir}/model.safetensors: tensor '${name}' contains NaN or infinite values`);
  }
  const autoencoder = await modelAutoencoder(cfg, dir, `${dir}/config.json`);
  return { family, cfg, params: paramsFromHost(ck.model), ...(autoencoder ? { autoencoder } : {}), ...(provenance ? { provenance } : {}) };
}

/** Where a saved latent model keeps its autoencoder: a subdirectory of its own, so the directory travels whole. */
export const AUTOENCODER_DIR = 'autoencoder';

/**
 * The autoencoder a latent model's config names (a path relative to `base`), checked against the
 * latents the model draws; undefined for a pixel model. `where` names the config in errors.
 */
export async function modelAutoencoder(cfg: ModelConfig, base: string, where: string): Promise<LoadedAutoencoder | undefined> {
  if (!cfg.autoencoder) return undefined;
  const dir = path.resolve(base, cfg.autoencoder);
  let ae: LoadedAutoencoder;
  try {
    ae = await loadAutoencoder(dir);
  } catch (e) {
    throw new CheckpointError(`${where} names the autoencoder '${cfg.autoencoder}' (${dir}), which cannot be loaded: ${(e as Error).message}`);
  }
  const { channels, size } = latentShape(ae.cfg);
  if (channels !== cfg.inChannels || size !== cfg.imgSize) {
    throw new CheckpointError(
      `${where}: the model draws ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize} latents but its autoencoder (${dir}) makes ${channels}×${size}×${size}: they do not belong together`,
    );
  }
  return ae;
}

/** The checkpoint parts of a model: its config (with provenance) and weights, and a latent model's autoencoder beside them. */
export async function modelParts(model: Model & { autoencoder?: LoadedAutoencoder }, provenance?: Provenance): Promise<CheckpointParts> {
  const ae = model.autoencoder;
  const cfg = ae ? { ...model.cfg, autoencoder: AUTOENCODER_DIR } : model.cfg;
  return {
    config: provenance ? { ...cfg, provenance } : cfg,
    model: await paramsToHost(model.params),
    ...(ae ? { components: { [AUTOENCODER_DIR]: await autoencoderParts(ae, ae.provenance) } } : {}),
  };
}

export async function saveModel(dir: string, model: Model, provenance?: Provenance): Promise<void> {
  await saveCheckpoint(dir, await modelParts(model, provenance));
}

/**
 * Records an evaluation figure in a model directory's config.json, under
 * provenance.evaluation[key] (the rest of the file untouched; written atomically).
 */
export async function recordEvaluation(dir: string, key: string, value: unknown): Promise<void> {
  const file = path.join(dir, 'config.json');
  const raw = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  const { config, provenance = {} } = splitConfigJson(raw);
  const evaluation = typeof provenance.evaluation === 'object' && provenance.evaluation !== null ? (provenance.evaluation as Record<string, unknown>) : {};
  const next = { ...(config as object), provenance: { ...provenance, evaluation: { ...evaluation, [key]: value } } };
  await writeFileAtomic(file, JSON.stringify(next, null, 2) + '\n');
}
