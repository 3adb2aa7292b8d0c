// The WASM SIMD products (src/engine/wasm-products.ts) against jax-js's generated matmul kernels:
// the path of the browser and of an install without a compiler. Each side runs in its own child
// (the route is chosen when the engine starts): STARFLOW_NATIVE=0 with and without
// STARFLOW_WASM_PRODUCTS=0, on 1 thread and on 2 (jax-js's worker pool splits both).
//
//   npm run bench -- wasm-gemm [--reps N] [--rounds N] [--json PATH]
//
// Cases: square products in the three layouts the models use (x·W, x·Wᵀ, Aᵀ·B) and the shapes of
// the mnist-bpd training step (64 images × 49 tokens = 3,136 rows; width 64, MLP 256; the last
// one batched attention). Every child checks its products against float64 before timing.
import { defaultCommonFlags, eachFlag, fmt, machineInfo, median, runChild, takeCommonFlag, tsxArgs, writeReport } from './common.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
type Layout = 'NN' | 'NT' | 'TN';
type Case = { name: string; layout: Layout; batch: number; M: number; K: number; N: number };
const CASES: Case[] = [
  ...([256, 512, 1024] as const).flatMap((n) => (['NN', 'NT', 'TN'] as const).map((layout) => ({ name: `${n}³ ${layout}`, layout, batch: 1, M: n, K: n, N: n }))),
  { name: 'x·Wᵀ 3136×64 → 192', layout: 'NT', batch: 1, M: 3136, K: 64, N: 192 },
  { name: 'dy·W 3136×256 → 64', layout: 'NN', batch: 1, M: 3136, K: 256, N: 64 },
  { name: 'xᵀ·dy 64×3136 → 256', layout: 'TN', batch: 1, M: 64, K: 3136, N: 256 },
  { name: 'q·kᵀ 128 × 49×32 → 49', layout: 'NT', batch: 128, M: 49, K: 32, N: 49 },
];
type CaseResult = { ms: number; maxErr: number; routed: number };
type Arr = import('../src/engine/index.js').Arr;

/** Child: times every case on the engine as STARFLOW_WASM_PRODUCTS set it up. */
async function child(threads: number, reps: number): Promise<void> {
  process.env.STARFLOW_NATIVE = '0';
  const { startWorkerEngine } = await import('./common.js');
  await startWorkerEngine(threads);
  const E = await import('../src/engine/index.js');
  const { wasmProductsRouted } = await import('../src/engine/wasm-products.js');
  const rng = new E.Rng(7);
  const out: Record<string, CaseResult> = {};
  for (const c of CASES) {
    const { batch, M, K, N } = c;
    const aShape = c.layout === 'TN' ? [batch, K, M] : [batch, M, K];
    const bShape = c.layout === 'NT' ? [batch, N, K] : [batch, K, N];
    const A = Float32Array.from({ length: batch * M * K }, () => rng.uniform() - 0.5);
    const B = Float32Array.from({ length: batch * K * N }, () => rng.uniform() - 0.5);
    const f = E.jit((a: Arr, b: Arr) =>
      E.np.matmul(c.layout === 'TN' ? a.transpose([0, 2, 1]) : a, c.layout === 'NT' ? b.transpose([0, 2, 1]) : b),
    );
    const [a, b] = [E.fromF32(A, aShape), E.fromF32(B, bShape)];
    const before = wasmProductsRouted();
    const C = await E.toF32(f(a.ref, b.ref));
    const routed = wasmProductsRouted() - before;
    // A few entries against float64.
    let maxErr = 0;
    for (const [q, i, j] of [[0, 0, 0], [batch - 1, M - 1, N - 1], [batch >> 1, M >> 1, N >> 2]] as const) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const av = c.layout === 'TN' ? A[(q * K + k) * M + i]! : A[(q * M + i) * K + k]!;
        const bv = c.layout === 'NT' ? B[(q * N + j) * K + k]! : B[(q * K + k) * N + j]!;
        s += av * bv;
      }
      maxErr = Math.max(maxErr, Math.abs(C[(q * M + i) * N + j]! - s));
    }
    if (!(maxErr < 1e-4 * Math.sqrt(K))) throw new Error(`${c.name}: product wrong by ${maxErr}`);
    const ts: number[] = [];
    for (let t = 0; t < reps; t++) {
      const t0 = performance.now();
      await f(a.ref, b.ref).blockUntilReady();
      ts.push(performance.now() - t0);
    }
    out[c.name] = { ms: median(ts), maxErr, routed };
    a.dispose();
    b.dispose();
  }
  process.stdout.write(JSON.stringify({ matmul: E.matmulBackend(), cases: out }) + '\n');
}

