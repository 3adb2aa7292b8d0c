// Training-step benchmark: ms per jitted TARFlow training step (forward + backward + clip 1.0 +
// AdamW + EMA, `makeTrainStep` of src/train/step.ts) for
//   notebook: the reference notebook's model (28×28×1, patch 4, width 128, 4 blocks × 4 layers,
//             head size 64 → 2 heads, MLP ×4, 10 classes, batch 64);
//   mnist:    the project's presets/mnist.json (width 64, head size 32, 4 blocks × 1 layer, batch 64);
// jax-js wasm with 1 and 2 kernel threads and with 2 data-parallel workers (the trainer's
// --workers 2) against a PyTorch twin (bench/torch/tarflow_train.py) on 1 and 2 threads.
//
// A prep child builds each config's initial weights (projOut randomised, so the whole backward pass
// does real work) and one real MNIST batch (Gaussian noise σ = 0.1, 10% of the labels dropped to
// −1, as the trainer does) and writes them to a safetensors file that every contender loads: both
// sides start from the same weights on the same data, so their losses must agree (checked).
// Every measurement runs in its own child process (the wasm thread count is fixed at engine start),
// in interleaved rounds; medians pool every timed step over the rounds.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, fmt, runChild, tsxArgs, torchVersion, torchEnv, torchMissingNote, machineInfo, jaxVersion, defaultCommonFlags, takeCommonFlag, writeReport, argOf, startWorkerEngine, eachFlag, benchWeights } from './common.js';
// Type-only: erased, so the parent process never loads jax-js.
import type { TrainConfig } from '../src/train/config.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SELF = fileURLToPath(import.meta.url);

// ---- the configurations ----

const CONFIG_NAMES = ['notebook', 'mnist'] as const;
type ConfigName = (typeof CONFIG_NAMES)[number];

/** Step hyper-parameters shared by both sides (constant: the schedule is not what is measured). */
const LR = 1e-4;
const EMA_DECAY = 0.999;
const BATCH = 64;
const SEED = 0;
/** Timed bits/dim forward passes per child (likelihood throughput). */
const NLL_REPS = 5;

export const NOTEBOOK_MODEL = {
  model: 'tarflow',
  inChannels: 1,
  imgSize: 28,
  patchSize: 4,
  width: 128,
  headDim: 64,
  numBlocks: 4,
  layersPerBlock: 4,
  mlpRatio: 4,
  numClasses: 10,
  noiseStd: 0.1,
} as const;

async function trainConfig(name: ConfigName): Promise<TrainConfig> {
  const { parseTrainConfig } = await import('../src/train/config.js');
  const { readFileSync } = await import('node:fs');
  const raw =
    name === 'mnist'
      ? (JSON.parse(readFileSync(path.join(HERE, '..', 'presets', 'mnist.json'), 'utf8')) as Record<string, unknown>)
      : { model: NOTEBOOK_MODEL, batchSize: BATCH, emaDecay: EMA_DECAY, gradClip: 1.0 };
  return parseTrainConfig(raw, name);
}

/** Repetitions: untimed steps after the first call, timed steps per round, rounds. */
function plan(quick: boolean, name: ConfigName) {
  const steps = name === 'notebook' ? (quick ? 2 : 3) : quick ? 3 : 8;
  return { warmup: quick ? 0 : 1, steps };
}

/** Where prep writes the weights under ml-tarflow's names (when its Model can hold the config). */
function referenceWeightsFile(prepFile: string): string {
  return prepFile.replace(/\.safetensors$/, '.ml-tarflow.safetensors');
}

// ---- shapes of what children print ----

