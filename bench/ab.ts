// A/B against an earlier revision, in one run: the training step (mnist preset: 1 thread, and 2
// data-parallel workers on 2 threads) and sampling throughput (checkpoints/mnist: every solver,
// batch 1 and 64, with and without guidance), timed by each revision's own bench workers
// (bench/train.ts and bench/sampling.ts, `--worker`) on the same inputs, alternating the two
// revisions in every round so a noisy phase of the machine hits both. The base revision is checked
// out into a temporary git worktree that shares this checkout's node_modules.
//
//   npm run bench -- ab --base c7ae0ab [--rounds 3] [--quick] [--json PATH]
//     [--parts train,sampling] [--workloads 1:0,64:2] [--solvers sequential] [--reps 3]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT, defaultCommonFlags, eachFlag, fmt, machineInfo, median, runChild, snapshotModel, takeCommonFlag, tsxArgs, writeReport } from './common.js';

type TrainOut = { medianMs: number; samplesMs: number[]; losses: number[]; nllMs: number[] };
type SampleOut = { results: { batch: number; weight: number; solver: string; medianMs: number; samplesMs: number[]; calls: number }[] };

type Row = { id: string; what: string; ms: { base: number[]; head: number[] }; calls?: { base?: number; head?: number } };

function parseFlags(args: string[]) {
  const c = defaultCommonFlags();
  let base = '';
  let reps: number | null = null;
  let parts = ['train', 'sampling'];
  let workloads = '1:0,1:2,64:0,64:2';
  let solvers = 'sequential,jacobi,gs-jacobi';
  eachFlag(
    args,
    (a, value) => {
      if (takeCommonFlag(a, value, c)) return true;
      if (a === '--base') base = value();
      else if (a === '--reps') reps = Number(value());
      else if (a === '--parts') parts = value().split(',');
      else if (a === '--workloads') workloads = value();
      else if (a === '--solvers') solvers = value();
      else return false;
      return true;
    },
    '--base REV, --parts train,sampling, --workloads B:W,..., --solvers LIST, --reps N, --quick, --rounds N, --json PATH',
  );
  if (!base) throw new Error('--base REV is required (the revision to compare against)');
  return { ...c, base, parts, workloads, solvers, reps: reps ?? (c.quick ? 1 : 3), rounds: c.rounds ?? (c.quick ? 1 : 3) };
}

