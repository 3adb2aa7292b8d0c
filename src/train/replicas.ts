// Data-parallel gradients on several cores. jax-js's own threads split every kernel and pay a
// hand-off per kernel, which at these model sizes costs more than it saves; replicas split the
// batch instead. With `count` > 1, as many worker threads, each with its own engine on one
// thread, compute the loss gradient on equal slices of every batch at the same time, and the mean
// of the slices' gradients is the whole batch's (the loss is a mean over the batch). This thread
// only hands out the work, so its own engine's thread count does not compete with them.
import { Worker } from 'node:worker_threads';
import { np, fromF32, fromI32, toF32, keep, type Arr, type Device, type HostTensor, type Params } from '../engine/index.js';
import { namedLeaves, paramsFromHost } from '../nn/params.js';
import type { ModelConfig } from '../models/model.js';
import { familyOf } from '../models/registry.js';
import { makeGradStep, type GradStep } from './step.js';

/** What a replica worker starts from (workerData); `familySource` is the module that registers the model's family. */
export type ReplicaInit = { model: ModelConfig; familySource: string; device: Device; names: string[]; shapes: number[][] };
/** One gradient request: all parameters in `names` order in one buffer, and the worker's slice of the batch (and of the loss's noise draws). */
export type ReplicaRequest = { params: Float32Array; x: Float32Array; xShape: number[]; y: Int32Array; eps?: { data: Float32Array; shape: number[] } };
export type ReplicaReply = { ready: true } | { loss: number; grads: Float32Array } | { error: string };

export class ReplicaError extends Error {
  override name = 'ReplicaError';
}

type Pending = { resolve: (r: ReplicaReply) => void; reject: (e: Error) => void };

class ReplicaWorker {
  readonly #worker: Worker;
  #pending: Pending | null = null;
  #failure: Error | null = null;

  constructor(init: ReplicaInit, index: number) {
    // From the built package the worker module is JavaScript; in a development checkout it is
    // TypeScript, and a bootstrap registers tsx's loader in the thread (as bin/starflow.js does in
    // the main thread) before importing it.
    const built = import.meta.url.endsWith('.js');
    const entry = new URL(built ? './replica-worker.js' : './replica-worker.ts', import.meta.url).href;
    const bootstrap = built
      ? `import(${JSON.stringify(entry)})`
      : `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => m.register()).then(() => import(${JSON.stringify(entry)}))`;
    this.#worker = new Worker(bootstrap, { eval: true, workerData: init, env: { ...process.env, STARFLOW_THREADS: '1' } });
    const fail = (why: string) => {
      this.#failure ??= new ReplicaError(`gradient worker ${index} ${why}`);
      this.#pending?.reject(this.#failure);
      this.#pending = null;
    };
    this.#worker.on('message', (m: ReplicaReply) => {
      if ('error' in m) return fail(`failed: ${m.error}`);
      const p = this.#pending;
      this.#pending = null;
      p?.resolve(m);
    });
    this.#worker.on('error', (e) => fail(`failed: ${e.message}`));
    this.#worker.on('exit', (code) => fail(`exited (code ${code})`));
  }

  /** The next reply; requests are one at a time. */
  reply(): Promise<ReplicaReply> {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => (this.#pending = { resolve, reject }));
  }

  request(r: ReplicaRequest): Promise<ReplicaReply> {
    const reply = this.reply();
    this.#worker.postMessage(r, [r.x.buffer as ArrayBuffer, r.y.buffer as ArrayBuffer, ...(r.eps ? [r.eps.data.buffer as ArrayBuffer] : [])]);
    return reply;
  }

  async close(): Promise<void> {
    this.#worker.removeAllListeners('exit');
    await this.#worker.terminate();
  }
}

export class Replicas {
  readonly count: number;
  /** The gradient on this thread, when there are no workers. */
  readonly #local: GradStep | null;
  readonly #workers: ReplicaWorker[];
  readonly #names: string[];
  readonly #shapes: number[][];

  private constructor(model: ModelConfig, count: number, workers: ReplicaWorker[], names: string[], shapes: number[][]) {
    this.count = count;
    this.#local = workers.length === 0 ? makeGradStep(model) : null;
    this.#workers = workers;
    this.#names = names;
    this.#shapes = shapes;
  }

