// The native matmul route: jax-js matrix-product kernels computed by the native GEMM must equal
// the product computed here in float64, for every layout jax-js produces (transposes, batches,
// broadcasts, slices, fused epilogues, gradients); the addon's own kernel and its threaded split
// are checked directly; without the addon everything runs on wasm, with one line saying why.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import * as E from '../../src/engine/index.js';
import { ADDON_PATH, loadNative, nativeNotice, type Addon } from '../../src/engine/native.js';

const { np } = E;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const native = !E.matmulBackend().startsWith('wasm');
const skipNative = native ? false : 'the native addon is not loaded here (STARFLOW_NATIVE=0 or not built)';

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  const rng = new E.Rng(seed);
  return Float32Array.from({ length: n }, () => 2 * rng.uniform() - 1);
}

/** C = A·B in float64 for row-major host arrays with leading batch axes (broadcast by size 1). */
function hostMatmul(a: Float32Array, aShape: number[], b: Float32Array, bShape: number[]): { data: Float64Array; shape: number[] } {
  const [M, K] = aShape.slice(-2) as [number, number];
  const N = bShape[bShape.length - 1]!;
  const batchA = aShape.slice(0, -2);
  const batchB = bShape.slice(0, -2);
  const nb = Math.max(batchA.length, batchB.length);
  const pad = (s: number[]) => [...Array(nb - s.length).fill(1), ...s];
  const [ba, bb] = [pad(batchA), pad(batchB)];
  const batch = ba.map((d, i) => Math.max(d, bb[i]!));
  const count = batch.reduce((p, d) => p * d, 1);
  const out = new Float64Array(count * M * N);
  for (let t = 0; t < count; t++) {
    let rest = t;
    let ia = 0;
    let ib = 0;
    let sa = 1;
    let sb = 1;
    for (let d = nb - 1; d >= 0; d--) {
      const i = rest % batch[d]!;
      rest = Math.floor(rest / batch[d]!);
      ia += (ba[d] === 1 ? 0 : i) * sa;
      ib += (bb[d] === 1 ? 0 : i) * sb;
      sa *= ba[d]!;
      sb *= bb[d]!;
    }
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[ia * M * K + m * K + k]! * b[ib * K * N + k * N + n]!;
        out[t * M * N + m * N + n] = s;
      }
  }
  return { data: out, shape: [...batch, M, N] };
}

function transposeLast2(x: Float32Array, shape: number[]): Float32Array {
  const [R, C] = shape.slice(-2) as [number, number];
  const out = new Float32Array(x.length);
  for (let t = 0; t < x.length / (R * C); t++)
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[t * R * C + c * R + r] = x[t * R * C + r * C + c]!;
  return out;
}

function maxDiff(got: Float32Array, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let d = 0;
  for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i]! - want[i]!));
  return d;
}

// float32 sums of ≤ 64 products of values in [-1, 1): measured differences are ~1e-6.
const TOL = 2e-5;

