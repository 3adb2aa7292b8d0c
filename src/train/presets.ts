// Training configs from disk: named presets (presets/NAME.json) and config files (JSON or YAML).
// Every field is validated by parseTrainConfig; a file that does not parse is a ConfigError, a
// preset or file that does not exist a PresetError.
import path from 'node:path';
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { ConfigError } from '../models/config.js';
import { parseTrainConfig, type TrainConfig } from './config.js';

/** An unknown preset name or a config file that cannot be read. */
export class PresetError extends Error {
  override name = 'PresetError';
}

/** The presets that ship with the package. */
export const PRESET_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../presets');

/** The raw (unvalidated) contents of a JSON or YAML config file (.json is JSON, anything else YAML). */
export async function readConfigFile(file: string): Promise<unknown> {
  const text = await readFile(file, 'utf8').catch(() => {
    throw new PresetError(`cannot read config file '${file}'`);
  });
  try {
    return file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** A training config file (JSON or YAML), validated. */
export async function loadConfigFile(file: string): Promise<TrainConfig> {
  return parseTrainConfig(await readConfigFile(file), file);
}

/** The names of the presets in PRESET_DIR. */
export function presetNames(): string[] {
  return readdirSync(PRESET_DIR).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
}

/** A named preset from PRESET_DIR (see presetNames), validated. */
export async function loadPreset(name: string): Promise<TrainConfig> {
  if (!/^[a-z0-9-]+$/.test(name)) throw new PresetError(`unknown preset '${name}' (presets: ${presetNames().join(', ')})`);
  const file = path.join(PRESET_DIR, `${name}.json`);
  const raw = await readFile(file, 'utf8').catch(() => null);
  if (raw === null) throw new PresetError(`unknown preset '${name}' (presets: ${presetNames().join(', ')})`);
  return parseTrainConfig(JSON.parse(raw), `preset ${name}`);
}
