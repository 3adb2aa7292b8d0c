// The WASM SIMD products (src/engine/wasm-products.ts), on the path without the native addon: in
// every layout the models use, with the epilogues jax-js fuses (bias, scale and residual,
// negation), over every tail of the register tiles, batched, split over jax-js's worker pool, and
// without relaxed SIMD (separate multiply and add), each product against float64. Products the
// route leaves to jax-js (too small, Aᵀ·B over a long k) must not be routed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { functionModule, hasRelaxedSimd, op } from '../../src/engine/wasm-asm.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHILD = path.join(ROOT, 'test/engine/wasm-products.child.ts');
type Result = { layout: string; batch: number; M: number; K: number; N: number; epilogue: string; maxErr: number; routed: number };

type Run = { matmul: string; relaxed: boolean; results: Result[] };

function runChild(env: Record<string, string>): Run {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CHILD], { cwd: ROOT, env: { ...process.env, STARFLOW_NATIVE: '0', ...env }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Run;
}

function check({ matmul, results }: Run) {
  assert.equal(matmul, 'wasm-simd');
  for (const r of results) {
    const what = `${r.layout} ${r.batch}×${r.M}×${r.K}×${r.N} ${r.epilogue}`;
    const expectRouted = r.M * r.N * r.K * r.batch >= 16 ** 3 && !(r.layout === 'TN' && r.K > 512);
    assert.equal(r.routed, expectRouted ? 1 : 0, `${what}: routed ${r.routed}`);
    // float32 sums of K products of values in [-0.5, 0.5): measured |error| up to 1.3e-6 at K = 64
    // (1.6e-7·√K); the bound is 3× that.
    assert.ok(r.maxErr <= 5e-7 * Math.sqrt(r.K), `${what}: |error| ${r.maxErr}`);
  }
}

test('WASM SIMD products equal float64 products in every layout, tail and epilogue (1 thread)', () => {
  check(runChild({ STARFLOW_THREADS: '1' }));
});

test('… split over jax-js worker pool (2 threads)', () => {
  check(runChild({ STARFLOW_THREADS: '2' }));
});

test('… without relaxed SIMD (multiply, then add)', (t) => {
  const run = runChild({ STARFLOW_THREADS: '1', STARFLOW_RELAXED_SIMD: '0' });
  if (run.relaxed) return t.skip('this Node has relaxed SIMD without the flag');
  check(run);
});

test('the product modules import the memory jax-js makes: shared with a worker pool, plain without', () => {
  for (const sharedMemory of [false, true]) {
    const bytes = functionModule({ params: 3, locals: [], body: [...op.v128Zero, 0x1a], exportName: 'kernel', sharedMemory });
    assert.ok(WebAssembly.validate(bytes));
    const memory = new WebAssembly.Memory(sharedMemory ? { initial: 1, maximum: 65536, shared: true } : { initial: 1 });
    const kernel = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports.kernel;
    assert.equal(typeof kernel, 'function');
  }
  assert.equal(typeof hasRelaxedSimd(), 'boolean');
});
