// Helpers shared by the benchmarks: statistics, child processes that print one JSON line, and
// the PyTorch contender (python path, torch version, OpenBLAS through LD_LIBRARY_PATH, 1 thread).
// Nothing here loads jax-js: parent processes stay light and leave the engine to their children.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH_DIR, '..');
export const OPENBLAS_DIRS = ['/usr/lib/x86_64-linux-gnu/openblas-pthread', '/usr/lib/aarch64-linux-gnu/openblas-pthread'];
export const DEFAULT_PYTHON = process.env.BENCH_PYTHON ?? '/usr/bin/python3';

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const fmt = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '—');

/** Runs a child process that prints one JSON line last on stdout, and parses it. */
export function runChild<T>(cmd: string, args: string[], label: string, env: Record<string, string> = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = stdout.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !line.startsWith('{')) {
        reject(new Error(`${label} failed (exit ${code}):\n${stderr.trim() || stdout.trim()}`));
        return;
      }
      resolve(JSON.parse(line) as T);
    });
  });
}

/** Arguments that run a TypeScript file as a child through tsx. */
export function tsxArgs(file: string, args: string[]): string[] {
  return ['--import', 'tsx', file, ...args];
}

export function torchVersion(python: string): { ok: true; version: string } | { ok: false; why: string } {
  const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  if (r.error) return { ok: false, why: `${python} could not be run (${r.error.message})` };
  if (r.status !== 0) return { ok: false, why: `'import torch' fails under ${python}: ${(r.stderr || '').trim().split('\n').at(-1)}` };
  return { ok: true, version: r.stdout.trim() };
}

export const torchMissingNote = (why: string) =>
  `${why}. Install it with \`apt-get install -y python3-torch\` (or set BENCH_PYTHON). Only jax-js numbers are reported.`;

/**
 * The torch child's environment: 1 thread everywhere and, unless `mode` is 'system', OpenBLAS
 * instead of Debian's reference libblas.so.3 (~2.5 GFLOP/s) when libopenblas0-pthread is installed.
 */
