// Solver choice per block, from the CLI's words to BlockPlans.
// Strategy strings name blocks in sampling order (0 = the first block run), as the GS-Jacobi
// paper does: "0=8x32,*=1x10" splits the first block into 8 modules of ≤32 Jacobi iterations and
// solves the others as one module of ≤10 iterations; "seq" is the sequential solver.
// block-jacobi is ml-starflow's block-wise Jacobi: chunks of a fixed size (16), each iterated until
// the batch's relative change Σ(new − old)²/Σ new² is below a threshold (1e-5 by default here,
// 1e-3 in ml-starflow) or 32 iterations.
import type { Model, OdeSolverName } from '../models/model.js';
import { odePlanFor } from './ode.js';
import { SamplingError, type BlockPlan } from './solvers.js';

export type SolverName = 'sequential' | 'jacobi' | 'gs-jacobi' | 'block-jacobi';
export const SOLVERS: readonly SolverName[] = ['sequential', 'jacobi', 'gs-jacobi', 'block-jacobi'];

/** `blockSize`: block-jacobi's chunk length. */
export type JacobiKnobs = { tol: number; maxIter?: number; init: 'z' | 'zeros'; blockSize?: number };
export const JACOBI_DEFAULTS: JacobiKnobs = { tol: 1e-6, init: 'z' };
/**
 * ml-starflow's block-wise Jacobi, with its defaults for images (--jacobi_block_size 16,
 * --jacobi_max_iter 32) but a tighter threshold than its --jacobi_th 0.001: on the shared fixtures
 * 1e-3 stops 0.055–0.068 from the sequential samples, 1e-5 within 0.004 (one or two iterations
 * more per block; test/models/starflow-parity.test.ts). `--jacobi-tol 1e-3` gives ml-starflow's.
 */
export const BLOCK_JACOBI_DEFAULTS = { blockSize: 16, tol: 1e-5, maxIter: 32 };

function parseEntry(text: string, tokens: number, k: JacobiKnobs): BlockPlan {
  if (text === 'seq' || text === 'sequential') return { kind: 'sequential' };
  const m = /^(\d+)x(\d+)$/.exec(text);
  if (!m) throw new SamplingError(`bad strategy entry '${text}' (expected 'seq' or MODULESxMAXITER, e.g. 8x32)`);
  const modules = Number(m[1]);
  const maxIter = Number(m[2]);
  if (modules < 1 || modules > tokens - 1) throw new SamplingError(`modules must be in 1..${tokens - 1}, got ${modules}`);
  if (maxIter < 1) throw new SamplingError(`the iteration cap must be ≥ 1, got ${maxIter}`);
  return { kind: 'jacobi', modules, maxIter, tol: k.tol, init: k.init };
}

/** Plans for every block from a solver name, an optional strategy string and Jacobi knobs. */
export function makePlans(solver: string, numBlocks: number, tokens: number, strategy?: string, knobs: JacobiKnobs = JACOBI_DEFAULTS): BlockPlan[] {
  if (!(SOLVERS as readonly string[]).includes(solver)) {
    throw new SamplingError(`unknown solver '${solver}' (expected one of: ${SOLVERS.join(', ')})`);
  }
  const fullIter = knobs.maxIter ?? tokens - 1;
  if (solver === 'sequential') {
    if (strategy) throw new SamplingError('--strategy applies to the gs-jacobi solver');
    return Array.from({ length: numBlocks }, () => ({ kind: 'sequential' }));
  }
  if (solver === 'block-jacobi') {
    if (strategy) throw new SamplingError('--strategy applies to the gs-jacobi solver');
    const chunk = knobs.blockSize ?? BLOCK_JACOBI_DEFAULTS.blockSize;
    if (!Number.isInteger(chunk) || chunk < 1) throw new SamplingError(`the Jacobi block size must be an integer ≥ 1, got ${chunk}`);
    const maxIter = knobs.maxIter ?? BLOCK_JACOBI_DEFAULTS.maxIter;
    return Array.from({ length: numBlocks }, () => ({ kind: 'jacobi', modules: 1, chunk, maxIter, tol: knobs.tol, init: knobs.init, criterion: 'batch' }));
  }
  if (solver === 'jacobi') {
    if (strategy) throw new SamplingError('--strategy applies to the gs-jacobi solver');
    return Array.from({ length: numBlocks }, () => ({ kind: 'jacobi', modules: 1, maxIter: fullIter, tol: knobs.tol, init: knobs.init }));
  }
  // gs-jacobi: by default every block in modules of about 8 tokens.
  const defaultModules = Math.max(1, Math.ceil((tokens - 1) / 8));
  let fallback: BlockPlan = { kind: 'jacobi', modules: defaultModules, maxIter: fullIter, tol: knobs.tol, init: knobs.init };
  const chosen = new Map<number, BlockPlan>();
  for (const part of (strategy ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
    const [who, what] = part.split('=');
    if (who === undefined || what === undefined) throw new SamplingError(`bad strategy entry '${part}' (expected BLOCK=PLAN or *=PLAN)`);
    const plan = parseEntry(what.trim(), tokens, knobs);
    if (who.trim() === '*') fallback = plan;
    else {
      const b = Number(who);
      if (!Number.isInteger(b) || b < 0 || b >= numBlocks) throw new SamplingError(`strategy names block ${who}, but blocks are 0..${numBlocks - 1} (in sampling order)`);
      chosen.set(b, plan);
    }
  }
  return Array.from({ length: numBlocks }, (_, i) => chosen.get(i) ?? fallback);
}

/**
 * A solver by name, with an optional gs-jacobi strategy and Jacobi knobs (flows), or an ODE
 * solver and its steps (velocity families: sampling/ode.ts): what `generate` takes.
 */
export type SolverChoice = { name: SolverName | OdeSolverName; strategy?: string; steps?: number } & Partial<JacobiKnobs>;

export const SEQUENTIAL: SolverChoice = { name: 'sequential' };

/** Per-block plans for a model (none for families that sample in one call). */
export function plansFor(model: Model, choice?: SolverChoice): BlockPlan[] {
  const s = model.family.sampler(model.cfg);
  if (s.kind === 'velocity') {
    if (choice?.strategy) throw new SamplingError('--strategy applies to the gs-jacobi solver of autoregressive flows');
    odePlanFor(model, choice?.name, choice?.steps); // checks the request
    return [];
  }
  if (choice?.steps !== undefined) throw new SamplingError(`${model.family.name} models are not sampled in steps of a velocity field: --steps applies to rectified-flow and MeanFlow models`);
  choice ??= SEQUENTIAL;
  if (s.kind !== 'autoregressive') {
    if (choice.name !== 'sequential' || choice.strategy) throw new SamplingError(`${model.family.name} models sample in one call: solvers and strategies do not apply`);
    return [];
  }
  if (choice.name === 'euler' || choice.name === 'heun') throw new SamplingError(`${choice.name} integrates a velocity field: ${model.family.name} models are inverted block by block (${SOLVERS.join(', ')})`);
  const defaults = choice.name === 'block-jacobi' ? { ...JACOBI_DEFAULTS, tol: BLOCK_JACOBI_DEFAULTS.tol } : JACOBI_DEFAULTS;
  const given = Object.fromEntries(Object.entries(choice).filter(([, v]) => v !== undefined));
  return makePlans(choice.name, s.numBlocks, s.length, choice.strategy, { ...defaults, ...given });
}
