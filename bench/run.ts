// Benchmark entry: `npm run bench -- <name> [flags]`; no name runs `all`. Each benchmark lives in its own file under
// bench/ and exports `main(args)`; add a line to BENCHES to register a new one.
type BenchModule = { main(args: string[]): Promise<void> };

const BENCHES: Record<string, { what: string; load: () => Promise<BenchModule> }> = {
  all: {
    what: 'the default: train (step + likelihood) and sampling for the mnist preset and the notebook config vs the PyTorch twins, one table of ratios',
    load: () => import('./all.js'),
  },
  engine: {
    what: 'matmul GFLOP/s and the micro-transformer fwd+bwd+AdamW step, jax-js wasm (1 and 2 threads) vs PyTorch',
    load: () => import('./engine.js'),
  },
  sampling: {
    what: 'samples/s of a model: sequential, jacobi, gs-jacobi (jax-js 1/2 threads) vs a PyTorch twin of the reference sampler, equal-output checks, a profile',
    load: () => import('./sampling.js'),
  },
  ab: {
    what: 'this checkout against an earlier revision (--base REV): training step and sampling throughput, alternating in one run',
    load: () => import('./ab.js'),
  },
  starflow: {
    what: "STARFlow's options when sampling: mnist-starflow-pixel vs mnist-bpd (same width and depth), sequential, guided, per solved token",
    load: () => import('./starflow.js'),
  },
  kernels: { what: "single kernels of a training and a sampling step: all on wasm, the engine's choice of native kernels, every kernel native (one thread)", load: () => import('./kernels.js') },
  'wasm-gemm': { what: "the engine's WASM SIMD products against jax-js's generated matmul kernels, layouts NN/NT/TN and a training step's shapes, 1 and 2 threads, no addon", load: () => import('./wasm-gemm.js') },
  gemm: { what: "the native GEMM alone on a training step's and a sampling step's products: its own kernel vs OpenBLAS, one thread", load: () => import('./gemm.js') },
  'sample-process': {
    what: "whole processes drawing guided samples: `starflow sample` vs apple/ml-tarflow's own sampler (TARFLOW_REFERENCE_DIR), 1 and 2 threads, outputs compared",
    load: () => import('./sample_process.js'),
  },
  families: { what: 'trained checkpoints side by side (e.g. latent STARFlow, pixel STARFlow, pixel TARFlow): Fréchet distance, class accuracy and samples/s over a guidance sweep, with each one\'s training wall-clock', load: () => import('./families.js') },
  train: { what: 'ms per TARFlow training step (fwd+bwd+clip+AdamW+EMA), notebook and mnist configs, the engine (native, wasm SIMD products, jax-js wasm) on 1/2 threads and 2 workers vs PyTorch twins and ml-tarflow, loss agreement', load: () => import('./train.js') },
};

function usage(): string {
  const lines = Object.entries(BENCHES).map(([name, b]) => `  ${name.padEnd(10)} ${b.what}`);
  return `usage: npm run bench [-- <name> [flags]]   (no name: all)\n\nbenchmarks:\n${lines.join('\n')}\n\nsee bench/README.md for the flags of each`;
}

const argv = process.argv.slice(2);
if (argv[0] === '--help' || argv[0] === '-h') {
  console.log(usage());
  process.exit(0);
}
const [name = 'all', ...rest] = !argv[0] || argv[0].startsWith('-') ? ['all', ...argv] : argv;
const bench = BENCHES[name];
if (!bench) {
  console.error(`unknown benchmark '${name}'\n\n${usage()}`);
  process.exit(1);
}
try {
  await (await bench.load()).main(rest);
} catch (err) {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
}
