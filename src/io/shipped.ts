// The models that ship in checkpoints/ and the choice of the default one: the shipped model with
// the best recorded sample quality (lowest Fréchet distance in its provenance), so the default
// moves by itself when a better model ships with its evaluation recorded.
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { familyNames } from '../models/registry.js';

export const SHIPPED_DIR = fileURLToPath(new URL('../../checkpoints', import.meta.url));

/** How a shipped model's samples score (`starflow eval`, recorded in provenance.evaluation.samples). */
export type SampleQuality = { n: number; guidance: number; denoise: boolean; frechet: number; classAccuracy: number; report: string };

export type ShippedModel = { name: string; dir: string; samples: SampleQuality | null };

function isSampleQuality(v: unknown): v is SampleQuality {
  const q = v as Partial<SampleQuality> | null;
  return typeof q === 'object' && q !== null && Number.isFinite(q.frechet) && Number.isFinite(q.classAccuracy) && Number.isInteger(q.n);
}

/** Every shipped model of a registered family (feature extractors, which are no such model, are left out). */
export function shippedModels(root = SHIPPED_DIR): ShippedModel[] {
  if (!existsSync(root)) return [];
  const out: ShippedModel[] = [];
  for (const name of readdirSync(root).sort()) {
    const dir = path.join(root, name);
    const file = path.join(dir, 'config.json');
    if (!existsSync(file) || !existsSync(path.join(dir, 'model.safetensors'))) continue;
    let cfg: { model?: unknown; provenance?: { evaluation?: { samples?: unknown } } };
    try {
      cfg = JSON.parse(readFileSync(file, 'utf8')) as typeof cfg;
    } catch {
      continue; // a damaged shipped config is reported when that model is loaded, not here
    }
    if (!familyNames().includes(typeof cfg.model === 'string' ? cfg.model : 'tarflow')) continue;
    const samples = cfg.provenance?.evaluation?.samples;
    out.push({ name, dir, samples: isSampleQuality(samples) ? samples : null });
  }
  return out;
}

/** The shipped model with the lowest recorded Fréchet distance (null when none ships with one). */
export function defaultShippedModel(root = SHIPPED_DIR): ShippedModel | null {
  const rated = shippedModels(root).filter((m) => m.samples);
  rated.sort((a, b) => a.samples!.frechet - b.samples!.frechet);
  return rated[0] ?? null;
}

/** The directory of a shipped model by name, or of the default one (the best; see `defaultShippedModel`). */
export function shippedModelDir(name?: string, root = SHIPPED_DIR): string {
  const models = shippedModels(root);
  const m = name === undefined ? defaultShippedModel(root) : models.find((x) => x.name === name);
  if (!m) throw new Error(name === undefined ? `no shipped model in ${root} records its sample quality` : `no shipped model ${JSON.stringify(name)} (shipped: ${models.map((x) => x.name).join(', ')})`);
  return m.dir;
}
