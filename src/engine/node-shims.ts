// Node-only: the Web APIs jax-js expects from a browser, installed when this module is
// evaluated. jax-js builds its wasm backend (memory and worker pool) while its own module is
// evaluated, so entry points import this module before anything that imports the engine.
// The thread count comes from STARFLOW_THREADS (default: every core); 1 means no workers.
import { Worker as NodeWorker } from 'node:worker_threads';
import v8 from 'node:v8';
import { resolveObjectURL } from 'node:buffer';
import os from 'node:os';
import { loadNative, nativeNotice } from './native.js';

// The wasm backend's worker script speaks the Web Worker protocol (self.onmessage, postMessage)
// and arrives as a blob: URL. The thread starts at once and waits for the script's text.
const BOOTSTRAP = `
const { parentPort } = require('node:worker_threads');
globalThis.self = globalThis;
globalThis.postMessage = (m) => parentPort.postMessage(m);
parentPort.once('message', (source) => {
  (0, eval)(source);
  parentPort.on('message', (data) => self.onmessage && self.onmessage({ data }));
});
`;

class WebWorkerOverThreads {
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onerror: ((e: { message: string }) => void) | null = null;
  readonly #worker: NodeWorker;
  #sent: Promise<void>;
  #pending = 0;

  constructor(url: string | URL) {
    const blob = resolveObjectURL(String(url));
    if (!blob) throw new Error(`worker shim: cannot resolve ${String(url)}`);
    // No inherited execArgv: under `--input-type=module` (e.g. `node --input-type=module -e`) the
    // bootstrap would be read as ESM, have no `require` and die, and jax-js's pool swallows a
    // failed dispatch: every kernel's output read back as zeros.
    this.#worker = new NodeWorker(BOOTSTRAP, { eval: true, execArgv: [] });
    this.#worker.on('message', (data) => {
      if (--this.#pending === 0) this.#worker.unref();
      this.onmessage?.({ data });
    });
    this.#worker.on('error', (err) => this.onerror?.({ message: err.message }));
    this.#worker.unref();
    // Messages wait for the script so that they arrive after it, in order.
    this.#sent = blob.text().then((source) => this.#worker.postMessage(source));
  }

  // Every message the wasm backend sends gets exactly one reply; the thread keeps the
  // process alive only while a reply is owed, so an idle pool lets Node exit.
  postMessage(message: unknown): void {
    if (this.#pending++ === 0) this.#worker.ref();
    this.#sent = this.#sent.then(() => this.#worker.postMessage(message));
  }

  terminate(): void {
    void this.#worker.terminate();
  }
}

/**
 * Installs what jax-js needs in Node: `navigator` (thread count, no GPU adapter unless
 * one is provided) and, for more than one thread, a Web `Worker` over worker_threads.
 */
function installNodeShims(threads: number, workers: boolean): void {
  const g = globalThis as Record<string, unknown>;
  const cores = Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
  const n = Math.max(1, Math.min(threads, cores));
  if (typeof g.navigator === 'undefined' || (g.navigator as { hardwareConcurrency?: number }).hardwareConcurrency !== n) {
    Object.defineProperty(g, 'navigator', {
      value: { hardwareConcurrency: n, userAgent: `Node.js/${process.versions.node}` },
      configurable: true,
      writable: true,
    });
  }
  // Without a Worker, jax-js runs every kernel on the calling thread.
  if (workers && n > 1 && typeof g.Worker === 'undefined') g.Worker = WebWorkerOverThreads;
}

function coreCount(): number {
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}

function threadsFromEnv(): number {
  const v = process.env.STARFLOW_THREADS;
  if (v === undefined || v === '') return coreCount();
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    process.stderr.write(`starflow: STARFLOW_THREADS must be a positive integer, got '${v}'; using 1\n`);
    return 1;
  }
  return Math.min(n, coreCount());
}

// Relaxed SIMD lets jax-js's matmuls use fused multiply-add: the micro-benchmark training step
// runs ~25% faster here. Browsers (Chrome ≥ 114) and Node ≥ 22 enable it by default; Node 20's V8
// keeps it behind a flag, set here before jax-js probes for the feature. Rounding differs from
// separate multiply and add (the reference fixture's z moves by ~1e-5 of its magnitude);
// STARFLOW_RELAXED_SIMD=0 leaves V8's default.
if (process.env.STARFLOW_RELAXED_SIMD !== '0') v8.setFlagsFromString('--experimental-wasm-relaxed-simd');

/** The number of threads the engine may use in this process. */
export const engineThreads = threadsFromEnv();

/**
 * The native addon, when it loads. Its products and kernels run on every thread of the budget, and
 * jax-js runs what remains on the calling thread: a routed kernel must see its inputs written,
 * which jax-js's asynchronous worker pool does not allow from outside.
 */
const loaded = loadNative(engineThreads);
export const native = loaded.native;
const notice = nativeNotice(loaded.reason);
if (notice) process.stderr.write(notice);
installNodeShims(engineThreads, native === null);