test('products of every layout equal float64 products, and are routed to the native GEMM', { skip: skipNative }, async () => {
  const [M, K, N] = [33, 40, 29];
  const a = values(M * K, 1);
  const b = values(K * N, 2);
  const want = hostMatmul(a, [M, K], b, [K, N]).data;
  const cases: { name: string; run: () => Promise<Float32Array>; want: ArrayLike<number> }[] = [
    { name: 'A·B', run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y))(E.fromF32(a, [M, K]), E.fromF32(b, [K, N]))), want },
    {
      name: 'Aᵀ stored, transposed in the graph',
      run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x.transpose(), y))(E.fromF32(transposeLast2(a, [M, K]), [K, M]), E.fromF32(b, [K, N]))),
      want,
    },
    {
      name: 'Bᵀ stored, transposed in the graph',
      run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y.transpose()))(E.fromF32(a, [M, K]), E.fromF32(transposeLast2(b, [K, N]), [N, K]))),
      want,
    },
    {
      name: 'columns of a wider weight (an offset view)',
      run: () => {
        const wide = new Float32Array(K * (N + 7));
        for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) wide[k * (N + 7) + 5 + n] = b[k * N + n]!;
        return E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y.slice([], [5, 5 + N])))(E.fromF32(a, [M, K]), E.fromF32(wide, [K, N + 7])));
      },
      want,
    },
    {
      name: 'fused epilogue: (A·B + bias) · 0.5',
      run: () => {
        const bias = values(N, 3);
        return E.toF32(E.jit((x: E.Arr, y: E.Arr, z: E.Arr) => np.matmul(x, y).add(z).mul(0.5))(E.fromF32(a, [M, K]), E.fromF32(b, [K, N]), E.fromF32(bias, [N])));
      },
      want: want.map((v, i) => (v + values(N, 3)[i % N]!) * 0.5),
    },
  ];
  // Batched: [2, 3, M, K] · [2, 3, K, N], a broadcast batch, and batch axes out of memory order.
  const ab = values(6 * M * K, 4);
  const bb = values(6 * K * N, 5);
  const wantBatched = hostMatmul(ab, [2, 3, M, K], bb, [2, 3, K, N]);
  cases.push({ name: 'batched', run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y))(E.fromF32(ab, [2, 3, M, K]), E.fromF32(bb, [2, 3, K, N]))), want: wantBatched.data });
  cases.push({
    name: 'batch broadcast against one matrix',
    run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y))(E.fromF32(ab, [2, 3, M, K]), E.fromF32(b, [K, N]))),
    want: hostMatmul(ab, [2, 3, M, K], b, [K, N]).data,
  });
  cases.push({
    name: 'batch axes swapped (strided batches)',
    run: () =>
      E.toF32(
        E.jit((x: E.Arr, y: E.Arr) => np.matmul(x.transpose([1, 0, 2, 3]), y.transpose([1, 0, 2, 3])).transpose([1, 0, 2, 3]))(
          E.fromF32(ab, [2, 3, M, K]),
          E.fromF32(bb, [2, 3, K, N]),
        ),
      ),
    want: wantBatched.data,
  });
  cases.push({
    name: 'matrix · vector',
    run: () => E.toF32(E.jit((x: E.Arr, y: E.Arr) => np.matmul(x, y))(E.fromF32(values(64 * 200, 6), [64, 200]), E.fromF32(values(200, 7), [200, 1]))),
    want: hostMatmul(values(64 * 200, 6), [64, 200], values(200, 7), [200, 1]).data,
  });
  for (const c of cases) {
    const before = E.routedKernels().products;
    const d = maxDiff(await c.run(), c.want);
    assert.ok(d < TOL, `${c.name}: max |Δ| ${d}`);
    assert.ok(E.routedKernels().products > before, `${c.name}: the product was not routed to the native GEMM`);
  }
});

test('gradients through a product (transposed operands in the backward pass) match float64', { skip: skipNative }, async () => {
  const [M, K, N] = [24, 36, 20];
  const a = values(M * K, 8);
  const b = values(K * N, 9);
  const before = E.routedKernels().products;
  type Pair = { x: E.Arr; y: E.Arr };
  const f = E.jit(E.grad((p: Pair) => np.square(np.matmul(p.x, p.y)).sum()));
  const g = f({ x: E.fromF32(a, [M, K]), y: E.fromF32(b, [K, N]) }) as Pair;
  const [ga, gb] = [g.x, g.y];
  const c = hostMatmul(a, [M, K], b, [K, N]).data;
  const c32 = Float32Array.from(c, (v) => 2 * v);
  // dA = 2C·Bᵀ, dB = Aᵀ·2C
  const wantA = hostMatmul(c32, [M, N], transposeLast2(b, [K, N]), [N, K]).data;
  const wantB = hostMatmul(transposeLast2(a, [M, K]), [K, M], c32, [M, N]).data;
  assert.ok(maxDiff(await E.toF32(ga), wantA) < 1e-4, 'dA');
  assert.ok(maxDiff(await E.toF32(gb), wantB) < 1e-4, 'dB');
  assert.ok(E.routedKernels().products >= before + 2, 'the backward products were routed');
});

