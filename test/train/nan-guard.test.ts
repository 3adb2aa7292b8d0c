// The trainer's NaN guard: a step whose loss (or gradient norm) is not finite is skipped (the
// weights stay the last good ones), and after `maxBadSteps` such steps in a row the run stops with
// a TrainingError, leaving the checkpoint on disk as it was.
//
// Making NaN deterministic: AdamW moves every weight by about lr per step whatever the gradient,
// so lr = 1e6 (no warm-up) turns the first update into weights of size ~1e6. The next forward pass
// gets log-scales a ~ ±1e7, exp(−a) overflows float32 and the loss is non-finite, on every step
// from then on (skipped steps do not change the weights). Step 0 itself runs on the initial
// weights, so its loss is finite: a run with lr 1e6 logs one good step, then only skips.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { train, readLog, TrainingError, CHECKPOINT_DIR, type TrainEvent } from '../../src/train/trainer.js';
import { parseTrainConfig, type TrainConfig } from '../../src/train/config.js';
import { loadModel } from '../../src/io/model.js';
import { loadCheckpoint } from '../../src/io/checkpoint.js';

function tinyTrainConfig(over: Record<string, unknown> = {}): TrainConfig {
  return parseTrainConfig({
    model: { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 },
    batchSize: 8,
    steps: 12,
    lr: 1e-3,
    warmupSteps: 2,
    logEvery: 1,
    evalEvery: 0,
    sampleEvery: 0,
    checkpointEvery: 2,
    maxBadSteps: 3,
    ...over,
  });
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-nan-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function runExpectingDivergence(cfg: TrainConfig | null, outDir: string) {
  const events: TrainEvent[] = [];
  let error: unknown;
  try {
    await train(cfg, { outDir, onEvent: (e) => events.push(e) });
  } catch (e) {
    error = e;
  }
  return { events, error };
}

test('a huge learning rate: non-finite steps are skipped, maxBadSteps in a row stop the run, the checkpoint stays loadable', async (t) => {
  const out = await tempDir(t);
  const cfg = tinyTrainConfig({ lr: 1e6, warmupSteps: 0, checkpointEvery: 1, maxBadSteps: 3 });
  const { events, error } = await runExpectingDivergence(cfg, out);

  assert.ok(error instanceof TrainingError, `expected a TrainingError, got ${String(error)}`);
  assert.match(error.message, /^training diverged: 3 non-finite losses in a row \(last at step 3\)/);
  assert.ok(!error.message.includes('\n'), 'the message is one line');
  assert.ok(error.message.includes(`the last good checkpoint (step 1) is in ${path.join(out, CHECKPOINT_DIR)}`), error.message);

  // One good step (on the initial weights), then three skips counted in a row, and no stop event.
  const steps = events.filter((e) => e.type === 'step');
  const skips = events.filter((e) => e.type === 'skip');
  assert.deepEqual(steps.map((e) => e.step), [1]);
  assert.deepEqual(skips.map((e) => [e.step, e.inARow]), [[1, 1], [2, 2], [3, 3]]);
  assert.ok(skips.every((e) => !Number.isFinite(e.loss)));
  assert.equal(events.filter((e) => e.type === 'stop').length, 0);
  assert.deepEqual(events.filter((e) => e.type === 'checkpoint').map((e) => e.step), [1]);

  // log.jsonl records the skipped steps.
  const log = (await readLog(out)) as { step: number; skipped?: boolean; loss: unknown }[];
  assert.deepEqual(log.filter((l) => l.skipped).map((l) => l.step), [1, 2, 3]);

  // The checkpoint is the one written after step 1: complete, loadable, finite, resumable state.
  const ckDir = path.join(out, CHECKPOINT_DIR);
  const ck = await loadCheckpoint(ckDir);
  assert.equal((ck.trainer as { step: number }).step, 1);
  assert.ok(ck.optimizer && ck.optimizer.size > 0);
  const { cfg: modelCfg } = await loadModel(ckDir); // throws on NaN/inf weights or wrong shapes
  assert.deepEqual(modelCfg, cfg.model);
  const leftovers = (await readdir(out)).filter((n) => n.startsWith(`${CHECKPOINT_DIR}.`));
  assert.deepEqual(leftovers, [], 'no half-written checkpoint directories');
});

test('resuming with a learning rate edited to 1e6: the good checkpoint is left byte-for-byte intact', async (t) => {
  const out = await tempDir(t);
  // A healthy run of 4 steps: checkpoints at steps 2 and 4.
  const r = await train(tinyTrainConfig(), { outDir: out, maxSteps: 4 });
  assert.equal(r.step, 4);
  const ckDir = path.join(out, CHECKPOINT_DIR);
  const files = ['model.safetensors', 'optimizer.safetensors', 'config.json'];
  const before = await Promise.all(files.map((f) => readFile(path.join(ckDir, f))));
  const trainerFile = path.join(ckDir, 'trainer.json');
  const trainer = JSON.parse(await readFile(trainerFile, 'utf8'));
  assert.equal(trainer.step, 4);
  trainer.train.lr = 1e6;
  trainer.train.warmupSteps = 0;
  await writeFile(trainerFile, JSON.stringify(trainer));
  const trainerBefore = await readFile(trainerFile);

  // Step 4 runs on the good weights (finite) and applies the huge update; steps 5, 6, 7 are
  // non-finite and skipped, so no checkpoint is due (step 6 was skipped) and none is written.
  const { events, error } = await runExpectingDivergence(null, out);
  assert.ok(error instanceof TrainingError, `expected a TrainingError, got ${String(error)}`);
  assert.match(error.message, /training diverged: 3 non-finite losses in a row \(last at step 7\)/);
  assert.ok(error.message.includes('the last good checkpoint (step 4)'), error.message);
  assert.deepEqual(events.filter((e) => e.type === 'skip').map((e) => e.step), [5, 6, 7]);
  assert.deepEqual(events.filter((e) => e.type === 'checkpoint'), []);

  const after = await Promise.all(files.map((f) => readFile(path.join(ckDir, f))));
  for (let i = 0; i < files.length; i++) assert.ok(before[i]!.equals(after[i]!), `${files[i]} unchanged`);
  assert.ok(trainerBefore.equals(await readFile(trainerFile)), 'trainer.json unchanged');
  await loadModel(ckDir);
});

test('diverging before the first checkpoint: the message does not point at a checkpoint that was never written', async (t) => {
  const out = await tempDir(t);
  const cfg = tinyTrainConfig({ lr: 1e6, warmupSteps: 0, checkpointEvery: 100, maxBadSteps: 2 });
  const { error } = await runExpectingDivergence(cfg, out);
  assert.ok(error instanceof TrainingError, `expected a TrainingError, got ${String(error)}`);
  assert.match(error.message, /^training diverged: 2 non-finite losses in a row \(last at step 2\); no checkpoint was written/);
  await assert.rejects(stat(path.join(out, CHECKPOINT_DIR)), { code: 'ENOENT' });
});
