// The native kernel evaluator: jax-js kernels lowered to register programs (src/engine/native-kernels.ts)
// and run by the addon (native/kernels.c) must give what float64 arithmetic here gives, for every
// load the lowering accepts (broadcasts, transposes, slices, pads), both ways of reducing (outputs
// as lanes, flat), fused epilogues, integer index arithmetic and the special values of exp and log;
// on one and on two threads. A malformed descriptor or a load outside the memory is an error.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import '../setup.js';
import * as E from '../../src/engine/index.js';
import { ADDON_PATH, type Addon } from '../../src/engine/native.js';

const { np } = E;
const addonBuilt = existsSync(ADDON_PATH);
const native = !E.matmulBackend().startsWith('wasm') && addonBuilt && process.env.STARFLOW_NATIVE_KERNELS !== '0';
const skip = native ? false : 'native kernels are off here (addon not built, STARFLOW_NATIVE=0 or STARFLOW_NATIVE_KERNELS=0)';
const addon = addonBuilt ? (createRequire(import.meta.url)(ADDON_PATH) as Addon) : null;

function values(n: number, seed: number, scale = 1): Float32Array {
  const rng = new E.Rng(seed);
  return Float32Array.from({ length: n }, () => scale * (2 * rng.uniform() - 1));
}

/** Largest |Δ| relative to max(1, |want|): float32 arithmetic against float64. */
function relDiff(got: Float32Array, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length);
  let d = 0;
  for (let i = 0; i < got.length; i++) {
    const w = want[i]!;
    if (Number.isNaN(w) || !Number.isFinite(w)) {
      assert.ok(Object.is(got[i], Math.fround(w)) || (Number.isNaN(w) && Number.isNaN(got[i]!)), `element ${i}: ${got[i]} for ${w}`);
      continue;
    }
    d = Math.max(d, Math.abs(got[i]! - w) / Math.max(1, Math.abs(w)));
  }
  return d;
}

type Case = { name: string; run: () => Promise<Float32Array>; want: () => ArrayLike<number>; tol: number };

const R = 48;
const C = 96;
const x = values(R * C, 1, 4);
const at = (r: number, c: number) => x[r * C + c]!;
const X = () => E.fromF32(x, [R, C]);

