// `npm run bench` with no name: everything issue-sized in one run, against the PyTorch twins —
// training step and likelihood throughput (bench/train.ts) for the mnist preset and the reference
// notebook config, then sampling with each solver (bench/sampling.ts) for the shipped mnist model
// and a notebook-config model — and one Markdown table of jax-js / torch time ratios.
//
// The notebook config has no trained checkpoint, so its sampling runs on initial weights with a
// small random output projection (σ 0.01): sequential sampling costs the same on any weights, but
// Jacobi converges in fewer sweeps than on a trained model (the table says so).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fmt, runChild, tsxArgs, defaultCommonFlags, takeCommonFlag, writeReport, argOf, startWorkerEngine, ROOT, eachFlag, benchWeights } from './common.js';

const SELF = fileURLToPath(import.meta.url);

type Ratio = { what: string; jax: string; torch: string; ratio: number | null; note?: string };

/** Child: writes a notebook-config model directory (config.json + model.safetensors). */
async function makeNotebookModel(args: string[]): Promise<void> {
  await startWorkerEngine(1);
  const { parseFlowConfig, tarflow } = await import('../src/models/flow.js');
  const { saveModel } = await import('../src/io/model.js');
  const { NOTEBOOK_MODEL } = await import('./train.js');
  const cfg = parseFlowConfig({ ...NOTEBOOK_MODEL });
  await saveModel(argOf(args, '--out'), { family: tarflow, cfg, params: await benchWeights(cfg) });
  process.stdout.write(JSON.stringify({ ok: true }) + '\n');
}

type TrainReport = { summary: Record<string, { id: string; label: string; medianMs: number; nllMedianMs: number }[]> };
type SamplingReport = {
  rows: { batch: number; weight: number; solver: string; jax: Record<string, { samplesPerS: number; medianMs: number }>; best: string; torchMs: number | null; ratioToTorch: number | null; ok: boolean }[];
  torchRows: { batch: number; weight: number; samplesPerS: number }[];
};

function trainRatios(r: TrainReport, config: string): Ratio[] {
  const ss = r.summary[config] ?? [];
  const torch = ss.find((s) => s.id === 'torch');
  const js = ss.filter((s) => s.id !== 'torch');
  if (!js.length) return [];
  const best = (pick: (s: (typeof ss)[number]) => number) => js.reduce((a, b) => (pick(a) <= pick(b) ? a : b));
  const step = best((s) => s.medianMs);
  const nll = best((s) => s.nllMedianMs);
  return [
    { what: 'training step (batch 64)', jax: `${fmt(step.medianMs)} ms (${step.label})`, torch: torch ? `${fmt(torch.medianMs)} ms` : '—', ratio: torch ? step.medianMs / torch.medianMs : null },
    { what: 'likelihood (batch 64)', jax: `${fmt(64_000 / nll.nllMedianMs, 0)} images/s (${nll.label})`, torch: torch ? `${fmt(64_000 / torch.nllMedianMs, 0)} images/s` : '—', ratio: torch ? nll.nllMedianMs / torch.nllMedianMs : null },
  ];
}

function samplingRatios(r: SamplingReport): Ratio[] {
  return r.rows.map((row) => {
    const best = row.jax[row.best];
    const torch = r.torchRows.find((t) => t.batch === row.batch && t.weight === row.weight);
    return {
      what: `sampling, ${row.solver}, batch ${row.batch}, ${row.weight ? `guidance ${row.weight}` : 'no guidance'}`,
      jax: best ? `${fmt(best.samplesPerS, 2)} samples/s (${row.best})` : '—',
      torch: torch ? `${fmt(torch.samplesPerS, 2)} samples/s` : '—',
      ratio: row.ratioToTorch,
      note: row.ok ? undefined : 'outputs differ beyond tolerance',
    };
  });
}

export async function main(args: string[]): Promise<void> {
  const c = defaultCommonFlags();
  let batches = '1,64';
  const passthrough: string[] = [];
  eachFlag(
    args,
    (a, value) => {
      if (a !== '--batches') return takeCommonFlag(a, value, c);
      batches = value();
      return true;
    },
    '--batches 1,64,1024, --quick, --rounds N, --json PATH, --python PATH, --torch-blas auto|system',
  );
  if (c.quick) passthrough.push('--quick');
  if (c.rounds !== null && c.rounds !== undefined) passthrough.push('--rounds', String(c.rounds));
  passthrough.push('--python', c.python, '--torch-blas', c.torchBlas);

  const tmp = mkdtempSync(path.join(os.tmpdir(), 'starflow-bench-all-'));
  try {
    const json = (name: string) => path.join(tmp, `${name}.json`);
    const train = await import('./train.js');
    const sampling = await import('./sampling.js');
    await train.main([...passthrough, '--json', json('train')]);
    const notebookDir = path.join(tmp, 'notebook-model');
    await runChild(process.execPath, tsxArgs(SELF, ['--make-notebook-model', '--out', notebookDir]), 'notebook model', { STARFLOW_THREADS: '1' });
    await sampling.main([...passthrough, '--model', path.join(ROOT, 'checkpoints', 'mnist'), '--batches', batches, '--no-profile', '--json', json('sampling-mnist')]);
    await sampling.main([...passthrough, '--model', notebookDir, '--batches', batches, '--no-profile', '--json', json('sampling-notebook')]);

    const read = <T>(name: string): T => JSON.parse(readFileSync(json(name), 'utf8')) as T;
    const tr = read<TrainReport>('train');
    const sections = [
      { config: 'mnist preset (shipped checkpoints/mnist for sampling)', ratios: [...trainRatios(tr, 'mnist'), ...samplingRatios(read<SamplingReport>('sampling-mnist'))] },
      { config: 'reference notebook config (initial weights for sampling)', ratios: [...trainRatios(tr, 'notebook'), ...samplingRatios(read<SamplingReport>('sampling-notebook'))] },
    ];
    const line = (r: string[]) => `| ${r.join(' | ')} |`;
    const md = [
      line(['config', 'measurement', 'jax-js (best of 1/2 threads)', 'torch 1 thread', 'jax-js / torch (time)']),
      line(['---', '---', '---:', '---:', '---:']),
      ...sections.flatMap((s) => s.ratios.map((r) => line([s.config, r.what + (r.note ? ` (${r.note})` : ''), r.jax, r.torch, r.ratio === null ? '—' : `${fmt(r.ratio, 2)}×`]))),
      '',
      '- Time ratios: above 1× jax-js is slower. Every row was measured in this run, the twins on the same weights and inputs (their outputs are checked against ours in the detailed reports).',
      '- Details: the train and sampling sections of this JSON hold the full reports (per-round medians, first-call times, loss / bits/dim / image agreement).',
    ].join('\n');
    console.log(`\n${md}`);
    writeReport('all', c, { sections, train: tr, samplingMnist: read('sampling-mnist'), samplingNotebook: read('sampling-notebook') }, md);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === SELF && process.argv.includes('--make-notebook-model')) await makeNotebookModel(process.argv.slice(2));
