// 200 jitted training steps of a tiny TARFlow keep memory flat.
//
// How live arrays are counted. jax-js 0.1.25 has no public memory counter: the backend's buffer
// table and the wasm allocator's stats are private (`#buffers`, `#allocator`), and the backend
// object is not exported. Every on-device buffer, though, is a backend "slot" made by
// `backend.malloc` (refcount 1) and released by `backend.decRef` reaching 0. So this file catches
// the backend object while jax-js loads (the module creates the wasm and cpu backends on import and
// stores them with `Map.prototype.set` in its table of backends; the hook is removed as soon as
// the module has loaded) and shadows
// `malloc`/`incRef`/`decRef` on that one instance with counting wrappers. The live-slot count
// is exact: it is the number of device buffers held by anything (arrays, parameters, the jit
// cache's constants). The same hook catches the wasm `WebAssembly.Memory`, whose size only grows.
// That is why this file loads the engine (and the setup module) with dynamic imports, after the
// hooks are in place, instead of the usual first-line import.
import { test } from 'node:test';
import assert from 'node:assert/strict';
// The Node shims first, as in every entry point (they decide jax-js's threading when it loads);
// they do not load the engine.
import '../../src/engine/node-shims.js';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Arr } from '../../src/engine/index.js';
import type { FlowParams } from '../../src/models/flow.js';
import type { AdamState } from '../../src/nn/optim.js';
import type { TrainState } from '../../src/train/step.js';

type Backend = {
  type: string;
  malloc: (size: number, data?: Uint8Array) => number;
  incRef: (slot: number) => void;
  decRef: (slot: number) => void;
};

const live = new Map<number, number>(); // slot → reference count, mirrored (the engine's device only)
const backends = new Map<string, Backend>();
let wasmMemory: WebAssembly.Memory | null = null;
{
  const originalSet = Map.prototype.set;
  const OriginalMemory = WebAssembly.Memory;
  Map.prototype.set = function (this: Map<unknown, unknown>, key: unknown, value: unknown) {
    const v = value as Partial<Backend> | null;
    if (typeof key === 'string' && v && typeof v === 'object' && v.type === key && typeof v.malloc === 'function') {
      originalSet.call(backends, key, v as Backend);
    }
    return originalSet.call(this, key, value);
  } as typeof Map.prototype.set;
  (WebAssembly as { Memory: unknown }).Memory = class extends OriginalMemory {
    constructor(d: WebAssembly.MemoryDescriptor) {
      super(d);
      wasmMemory ??= this;
    }
  };
  try {
    await import('../../src/engine/index.js');
  } finally {
    Map.prototype.set = originalSet;
    (WebAssembly as { Memory: unknown }).Memory = OriginalMemory;
  }
}
const { device } = await import('../setup.js');
// Backends made later by `init` (WebGPU) are not caught: the test is skipped there.
const tracked = backends.get(device);
if (tracked) {
  const b = tracked;
  const { malloc, incRef, decRef } = { malloc: b.malloc.bind(b), incRef: b.incRef.bind(b), decRef: b.decRef.bind(b) };
  b.malloc = (size, data) => {
    const slot = malloc(size, data);
    live.set(slot, 1);
    return slot;
  };
  b.incRef = (slot) => {
    incRef(slot);
    live.set(slot, (live.get(slot) ?? 0) + 1);
  };
  b.decRef = (slot) => {
    decRef(slot);
    const n = (live.get(slot) ?? 0) - 1;
    if (n <= 0) live.delete(slot);
    else live.set(slot, n);
  };
}
const { np, fromF32, fromI32, toNumber, jit, valueAndGrad, keep, leaves, release, settle, currentDevice } = await import('../../src/engine/index.js');
const { parseFlowConfig: parseModelConfig } = await import('../../src/models/flow.js');
const { initFlow, forward, flowLoss } = await import('../../src/models/flow.js');
const { adamwUpdate, initAdamState, adamScalars, clipByGlobalNorm, cosineLr, emaDecayAt, ADAMW_DEFAULTS } = await import('../../src/nn/optim.js');
const { initModel } = await import('../../src/models/registry.js');
const { parseTrainConfig } = await import('../../src/train/config.js');
const { makeTrainStep, makeApplyStep } = await import('../../src/train/step.js');
const { Replicas } = await import('../../src/train/replicas.js');
const { optimize } = await import('../../src/train/loop.js');

// A full collection every 10 steps and before each reading: without it, tens of MB of short-lived
// JS garbage (tracing/dispatch bookkeeping) pile up between V8's own collections and RSS swings by
// ±40 MB from reading to reading. Collecting cannot hide a leak (a leak is memory still reachable).
// V8's gc is reachable without --expose-gc through a flag set at run time.
v8.setFlagsFromString('--expose-gc');
const collect = vm.runInNewContext('gc') as () => void;

