// The engine layer: the only module that imports @jax-js/jax. Everything else in starflow-ts
// reaches the tensor engine through these names, so the engine can be swapped or patched here.
//
// Conventions (jax-js ownership): every op consumes its array arguments. Model code is written as
// pure functions over parameter trees and runs under `jit`; the few places that reuse an array
// take `.ref` explicitly. Loops live in TypeScript around jitted steps, with static shapes.
import './memory-growth.js'; // first: it must see jax-js create its memory
import * as jax from '@jax-js/jax';
import { installIteratorHelpers } from './iterator-helpers.js';
import { installInstanceCache } from './instance-cache.js';
import { installKernelCache } from './kernel-cache.js';
import { jaxInternals } from './jax-internals.js';
import { installNativeRoute, type Native } from './native-route.js';
import { installWasmProducts } from './wasm-products.js';
import { installFastStringHash } from './string-hash.js';
import type { Rng } from './rng.js';

export const np = jax.numpy;
export const jnn = jax.nn;
export const lax = jax.lax;
export { jit, grad, valueAndGrad, vjp, jvp, vmap, tree, profiler } from '@jax-js/jax';
const { tree } = jax;
export type Arr = jax.Array;
export type JsTree<T> = jax.JsTree<T>;

/** A tensor on the host: what checkpoints, converters and workers pass around. */
export type HostTensor = { shape: number[]; data: Float32Array };

/** Parameter trees: nested records of arrays. */
export type Params = { [name: string]: Arr | Params | Params[] };

export type Device = 'wasm' | 'webgpu' | 'cpu';
export const DEVICES: readonly Device[] = ['wasm', 'webgpu', 'cpu'];

export { routedKernels, type Native } from './native-route.js';

let started: Device | null = null;
let matmulOn = 'wasm';

/**
 * Starts the engine on a device. `auto` takes WebGPU when an adapter exists, else wasm.
 * Everything is float32: the engine's default dtype, and what checkpoints store.
 * On wasm, matrix products run as hand-written WASM SIMD (src/engine/wasm-products.ts) unless
 * `wasmProducts` is false, and `native` (Node: the addon) takes over products and the kernels it
 * can evaluate.
 */
export async function startEngine(device: Device | 'auto' = 'auto', opts: { native?: Native; wasmProducts?: boolean } = {}): Promise<Device> {
  installIteratorHelpers();
  installInstanceCache();
  if (started && (device === 'auto' || device === started)) return started;
  const wanted: Device[] = device === 'auto' ? ['webgpu', 'wasm'] : [device];
  let available: string[] = [];
  try {
    available = await jax.init(...wanted);
  } catch {
    available = [];
  }
  const chosen = wanted.find((d) => available.includes(d));
  if (!chosen) {
    if (device === 'auto') return startEngine('wasm', opts);
    throw new EngineError(
      `device '${device}' is not available here` +
        (device === 'webgpu' ? ' (no WebGPU adapter was found; use --device wasm)' : ''),
    );
  }
  jax.defaultDevice(chosen);
  const internals = await jaxInternals();
  if (internals) {
    installFastStringHash(internals.FpHash as Parameters<typeof installFastStringHash>[0]);
    const backend = internals.getBackend(chosen);
    // The routes first, the kernel cache above them then prepares (and routes) each kernel once;
    // the native route above the WASM SIMD products, which take what it leaves.
    if (chosen === 'wasm' && opts.wasmProducts !== false && installWasmProducts(backend, internals)) matmulOn = 'wasm-simd';
    if (chosen === 'wasm' && opts.native && installNativeRoute(backend, internals, opts.native)) matmulOn = opts.native.name;
    installKernelCache(backend);
  }
  started = chosen;
  return chosen;
}

/** What runs the matrix products: `wasm` (jax-js's kernels) or the GEMM that took them over. */
export function matmulBackend(): string {
  return matmulOn;
}

/**
 * How many threads the engine may use: what jax-js sizes its wasm pool by (in Node, the shims set
 * it from STARFLOW_THREADS or the core count).
 */
export function threadBudget(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency;
  return Number.isInteger(n) && n! > 0 ? n! : 1;
}

export function currentDevice(): Device {
  if (!started) throw new EngineError('the engine has not been started (call startEngine first)');
  return started;
}

export class EngineError extends Error {
  override name = 'EngineError';
}

/**
 * Whether `x` is being differentiated (jax-js's JVP or linearize tracers carry it), for layers
 * with a cheaper backward in another formulation. A speed choice only: both formulations must give
 * the same values, so a bundler that renames jax-js's classes costs speed, never correctness.
 */
export function isDifferentiated(x: Arr): boolean {
  const name = (x as object).constructor?.name;
  return name === 'JVPTracer' || name === 'PartialEvalTracer';
}

