import { installNodeShims } from '/work/main/src/engine/node.ts';
import { installIteratorHelpers } from '/work/main/src/engine/iterator-helpers.ts';
installIteratorHelpers();
installNodeShims(Number(process.env.T ?? 2));
const jax = await import('@jax-js/jax');
const { numpy: np, init, jit } = jax;
console.log(await init('wasm'));
const n = 512;
const a = np.ones([n, n]); const b = np.ones([n, n]);
const mm = jit((x: any, y: any) => np.matmul(x, y));
let c = mm(a.ref, b.ref); await c.blockUntilReady(); c.dispose();
const t0 = performance.now();
for (let i = 0; i < 10; i++) { const c = mm(a.ref, b.ref); await c.blockUntilReady(); c.dispose(); }
const dt = (performance.now() - t0) / 10;
console.log('ms', dt, 'GFLOP/s', 2 * n ** 3 / dt / 1e6);
const d = await mm(a, b).data(); console.log(d[0]);
const x = np.arange(6).astype(np.float32).reshape([2,3]);
console.log(np.einsum('ij,kj->ik', x.ref, x).js());