const cases: Case[] = [
  {
    name: 'exp and log of a transposed, sliced view',
    run: () => E.toF32(E.jit((a: E.Arr) => np.log(np.exp(a.transpose([1, 0]).slice([10, 90])).add(1)))(X())),
    want: () => Float64Array.from({ length: 80 * R }, (_, i) => Math.log(Math.exp(at(i % R, 10 + Math.floor(i / R))) + 1)),
    tol: 4e-7,
  },
  {
    name: 'softmax over the last axis (max and sum reductions, outputs as lanes)',
    run: () => E.toF32(E.jit((a: E.Arr) => E.jnn.softmax(a, -1))(X())),
    want: () => {
      const out = new Float64Array(R * C);
      for (let r = 0; r < R; r++) {
        let m = -Infinity;
        for (let c = 0; c < C; c++) m = Math.max(m, at(r, c));
        let s = 0;
        for (let c = 0; c < C; c++) s += Math.exp(at(r, c) - m);
        for (let c = 0; c < C; c++) out[r * C + c] = Math.exp(at(r, c) - m) / s;
      }
      return out;
    },
    tol: 1e-6,
  },
  {
    name: 'a reduction over the first axis with a fused epilogue (reciprocal square root)',
    run: () => E.toF32(E.jit((a: E.Arr) => np.reciprocal(np.sqrt(np.exp(a).sum(0).add(1))))(X())),
    want: () => Float64Array.from({ length: C }, (_, c) => {
      let s = 0;
      for (let r = 0; r < R; r++) s += Math.exp(at(r, c));
      return 1 / Math.sqrt(s + 1);
    }),
    tol: 1e-6,
  },
  {
    name: 'a reduction to a few outputs (flat lanes)',
    run: () => E.toF32(E.jit((a: E.Arr) => np.exp(a.mul(0.25)).reshape([4, R * C / 4]).sum(1))(X())),
    want: () => Float64Array.from({ length: 4 }, (_, k) => {
      let s = 0;
      for (let i = (k * R * C) / 4; i < ((k + 1) * R * C) / 4; i++) s += Math.exp(x[i]! * 0.25);
      return s;
    }),
    tol: 2e-6,
  },
  {
    name: 'a padded view (masked loads read zero)',
    run: () => E.toF32(E.jit((a: E.Arr) => np.exp(np.pad(a, [[2, 1], [0, 3]])))(X())),
    want: () => Float64Array.from({ length: (R + 3) * (C + 3) }, (_, i) => {
      const [r, c] = [Math.floor(i / (C + 3)) - 2, i % (C + 3)];
      return r >= 0 && r < R && c < C ? Math.exp(at(r, c)) : 1;
    }),
    tol: 4e-7,
  },
  {
    name: 'reductions over a padded view, along each axis (masked reduced axis, masked outputs)',
    run: async () => {
      const f = E.jit((a: E.Arr) => {
        const p = np.exp(np.pad(a, [[3, 2], [1, 4]]).mul(0.5));
        return np.concatenate([p.ref.sum(0), p.sum(1)]);
      });
      return E.toF32(f(X()));
    },
    want: () => {
      const [PR, PC] = [R + 5, C + 5];
      const v = (r: number, c: number) => (r >= 3 && r < R + 3 && c >= 1 && c < C + 1 ? Math.exp(at(r - 3, c - 1) * 0.5) : 1);
      const cols = Array.from({ length: PC }, (_, c) => Array.from({ length: PR }, (_, r) => v(r, c)).reduce((a, b) => a + b, 0));
      const rows = Array.from({ length: PR }, (_, r) => Array.from({ length: PC }, (_, c) => v(r, c)).reduce((a, b) => a + b, 0));
      return [...cols, ...rows];
    },
    tol: 2e-6,
  },
  {
    name: 'integer index arithmetic (division and remainder of an iota), casts and where',
    run: () =>
      E.toF32(
        E.jit((a: E.Arr) => {
          const i = np.arange(R * C, undefined, undefined, { dtype: np.int32 }).reshape([R, C]);
          const band = i.ref.mod(7).less(3);
          return np.where(band, np.exp(a.ref.mul(0.5)), np.reciprocal(a.add(9))).add(i.div(5).astype(np.float32));
        })(X()),
      ),
    want: () => Float64Array.from({ length: R * C }, (_, i) => (i % 7 < 3 ? Math.exp(x[i]! * 0.5) : 1 / (x[i]! + 9)) + Math.floor(i / 5)),
    tol: 4e-7,
  },
  {
    name: 'a broadcast operand and a max reduction of exp',
    run: () => E.toF32(E.jit((a: E.Arr, b: E.Arr) => np.exp(a.add(b)).max(1))(X(), E.fromF32(values(C, 2), [1, C]))),
    want: () => {
      const b = values(C, 2);
      return Float64Array.from({ length: R }, (_, r) => Math.max(...Array.from({ length: C }, (_, c) => Math.exp(at(r, c) + b[c]!))));
    },
    tol: 4e-7,
  },
];

test('native kernels equal float64 arithmetic for every lowered shape', { skip }, async () => {
  for (const c of cases) {
    const before = E.routedKernels().kernels;
    const d = relDiff(await c.run(), c.want());
    assert.ok(d < c.tol, `${c.name}: relative |Δ| ${d} (tolerance ${c.tol})`);
    assert.ok(E.routedKernels().kernels > before, `${c.name}: no kernel ran natively`);
  }
});

test('by default only kernels that wasm runs scalar, or long expressions, go native', { skip: native && process.env.STARFLOW_NATIVE_KERNELS !== 'all' ? false : skip || 'STARFLOW_NATIVE_KERNELS=all' }, async () => {
  const count = () => E.routedKernels().kernels;
  const big = () => E.fromF32(values(64 * 1024, 4), [64, 1024]);
  let before = count();
  await E.toF32(E.jit((a: E.Arr, b: E.Arr) => a.add(b.mul(2)))(big(), big()));
  assert.equal(count(), before, 'a short expression jax-js vectorises stays on wasm');
  before = count();
  await E.toF32(E.jit((a: E.Arr) => np.exp(a))(big()));
  assert.ok(count() > before, 'exp (scalar on wasm) goes native');
  before = count();
  await E.toF32(E.jit((a: E.Arr) => {
    let y = a.ref;
    for (let k = 0; k < 20; k++) y = y.mul(a.ref).add(k);
    a.dispose();
    return y;
  })(big()));
  assert.ok(count() > before, 'a 40-instruction polynomial goes native');
});

