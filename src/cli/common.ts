// What every command shares: option parsing with clear errors, engine start, and error reporting.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { startNodeEngine } from '../engine/node.js';
import { defaultShippedModel } from '../io/shipped.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export const ENGINE_OPTIONS: OptionSpec = {
  device: { type: 'string' },
  threads: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

export const ENGINE_HELP = `Engine:
  --device NAME        auto (default: WebGPU when an adapter exists, else wasm), wasm, webgpu, cpu;
                       also STARFLOW_DEVICE
  --threads N          threads (default: all cores; also STARFLOW_THREADS): for the native
                       matrix products (other kernels run on one thread), or jax-js's wasm
                       workers when the native addon is not built or STARFLOW_NATIVE=0`;

/**
 * `--opt -1` → `--opt=-1` for options that take a value: node's parseArgs would read a value
 * starting with '-' as another option ("ambiguous"), but negative numbers are ordinary values
 * here (`--class -1`, `--labels -1,3`).
 */
function joinNegativeValues(argv: string[], options: OptionSpec): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = argv[i + 1];
    const name = a.startsWith('--') ? a.slice(2) : undefined;
    if (name && options[name]?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

export function parse(argv: string[], options: OptionSpec): Record<string, string | boolean | undefined> {
  const all = { ...ENGINE_OPTIONS, ...options };
  try {
    const { values, positionals } = parseArgs({ args: joinNegativeValues(argv, all), options: all, strict: true, allowPositionals: true });
    if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    return values as Record<string, string | boolean | undefined>;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message.replace(/\. To specify a positional argument.*$/, ''));
  }
}

export function intOpt(v: string | boolean | undefined, name: string, min: number, fallback?: number): number {
  if (v === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required`);
    return fallback;
  }
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got '${v}'`);
  return n;
}

export function numOpt(v: string | boolean | undefined, name: string, fallback: number, check: (n: number) => boolean = Number.isFinite, what = 'a number'): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !check(n)) throw new UsageError(`--${name} must be ${what}, got '${v}'`);
  return n;
}

export function strOpt(v: string | boolean | undefined, name: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} needs a value`);
  return v;
}

/** Starts the engine. --threads was already applied by the launcher (bin/starflow.js) before the engine loaded. */
export async function startEngineFromOptions(o: Record<string, string | boolean | undefined>): Promise<string> {
  if (o.threads !== undefined) intOpt(o.threads, 'threads', 1);
  return startNodeEngine({ device: strOpt(o.device, 'device') });
}

/** --model DIR, or the best shipped model when none is given. */
export function modelDir(o: Record<string, string | boolean | undefined>): string {
  const dir = strOpt(o.model, 'model');
  if (dir) return dir;
  const shipped = defaultShippedModel();
  if (shipped) return shipped.dir;
  throw new UsageError('--model DIR is required');
}

/** How help texts name the default --model. */
export const MODEL_DEFAULT = `default: checkpoints/${defaultShippedModel()?.name ?? '(none shipped)'}, the shipped model with the best sample quality`;

/** --denoise / --no-denoise: true, false, or undefined (the model's default). */
export function denoiseFlag(o: Record<string, string | boolean | undefined>): boolean | undefined {
  if (o.denoise && o['no-denoise']) throw new UsageError('give --denoise or --no-denoise, not both');
  return o['no-denoise'] ? false : o.denoise ? true : undefined;
}
