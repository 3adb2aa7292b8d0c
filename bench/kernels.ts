// Single kernels of a training step and a sampling step, three ways in one run: every kernel on
// jax-js's wasm (STARFLOW_NATIVE_KERNELS=0), the engine's default choice of native kernels (auto),
// and every kernel the native evaluator can run (all). The choice in src/engine/native-kernels.ts
// (which kernels go native) is made from these figures.
//
//   npm run bench -- kernels [--rounds R] [--threads T] [--json PATH]
//
// Each mode runs in its own process (the choice is made when the engine starts), in interleaved
// rounds. Per case: wall ms per call of the jitted op (read-back included) and the kernels' own ms
// per call (jax-js's profiler: the time of each kernel dispatch). Outputs are compared across the
// modes before anything is reported.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defaultCommonFlags, eachFlag, fmt, machineInfo, median, runChild, takeCommonFlag, tsxArgs, writeReport } from './common.js';

const SELF = fileURLToPath(import.meta.url);
const MODES = ['wasm', 'auto', 'all'] as const;
type Mode = (typeof MODES)[number];
type CaseResult = { wallMs: number; kernelMs: number; checksum: number };
type Arr = import('../src/engine/index.js').Arr;

/** Child: times every case on the engine as this process's STARFLOW_NATIVE_KERNELS set it up. */
async function child(threads: number, reps: number): Promise<void> {
  const { startWorkerEngine } = await import('./common.js');
  await startWorkerEngine(threads);
  const E = await import('../src/engine/index.js');
  const { gelu, layerNorm } = await import('../src/nn/layers.js');
  const { np } = E;
  const rng = new E.Rng(1);
  const n = (shape: number[]) => E.normalArray(rng, shape);
  const cases: [string, () => Arr[], (...a: Arr[]) => Arr][] = [
    ['GELU [2048, 512] (sampling MLP)', () => [n([2048, 512])], (x) => gelu(x)],
    ['KV-cache write [2048, 2, 16, 64] (where)', () => [n([2048, 2, 16, 64]), n([2048, 2, 1, 64])], (c, k) => np.where(np.arange(16).reshape([1, 1, 16, 1]).equal(5), k, c)],
    ['layer norm [2048, 128]', () => [n([2048, 128]), n([128]), n([128])], (x, g, b) => layerNorm({ g, b }, x)],
    ['layer norm gradient [64, 49, 128]', () => [n([64, 49, 128]), n([128]), n([128])], (x, g, b) => E.grad((v: Arr) => layerNorm({ g: g.ref, b: b.ref }, v.ref).mul(v).sum())(x)],
    ['softmax [4096, 16]', () => [n([4096, 16])], (x) => E.jnn.softmax(x, -1)],
    ['exp(x/2)·x [1024, 1024]', () => [n([1024, 1024])], (x) => np.exp(x.ref.mul(0.5)).mul(x)],
    ['row sums [2048, 128]', () => [n([2048, 128])], (x) => x.sum(1)],
    ['total sum [1024, 1024]', () => [n([1024, 1024])], (x) => x.sum()],
    ['x + yᵀ [512, 512]', () => [n([512, 512]), n([512, 512])], (x, y) => x.add(y.transpose([1, 0]))],
  ];
  const jax = (await import('@jax-js/jax')) as unknown as { profiler: { startTrace(): void; stopTrace(): void } };
  const out: Record<string, CaseResult> = {};
  for (const [name, make, fn] of cases) {
    const f = E.jit(fn);
    const args = make();
    const run = () => E.toF32(f(...args.map((a) => a.ref)));
    let y = await run();
    performance.clearMeasures();
    jax.profiler.startTrace();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) y = await run();
    const wallMs = (performance.now() - t0) / reps;
    jax.profiler.stopTrace();
    const kernelMs = performance.getEntriesByType('measure').reduce((s, e) => s + e.duration, 0) / reps;
    performance.clearMeasures();
    let checksum = 0;
    for (let i = 0; i < y.length; i++) checksum += y[i]! * ((i % 7) + 1);
    out[name] = { wallMs, kernelMs, checksum };
    E.release(args);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

export async function main(args: string[]): Promise<void> {
  const c = defaultCommonFlags();
  let threads = 1;
  eachFlag(
    args,
    (a, value) => {
      if (takeCommonFlag(a, value, c)) return true;
      if (a === '--threads') threads = Number(value());
      else return false;
      return true;
    },
    '--rounds R, --threads T, --json PATH, --quick',
  );
  if (!Number.isInteger(threads) || threads < 1) throw new Error('--threads must be a positive integer');
  const rounds = c.rounds ?? (c.quick ? 1 : 3);
  const reps = c.quick ? 5 : 40;
  const env: Record<Mode, string> = { wasm: '0', auto: 'auto', all: 'all' };
  const machine = machineInfo();
  console.log(`kernels bench: ${rounds} round(s) × ${reps} calls, ${threads} thread(s), load ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}`);
  const runs: Record<Mode, Record<string, CaseResult>[]> = { wasm: [], auto: [], all: [] };
  for (let round = 1; round <= rounds; round++) {
    for (const mode of MODES) {
      runs[mode].push(await runChild<Record<string, CaseResult>>(process.execPath, tsxArgs(SELF, ['--child', String(threads), String(reps)]), `${mode} child`, { STARFLOW_NATIVE_KERNELS: env[mode] }));
      console.log(`round ${round}/${rounds} ${mode} done`);
    }
  }
  const names = Object.keys(runs.wasm[0]!);
  // The same inputs in every mode: the outputs agree to float32 rounding (exp and log within 2 ulp).
  for (const name of names) {
    const base = runs.wasm[0]![name]!.checksum;
    for (const mode of MODES) {
      const x = runs[mode][0]![name]!.checksum;
      if (!(Math.abs(x - base) <= 1e-4 * Math.max(1, Math.abs(base)))) throw new Error(`${name}: ${mode} output differs from wasm (checksum ${x} against ${base})`);
    }
  }
  const med = (mode: Mode, name: string, key: 'wallMs' | 'kernelMs') => median(runs[mode].map((r) => r[name]![key]));
  const rows = names.map((name) => `| ${name} | ${MODES.map((m) => fmt(med(m, name, 'kernelMs'), 3)).join(' | ')} | ${MODES.map((m) => fmt(med(m, name, 'wallMs'), 2)).join(' | ')} | ${fmt(med('auto', name, 'kernelMs') / med('wasm', name, 'kernelMs'), 2)}× |`);
  const md = [
    `| kernel | wasm kernel ms | auto kernel ms | all kernel ms | wasm wall ms | auto wall ms | all wall ms | auto / wasm (kernels) |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
    ...rows,
    '',
    `- Modes: \`wasm\` STARFLOW_NATIVE_KERNELS=0 (matrix products still native), \`auto\` the engine's default choice, \`all\` every kernel the native evaluator can run. ${threads} thread(s); ${reps} calls per case per round, medians over ${rounds} interleaved rounds.`,
    `- Kernel ms: the summed time of the case's kernel dispatches per call (jax-js's profiler); wall ms: the jitted call and its read-back.`,
    `- Outputs agree across the modes (checksums within 1e-4 relative).`,
    `- Machine load before: ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}.`,
  ].join('\n');
  console.log(`\n${md}`);
  writeReport('kernels', { ...c, rounds }, { machine, threads, reps, medians: Object.fromEntries(MODES.map((m) => [m, Object.fromEntries(names.map((nm) => [nm, { kernelMs: med(m, nm, 'kernelMs'), wallMs: med(m, nm, 'wallMs') }]))])), runs }, md);
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF && process.argv.includes('--child')) {
  const i = process.argv.indexOf('--child');
  await child(Number(process.argv[i + 1]), Number(process.argv[i + 2]));
}