test("the addon's builtin kernel and OpenBLAS agree with float64 on every storage order, 1 and 2 threads", { skip: existsSync(ADDON_PATH) ? false : 'addon not built' }, () => {
  const addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
  const memory = new WebAssembly.Memory({ initial: 64, maximum: 1024, shared: true });
  const f = new Float32Array(memory.buffer);
  const blases = ['builtin', 'auto'];
  try {
    // A large product (packed, split over threads) and a small one (added straight into C).
    for (const [M, N, K] of [[301, 203, 97], [3, 16, 64]] as const) {
      const a = values(M * K, 10);
      const b = values(K * N, 11);
      const want = hostMatmul(a, [M, K], b, [K, N]).data;
      const [aAt, bAt, cAt] = [0, M * K, M * K + K * N];
      for (const blas of blases)
        for (const threads of [1, 2])
          for (const [tA, tB] of [[0, 0], [1, 0], [0, 1], [1, 1]] as const) {
            addon.configure(threads, blas);
            f.set(tA ? transposeLast2(a, [M, K]) : a, aAt);
            f.set(tB ? transposeLast2(b, [K, N]) : b, bAt);
            f.fill(Number.NaN, cAt, cAt + M * N);
            addon.gemm(new Uint8Array(memory.buffer), new Float64Array([4 * aAt, 4 * bAt, 4 * cAt, M, N, K, tA, tA ? M : K, tB, tB ? K : N, N, 0]));
            const d = maxDiff(f.slice(cAt, cAt + M * N), want);
            assert.ok(d < 5e-5, `${M}×${N}×${K}, ${blas}, ${threads} threads, transA ${tA} transB ${tB}: max |Δ| ${d}`);
          }
    }
    assert.throws(() => addon.gemm(new Uint8Array(memory.buffer), new Float64Array([0, 0, 0])), /malformed descriptor/);
    // A product reaching past the end of the memory is refused, not computed.
    const end = memory.buffer.byteLength;
    assert.throws(() => addon.gemm(new Uint8Array(memory.buffer), new Float64Array([0, 0, end - 64, 4, 32, 8, 0, 8, 0, 32, 32, 0])), /outside the memory/);
    assert.throws(() => addon.gemm(new Uint8Array(memory.buffer), new Float64Array([0, 0, 0, 4, 4, 4, 0, 4, 0, 4, 4, 1, 1e6, 16, 16, 16])), /outside the memory/);
  } finally {
    addon.configure(E.threadBudget(), process.env.STARFLOW_BLAS || 'auto');
  }
});

/** `fn` with STARFLOW_NATIVE unset (the suite may run with it set to 0). */
function withNativeUnset<T>(fn: () => T): T {
  const saved = process.env.STARFLOW_NATIVE;
  delete process.env.STARFLOW_NATIVE;
  try {
    return fn();
  } finally {
    if (saved !== undefined) process.env.STARFLOW_NATIVE = saved;
  }
}

test('without the addon: one line at a terminal says why, and STARFLOW_NATIVE=0 runs on wasm silently', () => {
  const missing = withNativeUnset(() => loadNative(1, path.join(os.tmpdir(), 'no-such-dir', 'starflow_native.node')));
  assert.equal(missing.native, null);
  assert.equal(nativeNotice(missing.reason, false), null, 'no notice when stderr is not a terminal');
  assert.match(nativeNotice(missing.reason, true) ?? '', /^starflow: the native addon is not built \(it needs a C compiler: `npm run build:native` .*\); kernels run on wasm\n$/);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'starflow-native-'));
  const corrupt = path.join(dir, 'starflow_native.node');
  writeFileSync(corrupt, 'not a shared object');
  const bad = withNativeUnset(() => loadNative(1, corrupt));
  assert.equal(bad.native, null);
  assert.match(nativeNotice(bad.reason, true) ?? '', /^starflow: the native addon failed to load \(.+\); kernels run on wasm\n$/);

  const script = `import './src/engine/node-shims.js'; import { startNodeEngine } from './src/engine/node.js'; import * as E from './src/engine/index.js';
await startNodeEngine({ device: 'wasm' });
const y = await E.toF32(E.np.matmul(E.fromF32(new Float32Array(64 * 64).fill(1), [64, 64]), E.fromF32(new Float32Array(64 * 64).fill(2), [64, 64])));
console.log(E.matmulBackend(), E.routedKernels().products, E.routedKernels().kernels, y[0]);`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, env: { ...process.env, STARFLOW_NATIVE: '0', STARFLOW_THREADS: '2' }, encoding: 'utf8' }); // 2: worker threads under --input-type=module
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'wasm-simd 0 0 128');
  assert.equal(r.stderr, '');
});

test('the build script never fails an install: without a compiler it says so in one line', () => {
  const { STARFLOW_NATIVE: _, ...env } = process.env;
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts/build-native.mjs')], { env: { ...env, CC: 'no-such-compiler-here' }, encoding: 'utf8' });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^starflow native: not built, no-such-compiler-here could not run \(ENOENT\); every kernel will run on wasm\n$/);
});
