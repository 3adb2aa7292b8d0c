// Checkpoint directories: config.json + model.safetensors, plus optimizer.safetensors and
// trainer.json for training runs. All tensors are stored as F32.
//
// Saving is atomic for the directory as a whole. Everything is written and fsynced into a sibling
// `DIR.tmp-<pid>-<rand>`; then the old DIR is renamed to `DIR.old-<time>-<pid>-<rand>`, the temp
// directory is renamed to DIR, and the old one is removed. Each rename is atomic, so a kill at any
// instant leaves one of:
//   - DIR complete and old (crash while writing the temp dir; the partial temp dir is ignored),
//   - no DIR but a complete `DIR.old-*` (crash between the two renames): loadCheckpoint renames
//     the newest one back,
//   - DIR complete and new (crash before cleanup; leftovers are removed by the next save).
// One writer per checkpoint directory at a time.
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fsyncDir, makeDirs, readSafetensorsFile, tempSuffix, writeFileSynced } from './files.js';
import { fromFloat32, serializeSafetensors, toFloat32, type TensorEntry } from './safetensors.js';

export type FlatTensors = Map<string, { shape: number[]; data: Float32Array }>;

export interface CheckpointParts {
  config: unknown;
  model: FlatTensors;
  optimizer?: FlatTensors;
  trainer?: unknown;
  /** Checkpoints saved inside this one, in subdirectories of these names (a latent model's autoencoder). */
  components?: Record<string, CheckpointParts>;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

const CONFIG = 'config.json';
const MODEL = 'model.safetensors';
const OPTIMIZER = 'optimizer.safetensors';
const TRAINER = 'trainer.json';

function toEntries(flat: FlatTensors): Map<string, TensorEntry> {
  const out = new Map<string, TensorEntry>();
  for (const [name, t] of flat) out.set(name, fromFloat32(t.data, t.shape));
  return out;
}

function jsonText(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

/** Leftover siblings of `dir` from interrupted saves: `kind` is 'tmp' or 'old'. */
async function leftovers(dir: string, kind: 'tmp' | 'old'): Promise<string[]> {
  const prefix = `${basename(dir)}.${kind}-`;
  const names = await readdir(dirname(dir)).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(prefix)).map((n) => join(dirname(dir), n));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Writes and fsyncs a fresh directory holding `parts` (components in subdirectories). */
async function writeParts(dir: string, parts: CheckpointParts): Promise<void> {
  await mkdir(dir);
  await writeFileSynced(join(dir, CONFIG), jsonText(parts.config));
  await writeFileSynced(join(dir, MODEL), serializeSafetensors(toEntries(parts.model)));
  if (parts.optimizer) await writeFileSynced(join(dir, OPTIMIZER), serializeSafetensors(toEntries(parts.optimizer)));
  if (parts.trainer !== undefined) await writeFileSynced(join(dir, TRAINER), jsonText(parts.trainer));
  for (const [name, part] of Object.entries(parts.components ?? {})) {
    if (!/^[a-z0-9][a-z0-9_-]*$/i.test(name)) throw new CheckpointError(`component name ${JSON.stringify(name)} is not a plain directory name`);
    await writeParts(join(dir, name), part);
  }
  await fsyncDir(dir);
}

export async function saveCheckpoint(dir: string, parts: CheckpointParts): Promise<void> {
  dir = resolve(dir);
  const existing = await stat(dir).catch(() => undefined);
  if (existing && !existing.isDirectory()) throw new CheckpointError(`${dir}: exists and is not a checkpoint directory`);
  const parent = dirname(dir);
  await makeDirs(parent);
  const tmp = `${dir}.tmp-${tempSuffix()}`;
  try {
    await writeParts(tmp, parts);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  if (existing) await rename(dir, `${dir}.old-${Date.now()}-${tempSuffix()}`);
  await rename(tmp, dir);
  await fsyncDir(parent);
  for (const stale of [...(await leftovers(dir, 'old')), ...(await leftovers(dir, 'tmp'))]) {
    await rm(stale, { recursive: true, force: true });
  }
}

/** The newest `DIR.old-<time>-...` left by a save that died between its two renames. */
async function newestOld(dir: string): Promise<string | undefined> {
  const stamp = (p: string) => Number(p.slice(dir.length + '.old-'.length).split('-')[0]);
  const olds = (await leftovers(dir, 'old')).filter((p) => Number.isFinite(stamp(p)));
  return olds.sort((a, b) => stamp(b) - stamp(a))[0];
}

export async function loadCheckpoint(dir: string): Promise<CheckpointParts> {
  dir = resolve(dir);
  let src = dir;
  const st = await stat(dir).catch(() => undefined);
  if (!st) {
    const old = await newestOld(dir);
    if (!old) throw new CheckpointError(`no such checkpoint directory: ${dir}`);
    // Finish the interrupted save's rollback; if renaming is not allowed, read it in place.
    src = await rename(old, dir).then(
      () => dir,
      () => old,
    );
  } else if (!st.isDirectory()) {
    throw new CheckpointError(`${dir}: not a checkpoint directory (expected a directory with ${CONFIG} and ${MODEL})`);
  }

  const config = await readJson(join(src, CONFIG), true);
  const model = toFlat((await readSafetensorsFile(join(src, MODEL))).tensors, join(src, MODEL));
  const parts: CheckpointParts = { config, model };
  if (await exists(join(src, OPTIMIZER))) {
    parts.optimizer = toFlat((await readSafetensorsFile(join(src, OPTIMIZER))).tensors, join(src, OPTIMIZER));
  }
  const trainer = await readJson(join(src, TRAINER), false);
  if (trainer !== undefined) parts.trainer = trainer;
  return parts;
}

function toFlat(tensors: Map<string, TensorEntry>, source: string): FlatTensors {
  const out: FlatTensors = new Map();
  for (const [name, e] of tensors) out.set(name, { shape: e.shape, data: toFloat32(e, `${source}: tensor ${JSON.stringify(name)}`) });
  return out;
}

async function readJson(path: string, required: boolean): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      if (!required) return undefined;
      throw new CheckpointError(`${path}: missing (a checkpoint directory needs ${CONFIG} and ${MODEL})`);
    }
    throw new CheckpointError(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new CheckpointError(`${path}: invalid JSON ${jsonErrorLocation(text)}`);
  }
}

/**
 * Where and why JSON.parse failed, as `at line L, column C: reason`. V8's own messages only
 * sometimes carry a position, so this rescans the text; only called on failure.
 */
export function jsonErrorLocation(text: string): string {
  let i = 0;
  const bad = (reason: string): never => {
    throw { offset: i, reason };
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const unexpected = () => (i >= text.length ? bad('unexpected end of input') : bad(`unexpected ${JSON.stringify(text[i])}`));
  const expect = (c: string) => (text[i] === c ? i++ : unexpected());
  const str = () => {
    expect('"');
    for (;;) {
      const c = text[i];
      if (c === undefined) bad('unterminated string');
      else if (c === '"') return void i++;
      else if (c === '\\') {
        i++;
        if (text[i] === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) i += 5;
        else if (text[i] !== undefined && '"\\/bfnrt'.includes(text[i]!)) i++;
        else bad('bad escape in string');
      } else if (c < ' ') bad('control character in string');
      else i++;
    }
  };
  const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const value = (): void => {
    ws();
    const c = text[i];
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      i++;
      ws();
      if (text[i] === close) return void i++;
      for (;;) {
        if (close === '}') {
          ws();
          str();
          ws();
          expect(':');
        }
        value();
        ws();
        if (text[i] === ',') i++;
        else return void expect(close);
      }
    }
    if (c === '"') return str();
    for (const lit of ['true', 'false', 'null']) if (text.startsWith(lit, i)) return void (i += lit.length);
    NUMBER.lastIndex = i;
    if (NUMBER.test(text)) return void (i = NUMBER.lastIndex);
    unexpected();
  };
  let at = { offset: 0, reason: 'unknown error' };
  try {
    value();
    ws();
    if (i < text.length) bad(`unexpected ${JSON.stringify(text[i])} after the JSON value`);
  } catch (e) {
    at = e as typeof at;
  }
  const before = text.slice(0, at.offset).split('\n');
  return `at line ${before.length}, column ${before.at(-1)!.length + 1}: ${at.reason}`;
}

/**
 * Compares a model's expected parameter shapes with loaded tensors. Throws a CheckpointError whose
 * first line names the source and whose following lines (at most 10) say what does not match.
 */
export function checkWeightsAgainst(expected: Map<string, number[]>, got: FlatTensors, source: string): void {
  const problems: string[] = [];
  const fmt = (s: number[]) => `[${s.join(',')}]`;
  for (const [name, shape] of expected) {
    const t = got.get(name);
    if (!t) problems.push(`${name}: missing (expected ${fmt(shape)})`);
    else if (fmt(t.shape) !== fmt(shape)) problems.push(`${name}: expected ${fmt(shape)}, file has ${fmt(t.shape)}`);
  }
  for (const [name, t] of got) {
    if (!expected.has(name)) problems.push(`${name}: unexpected tensor ${fmt(t.shape)} (not in the model)`);
  }
  if (problems.length === 0) return;
  const MAX = 10;
  const lines = problems.slice(0, MAX).map((p) => `  ${p}`);
  if (problems.length > MAX) lines.push(`  and ${problems.length - MAX} more`);
  const n = problems.length;
  throw new CheckpointError(`${source}: weights do not match the model (${n} problem${n === 1 ? '' : 's'}):\n${lines.join('\n')}`);
}
