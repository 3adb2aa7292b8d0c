// Sampling benchmark: samples/s of a trained model's sampler, jax-js (wasm, 1 and 2 threads;
// solvers sequential, jacobi, gs-jacobi) against a PyTorch twin of the reference's sequential
// KV-cached sampler (bench/torch/tarflow_twin.py), at several batch sizes, with and without
// guidance. Every contender starts from the same noise (drawNoise, written to a safetensors file
// the twin reads) and its images are checked against the jax-js sequential result and the twin's
// (max |Δ| ≤ 1e-2 on [−1, 1]). Contenders run as child processes in interleaved rounds, as in
// bench/engine.ts. A profile splits the sequential solver's time at batch 1 and 64 into kernel
// time, per-call overhead and compilation (jax-js's profiler traces, 1 thread).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlowConfig as parseModelConfig, tokenShape, type FlowConfig } from '../src/models/flow.js';
import { readSafetensorsFile, writeSafetensorsFile } from '../src/io/files.js';
import { fromFloat32, fromInt32, toFloat32, toInt32 } from '../src/io/safetensors.js';
import {
  BENCH_DIR,
  ROOT,
  median,
  fmt,
  runChild,
  tsxArgs,
  torchVersion,
  torchEnv,
  torchMissingNote,
  machineInfo,
  jaxVersion,
  defaultCommonFlags,
  takeCommonFlag, writeReport,
  eachFlag,
  argOf,
  startWorkerEngine,
  snapshotModel,
  repoPath,
} from './common.js';

const SELF = fileURLToPath(import.meta.url);
const SOLVER_NAMES = ['sequential', 'jacobi', 'gs-jacobi'] as const;
type Solver = (typeof SOLVER_NAMES)[number];
const TOL = 1e-2;

type RunResult = {
  batch: number;
  /** Guidance weight (0 = none); the string form names the image files. */
  weight: number;
  solver: Solver;
  /** First call: tracing + compilation + one run (jax-js); the first eager run (torch). */
  firstCallMs: number;
  samplesMs: number[];
  medianMs: number;
  /** Solver calls per run (all blocks). */
  calls: number;
  /** Jacobi iterations per block (sampling order) and module. */
  iterations?: number[][];
};

type Profile = {
  batch: number;
  weight: number;
  calls: number;
  firstMs: number;
  firstKernelMs: number;
  warmMs: number;
  tracedMs: number;
  kernelMs: number;
  kernels: number;
  overheadMs: number;
  overheadPerCallMs: number;
  kernelPerCallMs: number;
  compileMs: number;
};

type WorkerOut = { kind: 'jax-js' | 'torch'; threads: number; version: string; results: RunResult[]; profile?: Profile[] };

const wkey = (w: number) => String(w);
const imageFile = (dir: string, id: string, solver: string, b: number, w: number) => path.join(dir, `${id}-${solver}-${b}-${wkey(w)}.safetensors`);

// ---- the worker side (jax-js in a child process with a fixed thread count) ----

/** Writes the shared noise and labels (drawNoise from a seed) for every contender. */
async function prep(args: string[]): Promise<void> {
  await startWorkerEngine(1);
  const { drawNoise } = await import('../src/sampling/pipeline.js');
  const cfg = parseModelConfig(JSON.parse(readFileSync(path.join(argOf(args, '--model'), 'config.json'), 'utf8')));
  const n = Number(argOf(args, '--n'));
  const { tokens, tokenDim } = tokenShape(cfg);
  const { tarflow } = await import('../src/models/flow.js');
  const z = drawNoise({ family: tarflow, cfg }, n, Number(argOf(args, '--seed', '0')));
  const labels = Int32Array.from({ length: n }, (_, i) => (cfg.numClasses > 0 ? i % cfg.numClasses : -1));
  await writeSafetensorsFile(argOf(args, '--out'), { z: fromFloat32(z, [n, tokens, tokenDim]), labels: fromInt32(labels, [n]) });
  process.stdout.write(JSON.stringify({ ok: true }) + '\n');
}

type Loaded = {
  cfg: FlowConfig;
  run: (b: number, w: number, solver: Solver) => Promise<{ images: Float32Array; calls: number; iterations: number[][] }>;
};

