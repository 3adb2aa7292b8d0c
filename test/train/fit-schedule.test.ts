// --minutes with fitSchedule: the schedule's length is set from the speed of the first steps, so
// the run ends its learning-rate schedule within the time limit; the fitted length is what the
// checkpoint records (and what a resume continues with).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import '../models/gaussian-family.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { train, readLog, CHECKPOINT_DIR, type TrainEvent } from '../../src/train/trainer.js';

test('fitSchedule: a 100,000-step config trained for 4 seconds is shortened to what the time allows and ends its schedule', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-fit-'));
  try {
    const cfg = parseTrainConfig({
      model: { model: 'diag-gaussian', inChannels: 1, imgSize: 28, numClasses: 10 },
      noise: 'uniform', batchSize: 8, steps: 100_000, lr: 0.05, minLr: 0.001, warmupSteps: 50, emaDecay: 0,
      logEvery: 1, evalEvery: 1_000_000, sampleEvery: 0, checkpointEvery: 1_000_000,
    });
    const events: TrainEvent[] = [];
    const t0 = Date.now();
    const r = await train(cfg, { outDir: dir, minutes: 4 / 60, fitSchedule: true, onEvent: (e) => events.push(e) });
    const seconds = (Date.now() - t0) / 1000;
    const fitted = events.find((e) => e.type === 'schedule');
    assert.ok(fitted && fitted.type === 'schedule', 'a schedule event');
    assert.deepEqual(fitted.measured, [10, 40], 'timed inside the 50-step warm-up');
    assert.equal(fitted.was, 100_000);
    assert.ok(fitted.steps > 40 && fitted.steps < 100_000, `fitted ${fitted.steps}`);
    const stop = events.find((e) => e.type === 'stop');
    assert.ok(stop && stop.type === 'stop');
    // Ends by the fitted schedule (10% of the time is kept in reserve), not by the clock.
    assert.equal(stop.reason, 'done', `stopped by ${stop.reason} at ${stop.step} of ${fitted.steps} after ${seconds.toFixed(1)} s`);
    assert.equal(r.step, fitted.steps);
    const last = (await readLog(dir) as { step?: number; lr?: number }[]).filter((l) => typeof l.lr === 'number').at(-1)!;
    assert.equal(last.step, fitted.steps);
    assert.ok(last.lr! < 0.0011, `the learning rate reached the end of its schedule: ${last.lr}`);
    const saved = JSON.parse(await readFile(path.join(dir, CHECKPOINT_DIR, 'config.json'), 'utf8')) as { provenance: { train: { steps: number } } };
    assert.equal(saved.provenance.train.steps, fitted.steps, 'the checkpoint records the fitted length');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
