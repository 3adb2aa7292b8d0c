// Config validation shared by every family: configs are validated once at the edge and typed
// inside; every error names the field. `config.json` in a checkpoint directory holds the config
// object, so the architecture always travels with the weights.

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export type RawConfig = Record<string, unknown>;

/** The object itself, or a ConfigError saying what came instead. */
export function asObject(raw: unknown, where: string): RawConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${where}: expected an object, got ${JSON.stringify(raw)}`);
  }
  return raw as RawConfig;
}

/** Defaults filled in; a field neither in `defaults` nor in `required` is an error. */
export function withDefaults(o: RawConfig, defaults: RawConfig, required: readonly string[], where: string): RawConfig {
  const out = { ...defaults, ...o };
  const known = new Set([...Object.keys(defaults), ...required]);
  for (const k of Object.keys(out)) if (!known.has(k)) throw new ConfigError(`${where}: unknown field '${k}'`);
  return out;
}

export function intField(o: RawConfig, name: string, where: string, min: number): number {
  const v = o[name];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new ConfigError(`${where}: '${name}' must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function numberField(o: RawConfig, name: string, where: string, min: number): number {
  const v = o[name];
  if (typeof v !== 'number' || !Number.isFinite(v) || !(v >= min)) {
    throw new ConfigError(`${where}: '${name}' must be a number ≥ ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

export function boolField(o: RawConfig, name: string, where: string): boolean {
  const v = o[name];
  if (typeof v !== 'boolean') throw new ConfigError(`${where}: '${name}' must be true or false, got ${JSON.stringify(v)}`);
  return v;
}
