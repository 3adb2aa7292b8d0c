// Node file-system helpers for the io layer: durable writes and safetensors files on disk.
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { parseSafetensors, SafetensorsError, serializeSafetensors, type SafetensorsFile, type TensorEntry } from './safetensors.js';

/** A short random suffix for temp names, so concurrent processes never collide. */
export function tempSuffix(): string {
  return `${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Writes a new file (failing if it exists) and fsyncs it, so its bytes are on disk on return. */
export async function writeFileSynced(path: string, data: Uint8Array | string): Promise<void> {
  const fh = await open(path, 'wx');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes renames and creations inside a directory durable. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
  } catch (e) {
    // Windows cannot open directories; its renames are durable without this.
    if (process.platform === 'win32') return;
    throw e;
  }
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Replaces `path` atomically: a reader sees the old contents or the new, never a partial file,
 * even if the process dies mid-write (temp file in the same directory, fsync, rename, fsync dir).
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${tempSuffix()}`);
  try {
    await writeFileSynced(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fsyncDir(dir);
}

export class OutputPathError extends Error {
  override name = 'OutputPathError';
}

/**
 * Creates a directory and its missing parents, one level at a time from the nearest existing
 * ancestor. (Node's recursive mkdir spins for ever under /proc and similar file systems, where
 * creating an entry fails with ENOENT although the parent exists.)
 */
export async function makeDirs(dir: string): Promise<void> {
  const missing: string[] = [];
  let at = resolve(dir);
  for (;;) {
    const st = await stat(at).catch((e: unknown) => {
      if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') return undefined;
      throw new OutputPathError(`cannot use ${at}: ${(e as Error).message}`);
    });
    if (st) {
      if (!st.isDirectory()) throw new OutputPathError(`cannot create ${resolve(dir)}: ${at} is not a directory`);
      break;
    }
    missing.push(at);
    const up = dirname(at);
    if (up === at) break;
    at = up;
  }
  for (const d of missing.reverse()) {
    await mkdir(d).catch((e: unknown) => {
      if (errCode(e) !== 'EEXIST') throw new OutputPathError(`cannot create directory ${d}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    });
  }
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Reads a whole file, turning Node's errors into one-line SafetensorsErrors naming the path. */
async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = errCode(e);
    if (code === 'ENOENT') throw new SafetensorsError(`no such file: ${path}`);
    if (code === 'EISDIR') throw new SafetensorsError(`${path}: is a directory, not a safetensors file`);
    throw new SafetensorsError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

export async function readSafetensorsFile(path: string): Promise<SafetensorsFile> {
  return parseSafetensors(await readBytes(path), path);
}

export async function writeSafetensorsFile(
  path: string,
  tensors: Record<string, TensorEntry> | Map<string, TensorEntry>,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}
