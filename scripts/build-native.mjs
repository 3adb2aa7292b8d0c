#!/usr/bin/env node
// Builds the native addon (native/gemm.c, native/kernels.c → native/build/starflow_native.node) with the
// machine's C compiler, against the Node-API headers of the running Node. Run by `npm install`
// and `npm run build:native`. It never fails the install: without a compiler or headers it says so
// in one line, and starflow runs every kernel on wasm.
//   CC=...                 the compiler (default: cc)
//   STARFLOW_NATIVE=0      skip the build
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sources = ['gemm.c', 'kernels.c'].map((f) => path.join(root, 'native', f));
const out = path.join(root, 'native', 'build', 'starflow_native.node');

function say(line) {
  process.stdout.write(`starflow native: ${line}\n`);
}

function headerDir() {
  const candidates = [
    path.join(path.dirname(process.execPath), '..', 'include', 'node'),
    process.env.npm_config_nodedir && path.join(process.env.npm_config_nodedir, 'include', 'node'),
    '/usr/include/node',
    '/usr/local/include/node',
  ].filter(Boolean);
  return candidates.find((dir) => existsSync(path.join(dir, 'node_api.h')));
}

function main() {
  if (process.env.STARFLOW_NATIVE === '0') return say('skipped (STARFLOW_NATIVE=0); every kernel will run on wasm');
  const missing = sources.find((f) => !existsSync(f));
  if (missing) return say(`no source at ${missing}; every kernel will run on wasm`);
  const include = headerDir();
  if (!include) return say('no Node-API headers (node_api.h) found; every kernel will run on wasm');
  const cc = process.env.CC || 'cc';
  mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  // -march=native: the addon is built on the machine that runs it, for its vector width.
  // -fno-math-errno -fno-trapping-math: sqrtf, floorf and friends vectorise (nothing here reads errno
  // or floating-point exception flags; every result is unchanged).
  const args = ['-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math', '-std=c11', '-D_DEFAULT_SOURCE', '-shared', '-fPIC', `-I${include}`, ...sources, '-o', tmp, '-ldl', '-lpthread', '-lm'];
  const r = spawnSync(cc, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    rmSync(tmp, { force: true });
    const first = (r.stderr || '').trim().split('\n')[0];
    const why = r.error ? `${cc} could not run (${r.error.code ?? r.error.message})` : `${cc} failed (exit ${r.status})${first ? `: ${first}` : ''}`;
    return say(`not built, ${why}; every kernel will run on wasm`);
  }
  renameSync(tmp, out);
  say(`built ${path.relative(root, out)}`);
}

main();
