// Does a hand-written WASM SIMD matmul beat jax-js's generated one? The engine-speed issue asks for
// a micro-kernel for the browser and the wasm fallback "when it beats jax-js's generated one"; this
// measures the question before any routing is built: one thread, no native addon.
//
//   npm run bench -- wasm-gemm [--reps N] [--json PATH]
//
// The kernel: C[M, N] = A[M, K]·B[K, N], row-major, M a multiple of 4 and N of 8; a 4×8 register
// tile (8 accumulators of 4 lanes), A's elements broadcast, B's rows loaded 8 wide, the fused
// multiply-add of relaxed SIMD (f32x4.relaxed_madd). jax-js's side: a jitted np.matmul on its wasm
// backend (STARFLOW_NATIVE=0, one thread). Both are checked against a float64 product first.
import { defaultCommonFlags, eachFlag, fmt, machineInfo, median, takeCommonFlag, writeReport } from './common.js';

const SIZES = [256, 512, 1024] as const;
type Arr = import('../src/engine/index.js').Arr;

/** unsigned / signed LEB128 */
const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
};
const sleb = (n: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) return [...out, b];
    out.push(b | 0x80);
  }
};
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const name = (s: string) => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];

/** The module: imports env.memory, exports gemm(a, b, c, M, N, K) (byte offsets, sizes). */
export function gemmModule(): Uint8Array<ArrayBuffer> {
  const I32 = 0x7f;
  const V128 = 0x7b;
  // locals after the 6 parameters
  const [a, b, c, M, N, K] = [0, 1, 2, 3, 4, 5];
  const [i, j, k, pA, pB, rowBytes, nBytes] = [6, 7, 8, 9, 10, 11, 12];
  const acc = (r: number, h: number) => 13 + 2 * r + h; // 8 v128 accumulators
  const [b0, b1, av] = [21, 22, 23];
  const get = (l: number) => [0x20, ...uleb(l)];
  const set = (l: number) => [0x21, ...uleb(l)];
  const i32 = (v: number) => [0x41, ...sleb(v)];
  const add = [0x6a];
  const mul = [0x6c];
  const simd = (op: number) => [0xfd, ...uleb(op)];
  const memarg = (align: number, offset: number) => [align, ...uleb(offset)];
  const body: number[] = [
    // rowBytes = K·4, nBytes = N·4, i = 0
    ...get(K), ...i32(4), ...mul, ...set(rowBytes),
    ...get(N), ...i32(4), ...mul, ...set(nBytes),
    ...i32(0), ...set(i),
    0x03, 0x40, // loop over row tiles
    ...i32(0), ...set(j),
    0x03, 0x40, // loop over column tiles
    // accumulators to zero
    ...Array.from({ length: 8 }, (_, t) => [...simd(12), ...new Array(16).fill(0), ...set(13 + t)]).flat(),
    // pA = a + i·rowBytes, pB = b + j·4, k = K
    ...get(a), ...get(i), ...get(rowBytes), ...mul, ...add, ...set(pA),
    ...get(b), ...get(j), ...i32(4), ...mul, ...add, ...set(pB),
    ...get(K), ...set(k),
    0x03, 0x40, // loop over k
    ...get(pB), ...simd(0), ...memarg(4, 0), ...set(b0),
    ...get(pB), ...simd(0), ...memarg(4, 16), ...set(b1),
    ...[0, 1, 2, 3].flatMap((r) => [
      // av = splat(A[i + r, k])
      ...get(pA), ...(r ? [...get(rowBytes), ...i32(r), ...mul, ...add] : []), 0x2a, ...memarg(2, 0), ...simd(19), ...set(av),
      ...get(av), ...get(b0), ...get(acc(r, 0)), ...simd(261), ...set(acc(r, 0)),
      ...get(av), ...get(b1), ...get(acc(r, 1)), ...simd(261), ...set(acc(r, 1)),
    ]),
    ...get(pA), ...i32(4), ...add, ...set(pA),
    ...get(pB), ...get(nBytes), ...add, ...set(pB),
    ...get(k), ...i32(-1), ...add, 0x22, ...uleb(k), // local.tee k
    0x0d, 0x00, // br_if (k != 0) to the k loop
    0x0b,
    // C[i + r, j .. j + 8] = accumulators
    ...[0, 1, 2, 3].flatMap((r) => [0, 1].flatMap((h) => [
      ...get(c), ...get(i), ...i32(r), ...add, ...get(nBytes), ...mul, ...add, ...get(j), ...i32(4), ...mul, ...add,
      ...get(acc(r, h)), ...simd(11), ...memarg(4, 16 * h),
    ])),
    ...get(j), ...i32(8), ...add, 0x22, ...uleb(j), ...get(N), 0x49, 0x0d, 0x00, // j += 8; continue while j < N
    0x0b,
    ...get(i), ...i32(4), ...add, 0x22, ...uleb(i), ...get(M), 0x49, 0x0d, 0x00, // i += 4; continue while i < M
    0x0b,
    0x0b, // end of function
  ];
  const locals = vec([[...uleb(7), I32], [...uleb(11), V128]]);
  const code = [...locals, ...body];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec([[0x60, ...vec(new Array(6).fill([I32])), 0x00]])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, 0x00, 0x01]])),
    ...section(3, vec([[0x00]])),
    ...section(7, vec([[...name('gemm'), 0x00, 0x00]])),
    ...section(10, vec([[...uleb(code.length), ...code]])),
  ]);
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
    '--reps N, --json PATH',
  );
  process.env.STARFLOW_NATIVE = '0';
  const { startWorkerEngine } = await import('./common.js');
  await startWorkerEngine(1);
  const E = await import('../src/engine/index.js');
  if (!WebAssembly.validate(gemmModule())) throw new Error('the hand-written module does not validate (no relaxed SIMD in this runtime?)');
  const memory = new WebAssembly.Memory({ initial: 200 }); // three 1024² float32 matrices
  const gemm = new WebAssembly.Instance(new WebAssembly.Module(gemmModule()), { env: { memory } }).exports.gemm as (...x: number[]) => void;
  const rows: string[] = [];
  const results: Record<string, { handGflops: number; jaxGflops: number }> = {};
  const rng = new E.Rng(7);
  for (const n of SIZES) {
    const A = Float32Array.from({ length: n * n }, () => rng.uniform() - 0.5);
    const B = Float32Array.from({ length: n * n }, () => rng.uniform() - 0.5);
    const f = new Float32Array(memory.buffer);
    f.set(A, 0);
    f.set(B, n * n);
    const [aAt, bAt, cAt] = [0, 4 * n * n, 8 * n * n];
    gemm(aAt, bAt, cAt, n, n, n);
    const jaxMatmul = E.jit((x: Arr, y: Arr) => E.np.matmul(x, y));
    const [x, y] = [E.fromF32(A, [n, n]), E.fromF32(B, [n, n])];
    const jaxC = await E.toF32(jaxMatmul(x.ref, y.ref));
    // Both against a float64 product on a few rows.
    for (const r of [0, n >> 1, n - 1])
      for (let col = 0; col < n; col += 97) {
        let s = 0;
        for (let q = 0; q < n; q++) s += A[r * n + q]! * B[q * n + col]!;
        for (const [who, got] of [['hand-written', f[2 * n * n + r * n + col]!], ['jax-js', jaxC[r * n + col]!]] as const)
          if (Math.abs(got - s) > 1e-3 * Math.sqrt(n)) throw new Error(`${who} kernel wrong at (${r}, ${col}): ${got} against ${s}`);
      }
    const time = (run: () => void | Promise<unknown>) => async () => {
      const ts: number[] = [];
      for (let t = 0; t < reps; t++) {
        const t0 = performance.now();
        await run();
        ts.push(performance.now() - t0);
      }
      return median(ts);
    };
    const hand = await time(() => gemm(aAt, bAt, cAt, n, n, n))();
    const jax = await time(() => jaxMatmul(x.ref, y.ref).blockUntilReady())();
    const flop = 2 * n ** 3;
    results[n] = { handGflops: flop / hand / 1e6, jaxGflops: flop / jax / 1e6 };
    rows.push(`| ${n}³ | ${fmt(results[n]!.handGflops)} | ${fmt(results[n]!.jaxGflops)} | ${fmt(results[n]!.handGflops / results[n]!.jaxGflops, 2)}× |`);
    x.dispose();
    y.dispose();
  }
  const machine = machineInfo();
  const md = [
    `| product | hand-written WASM SIMD GFLOP/s | jax-js wasm GFLOP/s | ratio |`,
    `| --- | ---: | ---: | ---: |`,
    ...rows,
    '',
    `- One thread, no native addon (STARFLOW_NATIVE=0). Medians of ${reps} calls after one warm-up call; jax-js's figure includes its dispatch (blockUntilReady).`,
    `- Hand-written: a 4×8 register tile with f32x4.relaxed_madd, no packing, M % 4 = 0 and N % 8 = 0 only (bench/wasm-gemm.ts).`,
    `- Machine load before: ${machine.loadavg.map((l) => l.toFixed(2)).join(' ')}.`,
  ].join('\n');
  console.log(md);
  writeReport('wasm-gemm', c, { machine, reps, results }, md);
}
