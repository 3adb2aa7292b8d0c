// Node-only: the native addon (native/gemm.c, native/kernels.c), built by `npm install`
// (scripts/build-native.mjs) where a C compiler exists. It computes jax-js's matrix products in
// place on the wasm memory, on the system's OpenBLAS when present, else on its own kernel, and
// evaluates the other kernels it can (src/engine/native-kernels.ts). When it is missing or fails
// to load, everything stays on wasm and one line at a terminal says why.
//   STARFLOW_NATIVE=0        never load it (wasm only, no notice)
//   STARFLOW_BLAS=auto|builtin|PATH   OpenBLAS if it loads (default), the addon's own kernel, or a
//                            shared library exporting cblas_sgemm
//   STARFLOW_NATIVE_KERNELS=0|auto|all  products only (every other kernel on wasm); the default
//                            choice of kernels (src/engine/native-kernels.ts); every kernel the
//                            evaluator can run (to measure that choice)
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { Native } from './native-route.js';
import type { KernelPolicy } from './native-kernels.js';

/** Where the build script writes the addon (the same from src/engine and dist/engine). */
export const ADDON_PATH = fileURLToPath(new URL('../../native/build/starflow_native.node', import.meta.url));

export type Addon = { gemm(memory: Uint8Array, desc: Float64Array): void; kernel?(memory: Uint8Array, desc: Float64Array): void; configure(threads: number, blas: string): string };

/** The native addon on `threads` threads, or null (with the reason) when it cannot be used. */
export function loadNative(threads: number, addonPath = ADDON_PATH): { native: Native | null; reason: string } {
  if (process.env.STARFLOW_NATIVE === '0') return { native: null, reason: 'STARFLOW_NATIVE=0' };
  if (!existsSync(addonPath)) return { native: null, reason: "the native addon is not built (it needs a C compiler: `npm run build:native` in a checkout, `npm rebuild starflow-ts` where installed)" };
  try {
    const addon = createRequire(import.meta.url)(addonPath) as Addon;
    const name = addon.configure(threads, process.env.STARFLOW_BLAS || 'auto');
    // An addon built before the kernel evaluator existed still serves products.
    const policy = kernelPolicyFromEnv();
    const kernel = typeof addon.kernel === 'function' && policy !== 'off' ? addon.kernel : undefined;
    return { native: { name: name === 'builtin' ? 'native' : `native (${name})`, gemm: addon.gemm, ...(kernel && policy !== 'off' ? { kernel, kernelPolicy: policy } : {}) }, reason: '' };
  } catch (err) {
    return { native: null, reason: `the native addon failed to load (${(err as Error).message.split('\n')[0]})` };
  }
}

/** STARFLOW_NATIVE_KERNELS: 0 (off), auto (the default) or all; anything else says so and means auto. */
function kernelPolicyFromEnv(): KernelPolicy | 'off' {
  const v = process.env.STARFLOW_NATIVE_KERNELS;
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === '0') return 'off';
  if (v === 'all') return 'all';
  if (isMainThread) process.stderr.write(`starflow: STARFLOW_NATIVE_KERNELS must be 0, auto or all, got '${v}'; using auto\n`);
  return 'auto';
}

/**
 * The one-line notice for a missing native path: for a person at a terminal (scripts and pipes
 * get clean stderr; the install already said it), main thread only, never for STARFLOW_NATIVE=0.
 */
export function nativeNotice(reason: string, interactive = process.stderr.isTTY === true): string | null {
  if (!reason || reason === 'STARFLOW_NATIVE=0' || !isMainThread || !interactive) return null;
  return `starflow: ${reason}; kernels run on wasm\n`;
}
