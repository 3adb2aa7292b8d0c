// Resuming is exact: the run is a pure function of (config, seed, step), so a run killed after a
// checkpoint and resumed with `starflow train --resume` logs the same per-step losses as one that
// never stopped. And Ctrl-C (SIGINT) saves a checkpoint at the step where training stopped.
// The CLI runs in child processes (bin/starflow.js) with STARFLOW_THREADS=1, so every run, killed,
// resumed or not, computes with the same kernels on one thread: losses compare exactly.
// Nothing here races the child: the step where a run is killed or interrupted does not depend on
// the machine's speed. A preloaded hook (pause-at-step.mjs) holds the child's trainer at a chosen
// step until the test acts (SIGKILL, or the SIGINT that lets it go on and stop), so the checkpoint
// on disk and the step reached are known exactly. Runs stop by step counts, never by time; the
// only clock is a generous safety timeout, to fail instead of hanging if a child never gets there.
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
const PAUSE_HOOK = path.join(here, 'pause-at-step.mjs');
/** Safety net only (a hung child fails the test instead of stalling it): runs here take seconds. */
const SAFETY_MS = 10 * 60_000;

const MODEL = { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 };

function trainConfig(over: Record<string, unknown> = {}) {
  return { model: MODEL, batchSize: 8, steps: 24, lr: 1e-3, warmupSteps: 2, logEvery: 1, evalEvery: 0, sampleEvery: 0, checkpointEvery: 4, ...over };
}

type Exit = { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string };
type Child = { child: ChildProcess; done: Promise<Exit>; paused: Promise<void> };

/**
 * `starflow ARGS` in a child process. With `pauseAt`, the child's trainer waits after logging that
 * step (see pause-at-step.mjs) and `paused` resolves; it rejects if the child exits first. The
 * child is killed when the test ends, whatever happened.
 */
