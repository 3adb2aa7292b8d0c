// Model directories (config.json + model.safetensors) ↔ a config and parameters on the device.
import { loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { parseModelConfig, type TarFlowConfig } from '../models/config.js';
import { checkWeightsAgainst } from './checkpoint.js';
import { paramsFromHost, paramsToHost } from '../nn/params.js';
import { expectedShapes } from '../train/trainer.js';
import type { TarFlowParams } from '../models/tarflow.js';

export type LoadedModel = { cfg: TarFlowConfig; params: TarFlowParams };

/** Loads a model directory, validating the config and every tensor's name and shape. */
export async function loadModel(dir: string): Promise<LoadedModel> {
  const ck = await loadCheckpoint(dir);
  const cfg = parseModelConfig(ck.config, `${dir}/config.json`);
  checkWeightsAgainst(expectedShapes(cfg), ck.model, `${dir}/model.safetensors`);
  for (const [name, t] of ck.model) {
    if (t.data.some((v) => !Number.isFinite(v))) throw new Error(`${dir}/model.safetensors: tensor '${name}' contains NaN or infinite values`);
  }
  return { cfg, params: paramsFromHost<TarFlowParams>(ck.model) };
}

export async function saveModel(dir: string, cfg: TarFlowConfig, params: TarFlowParams): Promise<void> {
  await saveCheckpoint(dir, { config: cfg, model: await paramsToHost(params) });
}