export async function main(args: string[]): Promise<void> {
  const o = parseFlags(args);
  const baseRev = execFileSync('git', ['rev-parse', o.base], { cwd: ROOT, encoding: 'utf8' }).trim();
  const headRev = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '';
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'starflow-bench-ab-'));
  const baseTree = path.join(tmp, 'base');
  execFileSync('git', ['worktree', 'add', '--detach', baseTree, baseRev], { cwd: ROOT, stdio: 'ignore' });
  try {
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(baseTree, 'node_modules'));
    const trees = { base: baseTree, head: ROOT } as const;
    const prepFile = path.join(tmp, 'train-mnist.safetensors');
    await runChild(process.execPath, tsxArgs(path.join(ROOT, 'bench/train.ts'), ['--prep', '--config', 'mnist', '--out', prepFile]), 'train prep', { STARFLOW_THREADS: '1' });
    const model = path.join(tmp, 'model');
    snapshotModel(path.join(ROOT, 'checkpoints', 'mnist'), model);
    const noise = path.join(tmp, 'noise.safetensors');
    await runChild(process.execPath, tsxArgs(path.join(ROOT, 'bench/sampling.ts'), ['--prep', '--model', model, '--n', '64', '--seed', '0', '--out', noise]), 'noise', { STARFLOW_THREADS: '1' });

    const steps = o.quick ? 3 : 8;
    const trainRuns = [
      { id: 'train-1t', what: 'training step, mnist preset, batch 64, 1 thread', threads: 1, workers: 1 },
      { id: 'train-2w', what: 'training step, mnist preset, batch 64, 2 workers (2 threads)', threads: 2, workers: 2 },
    ];
    const rows = new Map<string, Row>();
    const add = (id: string, what: string, side: 'base' | 'head', ms: number) => {
      const r = rows.get(id) ?? { id, what, ms: { base: [], head: [] } };
      r.ms[side].push(ms);
      rows.set(id, r);
    };
    const losses: Record<string, number[]> = {};
    for (let round = 1; round <= o.rounds; round++) {
      const order: ('base' | 'head')[] = round % 2 ? ['base', 'head'] : ['head', 'base'];
      for (const side of order) {
        const tree = trees[side];
        for (const t of o.parts.includes('train') ? trainRuns : []) {
          const r = await runChild<TrainOut>(
            process.execPath,
            tsxArgs(path.join(tree, 'bench/train.ts'), ['--worker', '--threads', String(t.threads), '--workers', String(t.workers), '--file', prepFile, '--warmup', '1', '--steps', String(steps)]),
            `${side} ${t.id}`,
            { STARFLOW_THREADS: String(t.threads) },
          );
          add(t.id, t.what, side, r.medianMs);
          add(`nll-${t.threads}t`, `likelihood of the batch (forward only), ${t.threads} thread(s)`, side, median(r.nllMs));
          losses[`${side} ${t.id}`] ??= r.losses;
          process.stderr.write(`  round ${round} ${side} ${t.id}: ${fmt(r.medianMs, 0)} ms/step\n`);
        }
        if (!o.parts.includes('sampling')) continue;
        const s = await runChild<SampleOut>(
          process.execPath,
          tsxArgs(path.join(tree, 'bench/sampling.ts'), ['--worker', '--threads', '1', '--id', side, '--model', model, '--noise', noise, '--workloads', o.workloads, '--solvers', o.solvers, '--reps', String(o.reps), '--warmup', '1', '--attn-temp', '1']),
          `${side} sampling`,
          { STARFLOW_THREADS: '1' },
        );
        for (const r of s.results) {
          const id = `sample-${r.solver}-b${r.batch}-w${r.weight}`;
          add(id, `sampling, ${r.solver}, batch ${r.batch}, guidance ${r.weight}, 1 thread`, side, r.medianMs);
          // Solver calls: Jacobi's now stop when every sample has converged, not the batch's mean.
          rows.get(id)!.calls = { ...rows.get(id)!.calls, [side]: r.calls };
        }
        process.stderr.write(`  round ${round} ${side} sampling done\n`);
      }
    }

    const table = [...rows.values()].map((r) => {
      const base = median(r.ms.base);
      const head = median(r.ms.head);
      return { ...r, baseMs: base, headMs: head, ratio: head / base };
    });
    const md = [
      `HEAD ${headRev.slice(0, 7)}${dirty ? ' (with uncommitted changes)' : ''} against base ${baseRev.slice(0, 7)}, ${o.rounds} round(s), alternating; ${machineInfo().cores} cores.`,
      `Command: \`npm run bench -- ${['ab', ...args].join(' ')}\`. Medians over rounds of each round's median; ratio = head / base (below 1: head is faster).`,
      '',
      '| what | base ms | head ms | head / base | solver calls base / head |',
      '| --- | ---: | ---: | ---: | ---: |',
      ...table.map((r) => `| ${r.what} | ${fmt(r.baseMs, 1)} | ${fmt(r.headMs, 1)} | ${fmt(r.ratio, 3)} | ${r.calls ? `${r.calls.base} / ${r.calls.head}` : ''} |`),
      '',
      `Losses of the first steps (shared initial weights and batch): base ${losses['base train-1t']?.slice(0, 3).map((l) => l.toFixed(6)).join(', ')}; head ${losses['head train-1t']?.slice(0, 3).map((l) => l.toFixed(6)).join(', ')} (head logs the NLL per dimension: the base's loss + ½·log 2π = 0.918939).`,
      '',
    ].join('\n');
    writeReport('ab', o, { base: baseRev, head: headRev, dirty, machine: machineInfo(), rows: table, losses }, md);
    process.stdout.write(md);
  } finally {
    execFileSync('git', ['worktree', 'remove', '--force', baseTree], { cwd: ROOT, stdio: 'ignore' });
    rmSync(tmp, { recursive: true, force: true });
  }
}