  /** Starts `count` worker threads (none for 1: the gradient is computed here) and waits until their engines are up. */
  static async start(model: ModelConfig, params: Params, count: number, device: Device): Promise<Replicas> {
    if (!Number.isInteger(count) || count < 1) throw new ReplicaError(`the number of workers must be an integer ≥ 1, got ${count}`);
    const leaves = namedLeaves(params);
    const init: ReplicaInit = { model, familySource: familyOf(model).source, device, names: leaves.map(([n]) => n), shapes: leaves.map(([, a]) => [...a.shape]) };
    const workers = count === 1 ? [] : Array.from({ length: count }, (_, i) => new ReplicaWorker(init, i + 1));
    try {
      await Promise.all(workers.map((w) => w.reply()));
    } catch (e) {
      await Promise.all(workers.map((w) => w.close()));
      throw e;
    }
    return new Replicas(model, count, workers, init.names, init.shapes);
  }

  /**
   * The mean loss and its gradient over a batch of `n` images (`x` is [n, C, H, W], n divisible by
   * the replica count; `y` labels [n] or token ids [n, L]), with the loss's noise draws `eps` (leading axis: the batch) when the
   * family takes some. Does not consume `params`.
   */
  async gradients(params: Params, x: Float32Array, xShape: number[], y: Int32Array, eps?: { data: Float32Array; shape: number[] }): Promise<{ loss: Arr; grads: Params }> {
    const n = xShape[0]!;
    if (this.#local) return this.#local(keep(params), fromF32(x, xShape), conditionArray(y, n), eps && fromF32(eps.data, eps.shape));
    if (n % this.count !== 0) throw new ReplicaError(`a batch of ${n} does not split evenly over ${this.count} workers`);
    const part = n / this.count;
    const per = x.length / n;
    const epsPer = eps ? eps.data.length / n : 0;
    const yPer = y.length / n;
    const slice = (i: number) => ({
      x: x.slice(i * part * per, (i + 1) * part * per),
      xShape: [part, ...xShape.slice(1)],
      y: y.slice(i * part * yPer, (i + 1) * part * yPer),
      ...(eps ? { eps: { data: eps.data.slice(i * part * epsPer, (i + 1) * part * epsPer), shape: [part, ...eps.shape.slice(1)] } } : {}),
    });

    const flat = await flattenParams(keep(params), this.#names);
    const replies = await Promise.all(this.#workers.map((w, i) => w.request({ params: flat, ...slice(i) })));
    const sum = new Float32Array(flat.length);
    let loss = 0;
    for (const r of replies) {
      if (!('grads' in r)) throw new ReplicaError('a gradient worker replied without a gradient');
      loss += r.loss;
      for (let i = 0; i < sum.length; i++) sum[i]! += r.grads[i]!;
    }
    for (let i = 0; i < sum.length; i++) sum[i]! /= this.count;
    return { loss: np.array(loss / this.count), grads: unflattenParams(sum, this.#names, this.#shapes) };
  }

  async close(): Promise<void> {
    this.#local?.dispose();
    await Promise.all(this.#workers.map((w) => w.close()));
  }
}

/** A batch's conditioning on the device: labels [n], or (a text encoder's) token ids [n, L], told apart by length. */
export function conditionArray(y: Int32Array, n: number): Arr {
  return fromI32(y, y.length === n ? [n] : [n, y.length / n]);
}

/** Parameters on the device from one buffer in `names` order. */
export function unflattenParams(flat: Float32Array, names: string[], shapes: number[][]): Params {
  const host = new Map<string, HostTensor>();
  let offset = 0;
  names.forEach((name, i) => {
    const size = shapes[i]!.reduce((a, b) => a * b, 1);
    host.set(name, { shape: shapes[i]!, data: flat.subarray(offset, offset + size) });
    offset += size;
  });
  return paramsFromHost<Params>(host);
}

/** Every leaf of a tree, in `names` order, in one buffer; disposes the tree. */
export async function flattenParams(t: Params, names: string[]): Promise<Float32Array> {
  const leaves = new Map(namedLeaves(t));
  const parts: Float32Array[] = [];
  for (const name of names) parts.push(await toF32(leaves.get(name)!));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) (out.set(p, offset), (offset += p.length));
  return out;
}
