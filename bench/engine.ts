// Engine benchmark: jax-js (wasm, 1 and 2 threads) against PyTorch (1 thread) on
//   1. float32 matmul GFLOP/s at n = 256, 512, 1024 (jitted, median after warm-up);
//   2. ms per jitted fwd+bwd+clip+AdamW step of the micro transformer (a one-block TARFlow:
//      4 layers, width 128, 4 heads of 32, MLP ×4, batch 64 × 16 tokens of dim 4).
// The thread count of the wasm backend is fixed when the engine starts, so every measurement
// runs in a child process (`tsx bench/engine.ts --worker ...`, or bench/torch/micro_step.py)
// that prints one JSON line. The parent runs the three contenders in interleaved rounds, so
// slow phases of a shared machine hit all of them, and reports medians and time ratios.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, fmt, runChild as runJsonChild, torchVersion, torchEnv, torchMissingNote, machineInfo, jaxVersion, defaultCommonFlags, takeCommonFlag, writeReport, startWorkerEngine, eachFlag, benchWeights } from './common.js';
// Type-only: erased, so the parent process never loads jax-js.
import type { Arr } from '../src/engine/index.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SIZES = [256, 512, 1024];
export { median };

// ---- shared shapes of the measurements (what a worker prints) ----

type MatmulResult = { n: number; warmup: number; samplesMs: number[]; medianMs: number; gflops: number };
type StepResult = {
  batch: number;
  tokens: number;
  params: number;
  /** First call: tracing + compilation + one step (jax-js); the first eager step (torch). */
  firstCallMs: number;
  warmup: number;
  samplesMs: number[];
  medianMs: number;
  lossFirst: number;
  lossLast: number;
};
type WorkerResult = {
  kind: 'jax-js' | 'torch';
  threads: number;
  version: string;
  device?: string;
  /** jax-js: what ran the matrix products (E.matmulBackend()). */
  gemm?: string;
  matmul: MatmulResult[];
  step: StepResult;
};

// ---- statistics ----

const gflops = (n: number, ms: number) => (2 * n ** 3) / (ms * 1e6);

// ---- flags ----

type Options = { quick: boolean; rounds: number; json: string | null; python: string; torchBlas: 'auto' | 'system' };

function parseFlags(args: string[]): Options {
  const c = defaultCommonFlags();
  eachFlag(args, (a, value) => takeCommonFlag(a, value, c), '--quick, --rounds N, --json PATH, --python PATH, --torch-blas auto|system');
  return { quick: c.quick, rounds: c.rounds ?? (c.quick ? 1 : 3), json: c.json, python: c.python, torchBlas: c.torchBlas };
}

/** Repetitions per measurement: [matmul reps per size], step warm-up calls, timed steps. */
function plan(quick: boolean) {
  return quick
    ? { mmWarmup: 1, mmReps: { 256: 5, 512: 3, 1024: 2 } as Record<number, number>, stepWarmup: 1, steps: 3 }
    : { mmWarmup: 2, mmReps: { 256: 30, 512: 12, 1024: 5 } as Record<number, number>, stepWarmup: 2, steps: 12 };
}

// ---- the worker: one jax-js engine with a fixed thread count ----

async function worker(args: string[]): Promise<void> {
  const get = (flag: string, dflt: string) => {
    const i = args.indexOf(flag);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
  };
  const threads = Number(get('--threads', '1'));
  const p = plan(args.includes('--quick'));
  const usedThreads = await startWorkerEngine(threads);
  const device = 'wasm';
  const E = await import('../src/engine/index.js');
  const { np, jit, Rng, uniformArray, settle } = E;

  // 1. matmul
  const matmul: MatmulResult[] = [];
  const mm = jit((a: Arr, b: Arr) => np.matmul(a, b));
  for (const n of SIZES) {
    const a = uniformArray(new Rng(7).fork(n), [n, n], -1, 1);
    const b = uniformArray(new Rng(8).fork(n), [n, n], -1, 1);
    await settle([a, b]);
    const once = async () => {
      const t0 = performance.now();
      const c = mm(a.ref, b.ref);
      await c.blockUntilReady();
      const ms = performance.now() - t0;
      c.dispose();
      return ms;
    };
    for (let i = 0; i < p.mmWarmup; i++) await once();
    const samplesMs: number[] = [];
    for (let i = 0; i < (p.mmReps[n] ?? 5); i++) samplesMs.push(await once());
    a.dispose();
    b.dispose();
    const med = median(samplesMs);
    matmul.push({ n, warmup: p.mmWarmup, samplesMs, medianMs: med, gflops: gflops(n, med) });
  }
  mm.dispose();

  // 2. the training step
  const step = await stepBench(E, p.stepWarmup, p.steps);

  const version = jaxVersion();
  const out: WorkerResult = { kind: 'jax-js', threads: usedThreads, version, device, gemm: E.matmulBackend(), matmul, step };
  process.stdout.write(JSON.stringify(out) + '\n');
}

