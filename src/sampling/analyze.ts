// Which blocks are hard to solve with Jacobi iterations, and which initial guess to use: the
// diagnostics of the GS-Jacobi paper ("Accelerate TarFlow Sampling with GS-Jacobi Iteration"),
// measured on a model and turned into a `--strategy` proposal for the gs-jacobi solver.
//
// For each block, in sampling order, starting from n noise samples (no guidance):
// - CRM, the convergence ranking metric. A block inverts x_t = α_t ⊙ z_t + b_t with
//   α = exp(a), (a, b) = h_<t · [W_s | W_u] + bias, where W_s (the log-scale half of projOut's
//   weight, columns 0..D−1) and W_u (the shift half, columns D..2D−1) are the output projection.
//   A change δh of the hidden state moves x_t by about (α_t ⊙ z_t) ⊙ (δh·W_s) + δh·W_u, so
//     CRM = ‖α ⊙ z‖ · ‖W_s‖₂ + ‖W_u‖₂
//   bounds the gain of one Jacobi sweep at the output layer: large CRM, slow convergence.
//   ‖·‖₂ are spectral norms (power iteration on the host); ‖α ⊙ z‖ is the root-mean-square over
//   tokens 1..T−1 of each token's L2 norm, averaged over samples, with α taken at the exact
//   (sequential) solution. Volume-preserving models (nvp false) have a = 0 and CRM = ‖W_u‖₂.
// - IGM, the initial-guess metric: the RMS residual to the exact x after one Jacobi sweep started
//   from z (IGM_z) and from zeros (IGM_0); the smaller one marks the better initial guess.
// - iterations: Jacobi sweeps over the whole sequence until the relative change is below `tol`
//   (the `jacobi` solver's stopping rule), from each initial guess.
import { jit, fromF32, fromI32, toF32, release, type Arr } from '../engine/index.js';
import { blockStep, blockInOrder, blockSpec, tarflow, tokenShape, type Block, type BlockCache, type FlowConfig, type FlowParams } from '../models/flow.js';
import { NO_GUIDANCE, type AutoregressiveSampler, type Model } from '../models/model.js';
import { drawNoise } from './pipeline.js';
import { invertBlock, SamplingError, type BlockPlan } from './solvers.js';

export type BlockAnalysis = {
  /** Position in sampling order (0 = the first block run = the model's last). */
  order: number;
  /** The model's block index. */
  block: number;
  crm: number;
  /** ‖α ⊙ z‖ (see the header). */
  alphaZ: number;
  /** Spectral norms of projOut's log-scale half W_s and shift half W_u. */
  normScale: number;
  normShift: number;
  /** Mean of a over tokens 1..T−1, features and samples (how much the block expands). */
  meanLogScale: number;
  igmZ: number;
  igmZeros: number;
  iterationsZ: number;
  iterationsZeros: number;
  tough: boolean;
};

export type SamplingAnalysis = {
  n: number;
  tokens: number;
  tol: number;
  blocks: BlockAnalysis[];
  /** A `--strategy` string for the gs-jacobi solver (blocks in sampling order). */
  strategy: string;
  init: 'z' | 'zeros';
  reasons: string[];
};

export type AnalyzeOptions = { n?: number; seed?: number; tol?: number; labels?: number[]; noise?: Float32Array };

/** Largest singular value of a row-major rows×cols matrix, by power iteration on AᵀA. */
export function spectralNorm(data: Float32Array, rows: number, cols: number, iters = 200): number {
  let v = new Float64Array(cols).map((_, j) => 1 + 0.01 * Math.sin(1 + j)); // deterministic, not orthogonal to much
  let sigma = 0;
  const av = new Float64Array(rows);
  for (let it = 0; it < iters; it++) {
    for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += data[i * cols + j]! * v[j]!;
      av[i] = s;
    }
    const w = new Float64Array(cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) w[j]! += data[i * cols + j]! * av[i]!;
    const norm = Math.sqrt(w.reduce((s, x) => s + x * x, 0));
    if (norm === 0) return 0;
    const next = Math.sqrt(norm); // ‖AᵀAv‖ → σ² for a unit v
    v = w.map((x) => x / norm);
    if (Math.abs(next - sigma) <= 1e-7 * next) return next;
    sigma = next;
  }
  return sigma;
}

