// The native GEMM alone (native/gemm.c), on the products a notebook-config training step and a
// batch-1024 sampling step make: the addon's own kernel against OpenBLAS (when it loads), one
// thread, on a shared wasm memory as the engine uses it. Results are checked against a float64
// product on a corner of C before timing.
//
//   npm run bench -- gemm [--reps N] [--json PATH]
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { median, fmt, machineInfo, defaultCommonFlags, takeCommonFlag, writeReport, eachFlag } from './common.js';
import { ADDON_PATH, type Addon } from '../src/engine/native.js';

/** name, M, N, K, A transposed, B transposed, batch. */
const SHAPES: [string, number, number, number, 0 | 1, 0 | 1, number][] = [
  ['qkv (3136×128 · 128×384)', 3136, 384, 128, 0, 0, 0],
  ['MLP in (3136×128 · 128×512)', 3136, 512, 128, 0, 0, 0],
  ['MLP out (3136×512 · 512×128)', 3136, 128, 512, 0, 0, 0],
  ['weight gradient (Aᵀ·B, K = 3136)', 128, 512, 3136, 1, 0, 0],
  ['input gradient (A·Bᵀ)', 3136, 128, 512, 0, 1, 0],
  ['attention logits (128 × 49×52 · 52×64ᵀ)', 49, 64, 52, 0, 1, 128],
  ['sampling qkv (2048×128 · 128×384)', 2048, 384, 128, 0, 0, 0],
  ['KV-cache attention (4096 × 1×64 · 64×16)', 1, 16, 64, 0, 0, 4096],
];

export async function main(args: string[]): Promise<void> {
  const c = defaultCommonFlags();
  let reps = 20;
  eachFlag(args, (a, value) => {
    if (takeCommonFlag(a, value, c)) return true;
    if (a !== '--reps') return false;
    reps = Number(value());
    return true;
  }, '--reps N, --json PATH');
  if (!existsSync(ADDON_PATH)) throw new Error('the native addon is not built (npm run build:native)');
  const addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
  const memory = new WebAssembly.Memory({ initial: 4000, maximum: 65536, shared: true });
  const f = new Float32Array(memory.buffer);
  const [A, B, C] = [0, 10_000_000, 20_000_000]; // element offsets
  for (let i = 0; i < C; i++) f[i] = Math.sin(i);
  const rows: { shape: string; gemm: string; ms: number; gflops: number }[] = [];
  for (const blas of ['builtin', 'auto']) {
    const gemm = addon.configure(1, blas);
    if (blas === 'auto' && gemm === 'builtin') break; // no OpenBLAS here: nothing else to time
    for (const [shape, M, N, K, tA, tB, batch] of SHAPES) {
      const desc = new Float64Array([4 * A, 4 * B, 4 * C, M, N, K, tA, tA ? M : K, tB, tB ? K : N, N, batch ? 1 : 0, ...(batch ? [batch, M * K, K * N, M * N] : [])]);
      const u = new Uint8Array(memory.buffer);
      addon.gemm(u, desc);
      let s = 0; // C[0][0] in float64
      for (let k = 0; k < K; k++) s += f[A + (tA ? k * M : k)]! * f[B + (tB ? k : k * N)]!;
      if (Math.abs(s - f[C]!) > 1e-3 * Math.max(1, Math.abs(s))) throw new Error(`${gemm}, ${shape}: C[0][0] = ${f[C]} but the float64 product is ${s}`);
      const times: number[] = [];
      for (let i = 0; i < reps; i++) {
        const t0 = performance.now();
        addon.gemm(u, desc);
        times.push(performance.now() - t0);
      }
      const ms = median(times);
      rows.push({ shape, gemm, ms, gflops: (2 * M * N * K * Math.max(batch, 1)) / ms / 1e6 });
      console.log(`${gemm.padEnd(18)} ${shape.padEnd(44)} ${fmt(ms, 3)} ms  ${fmt(rows.at(-1)!.gflops, 1)} GFLOP/s`);
    }
  }
  const gemms = [...new Set(rows.map((r) => r.gemm))];
  const md = [
    `| product | ${gemms.map((g) => `${g} ms | ${g} GFLOP/s`).join(' | ')} |`,
    `| --- | ${gemms.map(() => '---: | ---:').join(' | ')} |`,
    ...SHAPES.map(([shape]) => `| ${shape} | ${gemms.map((g) => { const r = rows.find((x) => x.shape === shape && x.gemm === g)!; return `${fmt(r.ms, 3)} | ${fmt(r.gflops, 1)}`; }).join(' | ')} |`),
    '',
    `- The native addon alone, one thread, median of ${reps} calls after one checked call; "builtin" is the addon's own kernel (what a machine without OpenBLAS gets).`,
  ].join('\n');
  console.log(`\n${md}`);
  addon.configure(1, 'auto');
  writeReport('gemm', { ...c, rounds: 1 }, { machine: machineInfo(), reps, rows }, md);
}