export function torchEnv(mode: 'auto' | 'system'): { env: Record<string, string>; blas: string | null } {
  const blas = mode === 'system' ? null : OPENBLAS_DIRS.find((d) => existsSync(path.join(d, 'libblas.so.3'))) ?? null;
  const env: Record<string, string> = { OMP_NUM_THREADS: '1', OPENBLAS_NUM_THREADS: '1', MKL_NUM_THREADS: '1' };
  if (blas) env.LD_LIBRARY_PATH = [blas, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
  return { env, blas };
}

export function machineInfo() {
  const cores = os.availableParallelism?.() ?? os.cpus().length;
  const gitHead = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() || null;
  return { cores, cpu: os.cpus()[0]?.model ?? null, node: process.version, platform: `${process.platform}-${process.arch}`, gitHead, loadavg: os.loadavg() };
}

/** The installed jax-js version, read from its package.json (no engine import). */
export function jaxVersion(): string {
  return JSON.parse(readFileSync(path.join(ROOT, 'node_modules/@jax-js/jax/package.json'), 'utf8')).version as string;
}

/** Parses the flags every benchmark shares; returns the rest for the benchmark's own. */
export type CommonFlags = { quick: boolean; rounds: number | null; json: string | null; python: string; torchBlas: 'auto' | 'system' };

export function takeCommonFlag(a: string, value: () => string, o: CommonFlags): boolean {
  if (a === '--quick') o.quick = true;
  else if (a === '--rounds') {
    const n = Number(value());
    if (!Number.isInteger(n) || n < 1) throw new Error(`--rounds must be a positive integer`);
    o.rounds = n;
  } else if (a === '--json') o.json = value();
  else if (a === '--python') o.python = value();
  else if (a === '--torch-blas') {
    const v = value();
    if (v !== 'auto' && v !== 'system') throw new Error(`--torch-blas must be auto or system`);
    o.torchBlas = v;
  } else return false;
  return true;
}

export function defaultCommonFlags(): CommonFlags {
  return { quick: false, rounds: null, json: null, python: DEFAULT_PYTHON, torchBlas: 'auto' };
}

/** A child's flag value (`--flag VALUE`), or the default; a missing required flag is an error. */
export function argOf(args: string[], flag: string, dflt?: string): string {
  const i = args.indexOf(flag);
  const v = i >= 0 ? args[i + 1] : undefined;
  if (v === undefined) {
    if (dflt === undefined) throw new Error(`worker: ${flag} is required`);
    return dflt;
  }
  return v;
}

/**
 * Starts the engine in a benchmark child with a fixed wasm thread count. The count is read when
 * the shims load (src/engine/node-shims.ts), before jax-js is first imported: dynamic imports only.
 */
export async function startWorkerEngine(threads: number): Promise<number> {
  process.env.STARFLOW_THREADS = String(threads);
  const { startNodeEngine, engineThreads } = await import('../src/engine/node.js');
  await startNodeEngine({ device: 'wasm' });
  return engineThreads;
}

/** A path as results show it: relative to the repository, or `<temporary>/NAME` outside it (results are committed). */
export function repoPath(p: string): string {
  const r = path.relative(ROOT, path.resolve(p));
  return r.startsWith('..') || path.isAbsolute(r) ? `<temporary>/${path.basename(p)}` : r;
}

/**
 * Copies a model directory's weights and architecture (config.json without its provenance, which
 * the PyTorch twins and older revisions of this code do not read) to `to`.
 */
export function snapshotModel(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  const { provenance: _, ...config } = JSON.parse(readFileSync(path.join(from, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(path.join(to, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  copyFileSync(path.join(from, 'model.safetensors'), path.join(to, 'model.safetensors'));
}

/**
 * Writes a benchmark's report: JSON (the given fields plus bench, date, quick, rounds) and the
 * Markdown beside it, under bench/results/<bench>-<date>[-quick] unless --json names a path.
 */
export function writeReport(bench: string, o: CommonFlags, fields: Record<string, unknown>, md: string): void {
  const date = new Date().toISOString();
  const base = path.join(BENCH_DIR, 'results', `${bench}-${date.slice(0, 10)}${o.quick ? '-quick' : ''}`);
  const jsonPath = o.json ? path.resolve(o.json) : `${base}.json`;
  const mdPath = jsonPath.replace(/\.json$/, '') + '.md';
  const report = { bench, date, quick: o.quick, rounds: o.rounds, ...fields };
  mkdirSync(path.dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, JSON.stringify(report, null, 2) + '\n');
  writeFileSync(mdPath, `# ${bench} bench, ${date}\n\n${md}`);
  console.log(`wrote ${path.relative(process.cwd(), jsonPath)} and ${path.relative(process.cwd(), mdPath)}`);
}

/**
 * Walks `--flag [value]` arguments: `take(flag, value)` handles one (calling `value()` consumes
 * the next argument) and returns false for a flag it does not know, which is then an error.
 */
export function eachFlag(args: string[], take: (flag: string, value: () => string) => boolean, expected: string): void {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = (): string => {
      const v = args[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (!take(a, value)) throw new Error(`unknown flag '${a}' (expected ${expected})`);
  }
}

/**
 * Initial TarFlow weights (seed 0) with the output projection drawn from N(0, 0.01²): zero, as
 * initialised, it would make the backward pass and the inverse trivial. Loads the engine, so
 * child processes only.
 */
export async function benchWeights(cfg: import('../src/models/flow.js').FlowConfig): Promise<import('../src/models/flow.js').FlowParams> {
  const E = await import('../src/engine/index.js');
  const { initFlow, tokenShape } = await import('../src/models/flow.js');
  const params = initFlow(cfg, 0);
  params.blocks.forEach((b, i) => {
    b.projOut.w.dispose();
    b.projOut.w = E.normalArray(new E.Rng(11).fork(i), [cfg.width, 2 * tokenShape(cfg).tokenDim], 0.01);
  });
  return params;
}