async function loadForSampling(args: string[]): Promise<Loaded> {
  const { loadModel } = await import('../src/io/model.js');
  const { generate } = await import('../src/sampling/pipeline.js');
  const { NO_GUIDANCE } = await import('../src/models/model.js');
  const model = await loadModel(argOf(args, '--model'));
  const cfg = model.cfg as FlowConfig;
  const { tokens, tokenDim } = tokenShape(cfg);
  const noise = await readSafetensorsFile(argOf(args, '--noise'));
  const z = toFloat32(noise.tensors.get('z')!);
  const labels = Array.from(toInt32(noise.tensors.get('labels')!));
  const attnTemp = Number(argOf(args, '--attn-temp', '1'));
  const run: Loaded['run'] = async (b, w, solver) => {
    const r = await generate(model, {
      n: b,
      labels: cfg.numClasses > 0 ? labels.slice(0, b) : undefined,
      solver: { name: solver },
      guidance: w > 0 ? { ...NO_GUIDANCE, weight: w, attnTemp } : NO_GUIDANCE,
      seed: 0,
      noise: z.subarray(0, b * tokens * tokenDim),
      batchSize: b,
    });
    const stats = r.stats[0]!;
    return { images: r.images, calls: stats.reduce((n, s) => n + s.calls, 0), iterations: stats.map((s) => s.iterations) };
  };
  return { cfg, run };
}

function parseWorkloads(s: string): { batch: number; weight: number }[] {
  return s.split(',').map((p) => {
    const [b, w] = p.split(':');
    return { batch: Number(b), weight: Number(w) };
  });
}

async function worker(args: string[]): Promise<void> {
  const threads = await startWorkerEngine(Number(argOf(args, '--threads', '1')));
  const { run } = await loadForSampling(args);
  const solvers = argOf(args, '--solvers').split(',') as Solver[];
  const reps = Number(argOf(args, '--reps', '3'));
  const warmup = Number(argOf(args, '--warmup', '0'));
  const out = args.includes('--out') ? argOf(args, '--out') : null;
  const id = argOf(args, '--id', `jaxjs-${threads}t`);
  const results: RunResult[] = [];
  for (const { batch, weight } of parseWorkloads(argOf(args, '--workloads'))) {
    for (const solver of solvers) {
      const t0 = performance.now();
      const first = await run(batch, weight, solver);
      const firstCallMs = performance.now() - t0;
      for (let i = 0; i < warmup; i++) await run(batch, weight, solver);
      const samplesMs: number[] = [];
      for (let i = 0; i < reps; i++) {
        const t1 = performance.now();
        await run(batch, weight, solver);
        samplesMs.push(performance.now() - t1);
      }
      if (out) await writeSafetensorsFile(imageFile(out, id, solver, batch, weight), { images: fromFloat32(first.images, [first.images.length]) });
      results.push({ batch, weight, solver, firstCallMs, samplesMs, medianMs: median(samplesMs), calls: first.calls, iterations: first.iterations });
      process.stderr.write(`  ${id} ${solver} b=${batch} w=${weight}: first ${fmt(firstCallMs, 0)} ms, warm ${fmt(median(samplesMs), 0)} ms\n`);
    }
  }
  const o: WorkerOut = { kind: 'jax-js', threads, version: jaxVersion(), results };
  process.stdout.write(JSON.stringify(o) + '\n');
}

/**
 * Where the sequential solver's time goes (1 thread: kernels then run synchronously on the main
 * thread, so a trace entry spans the kernel's whole execution). Kernel time = Σ of the profiler's
 * performance.measure entries; overhead = wall − kernel time of a warm traced run; compilation ≈
 * first-call wall − warm wall.
 */