function starflow(t: { after: (fn: () => void) => void }, args: string[], pauseAt?: number): Child {
  const child = spawn(process.execPath, ['--import', PAUSE_HOOK, BIN, ...args], {
    env: { ...process.env, STARFLOW_THREADS: '1', STARFLOW_DEBUG: '', STARFLOW_TEST_PAUSE_AT_STEP: pauseAt === undefined ? '' : String(pauseAt) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')));
  let stdout = '';
  let stderr = '';
  let onPause = () => {};
  const paused = new Promise<void>((resolve) => (onPause = resolve));
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => {
    stderr += d;
    if (stderr.includes(`starflow-test: paused at step ${pauseAt}\n`)) onPause();
  });
  const done = new Promise<Exit>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  const exitedFirst = done.then((r) => {
    throw new Error(`the child exited (code ${r.code}, signal ${r.signal}) before pausing at step ${pauseAt}: ${r.stderr}`);
  });
  const pausedOrExited = Promise.race([paused, exitedFirst]);
  pausedOrExited.catch(() => {}); // reported where awaited; a run without a pause never is
  return { child, done, paused: pausedOrExited };
}

/** `p`, or an error after SAFETY_MS. */
async function withinSafety<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no ${what} after ${SAFETY_MS / 1000} s`)), SAFETY_MS)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-resume-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function checkpointStep(dir: string): Promise<number | undefined> {
  const text = await readFile(path.join(dir, 'checkpoint', 'trainer.json'), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : (JSON.parse(text) as { step: number }).step;
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

test('a run SIGKILLed after a checkpoint and resumed logs the same per-step losses as an uninterrupted run', { timeout: SAFETY_MS }, async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'tiny.json');
  await writeFile(config, JSON.stringify(trainConfig()));
  const runA = path.join(dir, 'a');
  const runB = path.join(dir, 'b');

  // Run A, uninterrupted (in a child too, so both runs use the same thread count), alongside run B.
  const runningA = starflow(t, ['train', '--config', config, '--out', runA]).done;

  // Run B: held after step 6 (its checkpoint at step 4 on disk, steps 5 and 6 logged after it) and
  // killed there without warning, 18 steps from the end.
  const b = starflow(t, ['train', '--config', config, '--out', runB], 6);
  await withinSafety('pause at step 6', b.paused);
  assert.equal(await checkpointStep(runB), 4, 'the checkpoint on disk when run B is killed');
  assert.deepEqual([...(await losses(runB)).keys()], [1, 2, 3, 4, 5, 6], 'run B’s log when it is killed');
  b.child.kill('SIGKILL');
  const killed = await withinSafety('exit after SIGKILL', b.done);
  assert.equal(killed.signal, 'SIGKILL', 'the run was still going when killed');

  // Nothing up to the last checkpoint is lost: it loads.
  const ck = await loadCheckpoint(path.join(runB, 'checkpoint'));
  assert.equal((ck.trainer as { step: number }).step, 4);
  await loadModel(path.join(runB, 'checkpoint'));

  const a = await withinSafety('end of run A', runningA);
  assert.equal(a.code, 0, a.stderr);
  const lossesA = await losses(runA);
  assert.deepEqual([...lossesA.keys()], Array.from({ length: 24 }, (_, i) => i + 1));

  const resumed = await withinSafety('end of the resumed run', starflow(t, ['train', '--resume', runB]).done);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.match(resumed.stderr, /resuming in .* step 4\/24/);
  assert.deepEqual(JSON.parse(resumed.stdout.trim()), { step: 24, checkpoint: path.join(runB, 'checkpoint') });
  assert.equal(await checkpointStep(runB), 24);

  // The resumed steps (after the checkpoint) match run A exactly; log.jsonl also holds the killed
  // process's lines for steps 5 and 6: the resumed run's (last) lines win.
  const lossesB = await losses(runB);
  assert.deepEqual([...lossesB.keys()], [...lossesA.keys()], 'run B logged every step');
  for (let s = 5; s <= 24; s++) {
    assert.equal(lossesB.get(s), lossesA.get(s), `step ${s}: resumed ${lossesB.get(s)} vs uninterrupted ${lossesA.get(s)}`);
  }
  // Steps before the kill match too (same run up to there), the killed process's steps 5 and 6 included.
  const linesB = (await readFile(path.join(runB, 'log.jsonl'), 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogLine);
  assert.deepEqual(linesB.map((l) => l.step), [1, 2, 3, 4, 5, 6, ...Array.from({ length: 20 }, (_, i) => i + 5)], 'run B’s log: the killed run’s 6 lines, then the resumed run’s');
  for (const [i, l] of linesB.slice(0, 6).entries()) assert.equal(l.loss, lossesA.get(i + 1), `step ${i + 1} before the kill`);
  // The final weights agree as well.
  const [wa, wb] = await Promise.all([loadCheckpoint(path.join(runA, 'checkpoint')), loadCheckpoint(path.join(runB, 'checkpoint'))]);
  for (const [name, ta] of wa.model) assert.deepEqual(wb.model.get(name)!.data, ta.data, `final EMA weights ${name}`);
});

test('SIGINT stops training with a checkpoint at the step it reached', { timeout: SAFETY_MS }, async (t) => {
  const dir = await tempDir(t);
  const config = path.join(dir, 'long.json');
  // No periodic checkpoint: the one on disk can only come from the interrupt. (Should the hook
  // ever fail to hold the run, it ends after 100 steps and the test says so.)
  await writeFile(config, JSON.stringify(trainConfig({ steps: 100, checkpointEvery: 100 })));
  const out = path.join(dir, 'run');
  // Held after step 3 until the SIGINT: the interrupt lands at step 3 exactly.
  const c = starflow(t, ['train', '--config', config, '--out', out], 3);
  await withinSafety('pause at step 3', c.paused);
  assert.equal(await checkpointStep(out), undefined, 'no checkpoint before the interrupt');
  c.child.kill('SIGINT');
  const r = await withinSafety('exit after SIGINT', c.done);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.signal, null);
  assert.match(r.stderr, /stopped at step 3 \(interrupted\)/);
  assert.match(r.stderr, /interrupted: saving a checkpoint/);
  assert.deepEqual(JSON.parse(r.stdout.trim()), { step: 3, checkpoint: path.join(out, 'checkpoint') });
  const ck = await loadCheckpoint(path.join(out, 'checkpoint'));
  assert.equal((ck.trainer as { step: number }).step, 3);
  await loadModel(path.join(out, 'checkpoint'));
  // The log stops at that step.
  assert.deepEqual([...(await losses(out)).keys()], [1, 2, 3]);
  assert.ok(!r.stderr.split('\n').some((l) => l.startsWith('    at ')), 'no stack trace');
});
