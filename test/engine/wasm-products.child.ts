// Child of wasm-products.test.ts: the engine without the addon (STARFLOW_NATIVE=0), products in
// every layout and epilogue, each against float64; prints one JSON line of results.
import { startNodeEngine } from '../../src/engine/node.js';
import * as E from '../../src/engine/index.js';
import { wasmProductsRouted } from '../../src/engine/wasm-products.js';
import { hasRelaxedSimd } from '../../src/engine/wasm-asm.js';

await startNodeEngine({ device: 'wasm' });
const { np } = E;
type Layout = 'NN' | 'NT' | 'TN';
type Epilogue = 'none' | 'bias' | 'scale+residual' | 'negate-bias';
const rng = new E.Rng(5);
const values = (n: number) => Float32Array.from({ length: n }, () => rng.uniform() - 0.5);

async function run(layout: Layout, batch: number, M: number, K: number, N: number, epilogue: Epilogue) {
  const A = values(batch * K * M);
  const B = values(batch * K * N);
  const bias = values(N);
  const res = values(batch * M * N);
  const aAt = (q: number, i: number, k: number) => (layout === 'TN' ? A[(q * K + k) * M + i]! : A[(q * M + i) * K + k]!);
  const bAt = (q: number, k: number, j: number) => (layout === 'NT' ? B[(q * N + j) * K + k]! : B[(q * K + k) * N + j]!);
  const f = E.jit((a: E.Arr, b: E.Arr, c: E.Arr, r: E.Arr) => {
    const p = np.matmul(layout === 'TN' ? a.transpose([0, 2, 1]) : a, layout === 'NT' ? b.transpose([0, 2, 1]) : b);
    if (epilogue === 'bias') return np.add(p, c);
    if (epilogue === 'negate-bias') return np.subtract(c, p);
    if (epilogue === 'scale+residual') return np.add(np.multiply(p, 0.5), r);
    c.dispose();
    r.dispose();
    return p;
  });
  const before = wasmProductsRouted();
  const got = await E.toF32(
    f(E.fromF32(A, layout === 'TN' ? [batch, K, M] : [batch, M, K]), E.fromF32(B, layout === 'NT' ? [batch, N, K] : [batch, K, N]), E.fromF32(bias, [N]), E.fromF32(res, [batch, M, N])),
  );
  let maxErr = 0;
  for (let q = 0; q < batch; q++)
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += aAt(q, i, k) * bAt(q, k, j);
        const want = epilogue === 'bias' ? s + bias[j]! : epilogue === 'negate-bias' ? bias[j]! - s : epilogue === 'scale+residual' ? 0.5 * s + res[(q * M + i) * N + j]! : s;
        maxErr = Math.max(maxErr, Math.abs(got[(q * M + i) * N + j]! - want));
      }
  return { layout, batch, M, K, N, epilogue, maxErr, routed: wasmProductsRouted() - before };
}

const shapes: [number, number, number, number][] = [
  [1, 37, 29, 23], // every tail: rows, 8- and 4-wide columns, scalar columns, k % 4
  [1, 64, 64, 64],
  [3, 13, 20, 52], // batched, rows not a multiple of the tile
  [1, 5, 600, 9], // Aᵀ·B over k > 512: left to jax-js
  [1, 4, 4, 4], // too small: left to jax-js
  [1, 300, 32, 96], // enough work for the worker pool to split
];
const results = [];
for (const [batch, M, K, N] of shapes)
  for (const layout of ['NN', 'NT', 'TN'] as Layout[])
    for (const epilogue of ['none', 'bias', 'scale+residual', 'negate-bias'] as Epilogue[]) results.push(await run(layout, batch, M, K, N, epilogue));
process.stdout.write(JSON.stringify({ matmul: E.matmulBackend(), relaxed: hasRelaxedSimd(), results }) + '\n');
