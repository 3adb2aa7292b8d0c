// `starflow analyze-sampling`: per-block Jacobi diagnostics (CRM, IGM, measured sweeps) of a model
// and a proposed `--strategy` / `--jacobi-init` for the gs-jacobi solver (src/sampling/analyze.ts).
import { loadModel } from '../io/model.js';
import { analyzeSampling } from '../sampling/analyze.js';
import { parse, intOpt, numOpt, startEngineFromOptions, ENGINE_HELP, modelDir, MODEL_DEFAULT } from './common.js';

export const ANALYZE_HELP = `starflow analyze-sampling: which blocks are hard for Jacobi iterations

Usage:
  starflow analyze-sampling --model DIR [--n 8] [--seed 0] [--tol 1e-6] [--json]

For each block in sampling order (0 = the first block run), from n noise samples, no guidance:
  CRM      convergence ranking metric ‖α ⊙ z‖·‖W_s‖₂ + ‖W_u‖₂ (α = exp(a) at the exact solution;
           W_s, W_u = the log-scale and shift halves of the block's output projection)
  IGM      RMS residual to the exact x after one Jacobi sweep from z, and from zeros
  sweeps   Jacobi sweeps over the whole sequence to a relative change below --tol, per guess
Then proposes --strategy and --jacobi-init for 'starflow sample --solver gs-jacobi'.

Options:
  --model DIR          model directory (config.json + model.safetensors; ${MODEL_DEFAULT})
  --n N                samples to measure on (default 8)
  --seed N             noise seed (default 0)
  --tol X              Jacobi stopping tolerance (default 1e-6, as the solvers)
  --json               print one JSON object
${ENGINE_HELP}`;

export async function analyzeCommand(argv: string[]): Promise<void> {
  const o = parse(argv, { model: { type: 'string' }, n: { type: 'string' }, seed: { type: 'string' }, tol: { type: 'string' }, json: { type: 'boolean' } });
  if (o.help) return void console.log(ANALYZE_HELP);
  const dir = modelDir(o);
  const n = intOpt(o.n, 'n', 1, 8);
  const seed = intOpt(o.seed, 'seed', 0, 0);
  const tol = numOpt(o.tol, 'tol', 1e-6, (x) => x > 0, 'a number > 0');
  await startEngineFromOptions(o);
  const r = await analyzeSampling(await loadModel(dir), { n, seed, tol });
  if (o.json) return void console.log(JSON.stringify(r));
  const head = ['order', 'block', 'CRM', '‖α⊙z‖', '‖W_s‖', '‖W_u‖', 'mean a', 'IGM z', 'IGM 0', 'sweeps z', 'sweeps 0', ''];
  const rows = r.blocks.map((b) => [
    String(b.order),
    String(b.block),
    b.crm.toPrecision(4),
    b.alphaZ.toPrecision(4),
    b.normScale.toPrecision(4),
    b.normShift.toPrecision(4),
    b.meanLogScale.toPrecision(3),
    b.igmZ.toExponential(2),
    b.igmZeros.toExponential(2),
    String(b.iterationsZ),
    String(b.iterationsZeros),
    b.tough ? 'tough' : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const fmtRow = (row: string[]) => row.map((c, i) => c.padStart(widths[i]!)).join('  ').trimEnd();
  console.log(`${dir}: ${r.tokens} tokens, ${r.n} samples, tol ${r.tol}; blocks in sampling order`);
  console.log(fmtRow(head));
  for (const row of rows) console.log(fmtRow(row));
  console.log('');
  for (const why of r.reasons) console.log(`- ${why}`);
  console.log(`\nproposal: starflow sample --model ${dir} --solver gs-jacobi --strategy "${r.strategy}" --jacobi-init ${r.init}`);
}