/** Columns [c0, c1) of a row-major rows×cols matrix. */
function columns(data: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(rows * (c1 - c0));
  for (let i = 0; i < rows; i++) out.set(data.subarray(i * cols + c0, i * cols + c1), i * (c1 - c0));
  return out;
}

function flipTokensHost(x: Float32Array, n: number, t: number, d: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let s = 0; s < n; s++) for (let i = 0; i < t; i++) out.set(x.subarray((s * t + i) * d, (s * t + i + 1) * d), (s * t + (t - 1 - i)) * d);
  return out;
}

function rms(a: Float32Array, b?: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - (b ? b[i]! : 0);
    s += d * d;
  }
  return Math.sqrt(s / a.length);
}

/** log-scale a for every token of a block at inputs x (model order): a[:, t] is the parameter of token t+1. */
function logScaleFunction(cfg: FlowConfig, bi: number) {
  const steps = (tarflow.sampler(cfg) as AutoregressiveSampler).steps(bi);
  return jit((blk: Block, x: Arr, start: Arr, labels: Arr) => {
    const cache = steps.emptyCache(x.shape[0]!, 1) as BlockCache;
    const r = blockStep(blk, x, start, cache, cfg.numClasses > 0 ? labels : (labels.dispose(), undefined), cfg, blockSpec(cfg, bi));
    r.b.dispose();
    for (const p of r.recent) release([p.kT, p.v]);
    release(cache);
    return r.a;
  }) as unknown as ((blk: Block, x: Arr, start: Arr, labels: Arr) => Arr) & { dispose?: () => void };
}

export async function analyzeSampling(model: Model, o: AnalyzeOptions = {}): Promise<SamplingAnalysis> {
  const cfg = model.cfg as FlowConfig;
  if (model.family !== (tarflow as unknown) || cfg.startToken || cfg.layersPerBlock.includes(0)) {
    throw new SamplingError(`analyze-sampling measures TARFlow blocks (no start token, no identity blocks); this is a ${model.family.name} model`);
  }
  const params = model.params as FlowParams;
  const n = o.n ?? 8;
  const tol = o.tol ?? 1e-6;
  const { tokens: t, tokenDim: d } = tokenShape(cfg);
  const labels = cfg.numClasses > 0 ? o.labels ?? Array.from({ length: n }, (_, i) => i % cfg.numClasses) : undefined;
  let z = o.noise ?? drawNoise(model, n, o.seed ?? 0);
  const up = (x: Float32Array) => fromF32(x, [n, t, d]);
  const solve = async (bi: number, zin: Float32Array, plan: BlockPlan) => {
    const r = await invertBlock(model, bi, up(zin), labels, plan, NO_GUIDANCE);
    return { x: await toF32(r.x), iterations: r.stats.iterations[0] ?? r.stats.calls };
  };
  const blocks: BlockAnalysis[] = [];
  for (let k = 0; k < cfg.numBlocks; k++) {
    const bi = cfg.numBlocks - 1 - k;
    const block = params.blocks[bi]!;
    const exact = (await solve(bi, z, { kind: 'sequential' })).x;
    const jac = (init: 'z' | 'zeros', maxIter: number, tolerance: number): BlockPlan => ({ kind: 'jacobi', modules: 1, maxIter, tol: tolerance, init });
    const igmZ = rms((await solve(bi, z, jac('z', 1, 0))).x, exact);
    const igmZeros = rms((await solve(bi, z, jac('zeros', 1, 0))).x, exact);
    const iterationsZ = (await solve(bi, z, jac('z', t - 1, tol))).iterations;
    const iterationsZeros = (await solve(bi, z, jac('zeros', t - 1, tol))).iterations;

    // α ⊙ z at the exact solution, tokens 1..T−1 in the block's processing order.
    const flipped = blockSpec(cfg, bi).flipped;
    const logScale = logScaleFunction(cfg, bi);
    const xm = flipped ? flipTokensHost(exact, n, t, d) : exact;
    const zm = flipped ? flipTokensHost(z, n, t, d) : z;
    const aArr = logScale(blockInOrder(params, cfg, bi), up(xm), fromI32([0], []), fromI32(labels ?? new Array<number>(n).fill(0), [n]));
    const a = await toF32(aArr);
    let alphaZ = 0;
    let sumA = 0;
    for (let s = 0; s < n; s++) {
      let sq = 0;
      for (let i = 1; i < t; i++) {
        for (let f = 0; f < d; f++) {
          const ai = a[(s * t + i - 1) * d + f]!;
          const v = Math.exp(ai) * zm[(s * t + i) * d + f]!;
          sq += v * v;
          sumA += ai;
        }
      }
      alphaZ += Math.sqrt(sq / (t - 1)) / n;
    }
    const w = await toF32(block.projOut.w.ref);
    const width = cfg.width;
    const normScale = cfg.nvp ? spectralNorm(columns(w, width, 2 * d, 0, d), width, d) : 0;
    const normShift = spectralNorm(columns(w, width, 2 * d, d, 2 * d), width, d);
    blocks.push({
      order: k,
      block: bi,
      crm: alphaZ * normScale + normShift,
      alphaZ,
      normScale,
      normShift,
      meanLogScale: sumA / (n * (t - 1) * d),
      igmZ,
      igmZeros,
      iterationsZ,
      iterationsZeros,
      tough: false,
    });
    logScale.dispose?.();
    z = exact;
  }
  return { n, tokens: t, tol, blocks, ...propose(blocks, t) };
}