/** Parses a device name from a flag or environment variable, with a clear error. */
export function parseDevice(name: string): Device | 'auto' {
  if (name === 'auto' || (DEVICES as readonly string[]).includes(name)) return name as Device | 'auto';
  throw new EngineError(`unknown device '${name}' (expected one of: auto, ${DEVICES.join(', ')})`);
}

const jitted = new Map<string, unknown>();

/**
 * `jit(make())`, built once per key and reused. jax-js caches compiled programs per jitted
 * function object, so a function rebuilt per call would recompile: key it by what it closes over
 * (a purpose and a config or spec, e.g. `nll:${JSON.stringify(cfg)}`).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any function signature
export function cachedJit<F extends (...args: any[]) => any>(key: string, make: () => F): F {
  let f = jitted.get(key) as F | undefined;
  if (!f) {
    f = jax.jit(make()) as unknown as F;
    jitted.set(key, f);
  }
  return f;
}

/**
 * A contiguous copy of a view. jax-js fuses transposes into the kernels that read them, and a
 * matmul reading a transposed view runs ~8× slower on wasm (attention's merged heads: 85 ms vs
 * 11 ms). Two negations are exact and are not folded away, so they force the copy.
 */
export function materialize(x: Arr): Arr {
  return x.neg().neg();
}

// ---- moving data in and out ----

/** A float32 array from host data. */
export function fromF32(data: Float32Array | number[], shape: number[]): Arr {
  const buf = data instanceof Float32Array ? data : Float32Array.from(data);
  if (buf.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new EngineError(`data of length ${buf.length} does not fill shape [${shape}]`);
  }
  return np.array(buf, { shape });
}

/**
 * Host numbers that change between calls of a jitted function (times, weights), as one float32
 * array of 128 values (the rest zeros): jax-js inlines host arrays of fewer than 128 values into
 * its kernels as constants, so smaller ones would recompile the function for every new value.
 * Read value k as `a.slice([k, k + 1])`.
 */
export function hostScalars(values: number[]): Arr {
  if (values.length > HOST_SCALAR_SLOTS) throw new EngineError(`at most ${HOST_SCALAR_SLOTS} host scalars, got ${values.length}`);
  const buf = new Float32Array(HOST_SCALAR_SLOTS);
  buf.set(values);
  return np.array(buf, { shape: [HOST_SCALAR_SLOTS] });
}
const HOST_SCALAR_SLOTS = 128;

export function fromI32(data: Int32Array | number[], shape: number[]): Arr {
  const buf = data instanceof Int32Array ? data : Int32Array.from(data);
  return np.array(buf, { shape, dtype: np.int32 });
}

/** Reads an array back to the host as float32 and disposes it. */
export async function toF32(a: Arr): Promise<Float32Array> {
  const d = await a.astype(np.float32).data();
  return d instanceof Float32Array ? d : Float32Array.from(d as ArrayLike<number>);
}

/** Reads a scalar and disposes it. */
export async function toNumber(a: Arr): Promise<number> {
  return (await toF32(a))[0]!;
}

/** Adds a reference to every array in a tree, so the tree survives being passed to an op. */
export function keep<T extends JsTree<Arr>>(t: T): T {
  return tree.ref(t);
}

/** Releases every array in a tree. */
export function release(t: JsTree<Arr> | null | undefined): void {
  tree.dispose(t);
}

/**
 * Waits until every array in the tree is computed (jax-js dispatches lazily). One leaf at a time:
 * the first wait runs everything upstream and the rest find their work done, where waiting on all
 * leaves at once prepares every pending kernel once per leaf (~300 ms a training step).
 */
export async function settle<T extends JsTree<Arr>>(t: T): Promise<T> {
  for (const leaf of tree.leaves(t)) await leaf.blockUntilReady();
  return t;
}

export function leaves(t: JsTree<Arr>): Arr[] {
  return tree.leaves(t);
}

/** Maps a function over the arrays of one or more trees of the same structure. */
export function mapTree<T extends JsTree<Arr>>(fn: (...xs: Arr[]) => Arr, t: T, ...rest: T[]): T {
  return tree.map(fn, t, ...rest) as unknown as T;
}

export function countParams(t: JsTree<Arr>): number {
  return tree.leaves(t).reduce((n, a) => n + a.size, 0);
}

// ---- randomness ----
// Random numbers are drawn on the host from a seeded generator and uploaded. jax-js 0.1.25's
// device PRNG fails with wasm worker threads (its kernels link against an unshared memory), and
// host draws give the same numbers on every device and thread count: a seed means one thing.
export { Rng } from './rng.js';

/** Standard normal values of a shape from a generator. */
export function normalArray(rng: Rng, shape: number[], std = 1): Arr {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = std * rng.normal();
  return np.array(data, { shape });
}

/** Uniform values in [lo, hi) of a shape from a generator. */
export function uniformArray(rng: Rng, shape: number[], lo: number, hi: number): Arr {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = lo + (hi - lo) * rng.uniform();
  return np.array(data, { shape });
}