export async function main(args: string[]): Promise<void> {
  const c = defaultCommonFlags();
  let reps = 20;
  eachFlag(
    args,
    (flag, value) => {
      if (takeCommonFlag(flag, value, c)) return true;
      if (flag === '--reps') reps = Number(value());
      else return false;
      return true;
    },
    '--reps N, --rounds N, --json PATH',
  );
  if (!Number.isInteger(reps) || reps < 1) throw new Error('--reps must be a positive integer');
  const rounds = c.rounds ?? 2;
  type Side = 'simd' | 'jax';
  const runs: Record<string, Record<string, CaseResult>[]> = {};
  const matmul: Record<string, string> = {};
  for (let round = 0; round < rounds; round++) {
    for (const threads of [1, 2]) {
      for (const side of ['simd', 'jax'] as Side[]) {
        const key = `${side}-${threads}`;
        const r = await runChild<{ matmul: string; cases: Record<string, CaseResult> }>(
          process.execPath,
          tsxArgs(SELF, ['--child', String(threads), String(reps)]),
          `${side} child, ${threads} thread(s)`,
          { STARFLOW_NATIVE: '0', STARFLOW_THREADS: String(threads), ...(side === 'jax' ? { STARFLOW_WASM_PRODUCTS: '0' } : {}) },
        );
        (runs[key] ??= []).push(r.cases);
        matmul[key] = r.matmul;
      }
    }
  }
  const gflops = (cs: Case, key: string) => (2 * cs.batch * cs.M * cs.N * cs.K) / median(runs[key]!.map((r) => r[cs.name]!.ms)) / 1e6;
  const results = Object.fromEntries(
    CASES.map((cs) => [cs.name, Object.fromEntries(Object.keys(runs).map((key) => [key, { gflops: gflops(cs, key), maxErr: Math.max(...runs[key]!.map((r) => r[cs.name]!.maxErr)) }]))]),
  );
  const rows = CASES.map((cs) => {
    const g = (key: string) => gflops(cs, key);
    const routed = runs['simd-1']![0]![cs.name]!.routed > 0 ? 'yes' : 'no (jax-js on both sides)';
    return `| ${cs.name} | ${routed} | ${fmt(g('simd-1'))} | ${fmt(g('jax-1'))} | ${fmt(g('simd-1') / g('jax-1'), 2)}× | ${fmt(g('simd-2'))} | ${fmt(g('jax-2'))} | ${fmt(g('simd-2') / g('jax-2'), 2)}× |`;
  });
  const machine = machineInfo();
  const md = [
    `| product | routed | SIMD products GFLOP/s, 1 thread | jax-js's, 1 thread | ratio | SIMD products, 2 threads | jax-js's, 2 threads | ratio |`,
    `| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |`,
    ...rows,
    '',
    `- No native addon (STARFLOW_NATIVE=0); "jax-js's": STARFLOW_WASM_PRODUCTS=0. Each side in its own child process; 2 threads: jax-js's worker pool. Medians of ${reps} jitted calls (dispatch included: blockUntilReady) per child, pooled over ${rounds} interleaved round(s).`,
    `- Products ran on: ${Object.entries(matmul).map(([k, v]) => `${k} ${v}`).join(', ')}. Every product checked against float64 first.`,
    `- Machine: ${machine.cores} cores (${machine.cpu ?? '?'}), load before: ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}.`,
  ].join('\n');
  console.log(md);
  writeReport('wasm-gemm', c, { machine, reps, results }, md);
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF && process.argv.includes('--child')) {
  const i = process.argv.indexOf('--child');
  await child(Number(process.argv[i + 1]), Number(process.argv[i + 2]));
}
