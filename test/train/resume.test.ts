// Resuming is exact: the run is a pure function of (config, seed, step), so a run killed after a
// checkpoint and resumed with `starflow train --resume` logs the same per-step losses as one that
// never stopped. And Ctrl-C (SIGINT) saves a checkpoint at the step where training stopped.
// The CLI runs in child processes (bin/starflow.js) with STARFLOW_THREADS=1, so every run, killed,
// resumed or not, computes with the same kernels on one thread: losses compare exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import { loadCheckpoint } from '../../src/io/checkpoint.js';
import { loadModel } from '../../src/io/model.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(here, '../../bin/starflow.js');

const MODEL = { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 };

function trainConfig(over: Record<string, unknown> = {}) {
  return { model: MODEL, batchSize: 8, steps: 24, lr: 1e-3, warmupSteps: 2, logEvery: 1, evalEvery: 0, sampleEvery: 0, checkpointEvery: 4, ...over };
}

type Child = { child: ChildProcess; done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> };

function starflow(args: string[]): Child {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, STARFLOW_THREADS: '1', STARFLOW_DEBUG: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-resume-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` returns a value (or throws after `ms`, or when the child exits first). */
async function waitFor<T>(what: string, check: () => Promise<T | undefined>, c: Child, ms = 30_000): Promise<T> {
  let exited = false;
  void c.done.then(() => (exited = true));
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const v = await check();
    if (v !== undefined) return v;
    if (exited) throw new Error(`the child exited before ${what}: ${(await c.done).stderr}`);
    await sleep(15);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function checkpointStep(dir: string): Promise<number | undefined> {
  const text = await readFile(path.join(dir, 'checkpoint', 'trainer.json'), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return (JSON.parse(text) as { step: number }).step;
  } catch {
    return undefined; // caught mid-rename on some filesystems; poll again
  }
}

type LogLine = { step: number; loss?: number; skipped?: boolean };

/** step → loss from log.jsonl, the last occurrence of each step winning. */
async function losses(dir: string): Promise<Map<number, number>> {
  const text = await readFile(path.join(dir, 'log.jsonl'), 'utf8');
  const out = new Map<number, number>();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let l: LogLine;
    try {
      l = JSON.parse(line) as LogLine;
    } catch {
      continue; // a line cut short by SIGKILL
    }
    if (typeof l.loss === 'number' && !l.skipped) out.set(l.step, l.loss);
  }
  return out;
}

test('a run SIGKILLed after a checkpoint and resumed logs the same per-step losses as an uninterrupted run', async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'tiny.json');
  await writeFile(config, JSON.stringify(trainConfig()));
  const runA = path.join(dir, 'a');
  const runB = path.join(dir, 'b');

  // Run A, uninterrupted (in a child too, so both runs use the same thread count), alongside run B.
  const runningA = starflow(['train', '--config', config, '--out', runA]).done;

  // Run B: killed without warning once a checkpoint at step ≥ 4 is on disk (20 steps from the end).
  const b = starflow(['train', '--config', config, '--out', runB]);
  const polled = await waitFor('a checkpoint at step ≥ 4', async () => {
    const s = await checkpointStep(runB);
    return s !== undefined && s >= 4 ? s : undefined;
  }, b);
  b.child.kill('SIGKILL');
  const killed = await b.done;
  assert.equal(killed.signal, 'SIGKILL', 'the run was still going when killed');

  // Nothing up to the last checkpoint is lost: it loads, and it is at least where we saw it.
  const ck = await loadCheckpoint(path.join(runB, 'checkpoint'));
  const ckStep = (ck.trainer as { step: number }).step;
  assert.ok(ckStep >= polled && ckStep < 24, `checkpoint at step ${ckStep}, polled ${polled}`);
  assert.equal(ckStep % 4, 0);
  await loadModel(path.join(runB, 'checkpoint'));
  const linesAtKill = (await readFile(path.join(runB, 'log.jsonl'), 'utf8')).split('\n').filter(Boolean).length;
  t.diagnostic(`polled checkpoint step ${polled}; killed with the checkpoint at step ${ckStep} and ${linesAtKill} log lines`);

  const a = await runningA;
  assert.equal(a.code, 0, a.stderr);
  const lossesA = await losses(runA);
  assert.deepEqual([...lossesA.keys()], Array.from({ length: 24 }, (_, i) => i + 1));

  const resumed = await starflow(['train', '--resume', runB]).done;
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, new RegExp(`resuming in .* step ${ckStep}/24`));
  assert.deepEqual(JSON.parse(resumed.stdout.trim()), { step: 24, checkpoint: path.join(runB, 'checkpoint') });
  assert.equal(await checkpointStep(runB), 24);

  // The resumed steps (after the checkpoint) match run A exactly; log.jsonl may also hold lines
  // the killed process wrote after its last checkpoint: the resumed run's (last) lines win.
  const lossesB = await losses(runB);
  for (let s = 1; s <= 24; s++) assert.ok(lossesB.has(s), `run B logged step ${s}`);
  for (let s = ckStep + 1; s <= 24; s++) {
    assert.equal(lossesB.get(s), lossesA.get(s), `step ${s}: resumed ${lossesB.get(s)} vs uninterrupted ${lossesA.get(s)}`);
  }
  // Steps before the kill match too (same run up to there).
  for (let s = 1; s <= ckStep; s++) assert.equal(lossesB.get(s), lossesA.get(s), `step ${s} before the kill`);
  // The final weights agree as well.
  const [wa, wb] = await Promise.all([loadCheckpoint(path.join(runA, 'checkpoint')), loadCheckpoint(path.join(runB, 'checkpoint'))]);
  for (const [name, ta] of wa.model) assert.deepEqual(wb.model.get(name)!.data, ta.data, `final EMA weights ${name}`);
});

test('SIGINT stops training with a checkpoint at the step it reached', async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'long.json');
  // A long schedule with no periodic checkpoint: the one on disk can only come from the interrupt.
  await writeFile(config, JSON.stringify(trainConfig({ steps: 5000, checkpointEvery: 5000 })));
  const out = path.join(dir, 'run');
  const c = starflow(['train', '--config', config, '--out', out]);
  await waitFor('step 3 in log.jsonl', async () => ((await losses(out).catch(() => new Map())).has(3) ? true : undefined), c);
  c.child.kill('SIGINT');
  const r = await c.done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.signal, null);
  const m = /stopped at step (\d+) \(interrupted\)/.exec(r.stderr);
  assert.ok(m, `stderr: ${r.stderr}`);
  const step = Number(m[1]);
  assert.ok(step >= 3 && step < 5000, `stopped at ${step}`);
  assert.match(r.stderr, /interrupted: saving a checkpoint/);
  assert.deepEqual(JSON.parse(r.stdout.trim()), { step, checkpoint: path.join(out, 'checkpoint') });
  const ck = await loadCheckpoint(path.join(out, 'checkpoint'));
  assert.equal((ck.trainer as { step: number }).step, step);
  await loadModel(path.join(out, 'checkpoint'));
  // The log stops at that step.
  const logged = await losses(out);
  assert.equal(Math.max(...logged.keys()), step);
  assert.ok(!r.stderr.split('\n').some((l) => l.startsWith('    at ')), 'no stack trace');
});
