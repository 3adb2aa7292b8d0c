// The families a config can name. `config.json`'s `model` field picks one; a new family is one
// model file plus one `registerFamily` call (built-ins below; other modules register themselves
// when imported, which is how data-parallel workers find them: they import `family.source`).
import type { Params } from '../engine/index.js';
import { asObject, ConfigError } from './config.js';
import type { Model, ModelConfig, ModelFamily } from './model.js';
import { tarflow, starflow } from './flow.js';
import { dit } from './dit.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each family has its own config and parameter types
export type AnyFamily = ModelFamily<any, any>;

const families = new Map<string, AnyFamily>();

export function registerFamily(family: AnyFamily): void {
  families.set(family.name, family);
}

export function familyNames(): string[] {
  return [...families.keys()];
}

/** The family that made a config (by its `model` field). */
export function familyOf(cfg: { model: string }): ModelFamily<ModelConfig, Params> {
  const f = families.get(cfg.model);
  if (!f) throw new ConfigError(`unknown model family ${JSON.stringify(cfg.model)} (known: ${familyNames().join(', ')})`);
  return f;
}

/** Validates a model config of any registered family; a config without `model` is a TARFlow's (older checkpoints). */
export function parseModelConfig(raw: unknown, where = 'model config'): ModelConfig {
  const o = asObject(raw, where);
  const name = o.model ?? 'tarflow';
  const f = typeof name === 'string' ? families.get(name) : undefined;
  if (!f) throw new ConfigError(`${where}: 'model' must be one of ${familyNames().map((n) => JSON.stringify(n)).join(', ')}, got ${JSON.stringify(name)}`);
  return f.parseConfig(o, where);
}

/** A model from a config: fresh weights from a seed. */
export function initModel(cfg: ModelConfig, seed: number): Model {
  const family = familyOf(cfg);
  return { family, cfg, params: family.init(cfg, seed) };
}

registerFamily(tarflow);
registerFamily(starflow);
registerFamily(dit);
