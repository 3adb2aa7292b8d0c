#!/usr/bin/env node
// The CLI. An installed package runs its built JavaScript (dist/); a development checkout, which
// has src/ and tsx, runs the TypeScript directly so edits need no build. The thread count must be
// known before the engine module loads, so --threads is read here.
import { existsSync } from 'node:fs';

const argv = process.argv;
const i = argv.findIndex((a) => a === '--threads' || a.startsWith('--threads='));
if (i > 1) process.env.STARFLOW_THREADS = argv[i].includes('=') ? argv[i].split('=')[1] : (argv[i + 1] ?? '');
const source = new URL('../src/cli/main.ts', import.meta.url);
if (existsSync(source)) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/engine/node-shims.ts');
  await import('../src/cli/main.ts');
} else {
  await import('../dist/engine/node-shims.js');
  await import('../dist/cli/main.js');
}