function rssMb(): number {
  collect();
  return process.memoryUsage().rss / 2 ** 20;
}

function heapMb(): number {
  return process.memoryUsage().heapUsed / 2 ** 20;
}

const skip = tracked ? false : `the ${device} backend's buffers cannot be counted (only those created on import)`;

test('200 jitted training steps: live device buffers and RSS stay flat', { skip }, async (t) => {
  const cfg = parseModelConfig({ inChannels: 1, imgSize: 8, patchSize: 2, width: 32, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 3 });
  const batch = 8;
  const baseline = live.size;
  const opt = { ...ADAMW_DEFAULTS, weightDecay: 1e-4 };
  let params = initFlow(cfg, 0);
  let adam: AdamState<FlowParams> = initAdamState(params); // borrows params

  const step = jit((p: FlowParams, s: AdamState<FlowParams>, x: Arr, y: Arr, lr: Arr, bc1: Arr, bc2: Arr) => {
    const [loss, grads] = valueAndGrad((q: FlowParams) => {
      const r = forward(q, cfg, x, y);
      return flowLoss(r.z, r.logdet);
    })(keep(p));
    const clipped = clipByGlobalNorm(grads, 1);
    const next = adamwUpdate(p, clipped.grads, s, lr, bc1, bc2, opt);
    return { params: next.params, state: next.state, loss, norm: clipped.norm };
  });

  // A fixed pool of batches (a repeating dataset), made on the host each step.
  const rngBatch = (i: number) => {
    const n = batch * cfg.imgSize * cfg.imgSize;
    const data = new Float32Array(n);
    for (let j = 0; j < n; j++) data[j] = Math.sin(0.37 * j + 1.3 * (i % 8)) * 0.8;
    const labels = Array.from({ length: batch }, (_, j) => ((j + i) % 4) - 1); // includes −1
    return { x: fromF32(data, [batch, 1, cfg.imgSize, cfg.imgSize]), y: fromI32(labels, [batch]) };
  };

  const losses: number[] = [];
  const marks = new Map<number, { slots: number; rss: number; heap: number; wasm: number }>();
  const t0 = performance.now();
  for (let i = 1; i <= 200; i++) {
    const { x, y } = rngBatch(i);
    const { bc1, bc2 } = adamScalars(opt, i);
    const r = step(params, adam, x, y, fromF32([1e-3], []), fromF32([bc1], []), fromF32([bc2], []));
    params = r.params;
    adam = r.state;
    losses.push(await toNumber(r.loss)); // reading the loss waits for the step: no queued work piles up
    r.norm.dispose();
    if (i % 10 === 0) collect();
    if ([2, 20, 100, 200].includes(i)) {
      // With worker threads, kernels still in flight hold references to their buffers: wait for
      // every one of them so the count is the buffers that are kept, not the ones in transit.
      await settle({ params, adam });
      await new Promise((r) => setImmediate(r));
      marks.set(i, { slots: live.size, rss: rssMb(), heap: heapMb(), wasm: wasmMemory?.buffer.byteLength ?? 0 });
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const at2 = marks.get(2)!;
  const at20 = marks.get(20)!;
  const at100 = marks.get(100)!;
  const at200 = marks.get(200)!;
  const nParams = leaves(params).length;
  t.diagnostic(
    `live device buffers after steps 2/20/100/200: ${at2.slots}/${at20.slots}/${at100.slots}/${at200.slots} ` +
      `(${nParams} parameter tensors ×3 with the Adam moments, ${baseline} before the model); ` +
      `RSS ${at20.rss.toFixed(1)} → ${at100.rss.toFixed(1)} → ${at200.rss.toFixed(1)} MB; ` +
      `JS heap ${at20.heap.toFixed(1)} → ${at200.heap.toFixed(1)} MB; ` +
      `wasm memory ${(at20.wasm / 2 ** 20).toFixed(2)} → ${(at200.wasm / 2 ** 20).toFixed(2)} MB; ` +
      `loss ${losses[0]!.toFixed(4)} → ${losses.at(-1)!.toFixed(4)}; ${seconds.toFixed(1)} s`,
  );

  // Every array the step returns is owned once.
  for (const a of [...leaves(params), ...leaves(adam)]) assert.equal(a.refCount, 1);
  // Parameters + two moments + the compiled step's constants, the same after every step.
  assert.equal(at20.slots, at2.slots, `live device buffers grew from ${at2.slots} (step 2) to ${at20.slots} (step 20)`);
  assert.equal(at200.slots, at20.slots, `live device buffers grew from ${at20.slots} (step 20) to ${at200.slots} (step 200)`);
  assert.ok(at200.slots >= baseline + 3 * nParams);
  assert.ok(at200.rss - at20.rss < 30, `RSS grew by ${(at200.rss - at20.rss).toFixed(1)} MB`);
  assert.ok(at200.heap - at20.heap < 5, `the JS heap grew by ${(at200.heap - at20.heap).toFixed(1)} MB`);
  if (wasmMemory) assert.equal(at200.wasm, at20.wasm, 'wasm linear memory grew after warm-up');
  assert.ok(losses.every(Number.isFinite));
  assert.ok(losses.at(-1)! < losses[0]!, `loss did not go down: ${losses[0]} → ${losses.at(-1)}`);
  // Freeing the model, the optimiser state and the compiled step gives every buffer back.
  step.dispose();
  release(params);
  release(adam);
  assert.equal(live.size, baseline, `${live.size - baseline} device buffers outlive the training loop`);
});

// The trainer's own step (src/train/trainer.ts), not a hand-made one: a tiny TARFlow trained with
// makeTrainStep, and with the trainer's loop (Replicas' gradient, then makeApplyStep on a kept
// state, then the old state released) on 1 worker (the gradient on this thread) and on 2
// data-parallel workers. Only this thread's buffers are counted: the workers have their own
// engines in their own threads, but the parameters, the Adam moments, the EMA, the gradients the
// workers send back and the update all live here. Each run is read after steps 2, 10 and its last;
// the live-buffer count and the wasm memory must not move after step 2, and once the state is
// freed no buffer may remain.
// Measured (STARFLOW_THREADS=1): the live buffer count is flat from step 2 on in all three runs:
// 160 with makeTrainStep and with 1 worker (4 × 36 state tensors + 16 constants of the compiled
// gradient step), 144 with 2 workers (the gradient is compiled in the workers); the wasm memory
// stays at 6.63 MB; RSS moves by a few MB either way (up to ±7 MB with the workers' engines).
// The check does fail on a leak: one extra `keep(...)` of the 36 parameters per step, unreleased,
// reads 232 → 520 buffers from step 2 to step 10 with makeTrainStep (wasm memory 7.63 → 9.31 MB)
// and 216 → 504 with 2 workers (+36 a step).
const TRAIN = {
  model: { model: 'tarflow', inChannels: 1, imgSize: 8, patchSize: 2, width: 32, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 3, noiseStd: 0.1 },
  batchSize: 8,
  steps: 100,
  warmupSteps: 5,
};

type Mark = { slots: number; rss: number; heap: number; wasm: number };

/** The live buffers (and memory) once every pending kernel that touches `state` is done. */
async function measure(state: TrainState): Promise<Mark> {
  await settle(state);
  await new Promise((r) => setImmediate(r));
  return { slots: live.size, rss: rssMb(), heap: heapMb(), wasm: wasmMemory?.buffer.byteLength ?? 0 };
}

/** A repeating set of 8 host batches, as the trainer makes them (pixels, labels with dropped −1s). */
function hostBatch(i: number, batch: number, size: number): { x: Float32Array; y: Int32Array } {
  const n = batch * size * size;
  const x = new Float32Array(n);
  for (let j = 0; j < n; j++) x[j] = Math.sin(0.37 * j + 1.3 * (i % 8)) * 0.8;
  const y = Int32Array.from({ length: batch }, (_, j) => ((j + i) % 4) - 1);
  return { x, y };
}

/**
 * Runs `steps` training steps from a fresh state with the runner `start` makes (its `step`
 * consumes a state and gives the next one and the loss; `close` frees what it compiled), reading the memory after steps 2, 10 and `steps`; asserts
 * the live buffers and the wasm memory stay flat after step 2, then frees the state and checks
 * that nothing is left over. The readings go to the test's diagnostics.
 */
async function checkFlat(
  t: { diagnostic: (m: string) => void },
  label: string,
  steps: number,
  start: (state: TrainState) => Promise<{ step: (s: TrainState, i: number) => Promise<{ state: TrainState; loss: number }>; close: () => Promise<void> }>,
): Promise<void> {
  const cfg = parseTrainConfig(TRAIN);
  const baseline = live.size;
  const { params } = initModel(cfg.model, 0);
  const adam = initAdamState(params);
  let state: TrainState = { params, m: adam.m, v: adam.v, ema: keep(params) };
  const runner = await start(state);
  const marks = new Map<number, Mark>();
  const losses: number[] = [];
  const t0 = performance.now();
  try {
    for (let i = 0; i < steps; i++) {
      const r = await runner.step(state, i);
      state = r.state;
      losses.push(r.loss);
      if ((i + 1) % 10 === 0) collect();
      if ([2, 10, steps].includes(i + 1)) marks.set(i + 1, await measure(state));
    }
  } finally {
    await runner.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  const [a, b, c] = [marks.get(2)!, marks.get(10)!, marks.get(steps)!];
  const nState = leaves(state).length;
  t.diagnostic(
    `${label}: live device buffers after steps 2/10/${steps}: ${a.slots}/${b.slots}/${c.slots} ` +
      `(${nState} state tensors: parameters, Adam moments, EMA; ${baseline} before the model); ` +
      `RSS ${a.rss.toFixed(1)} → ${b.rss.toFixed(1)} → ${c.rss.toFixed(1)} MB; JS heap ${b.heap.toFixed(1)} → ${c.heap.toFixed(1)} MB; ` +
      `wasm memory ${(b.wasm / 2 ** 20).toFixed(2)} → ${(c.wasm / 2 ** 20).toFixed(2)} MB; ` +
      `loss ${losses[0]!.toFixed(4)} → ${losses.at(-1)!.toFixed(4)}; ${seconds.toFixed(1)} s`,
  );
  for (const arr of leaves(state)) assert.equal(arr.refCount, 1, `${label}: a state tensor is owned more than once`);
  assert.equal(b.slots, a.slots, `${label}: live device buffers grew from ${a.slots} (step 2) to ${b.slots} (step 10)`);
  assert.equal(c.slots, b.slots, `${label}: live device buffers grew from ${b.slots} (step 10) to ${c.slots} (step ${steps})`);
  assert.ok(c.slots >= baseline + nState);
  if (wasmMemory) assert.equal(c.wasm, b.wasm, `${label}: wasm linear memory grew after warm-up`);
  // Loose: RSS also holds the workers' engines and V8's own caches (measured: within ±7 MB).
  assert.ok(c.rss - b.rss < 30, `${label}: RSS grew by ${(c.rss - b.rss).toFixed(1)} MB`);
  assert.ok(c.heap - b.heap < 5, `${label}: the JS heap grew by ${(c.heap - b.heap).toFixed(1)} MB`);
  assert.ok(losses.every(Number.isFinite), `${label}: non-finite loss`);
  assert.ok(losses.at(-1)! < losses[0]!, `${label}: loss did not go down: ${losses[0]} → ${losses.at(-1)}`);
  release(state);
  assert.equal(live.size, baseline, `${label}: ${live.size - baseline} device buffers outlive the training loop`);
}

/** The per-step scalars exactly as the trainer computes them. */
function scalars(cfg: ReturnType<typeof parseTrainConfig>, i: number) {
  const lr = cosineLr({ lr: cfg.lr, minLr: cfg.minLr, warmupSteps: cfg.warmupSteps, totalSteps: cfg.steps }, i);
  const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, i + 1);
  return [np.array(lr), np.array(bc1), np.array(bc2), np.array(emaDecayAt(cfg.emaDecay, i))] as const;
}

test('the trainer’s step (makeTrainStep, and Replicas + makeApplyStep on 1 and 2 workers): live device buffers stay flat', { skip }, async (t) => {
  const cfg = parseTrainConfig(TRAIN);
  const { batchSize: batch, model } = cfg;
  const xShape = [batch, model.inChannels, model.imgSize, model.imgSize];

  // Both halves on this thread, in one call.
  await checkFlat(t, 'makeTrainStep', 25, async () => {
    const step = makeTrainStep(cfg);
    return {
      step: async (s, i) => {
        const { x, y } = hostBatch(i, batch, model.imgSize);
        const r = step(s, fromF32(x, xShape), fromI32(y, [batch]), ...scalars(cfg, i));
        const loss = await toNumber(r.loss);
        await toNumber(r.gradNorm);
        return { state: r.state, loss };
      },
      close: async () => step.dispose(),
    };
  });

  // The trainer's loop (src/train/loop.ts, one step per call here so memory can be read between
  // steps): the gradient from the replicas, the update on a kept state, the old state released.
  for (const [workers, steps] of [[1, 25], [2, 20]] as const) {
    await checkFlat(t, `optimize: Replicas × ${workers} + makeApplyStep`, steps, async (state) => {
      const applyStep = makeApplyStep(cfg);
      const replicas = await Replicas.start(model, state.params, workers, currentDevice());
      return {
        step: async (s, i) => {
          let loss = NaN;
          const r = await optimize({
            state: s,
            from: i,
            stopAt: i + 1,
            schedule: cfg,
            apply: applyStep,
            batch: (k) => ({ ...hostBatch(k, batch, model.imgSize), xShape }),
            gradients: (p, b) => replicas.gradients(p, b.x, b.xShape, b.y),
            onStep: async (e) => void (loss = e.loss),
            onSkip: async (k) => assert.fail(`step ${k} was not finite`),
          });
          return { state: r.state, loss };
        },
        close: async () => {
          applyStep.dispose();
          await replicas.close();
        },
      };
    });
  }
});
