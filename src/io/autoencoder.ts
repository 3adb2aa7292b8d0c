// Autoencoder directories (config.json + model.safetensors), standalone or inside a latent model's
// checkpoint. config.json holds the architecture, the latent scale, the decoder's noise level and,
// under `provenance`, how it was trained and how well it reconstructs.
import { checkWeightsAgainst, loadCheckpoint, saveCheckpoint, CheckpointError, type CheckpointParts } from './checkpoint.js';
import { splitConfigJson, type Provenance } from './model.js';
import { paramsFromHost, paramsToHost } from '../nn/params.js';
import { autoencoderShapes, parseAutoencoderConfig, type Autoencoder, type AutoencoderParams } from '../models/autoencoder.js';

export type LoadedAutoencoder = Autoencoder & { provenance?: Provenance };

export async function loadAutoencoder(dir: string): Promise<LoadedAutoencoder> {
  const ck = await loadCheckpoint(dir);
  const { config, provenance } = splitConfigJson(ck.config);
  const cfg = parseAutoencoderConfig(config, `${dir}/config.json`);
  checkWeightsAgainst(autoencoderShapes(cfg), ck.model, `${dir}/model.safetensors`);
  for (const [name, t] of ck.model) {
    if (t.data.some((v) => !Number.isFinite(v))) throw new CheckpointError(`${dir}/model.safetensors: tensor '${name}' contains NaN or infinite values`);
  }
  return { cfg, params: paramsFromHost<AutoencoderParams>(ck.model), ...(provenance ? { provenance } : {}) };
}

/** The autoencoder as checkpoint parts (to save alone or as a component of a latent model's checkpoint). */
export async function autoencoderParts(ae: Autoencoder, provenance?: Provenance): Promise<CheckpointParts> {
  return { config: provenance ? { ...ae.cfg, provenance } : ae.cfg, model: await paramsToHost(ae.params) };
}

export async function saveAutoencoder(dir: string, ae: Autoencoder, provenance?: Provenance): Promise<void> {
  await saveCheckpoint(dir, await autoencoderParts(ae, provenance));
}