export const MICRO_CONFIG = {
  model: 'tarflow',
  inChannels: 1,
  imgSize: 8,
  patchSize: 2,
  width: 128,
  headDim: 32,
  numBlocks: 1,
  layersPerBlock: 4,
  mlpRatio: 4,
  numClasses: 0,
} as const;
export const MICRO_BATCH = 64;
export const MICRO_LR = 1e-4;

async function stepBench(E: typeof import('../src/engine/index.js'), warmup: number, steps: number): Promise<StepResult> {
  const { jit, valueAndGrad, Rng, normalArray, keep, settle, fromF32, toNumber, countParams, release } = E;
  const { parseFlowConfig: parseModelConfig, tokenShape, forward, flowLoss } = await import('../src/models/flow.js');
  const optim = await import('../src/nn/optim.js');
  type P = import('../src/models/flow.js').FlowParams;
  type S = import('../src/nn/optim.js').AdamState<P>;

  const cfg = parseModelConfig({ ...MICRO_CONFIG });
  const { tokens } = tokenShape(cfg);
  let params = await benchWeights(cfg);
  let state: S = optim.initAdamState(params);
  const nParams = countParams(params); // reads shapes only
  const x = normalArray(new Rng(12), [MICRO_BATCH, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
  await settle([params, state, x]);

  const lossOf = (p: P, xs: Arr): Arr => {
    const r = forward(p, cfg, xs);
    return flowLoss(r.z, r.logdet);
  };
  const trainStep = jit((p: P, s: S, xs: Arr, lr: Arr, bc1: Arr, bc2: Arr) => {
    const [loss, grads] = valueAndGrad(lossOf)(keep(p), xs);
    const { grads: clipped, norm } = optim.clipByGlobalNorm(grads, 1.0);
    const next = optim.adamwUpdate(p, clipped, s, lr, bc1, bc2, optim.ADAMW_DEFAULTS);
    return { params: next.params, state: next.state, loss, norm };
  });

  let t = 0;
  const scalar = (v: number) => fromF32(Float32Array.of(v), []);
  const once = async (): Promise<{ ms: number; loss: Arr }> => {
    t += 1;
    const { bc1, bc2 } = optim.adamScalars(optim.ADAMW_DEFAULTS, t);
    const args = [scalar(MICRO_LR), scalar(bc1), scalar(bc2)] as const;
    const t0 = performance.now();
    const r = trainStep(params, state, x.ref, ...args);
    await settle(r);
    const ms = performance.now() - t0;
    params = r.params;
    state = r.state;
    r.norm.dispose();
    return { ms, loss: r.loss };
  };

  const first = await once();
  const lossFirst = await toNumber(first.loss);
  for (let i = 1; i < warmup; i++) (await once()).loss.dispose();
  const samplesMs: number[] = [];
  let lossLast = NaN;
  for (let i = 0; i < steps; i++) {
    const r = await once();
    samplesMs.push(r.ms);
    if (i === steps - 1) lossLast = await toNumber(r.loss);
    else r.loss.dispose();
  }
  trainStep.dispose();
  release(params);
  release(state);
  x.dispose();
  return {
    batch: MICRO_BATCH,
    tokens,
    params: nParams,
    firstCallMs: first.ms,
    warmup,
    samplesMs,
    medianMs: median(samplesMs),
    lossFirst,
    lossLast,
  };
}

// ---- the parent: rounds of child processes ----

type Contender = { id: string; label: string; run: () => Promise<WorkerResult> };

function runChild(cmd: string, args: string[], label: string, env: Record<string, string> = {}): Promise<WorkerResult> {
  return runJsonChild<WorkerResult>(cmd, args, label, env);
}

type Summary = {
  id: string;
  label: string;
  threads: number;
  version: string;
  gemm?: string;
  matmul: { n: number; medianMs: number; gflops: number; roundGflops: number[] }[];
  step: { medianMs: number; roundMedianMs: number[]; firstCallMs: number; roundFirstCallMs: number[]; lossFirst: number; lossLast: number; params: number };
};

function summarise(id: string, label: string, rs: WorkerResult[]): Summary {
  const r0 = rs[0]!;
  return {
    id,
    label,
    threads: r0.threads,
    version: r0.version,
    ...(r0.gemm ? { gemm: r0.gemm } : {}),
    matmul: SIZES.map((n) => {
      const per = rs.map((r) => r.matmul.find((m) => m.n === n)!);
      // Pooled over rounds: every timed call counts once.
      const med = median(per.flatMap((m) => m.samplesMs));
      return { n, medianMs: med, gflops: gflops(n, med), roundGflops: per.map((m) => m.gflops) };
    }),
    step: {
      medianMs: median(rs.flatMap((r) => r.step.samplesMs)),
      roundMedianMs: rs.map((r) => r.step.medianMs),
      firstCallMs: median(rs.map((r) => r.step.firstCallMs)),
      roundFirstCallMs: rs.map((r) => r.step.firstCallMs),
      lossFirst: r0.step.lossFirst,
      lossLast: rs.at(-1)!.step.lossLast,
      params: r0.step.params,
    },
  };
}

function markdown(sums: Summary[], torch: Summary | undefined, torchNote: string | null, torchBlas?: string | null): string {
  const ts = sums.filter((s) => s.id !== 'torch');
  const cols = [...ts, ...(torch ? [torch] : [])];
  const head = ['', ...cols.map((c) => c.label), ...(torch ? ts.map((c) => `${c.label} / torch`) : [])];
  const rows: string[][] = [];
  for (const n of SIZES) {
    const g = (s: Summary) => s.matmul.find((m) => m.n === n)!;
    rows.push([
      `matmul ${n}³ GFLOP/s`,
      ...cols.map((c) => fmt(g(c).gflops, 2)),
      ...(torch ? ts.map((c) => `${fmt(g(c).medianMs / g(torch).medianMs, 2)}×`) : []),
    ]);
  }
  rows.push([
    'train step ms (median)',
    ...cols.map((c) => fmt(c.step.medianMs)),
    ...(torch ? ts.map((c) => `${fmt(c.step.medianMs / torch.step.medianMs, 2)}×`) : []),
  ]);
  rows.push([
    'first call ms (compile)',
    ...cols.map((c) => fmt(c.step.firstCallMs, 0)),
    ...(torch ? ts.map(() => '') : []),
  ]);
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  const table = [line(head), line(head.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n');
  const notes = [
    'Ratios are time ratios jax-js / torch (ms per matmul or per step): above 1× jax-js is slower.',
    'First call: jax-js traces and compiles the jitted step and runs it once; torch has no compile (its first eager step).',
  ];
  if (torchNote) notes.unshift(`**PyTorch not measured:** ${torchNote}`);
  const gemms = [...new Set(sums.flatMap((c) => c.gemm ?? []))];
  if (gemms.length) notes.push(`jax-js matrix products ran on: ${gemms.join(', ')} ("wasm matmul" rows: STARFLOW_NATIVE=0).`);
  if (torchBlas !== undefined && torch) notes.push(`torch BLAS: ${torchBlas ? `OpenBLAS (${torchBlas}), 1 thread` : 'the system libblas.so.3'}.`);
  return `${table}\n\n${notes.map((n) => `- ${n}`).join('\n')}\n`;
}

export async function main(args: string[]): Promise<void> {
  const o = parseFlags(args);
  const p = plan(o.quick);
  const quickArg = o.quick ? ['--quick'] : [];
  const self = fileURLToPath(import.meta.url);
  const tsxArgs = (threads: number) => ['--import', 'tsx', self, '--worker', '--threads', String(threads), ...quickArg];
  // The engine as it runs by default (matrix products on the native GEMM when the addon is built)
  // and with every kernel on jax-js's wasm (STARFLOW_NATIVE=0).
  const contenders: Contender[] = [false, true].flatMap((wasmOnly) =>
    [1, 2].map((threads) => ({
      id: `jaxjs-${threads}t${wasmOnly ? '-wasm' : ''}`,
      label: `jax-js ${threads} thr${wasmOnly ? ' (wasm matmul)' : ''}`,
      run: () =>
        runChild(process.execPath, tsxArgs(threads), `jax-js worker (${threads} threads${wasmOnly ? ', wasm matmul' : ''})`, {
          STARFLOW_THREADS: String(threads),
          ...(wasmOnly ? { STARFLOW_NATIVE: '0' } : {}),
        }),
    })),
  );
  const tv = torchVersion(o.python);
  // Debian's python3-torch calls sgemm through libblas.so.3, by default the netlib reference BLAS
  // (~2.5 GFLOP/s). With libopenblas0-pthread installed, the torch child loads OpenBLAS instead
  // (LD_LIBRARY_PATH, this process only): a fair baseline. --torch-blas system keeps the default.
  const { env: torchChildEnv, blas: torchBlas } = torchEnv(o.torchBlas);
  let torchNote: string | null = null;
  if (tv.ok) {
    const script = path.join(HERE, 'torch', 'micro_step.py');
    const pyArgs = [
      script,
      '--sizes', SIZES.join(','),
      '--mm-warmup', String(p.mmWarmup),
      '--mm-reps', SIZES.map((n) => p.mmReps[n]).join(','),
      '--warmup', String(p.stepWarmup),
      '--steps', String(p.steps),
      '--batch', String(MICRO_BATCH),
    ];
    const env = torchChildEnv;
    contenders.push({ id: 'torch', label: `torch ${tv.version} 1 thr`, run: () => runChild(o.python, pyArgs, 'torch twin', env) });
  } else {
    torchNote = torchMissingNote(tv.why);
    console.log(`\n!! PyTorch is missing: ${torchNote}\n`);
  }

  const machine = machineInfo();
  console.log(`engine bench: ${o.rounds} round(s)${o.quick ? ' (quick)' : ''}, ${machine.cores} cores (${machine.cpu ?? '?'}), node ${process.version}`);
  const results = new Map<string, WorkerResult[]>(contenders.map((c) => [c.id, []]));
  for (let round = 1; round <= o.rounds; round++) {
    for (const c of contenders) {
      const t0 = performance.now();
      const r = await c.run();
      results.get(c.id)!.push(r);
      const mm = r.matmul.map((m) => `${m.n}: ${fmt(m.gflops, 2)}`).join(', ');
      console.log(
        `round ${round}/${o.rounds}  ${c.label.padEnd(22)} step ${fmt(r.step.medianMs).padStart(7)} ms  first ${fmt(r.step.firstCallMs, 0).padStart(6)} ms  GFLOP/s ${mm}  (${fmt((performance.now() - t0) / 1000)} s)`,
      );
    }
  }
  const sums = contenders.map((c) => summarise(c.id, c.label, results.get(c.id)!));
  const torch = sums.find((s) => s.id === 'torch');
  const md = markdown(sums, torch, torchNote, tv.ok ? torchBlas : undefined);
  console.log(`\n${md}`);
  const report = {
    plan: p,
    machine,
    model: { ...MICRO_CONFIG, batch: MICRO_BATCH, lr: MICRO_LR, optimizer: 'AdamW(0.9, 0.95, eps 1e-8, wd 1e-4) + clip 1.0' },
    torch: tv.ok ? { version: tv.version, python: o.python, blas: torchBlas ? `OpenBLAS (${torchBlas})` : 'system libblas.so.3' } : { missing: torchNote },
    summary: sums,
    ratios: torch
      ? Object.fromEntries(
          sums
            .filter((s) => s.id !== 'torch')
            .map((s) => [
              `${s.id}/torch`,
              {
                stepTime: s.step.medianMs / torch.step.medianMs,
                matmulTime: Object.fromEntries(s.matmul.map((m, i) => [m.n, m.medianMs / torch.matmul[i]!.medianMs])),
              },
            ]),
        )
      : null,
    raw: Object.fromEntries(results),
    markdown: md,
  };
  writeReport('engine', o, report, md);
}

// Run as a worker when started directly (`tsx bench/engine.ts --worker ...`).
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv.includes('--worker')) {
  await worker(process.argv.slice(2));
}
