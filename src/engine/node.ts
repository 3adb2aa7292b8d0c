// Node-only edge of the engine: the Web APIs jax-js expects from a browser.
// Imported by the CLI, tests and benchmarks before the engine starts; never by the core.
import { Worker as NodeWorker } from 'node:worker_threads';
import { resolveObjectURL } from 'node:buffer';
import os from 'node:os';
import { startEngine, parseDevice, EngineError, type Device } from './index.js';

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
    this.#worker = new NodeWorker(BOOTSTRAP, { eval: true });
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
export function installNodeShims(threads: number): void {
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
  if (n > 1 && typeof g.Worker === 'undefined') g.Worker = WebWorkerOverThreads;
}

export function coreCount(): number {
  return Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
}

/**
 * Starts the engine from Node: shims first, then the device from the argument, else
 * STARFLOW_DEVICE, else auto. Threads come from STARFLOW_THREADS, else every core.
 */
export async function startNodeEngine(opts: { device?: string; threads?: number } = {}): Promise<Device> {
  const threads = opts.threads ?? (process.env.STARFLOW_THREADS ? Number(process.env.STARFLOW_THREADS) : coreCount());
  if (!Number.isInteger(threads) || threads < 1) {
    throw new EngineError(`STARFLOW_THREADS must be a positive integer, got '${process.env.STARFLOW_THREADS}'`);
  }
  installNodeShims(threads);
  return startEngine(parseDevice(opts.device ?? process.env.STARFLOW_DEVICE ?? 'auto'));
}