type PrepResult = { config: ConfigName; file: string; params: number; tokens: number; labelsDropped: number };
type StepResult = {
  kind: 'jax-js' | 'torch';
  threads: number;
  /** jax-js: what ran the matrix products (`wasm`, or the native GEMM: E.matmulBackend()). */
  matmul?: string;
  /** jax-js: data-parallel worker threads (1: the step runs on the child's main thread). */
  workers?: number;
  version: string;
  params: number;
  /** jax-js: trace + compile + one step; torch: its first eager step. */
  firstCallMs: number;
  samplesMs: number[];
  medianMs: number;
  /** Loss of every call in order: [0] is at the shared initial weights. */
  losses: number[];
  gradNorms: number[];
  ema: boolean;
  /** Likelihood throughput: ms per bits/dim forward of the batch (no gradient), after the steps. */
  nllMs: number[];
  /** Bits/dim per image from that forward (both sides hold the same weights by then). */
  bpd: number[];
};

// ---- children ----

/** Writes one config's initial weights, batch and labels to a safetensors file. */
async function prep(args: string[]): Promise<void> {
  const name = argOf(args, '--config') as ConfigName;
  const file = argOf(args, '--out');
  await startWorkerEngine(1);
  const E = await import('../src/engine/index.js');
  const { tokenShape } = await import('../src/models/flow.js');
  type FlowConfig = import('../src/models/flow.js').FlowConfig;
  const { paramsToHost } = await import('../src/nn/params.js');
  const { loadMnist } = await import('../src/data/mnist.js');
  const { makeBatch, addGaussianNoise, dropLabels } = await import('../src/data/transforms.js');
  const st = await import('../src/io/safetensors.js');
  const cfg = await trainConfig(name);
  const m = cfg.model as FlowConfig;
  const params = await benchWeights(m);
  const host = await paramsToHost(params);
  const nParams = E.countParams(params);
  E.release(params);
  const ds = await loadMnist('train');
  const rng = new E.Rng(SEED).fork(1);
  const batch = makeBatch(ds, Array.from({ length: cfg.batchSize }, (_, i) => i));
  const x = addGaussianNoise(batch.x, m.noiseStd, rng);
  const y = dropLabels(batch.y, cfg.labelDrop, rng);
  const tensors = new Map([...host].map(([k, t]) => [k, st.fromFloat32(t.data, t.shape)] as const));
  tensors.set('x', st.fromFloat32(x, [cfg.batchSize, m.inChannels, m.imgSize, m.imgSize]));
  tensors.set('y', st.fromInt32(y, [cfg.batchSize]));
  writeFileSync(file, st.serializeSafetensors(tensors, { config: JSON.stringify(m), train: JSON.stringify(cfg) }));
  // The same weights under apple/ml-tarflow's names, for its own Model (configs it can express).
  const { toReferenceStateDict } = await import('../src/io/convert.js');
  try {
    const reference = toReferenceStateDict(m, host, 'ml-tarflow');
    writeFileSync(referenceWeightsFile(file), st.serializeSafetensors(new Map([...reference].map(([k, t]) => [k, st.fromFloat32(t.data, t.shape)] as const))));
  } catch {
    // not expressible in ml-tarflow's Model (e.g. head size 32): no reference contender for it
  }
  const out: PrepResult = { config: name, file, params: nParams, tokens: tokenShape(m).tokens, labelsDropped: y.filter((v) => v < 0).length };
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** Times the jitted training step on the weights and batch of a prep file. */
async function worker(args: string[]): Promise<void> {
  const threads = Number(argOf(args, '--threads'));
  const workers = Number(args.includes('--workers') ? argOf(args, '--workers') : '1');
  const file = argOf(args, '--file');
  const warmup = Number(argOf(args, '--warmup'));
  const steps = Number(argOf(args, '--steps'));
  const usedThreads = await startWorkerEngine(threads);
  const E = await import('../src/engine/index.js');
  const { nllOf } = await import('../src/eval/likelihood.js');
  const { familyOf } = await import('../src/models/registry.js');
  const { makeTrainStep, makeApplyStep } = await import('../src/train/step.js');
  const { Replicas } = await import('../src/train/replicas.js');
  const { initAdamState } = await import('../src/nn/optim.js');
  const optim = await import('../src/nn/optim.js');
  const { paramsFromHost } = await import('../src/nn/params.js');
  const st = await import('../src/io/safetensors.js');
  const { readFileSync } = await import('node:fs');
  type P = import('../src/models/flow.js').FlowParams;

  const f = st.parseSafetensors(new Uint8Array(readFileSync(file)), file);
  const cfg = JSON.parse(f.metadata.train!) as TrainConfig;
  const m = cfg.model;
  const host = new Map(
    [...f.tensors].filter(([k]) => k.startsWith('blocks.')).map(([k, e]) => [k, { shape: e.shape, data: st.toFloat32(e, k) }] as const),
  );
  const params = paramsFromHost<P>(host);
  const adam = initAdamState(params);
  let state: import('../src/train/step.js').TrainState = { params, m: adam.m, v: adam.v, ema: E.keep(params) };
  const xShape = [cfg.batchSize, m.inChannels, m.imgSize, m.imgSize];
  const xHost = st.toFloat32(f.tensors.get('x')!);
  const yHost = st.toInt32(f.tensors.get('y')!);
  const x = E.fromF32(xHost, xShape);
  const y = E.fromI32(yHost, [cfg.batchSize]);
  await E.settle([state, x, y]);
  const nParams = E.countParams(state.params);
  // One jitted step on this thread, or the trainer's data-parallel path: worker threads' slice
  // gradients averaged here, then the update.
  const replicas = workers > 1 ? await Replicas.start(m, state.params, workers, E.currentDevice()) : null;
  const applyStep = makeApplyStep({ ...cfg, emaDecay: EMA_DECAY });
  const fused = makeTrainStep({ ...cfg, emaDecay: EMA_DECAY });
  const stepFn = async (s: typeof state, lr: InstanceType<typeof E.np.Array>, bc1: InstanceType<typeof E.np.Array>, bc2: InstanceType<typeof E.np.Array>, decay: InstanceType<typeof E.np.Array>) => {
    if (!replicas) return fused(s, x.ref, y.ref, lr, bc1, bc2, decay);
    const g = await replicas.gradients(s.params, xHost, xShape, yHost);
    return { ...applyStep(s, g.grads, lr, bc1, bc2, decay), loss: g.loss };
  };

  // Leaves are awaited one by one (see bench/README.md, engine: settle(tree) is slower).
  let t = 0;
  const losses: number[] = [];
  const gradNorms: number[] = [];
  const once = async (): Promise<number> => {
    t += 1;
    const { bc1, bc2 } = optim.adamScalars({ ...optim.ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, t);
    const t0 = performance.now();
    const out = await stepFn(state, E.np.array(LR), E.np.array(bc1), E.np.array(bc2), E.np.array(EMA_DECAY));
    for (const leaf of E.leaves(out)) await leaf.blockUntilReady();
    const ms = performance.now() - t0;
    state = out.state;
    losses.push(await E.toNumber(out.loss));
    gradNorms.push(await E.toNumber(out.gradNorm));
    return ms;
  };
  const firstCallMs = await once();
  for (let i = 0; i < warmup; i++) await once();
  const samplesMs: number[] = [];
  for (let i = 0; i < steps; i++) samplesMs.push(await once());
  // Likelihood throughput on the trained weights (not the EMA: the twin evaluates its live model).
  const nll = () => nllOf({ family: familyOf(m), cfg: m, params: state.params }, x.ref, y.ref);
  const { bitsPerDim } = await import('../src/models/model.js');
  const bpd = [...(await E.toF32(nll()))].map(bitsPerDim); // nllOf gives nats per dimension
  const nllMs: number[] = [];
  for (let i = 0; i < NLL_REPS; i++) {
    const t0 = performance.now();
    const a = nll();
    await a.blockUntilReady();
    a.dispose();
    nllMs.push(performance.now() - t0);
  }
  fused.dispose();
  applyStep.dispose();
  await replicas?.close();
  E.release(state);
  x.dispose();
  y.dispose();
  const out: StepResult = {
    kind: 'jax-js',
    threads: usedThreads,
    matmul: E.matmulBackend(),
    workers,
    version: jaxVersion(),
    params: nParams,
    firstCallMs,
    samplesMs,
    medianMs: median(samplesMs),
    losses,
    gradNorms,
    ema: true,
    nllMs,
    bpd,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

// ---- the parent ----

/** The engine's product paths: the native addon, wasm with the WASM SIMD products, wasm with jax-js's own. */
const ENGINES = ['native', 'wasm-simd', 'wasm'] as const;
type Engine = (typeof ENGINES)[number];
const ENGINE_ENV: Record<Engine, Record<string, string>> = {
  native: {},
  'wasm-simd': { STARFLOW_NATIVE: '0' },
  wasm: { STARFLOW_NATIVE: '0', STARFLOW_WASM_PRODUCTS: '0' },
};
const ENGINE_LABEL: Record<Engine, string> = { native: '', 'wasm-simd': ' (wasm, SIMD products)', wasm: " (wasm, jax-js's products)" };

type Options = { quick: boolean; rounds: number; json: string | null; python: string; torchBlas: 'auto' | 'system'; configs: ConfigName[]; engines: Engine[] };

function parseFlags(args: string[]): Options {
  const c = defaultCommonFlags();
  let configs: ConfigName[] = [...CONFIG_NAMES];
  let engines: Engine[] = [...ENGINES];
  eachFlag(
    args,
    (a, value) => {
      if (takeCommonFlag(a, value, c)) return true;
      if (a === '--no-wasm-baseline') {
        engines = ['native'];
        return true;
      }
      if (a === '--engines') {
        const names = value().split(',').map((s) => s.trim()).filter(Boolean);
        for (const n of names) if (!(ENGINES as readonly string[]).includes(n)) throw new Error(`--engines: unknown engine '${n}' (expected ${ENGINES.join(', ')})`);
        if (names.length === 0) throw new Error('--engines needs at least one name');
        engines = names as Engine[];
        return true;
      }
      if (a !== '--configs') return false;
      const names = value().split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of names) if (!(CONFIG_NAMES as readonly string[]).includes(n)) throw new Error(`--configs: unknown config '${n}' (expected ${CONFIG_NAMES.join(', ')})`);
      if (names.length === 0) throw new Error('--configs needs at least one name');
      configs = names as ConfigName[];
      return true;
    },
    '--configs notebook,mnist, --engines native,wasm-simd,wasm, --no-wasm-baseline (= --engines native), --quick, --rounds N, --json PATH, --python PATH, --torch-blas auto|system',
  );
  return { quick: c.quick, rounds: c.rounds ?? (c.quick ? 1 : 2), json: c.json, python: c.python, torchBlas: c.torchBlas, configs, engines };
}

type Contender = { id: string; label: string; run: (file: string, p: { warmup: number; steps: number }) => Promise<StepResult> };

type Summary = {
  id: string;
  label: string;
  medianMs: number;
  roundMedianMs: number[];
  firstCallMs: number;
  roundFirstCallMs: number[];
  /** Loss at the shared initial weights (first call of round 1). */
  loss0: number;
  /** Loss of the last call of round 1 (after the same number of updates on every side). */
  lossLast: number;
  params: number;
  threads: number;
  ema: boolean;
  /** Median ms per bits/dim forward of one batch, pooled over rounds. */
  nllMedianMs: number;
  /** Bits/dim per image after round 1's steps. */
  bpd: number[];
};

function summarise(c: Contender, rs: StepResult[]): Summary {
  const r0 = rs[0]!;
  return {
    id: c.id,
    label: c.label,
    medianMs: median(rs.flatMap((r) => r.samplesMs)),
    roundMedianMs: rs.map((r) => r.medianMs),
    firstCallMs: median(rs.map((r) => r.firstCallMs)),
    roundFirstCallMs: rs.map((r) => r.firstCallMs),
    loss0: r0.losses[0]!,
    lossLast: r0.losses.at(-1)!,
    params: r0.params,
    threads: r0.threads,
    ema: r0.ema,
    nllMedianMs: median(rs.flatMap((r) => r.nllMs)),
    bpd: r0.bpd,
  };
}

const TITLES: Record<ConfigName, string> = {
  notebook: 'notebook (28², p4, w128, 4×4 layers, 2 heads of 64)',
  mnist: 'mnist preset (28², p4, w64, 4×1 layers, 2 heads of 32)',
};

function maxAbs(a: number[], b: number[]): number {
  if (a.length !== b.length) return Infinity;
  return Math.max(...a.map((v, i) => Math.abs(v - b[i]!)));
}

function markdown(
  configs: ConfigName[],
  sums: Map<ConfigName, Summary[]>,
  prepped: Map<ConfigName, PrepResult>,
  opts: { torchNote: string | null; torchBlas: string | null | undefined; load: number[][] },
): string {
  const first = sums.get(configs[0]!)!;
  const js = first.filter((s) => s.id !== 'torch');
  const hasTorch = first.some((s) => s.id === 'torch');
  const head = [
    'config (batch 64)',
    'params',
    ...first.map((s) => `${s.label} ms/step`),
    ...(hasTorch ? js.map((s) => `${s.label} / torch`) : []),
    ...first.map((s) => `first call ${s.label} ms`),
    ...first.map((s) => `${s.label} likelihood images/s`),
    ...(hasTorch ? js.map((s) => `likelihood ${s.label} / torch`) : []),
    ...(hasTorch ? ['loss Δ at init', 'loss Δ after last step', 'bits/dim max Δ'] : []),
  ];
  const rows = configs.map((name) => {
    const ss = sums.get(name)!;
    const torch = ss.find((s) => s.id === 'torch');
    const jsRows = ss.filter((s) => s.id !== 'torch');
    const maxDelta = (pick: (s: Summary) => number) =>
      torch ? Math.max(...jsRows.map((s) => Math.abs(pick(s) - pick(torch)))).toExponential(1) : '—';
    return [
      TITLES[name],
      String(prepped.get(name)!.params),
      ...ss.map((s) => fmt(s.medianMs)),
      ...(torch ? jsRows.map((s) => `${fmt(s.medianMs / torch.medianMs, 2)}×`) : []),
      ...ss.map((s) => fmt(s.firstCallMs, 0)),
      ...ss.map((s) => fmt((1000 * BATCH) / s.nllMedianMs, 0)),
      ...(torch ? jsRows.map((s) => `${fmt(s.nllMedianMs / torch.nllMedianMs, 2)}×`) : []),
      ...(torch
        ? [maxDelta((s) => s.loss0), maxDelta((s) => s.lossLast), Math.max(...jsRows.map((s) => maxAbs(s.bpd, torch.bpd))).toExponential(1)]
        : []),
    ];
  });
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  const table = [line(head), line(head.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n');
  const lossRows = configs.map((name) => {
    const ss = sums.get(name)!;
    return `${name}: loss at init ${ss.map((s) => `${s.label} ${s.loss0.toFixed(6)}`).join(', ')}; after the last step ${ss.map((s) => `${s.label} ${s.lossLast.toFixed(6)}`).join(', ')}`;
  });
  const notes = [
    'One step = forward + backward + clip(1.0) + AdamW (β 0.9/0.95, wd 1e-4, lr 1e-4) + EMA (0.999) of the weights, on both sides (the twin: torch._foreach_mul_/_add_ under no_grad).',
    'Ratios are time ratios jax-js / torch: above 1× jax-js is slower. Medians pool every timed step over the rounds.',
    'First call: jax-js traces, compiles and runs the jitted step once; torch: its first eager step.',
    `Likelihood: bits/dim per image of the batch (the reference\'s evaluate_bpd formula), a jitted forward pass without gradient (torch: under no_grad), on the weights after the timed steps; ${NLL_REPS} timed calls per child, images/s = ${BATCH} / median time. "bits/dim max Δ" compares the per-image values of both sides.`,
    'Data: one real MNIST training batch (images 0..63, Gaussian noise σ 0.1, labels with 10% dropped to −1), the same every step; projOut weights randomised (N(0, 0.01²)) so the backward does real work.',
    'Both sides load the same initial weights and batch (a safetensors file written by the jax-js side). "loss Δ" is the largest |jax-js − torch| loss at the shared initial weights, and after the same number of updates (round 1).',
    ...lossRows,
    ...configs.flatMap((name) => {
      const ss = sums.get(name)!;
      const w = ss.find((s) => s.id === 'jaxjs-2w');
      const t2 = ss.find((s) => s.id === 'torch-2t');
      return w && t2 ? [`${name}, the whole 2-core machine on each side: jax-js 2 workers ${fmt(w.medianMs)} ms / torch 2 threads ${fmt(t2.medianMs)} ms = ${fmt(w.medianMs / t2.medianMs, 2)}×.`] : [];
    }),
    ...configs.map((name) => {
      const ss = sums.get(name)!;
      const best = (pick: (s: Summary) => boolean) => ss.filter(pick).reduce<Summary | null>((b, s) => (!b || s.medianMs < b.medianMs ? s : b), null);
      const engineOf = (s: Summary): Engine => (s.id.endsWith('-wasm-simd') ? 'wasm-simd' : s.id.endsWith('-wasm') ? 'wasm' : 'native');
      const twin = best((s) => s.id.startsWith('torch'));
      const ref = best((s) => s.id.startsWith('reference-'));
      const wasm = best((s) => s.id.startsWith('jaxjs-') && engineOf(s) === 'wasm');
      return ENGINES.map((engine) => {
        const js = best((s) => s.id.startsWith('jaxjs-') && engineOf(s) === engine);
        const vs = (other: Summary | null, what: string) => (js && other && other !== js ? `; against ${what} (${other.label}, ${fmt(other.medianMs)} ms): ${fmt(js.medianMs / other.medianMs, 2)}×` : '');
        return js ? `${name}, best ${engine}: ${js.label} ${fmt(js.medianMs)} ms${vs(ref, "apple/ml-tarflow's own Model")}${vs(twin, 'the PyTorch twin')}${vs(wasm, "jax-js's own wasm products")}.` : '';
      }).filter(Boolean).join('\n- ');
    }).filter(Boolean),
    `Machine load (1-min load average) before / after each round: ${opts.load.map((l) => l.map((v) => v.toFixed(2)).join(' → ')).join('; ')}.`,
  ];
  if (opts.torchNote) notes.unshift(`**PyTorch not measured:** ${opts.torchNote}`);
  if (opts.torchBlas !== undefined && hasTorch) notes.push(`torch BLAS: ${opts.torchBlas ? `OpenBLAS (${opts.torchBlas}), as many threads as torch's` : 'the system libblas.so.3'}.`);
  if (first.some((s) => s.id === 'jaxjs-2w')) notes.push('jax-js 2 workers: the workers compute the gradients; its likelihood column is the main thread alone (1 kernel thread), as bits/dim evaluation is not data-parallel.');
  return `${table}\n\n${notes.map((n) => `- ${n}`).join('\n')}\n`;
}

export async function main(args: string[]): Promise<void> {
  const o = parseFlags(args);
  const quickArg = o.quick ? ['--quick'] : [];
  // jax-js on 1 and 2 kernel threads, and with 2 data-parallel workers of one thread each (the
  // trainer's --workers 2); torch on 1 and 2 threads.
  // Each on the engine's product paths that --engines names (default: all): native, wasm with
  // the WASM SIMD products (STARFLOW_NATIVE=0, an install without a compiler, and the browser),
  // wasm with jax-js's own products (and STARFLOW_WASM_PRODUCTS=0).
  const contenders: Contender[] = o.engines.flatMap((engine) =>
    [
      { threads: 1, workers: 1 },
      { threads: 2, workers: 1 },
      { threads: 1, workers: 2 },
    ].map(({ threads, workers }) => ({
      id: `${workers > 1 ? `jaxjs-${workers}w` : `jaxjs-${threads}t`}${engine === 'native' ? '' : `-${engine}`}`,
      label: `${workers > 1 ? `jax-js ${workers} workers` : `jax-js ${threads} thr`}${ENGINE_LABEL[engine]}`,
      run: (file: string, p: { warmup: number; steps: number }) =>
        runChild<StepResult>(
          process.execPath,
          tsxArgs(SELF, ['--worker', '--threads', String(threads), '--workers', String(workers), '--file', file, '--warmup', String(p.warmup), '--steps', String(p.steps), ...quickArg]),
          `jax-js worker (${threads} threads, ${workers} workers, ${engine})`,
          { STARFLOW_THREADS: String(threads), ...ENGINE_ENV[engine] },
        ),
    })),
  );
  const tv = torchVersion(o.python);
  const { env: torchChildEnv, blas: torchBlas } = torchEnv(o.torchBlas);
  let torchNote: string | null = null;
  if (tv.ok) {
    const script = path.join(HERE, 'torch', 'tarflow_train.py');
    for (const threads of [1, 2]) {
      contenders.push({
        id: threads === 1 ? 'torch' : 'torch-2t',
        label: `torch ${threads} thr`,
        run: (file, p) =>
          runChild<StepResult>(
            o.python,
            [script, '--file', file, '--warmup', String(p.warmup), '--steps', String(p.steps), '--lr', String(LR), '--ema-decay', String(EMA_DECAY), '--threads', String(threads), '--nll-reps', String(NLL_REPS)],
            `torch twin (${threads} threads)`,
            { ...torchChildEnv, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) },
          ),
      });
    }
    // apple/ml-tarflow's own Model, from the user's checkout (TARFLOW_REFERENCE_DIR), for the
    // configs it can express.
    const referenceDir = process.env.TARFLOW_REFERENCE_DIR;
    if (referenceDir) {
      for (const threads of [1, 2]) {
        contenders.push({
          id: `reference-${threads}t`,
          label: `ml-tarflow ${threads} thr`,
          run: (file, p) =>
            runChild<StepResult>(
              o.python,
              [script, '--file', file, '--reference-dir', referenceDir, '--reference-weights', referenceWeightsFile(file), '--warmup', String(p.warmup), '--steps', String(p.steps), '--lr', String(LR), '--ema-decay', String(EMA_DECAY), '--threads', String(threads), '--nll-reps', String(NLL_REPS)],
              `ml-tarflow's Model (${threads} threads)`,
              { ...torchChildEnv, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) },
            ),
        });
      }
    }
  } else {
    torchNote = torchMissingNote(tv.why);
    console.log(`\n!! PyTorch is missing: ${torchNote}\n`);
  }

  const machine = machineInfo();
  console.log(
    `train bench: ${o.configs.join(', ')}; ${o.rounds} round(s)${o.quick ? ' (quick)' : ''}, ${machine.cores} cores (${machine.cpu ?? '?'}), load ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}`,
  );
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'starflow-bench-train-'));
  try {
    const prepped = new Map<ConfigName, PrepResult>();
    for (const name of o.configs) {
      const file = path.join(tmp, `${name}.safetensors`);
      const r = await runChild<PrepResult>(process.execPath, tsxArgs(SELF, ['--prep', '--config', name, '--out', file]), `prep (${name})`, { STARFLOW_THREADS: '1' });
      prepped.set(name, r);
      console.log(`prepared ${name}: ${r.params} params, ${r.tokens} tokens, ${r.labelsDropped}/${BATCH} labels dropped`);
    }
    // ml-tarflow's Model runs only where it can hold every selected config (its head size is 64).
    const lacking = o.configs.filter((name) => !existsSync(referenceWeightsFile(prepped.get(name)!.file)));
    if (lacking.length && contenders.some((c) => c.id.startsWith('reference-'))) {
      console.log(`ml-tarflow's Model cannot hold ${lacking.join(', ')}: not timed (run with --configs notebook to time it)`);
      contenders.splice(0, contenders.length, ...contenders.filter((c) => !c.id.startsWith('reference-')));
    }
    const results = new Map<string, StepResult[]>();
    const key = (name: ConfigName, id: string) => `${name}/${id}`;
    const load: number[][] = [];
    for (let round = 1; round <= o.rounds; round++) {
      const before = os.loadavg()[0]!;
      for (const name of o.configs) {
        const p = plan(o.quick, name);
        for (const c of contenders) {
          const t0 = performance.now();
          const r = await c.run(prepped.get(name)!.file, p);
          const k = key(name, c.id);
          results.set(k, [...(results.get(k) ?? []), r]);
          console.log(
            `round ${round}/${o.rounds}  ${name.padEnd(8)} ${c.label.padEnd(12)} step ${fmt(r.medianMs).padStart(8)} ms  first ${fmt(r.firstCallMs, 0).padStart(7)} ms  loss ${r.losses[0]!.toFixed(6)} → ${r.losses.at(-1)!.toFixed(6)}  (${fmt((performance.now() - t0) / 1000)} s, load ${os.loadavg()[0]!.toFixed(2)})`,
          );
        }
      }
      load.push([before, os.loadavg()[0]!]);
    }
    const sums = new Map(o.configs.map((name) => [name, contenders.map((c) => summarise(c, results.get(key(name, c.id))!))] as const));
    const md = markdown(o.configs, sums, prepped, { torchNote, torchBlas: tv.ok ? torchBlas : undefined, load });
    console.log(`\n${md}`);
    const report = {
      plan: Object.fromEntries(o.configs.map((n) => [n, plan(o.quick, n)])),
      machine,
      loadPerRound: load,
      step: { lr: LR, emaDecay: EMA_DECAY, optimizer: 'AdamW(0.9, 0.95, eps 1e-8, wd 1e-4) + clip 1.0 + EMA', data: 'one real MNIST batch (train images 0..63) + N(0, 0.1²) noise, 10% labels dropped' },
      configs: Object.fromEntries(o.configs.map((n) => [n, { ...prepped.get(n)!, file: undefined }])),
      torch: tv.ok ? { version: tv.version, python: o.python, blas: torchBlas ? `OpenBLAS (${torchBlas})` : 'system libblas.so.3', ema: true } : { missing: torchNote },
      summary: Object.fromEntries(sums),
      ratios: Object.fromEntries(
        o.configs.map((n) => {
          const ss = sums.get(n)!;
          const torch = ss.find((s) => s.id === 'torch');
          return [n, torch ? Object.fromEntries(ss.filter((s) => s.id !== 'torch').flatMap((s) => [[`${s.id}/torch`, s.medianMs / torch.medianMs], [`${s.id}/torch likelihood`, s.nllMedianMs / torch.nllMedianMs]])) : null];
        }),
      ),
      raw: Object.fromEntries(results),
      markdown: md,
    };
    writeReport('train', o, report, md);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// Run as a child when started directly (`tsx bench/train.ts --worker|--prep ...`).
if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  const argv = process.argv.slice(2);
  if (argv.includes('--prep')) await prep(argv);
  else if (argv.includes('--worker')) await worker(argv);
}