async function profileWorker(args: string[]): Promise<void> {
  const threads = await startWorkerEngine(1);
  const { profiler } = await import('../src/engine/index.js');
  const { run } = await loadForSampling(args);
  const reps = Number(argOf(args, '--reps', '2'));
  const traced = async (fn: () => Promise<{ calls: number }>) => {
    performance.clearMeasures();
    profiler.startTrace();
    const t0 = performance.now();
    const r = await fn();
    const ms = performance.now() - t0;
    profiler.stopTrace();
    const entries = performance.getEntriesByType('measure').filter((e) => {
      const d = (e as PerformanceMeasure).detail as { devtools?: { trackGroup?: string } } | null;
      return d?.devtools?.trackGroup === 'JAX Profiler';
    });
    performance.clearMeasures();
    return { ms, calls: r.calls, kernelMs: entries.reduce((s, e) => s + e.duration, 0), kernels: entries.length };
  };
  const profile: Profile[] = [];
  for (const { batch, weight } of parseWorkloads(argOf(args, '--workloads'))) {
    const first = await traced(() => run(batch, weight, 'sequential'));
    // Minimum over repeats: on a shared machine the least disturbed run is the best estimate.
    const warm: number[] = [];
    for (let i = 0; i < Math.max(2, reps); i++) {
      const t0 = performance.now();
      await run(batch, weight, 'sequential');
      warm.push(performance.now() - t0);
    }
    const tr = [await traced(() => run(batch, weight, 'sequential')), await traced(() => run(batch, weight, 'sequential'))];
    const t = tr[0]!.ms <= tr[1]!.ms ? tr[0]! : tr[1]!;
    const warmMs = Math.min(...warm);
    profile.push({
      batch,
      weight,
      calls: t.calls,
      firstMs: first.ms,
      firstKernelMs: first.kernelMs,
      warmMs,
      tracedMs: t.ms,
      kernelMs: t.kernelMs,
      kernels: t.kernels,
      overheadMs: Math.max(0, warmMs - t.kernelMs),
      overheadPerCallMs: Math.max(0, warmMs - t.kernelMs) / t.calls,
      kernelPerCallMs: t.kernelMs / t.calls,
      compileMs: first.ms - warmMs,
    });
    process.stderr.write(`  profile b=${batch} w=${weight}: first ${fmt(first.ms, 0)} ms, warm ${fmt(warmMs, 0)} ms, kernels ${fmt(t.kernelMs, 0)} ms of ${fmt(t.ms, 0)} ms\n`);
  }
  const o: WorkerOut = { kind: 'jax-js', threads, version: jaxVersion(), results: [], profile };
  process.stdout.write(JSON.stringify(o) + '\n');
}

// ---- the parent ----

type Options = {
  model: string | null;
  batches: number[] | null;
  cfg: number;
  attnTemp: number | null;
  solvers: Solver[];
  threads: number[];
  profile: boolean;
  seed: number;
  quick: boolean;
  rounds: number;
  json: string | null;
  python: string;
  torchBlas: 'auto' | 'system';
};

const FLAGS_HELP =
  '--model DIR, --batches 1,64,1024, --cfg W, --attn-temp T, --solvers sequential,jacobi,gs-jacobi, --threads 1,2, --no-profile, --seed N, --quick, --rounds N, --json PATH, --python PATH, --torch-blas auto|system';