function medianOf(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * A strategy from the measurements. The initial guess is the one with the smaller total IGM.
 * A block is tough when its Jacobi sweeps (from that guess) exceed both a quarter of the
 * sequence and twice the median block, or when it has the largest CRM, over twice the median
 * CRM. Tough blocks are split into modules of about 8 tokens, each solved to exactness
 * (cap = module length); the others run whole-sequence Jacobi capped at 1.5× the slowest easy
 * block's measured sweeps (+1), at most T − 1.
 */
export function propose(blocks: BlockAnalysis[], tokens: number): { strategy: string; init: 'z' | 'zeros'; reasons: string[] } {
  const reasons: string[] = [];
  const unknown = tokens - 1;
  const igmZ = blocks.reduce((s, b) => s + b.igmZ, 0);
  const igm0 = blocks.reduce((s, b) => s + b.igmZeros, 0);
  const init: 'z' | 'zeros' = igm0 < igmZ ? 'zeros' : 'z';
  reasons.push(`initial guess ${init}: total IGM ${igmZ.toPrecision(3)} from z vs ${igm0.toPrecision(3)} from zeros`);
  const iters = blocks.map((b) => (init === 'z' ? b.iterationsZ : b.iterationsZeros));
  const medIt = medianOf(iters);
  const crms = blocks.map((b) => b.crm);
  const medCrm = medianOf(crms);
  const maxCrm = Math.max(...crms);
  blocks.forEach((b, i) => {
    const slow = iters[i]! > Math.max(unknown / 4, 2 * medIt);
    const ranked = blocks.length > 1 && b.crm === maxCrm && b.crm > 2 * medCrm;
    b.tough = slow || ranked;
    if (b.tough) {
      reasons.push(
        `block ${b.order} (model block ${b.block}) is tough: ${iters[i]} sweeps (median ${medIt})${ranked ? `, CRM ${b.crm.toPrecision(3)} > 2× median ${medCrm.toPrecision(3)}` : ''}`,
      );
    }
  });
  const modules = Math.max(1, Math.min(unknown, Math.ceil(unknown / 8)));
  const moduleLen = Math.ceil(unknown / modules);
  const easy = iters.filter((_, i) => !blocks[i]!.tough);
  const cap = Math.min(unknown, Math.ceil(1.5 * Math.max(1, ...easy)) + 1);
  const parts = blocks.filter((b) => b.tough).map((b) => `${b.order}=${modules}x${moduleLen}`);
  parts.push(easy.length ? `*=1x${cap}` : `*=${modules}x${moduleLen}`);
  if (easy.length) reasons.push(`other blocks: whole-sequence Jacobi, cap ${cap} (slowest easy block: ${Math.max(...easy)} sweeps)`);
  return { strategy: parts.join(','), init, reasons };
}