test('exp and log: special values as float32 defines them, ≤ 2 ulp elsewhere', { skip }, async () => {
  const specials = [0, -0, 1, -1, 88.7, 88.73, 89, -87.3, -103, -104, -200, 200, 1e-30, 1e-45, 3.4e38, Infinity, -Infinity, Number.NaN];
  const sweep = Array.from({ length: 4096 }, (_, i) => -100 + (190 * i) / 4095);
  const input = Float32Array.from([...specials, ...sweep]);
  const n = input.length;
  const [e, l] = await Promise.all([
    E.toF32(E.jit((a: E.Arr) => np.exp(a))(E.fromF32(input, [n]))),
    E.toF32(E.jit((a: E.Arr) => np.log(a))(E.fromF32(input, [n]))),
  ]);
  const ulp = (v: number) => Math.max(Math.abs(v) * 2 ** -23, 2 ** -149);
  for (let i = 0; i < n; i++) {
    const v = input[i]!;
    const [we, wl] = [Math.fround(Math.exp(v)), Math.fround(Math.log(v))];
    for (const [got, want, what] of [[e[i]!, we, 'exp'], [l[i]!, wl, 'log']] as const) {
      if (!Number.isFinite(want) || want === 0) assert.ok(Object.is(got, want) || (Number.isNaN(want) && Number.isNaN(got)), `${what}(${v}) = ${got}, want ${want}`);
      else assert.ok(Math.abs(got - want) <= 2 * ulp(want), `${what}(${v}) = ${got}, want ${want} (${Math.abs(got - want) / ulp(want)} ulp)`);
    }
  }
});

test('a kernel split over two threads equals the same kernel on one', { skip }, async () => {
  const big = values(1 << 20, 3, 3);
  const f = E.jit((a: E.Arr) => np.exp(a.ref).mul(a.ref).add(np.log(np.abs(a).add(1))));
  try {
    addon!.configure(1, process.env.STARFLOW_BLAS || 'auto');
    const one = await E.toF32(f(E.fromF32(big, [1024, 1024])));
    addon!.configure(2, process.env.STARFLOW_BLAS || 'auto');
    const two = await E.toF32(f(E.fromF32(big, [1024, 1024])));
    assert.deepEqual(two, one);
  } finally {
    addon!.configure(E.threadBudget(), process.env.STARFLOW_BLAS || 'auto');
  }
});

test('the evaluator refuses malformed descriptors and loads outside the memory', { skip: addonBuilt ? false : 'addon not built' }, () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 16, shared: true });
  const bytes = new Uint8Array(memory.buffer);
  const HEADER = 16;
  const INSTR = 8;
  const VIEW = 5 + 4 * 8;
  /** out[i] = load(view)[i] over `n` floats; the view: 1-D, `offset`, stride 1, at byte `base`. */
  const copy = (n: number, base: number, offset: number, out: number) => {
    const d = new Float64Array(HEADER + INSTR + VIEW);
    d.set([20261203, 1, 0, 1, 0, 0, out, n, 1, 0, n, 1, 0, 0]);
    d.set([4, 0, 0, -1, -1, -1, 0, 0], HEADER);
    d.set([base, 1, offset, 0, 0, n], HEADER + INSTR);
    d[HEADER + INSTR + 5 + 8] = 1; // stride
    return d;
  };
  const f = new Float32Array(memory.buffer);
  f.set([1, 2, 3, 4], 0);
  addon!.kernel!(bytes, copy(4, 0, 0, 64));
  assert.deepEqual(Array.from(f.slice(16, 20)), [1, 2, 3, 4]);
  assert.throws(() => addon!.kernel!(bytes, new Float64Array(3)), /malformed descriptor/);
  assert.throws(() => addon!.kernel!(bytes, copy(4, 0, -1, 64)), /a load reaches outside the memory/);
  assert.throws(() => addon!.kernel!(bytes, copy(4, memory.buffer.byteLength - 8, 0, 64)), /a load reaches outside the memory/);
  assert.throws(() => addon!.kernel!(bytes, copy(4, 0, 0, memory.buffer.byteLength - 8)), /output reaches outside the memory/);
  const badRegister = copy(4, 0, 0, 64);
  badRegister[HEADER + 2] = 7; // destination register past the program's one
  assert.throws(() => addon!.kernel!(bytes, badRegister), /malformed descriptor/);
  const badOp = copy(4, 0, 0, 64);
  badOp[HEADER] = 99;
  assert.throws(() => addon!.kernel!(bytes, badOp), /malformed descriptor/);
});

test('an unknown STARFLOW_NATIVE_KERNELS says so in one line and means auto', { skip: addonBuilt && process.env.STARFLOW_NATIVE !== '0' ? false : 'addon not built or off' }, () => {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const script = `import './src/engine/node-shims.js'; import { startNodeEngine } from './src/engine/node.js';
await startNodeEngine({ device: 'wasm' }); console.log('started');`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, env: { ...process.env, STARFLOW_NATIVE_KERNELS: 'bogus', STARFLOW_THREADS: '1' }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'started');
  assert.equal(r.stderr, "starflow: STARFLOW_NATIVE_KERNELS must be 0, auto or all, got 'bogus'; using auto\n");
});