function parseFlags(args: string[]): Options {
  const c = defaultCommonFlags();
  const o: Omit<Options, 'quick' | 'rounds' | 'json' | 'python' | 'torchBlas'> = {
    model: null,
    batches: null,
    cfg: 1.5,
    attnTemp: null,
    solvers: [...SOLVER_NAMES],
    threads: [1, 2],
    profile: true,
    seed: 0,
  };
  const list = (v: string, what: string) =>
    v.split(',').map((s) => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${what}: '${s}' is not a positive integer`);
      return n;
    });
  const take = (a: string, value: () => string): boolean => {
    if (takeCommonFlag(a, value, c)) return true;
    if (a === '--model') o.model = value();
    else if (a === '--batches') o.batches = list(value(), '--batches');
    else if (a === '--threads') o.threads = list(value(), '--threads');
    else if (a === '--cfg') {
      o.cfg = Number(value());
      if (!(o.cfg > 0)) throw new Error('--cfg must be a number > 0');
    } else if (a === '--attn-temp') {
      o.attnTemp = Number(value());
      if (!(o.attnTemp > 0)) throw new Error('--attn-temp must be a number > 0');
    } else if (a === '--solvers') {
      const s = value().split(',');
      for (const x of s) if (!(SOLVER_NAMES as readonly string[]).includes(x)) throw new Error(`unknown solver '${x}'`);
      o.solvers = s as Solver[];
    } else if (a === '--no-profile') o.profile = false;
    else if (a === '--seed') o.seed = Number(value());
    else if (!a.startsWith('-') && o.model === null) o.model = a;
    else return false;
    return true;
  };
  eachFlag(args, take, FLAGS_HELP);
  return { ...o, quick: c.quick, rounds: c.rounds ?? (c.quick ? 1 : 3), json: c.json, python: c.python, torchBlas: c.torchBlas };
}

/** Pixels as an image shows them: clamped to [−1, 1], NaN as black (what the PNG writer does). */
const asImage = (v: number): number => (Number.isNaN(v) ? -1 : Math.min(1, Math.max(-1, v)));

/** Max |Δ| between two batches of images on the [−1, 1] scale, as written to disk. */
function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(asImage(a[i]!) - asImage(b[i]!));
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

async function readImages(file: string): Promise<Float32Array | null> {
  if (!existsSync(file)) return null;
  return toFloat32((await readSafetensorsFile(file)).tensors.get('images')!);
}

type Row = {
  batch: number;
  weight: number;
  solver: Solver;
  /** Per jax-js contender: median ms per run, samples/s, first call ms. */
  jax: Record<string, { medianMs: number; samplesPerS: number; firstCallMs: number; calls: number; iterations?: number[][] }>;
  best: string;
  torchMs: number | null;
  ratioToTorch: number | null;
  diffVsSeq: number;
  diffVsTorch: number | null;
  ok: boolean;
};

export async function main(args: string[]): Promise<void> {
  const o = parseFlags(args);
  const defaultDir = path.join(ROOT, 'checkpoints', 'mnist');
  const modelDir = o.model ?? (existsSync(path.join(defaultDir, 'config.json')) ? defaultDir : null);
  if (!modelDir) throw new Error('no model: pass --model DIR (checkpoints/mnist does not exist)');
  // Snapshot the model, so a checkpoint rewritten during the run cannot change under the children.
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'starflow-bench-sampling-'));
  try {
    await runBench(o, modelDir, tmp);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function runBench(o: Options, modelDir: string, tmp: string): Promise<void> {
  const snap = path.join(tmp, 'model');
  mkdirSync(snap);
  snapshotModel(modelDir, snap);
  const cfg = parseModelConfig(JSON.parse(readFileSync(path.join(snap, 'config.json'), 'utf8')), `${modelDir}/config.json`);
  const { tokens } = tokenShape(cfg);
  const batches = o.batches ?? (o.quick ? [1, 64] : [1, 64, 1024]);
  // Guidance: class models extrapolate from the mean-class branch; unconditional models need an
  // attention temperature ≠ 1 for their negative branch.
  const attnTemp = o.attnTemp ?? (cfg.numClasses > 0 ? 1 : 0.5);
  const weights = [0, o.cfg];
  const workloads = batches.flatMap((batch) => weights.map((weight) => ({ batch, weight })));
  const wlArg = workloads.map((w) => `${w.batch}:${wkey(w.weight)}`).join(',');
  const reps = o.quick ? 1 : 3;
  const warmup = o.quick ? 0 : 1;

  const noiseFile = path.join(tmp, 'noise.safetensors');
  const imagesDir = path.join(tmp, 'images');
  mkdirSync(imagesDir);
  await runChild(process.execPath, tsxArgs(SELF, ['--prep', '--model', snap, '--n', String(Math.max(...batches)), '--seed', String(o.seed), '--out', noiseFile]), 'noise', { STARFLOW_THREADS: '1' });

  type Contender = { id: string; label: string; run: (round: number) => Promise<WorkerOut> };
  const common = ['--model', snap, '--noise', noiseFile, '--workloads', wlArg, '--attn-temp', String(attnTemp)];
  const contenders: Contender[] = o.threads.map((t) => ({
    id: `jaxjs-${t}t`,
    label: `jax-js ${t} thr`,
    run: (round: number) =>
      runChild<WorkerOut>(
        process.execPath,
        tsxArgs(SELF, ['--worker', '--threads', String(t), '--id', `jaxjs-${t}t`, ...common, '--solvers', o.solvers.join(','), '--reps', String(reps), '--warmup', String(warmup), ...(round === 1 ? ['--out', imagesDir] : [])]),
        `jax-js worker (${t} threads)`,
        { STARFLOW_THREADS: String(t) },
      ),
  }));
  const tv = torchVersion(o.python);
  const te = torchEnv(o.torchBlas);
  let torchNote: string | null = null;
  if (tv.ok) {
    const script = path.join(BENCH_DIR, 'torch', 'tarflow_twin.py');
    contenders.push({
      id: 'torch',
      label: `torch ${tv.version} 1 thr`,
      run: (round: number) =>
        runChild<WorkerOut>(o.python, [script, ...common, '--reps', String(reps), '--warmup', String(warmup), ...(round === 1 ? ['--out', imagesDir] : [])], 'torch twin', te.env),
    });
  } else {
    torchNote = torchMissingNote(tv.why);
    console.log(`\n!! PyTorch is missing: ${torchNote}\n`);
  }

  const machine = machineInfo();
  console.log(
    `sampling bench: ${repoPath(modelDir)} (${cfg.numBlocks} blocks × ${cfg.layersPerBlock} layers, width ${cfg.width}, ${tokens} tokens, ${cfg.numClasses} classes); batches ${batches.join(',')}; guidance ${o.cfg}${cfg.numClasses ? '' : ` (attn-temp ${attnTemp})`}; ${o.rounds} round(s)${o.quick ? ' (quick)' : ''}; ${machine.cores} cores, load ${machine.loadavg.map((x) => x.toFixed(2)).join(' ')}`,
  );
  const results = new Map<string, WorkerOut[]>(contenders.map((c) => [c.id, []]));
  for (let round = 1; round <= o.rounds; round++) {
    for (const c of contenders) {
      const t0 = performance.now();
      const r = await c.run(round);
      results.get(c.id)!.push(r);
      console.log(`round ${round}/${o.rounds}  ${c.label.padEnd(20)} done in ${fmt((performance.now() - t0) / 1000)} s`);
    }
  }

  let profile: Profile[] | null = null;
  if (o.profile) {
    const pw = workloads.filter((w) => w.batch === 1 || w.batch === 64).map((w) => `${w.batch}:${wkey(w.weight)}`);
    if (pw.length) {
      const t0 = performance.now();
      const r = await runChild<WorkerOut>(
        process.execPath,
        tsxArgs(SELF, ['--profile', '--model', snap, '--noise', noiseFile, '--workloads', pw.join(','), '--attn-temp', String(attnTemp), '--reps', o.quick ? '1' : '3']),
        'profile worker',
        { STARFLOW_THREADS: '1' },
      );
      profile = r.profile ?? null;
      console.log(`profile (1 thread) done in ${fmt((performance.now() - t0) / 1000)} s`);
    }
  }

  // ---- summary: pooled medians, equal-output checks ----
  const jaxIds = contenders.filter((c) => c.id !== 'torch').map((c) => c.id);
  const pooled = (id: string, b: number, w: number, s: Solver) => {
    const rs = (results.get(id) ?? []).map((r) => r.results.find((x) => x.batch === b && x.weight === w && x.solver === s)).filter((x): x is RunResult => !!x);
    if (!rs.length) return null;
    return { medianMs: median(rs.flatMap((r) => r.samplesMs)), firstCallMs: median(rs.map((r) => r.firstCallMs)), calls: rs[0]!.calls, iterations: rs[0]!.iterations };
  };
  const refId = jaxIds[0]!;
  const rows: Row[] = [];
  const torchRows: { batch: number; weight: number; medianMs: number; samplesPerS: number; firstCallMs: number; diffVsSeq: number; ok: boolean }[] = [];
  for (const { batch, weight } of workloads) {
    const seqRef = await readImages(imageFile(imagesDir, refId, 'sequential', batch, weight));
    const torchImg = tv.ok ? await readImages(path.join(imagesDir, `torch-${batch}-${wkey(weight)}.safetensors`)) : null;
    const tp = tv.ok ? pooled('torch', batch, weight, 'sequential') : null;
    if (tp) {
      const d = seqRef && torchImg ? maxAbsDiff(torchImg, seqRef) : NaN;
      torchRows.push({ batch, weight, medianMs: tp.medianMs, samplesPerS: (1000 * batch) / tp.medianMs, firstCallMs: tp.firstCallMs, diffVsSeq: d, ok: d <= TOL });
    }
    for (const solver of o.solvers) {
      const jax: Row['jax'] = {};
      let diffVsSeq = 0;
      let diffVsTorch: number | null = torchImg ? 0 : null;
      for (const id of jaxIds) {
        const p = pooled(id, batch, weight, solver);
        if (!p) continue;
        jax[id] = { ...p, samplesPerS: (1000 * batch) / p.medianMs };
        const img = await readImages(imageFile(imagesDir, id, solver, batch, weight));
        const d = img && seqRef ? maxAbsDiff(img, seqRef) : Infinity;
        diffVsSeq = Math.max(diffVsSeq, d);
        if (torchImg && diffVsTorch !== null) diffVsTorch = Math.max(diffVsTorch, img ? maxAbsDiff(img, torchImg) : Infinity);
      }
      const best = Object.entries(jax).sort((a, b) => a[1].medianMs - b[1].medianMs)[0]?.[0] ?? refId;
      const torchMs = tp?.medianMs ?? null;
      rows.push({
        batch,
        weight,
        solver,
        jax,
        best,
        torchMs,
        ratioToTorch: torchMs ? jax[best]!.medianMs / torchMs : null,
        diffVsSeq,
        diffVsTorch,
        ok: diffVsSeq <= TOL && (diffVsTorch === null || diffVsTorch <= TOL),
      });
    }
  }
  const failures = [...rows.filter((r) => !r.ok), ...torchRows.filter((r) => !r.ok)].length;

  const guideWord = (w: number) => (w === 0 ? 'none' : cfg.numClasses > 0 ? `cfg ${w}` : `cfg ${w}, attn-temp ${attnTemp}`);
  const line = (r: (string | number)[]) => `| ${r.join(' | ')} |`;
  const head = ['batch', 'guidance', 'solver', ...jaxIds.map((id) => `${id} samples/s`), ...jaxIds.map((id) => `${id} first call ms`), 'calls (iterations)', 'torch samples/s', 'best jax-js / torch (time)', 'max|Δ| vs jax-js seq', 'max|Δ| vs torch', 'equal?'];
  const tableRows: string[] = [];
  for (const { batch, weight } of workloads) {
    const tr = torchRows.find((t) => t.batch === batch && t.weight === weight);
    for (const r of rows.filter((x) => x.batch === batch && x.weight === weight)) {
      const any = r.jax[r.best];
      const iters = r.solver === 'sequential' ? `${any?.calls ?? '—'}` : `${any?.calls ?? '—'} (${(any?.iterations ?? []).map((it) => it.join('+')).join(' / ')})`;
      tableRows.push(
        line([
          batch,
          guideWord(weight),
          r.solver,
          ...jaxIds.map((id) => (r.jax[id] ? fmt(r.jax[id]!.samplesPerS, 2) : '—')),
          ...jaxIds.map((id) => (r.jax[id] ? fmt(r.jax[id]!.firstCallMs, 0) : '—')),
          iters,
          tr ? fmt(tr.samplesPerS, 2) : '—',
          r.ratioToTorch !== null ? `${fmt(r.ratioToTorch, 2)}× (${r.best})` : '—',
          r.diffVsSeq.toExponential(1),
          r.diffVsTorch !== null ? r.diffVsTorch.toExponential(1) : '—',
          r.ok ? 'yes' : '**NO**',
        ]),
      );
    }
    if (tr) {
      tableRows.push(
        line([batch, guideWord(weight), 'torch twin (sequential)', ...jaxIds.map(() => ''), ...jaxIds.map(() => ''), `${cfg.numBlocks * (tokens - 1)}`, fmt(tr.samplesPerS, 2), `first call ${fmt(tr.firstCallMs, 0)} ms`, tr.diffVsSeq.toExponential(1), '0', tr.ok ? 'yes' : '**NO**']),
      );
    }
  }
  const table = [line(head), line(head.map((_, i) => (i < 3 ? '---' : '---:'))), ...tableRows].join('\n');

  let profMd = '';
  if (profile?.length) {
    const ph = ['batch', 'guidance', 'solver calls', 'first call ms', 'compile ms (first − warm)', 'warm ms', 'warm ms (traced)', 'kernel ms', 'kernels', 'overhead ms (warm − kernel)', 'kernel ms / call', 'overhead ms / call', 'kernel share of warm'];
    profMd = [
      '## Profile: sequential solver, jax-js 1 thread',
      '',
      line(ph),
      line(ph.map((_, i) => (i < 2 ? '---' : '---:'))),
      ...profile.map((p) =>
        line([p.batch, guideWord(p.weight), p.calls, fmt(p.firstMs, 0), fmt(p.compileMs, 0), fmt(p.warmMs, 0), fmt(p.tracedMs, 0), fmt(p.kernelMs, 0), p.kernels, fmt(p.overheadMs, 0), fmt(p.kernelPerCallMs, 2), fmt(p.overheadPerCallMs, 2), `${fmt((100 * Math.min(p.kernelMs, p.warmMs)) / p.warmMs, 0)}%`]),
      ),
      '',
      '- Kernel time: the sum of the jax-js profiler\'s `performance.measure` entries (`profiler.startTrace()`/`stopTrace()`). With 1 thread every kernel runs synchronously on the main thread, so an entry spans the whole kernel (including its per-dispatch `WebAssembly.Instance`).',
      '- Warm: the fastest of ≥2 untraced warm calls; traced: the faster of 2 traced calls (its excess over warm is the cost of recording ~50 trace entries per solver call). Overhead = warm − kernel time: tracing each step function call (jit cache lookup, argument flattening), dispatch, buffer bookkeeping, the host-side loop and waiting (`blockUntilReady` after each call), noise upload and image read-back.',
      '- Compile ≈ first-call wall − untraced warm wall (tracing, kernel generation and wasm compilation of each new step shape).',
      '',
    ].join('\n');
  }

  const notes = [
    `Model: ${repoPath(modelDir)} (snapshot), ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize}, patch ${cfg.patchSize} (${tokens} tokens), ${cfg.numBlocks} blocks × ${cfg.layersPerBlock} layers, width ${cfg.width}, ${cfg.numClasses} classes.`,
    'samples/s = batch / median wall time of a warm `generate()` call (noise upload, every block, image read-back); the first call (compilation) is reported separately.',
    `Solvers: jacobi = whole sequence, tol 1e-6, init z; gs-jacobi = default plan (modules of ≈8 tokens). "calls" is solver calls per run; iterations per block in sampling order (modules joined by +).`,
    'The torch twin implements the reference\'s sequential KV-cached sampler only; "best jax-js / torch" is a time ratio against it (above 1× jax-js is slower), for every jax-js solver.',
    `Equal output: max |Δ| of the images as written (clamped to [−1, 1], NaN as −1) against the jax-js sequential result (${refId}) and against the torch twin, worst over thread counts; must be ≤ ${TOL}.${failures ? ` **${failures} row(s) FAIL.**` : ' All rows pass.'}`,
    `Machine: ${machine.cores} cores (${machine.cpu ?? '?'}), load average at start ${machine.loadavg.map((x) => x.toFixed(2)).join(' / ')} (a shared machine: only ratios within one run are meaningful; the 2-thread column suffers most from other load).`,
  ];
  if (torchNote) notes.unshift(`**PyTorch not measured:** ${torchNote}`);
  else notes.push(`torch BLAS: ${te.blas ? `OpenBLAS (${te.blas}), 1 thread` : 'the system libblas.so.3'}.`);
  const md = `${table}\n\n${notes.map((n) => `- ${n}`).join('\n')}\n\n${profMd}`;
  console.log(`\n${md}`);
  const report = {
    plan: { batches, weights, attnTemp, solvers: o.solvers, threads: o.threads, reps, warmup, seed: o.seed, tolerance: TOL },
    machine,
    model: { dir: repoPath(modelDir), ...cfg },
    torch: tv.ok ? { version: tv.version, python: o.python, blas: te.blas ? `OpenBLAS (${te.blas})` : 'system libblas.so.3' } : { missing: torchNote },
    rows,
    torchRows,
    profile,
    failures,
    raw: Object.fromEntries(results),
    markdown: md,
  };
  writeReport('sampling', o, report, md);
  if (failures) console.log(`!! ${failures} row(s) differ by more than ${TOL}`);
}

// Child modes when started directly (`tsx bench/sampling.ts --worker|--profile|--prep ...`).
if (process.argv[1] && path.resolve(process.argv[1]) === SELF) {
  const argv = process.argv.slice(2);
  if (argv.includes('--prep')) await prep(argv);
  else if (argv.includes('--profile')) await profileWorker(argv);
  else if (argv.includes('--worker')) await worker(argv);
}
