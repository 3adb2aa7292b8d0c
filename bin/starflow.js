#!/usr/bin/env node
// Runs the TypeScript CLI directly (tsx compiles on the fly; no build step). The thread count
// must be known before the engine module loads, so --threads is read here.
import { register } from 'tsx/esm/api';

const argv = process.argv;
const i = argv.findIndex((a) => a === '--threads' || a.startsWith('--threads='));
if (i > 1) process.env.STARFLOW_THREADS = argv[i].includes('=') ? argv[i].split('=')[1] : (argv[i + 1] ?? '');
register();
await import('../src/engine/node-shims.ts');
await import('../src/cli/main.ts');
