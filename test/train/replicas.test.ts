// Data-parallel training: worker threads that each take an equal slice of the batch give the
// whole batch's loss and gradient (the loss is a batch mean), a run with workers follows the
// one-thread run to float32 round-off, and a resumed run with workers repeats the uninterrupted
// one exactly (every worker computes with the same one-thread kernels each time).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { currentDevice, fromF32, fromI32, keep, mapTree, release, toNumber, Rng, normalArray } from '../../src/engine/index.js';
import { initFlow, type FlowConfig, type FlowParams } from '../../src/models/flow.js';
import { namedLeaves } from '../../src/nn/params.js';
import { makeGradStep } from '../../src/train/step.js';
import { Replicas, ReplicaError, flattenParams } from '../../src/train/replicas.js';
import { train, readLog, TrainingError, autoWorkers } from '../../src/train/trainer.js';
import { parseTrainConfig } from '../../src/train/config.js';

const MODEL = { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 };

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-replicas-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('the mean of 2 workers’ slice gradients is the whole batch’s gradient', async () => {
  const cfg = parseTrainConfig({ model: MODEL }).model;
  // Random weights everywhere (the zero-initialised output projection would make most gradients vanish).
  const rng = new Rng(3);
  const init = initFlow(cfg as FlowConfig, 0);
  const params = mapTree((a) => a.add(normalArray(rng, [...a.shape], 0.05)), init) as FlowParams;
  const n = 6;
  const x = new Float32Array(n * 28 * 28).map(() => rng.normal() * 0.5);
  const y = Int32Array.from([0, 3, -1, 9, 5, -1]);

  const whole = makeGradStep(cfg)(keep(params), fromF32(x, [n, 1, 28, 28]), fromI32(y, [n]));
  const replicas = await Replicas.start(cfg, params, 2, currentDevice());
  try {
    const split = await replicas.gradients(params, x, [n, 1, 28, 28], y);
    const names = namedLeaves(params).map(([k]) => k);
    const [lossWhole, lossSplit] = [await toNumber(whole.loss), await toNumber(split.loss)];
    assert.ok(Math.abs(lossWhole - lossSplit) <= 1e-6 * Math.max(1, Math.abs(lossWhole)), `loss ${lossWhole} vs ${lossSplit}`);
    const a = await flattenParams(whole.grads, names);
    const b = await flattenParams(split.grads, names);
    let maxAbs = 0;
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[i]!));
      maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
    }
    assert.ok(maxAbs > 1e-3, `the gradient is not trivial (max |g| ${maxAbs})`);
    // Float32 sums in another order: measured ~1e-7 of the largest entry.
    assert.ok(maxDiff <= 1e-5 * maxAbs, `max |Δgrad| ${maxDiff} vs max |grad| ${maxAbs}`);
    await assert.rejects(replicas.gradients(params, x.subarray(0, 5 * 784), [5, 1, 28, 28], y.subarray(0, 5)), ReplicaError);
    // A worker that fails says why, and stays failed.
    const bad = () => replicas.gradients(params, x.subarray(0, 2 * 784), [2, 1, 27, 28], y.subarray(0, 2));
    await assert.rejects(bad(), /^ReplicaError: gradient worker \d failed: data of length 784 does not fill shape \[1,1,27,28\]/);
    await assert.rejects(replicas.gradients(params, x, [n, 1, 28, 28], y), /gradient worker \d failed/);
  } finally {
    await replicas.close();
    release(params);
  }
});

test('training with 2 workers follows the 1-worker run, and resuming it is exact', async (t) => {
  const dir = await tempDir(t);
  const cfg = parseTrainConfig({ model: MODEL, batchSize: 8, steps: 6, lr: 1e-3, warmupSteps: 2, logEvery: 1, evalEvery: 0, sampleEvery: 0, checkpointEvery: 3 });
  const losses = async (outDir: string) => (await readLog(outDir)).map((e) => (e as { loss: number }).loss);

  await train(cfg, { outDir: path.join(dir, 'one'), workers: 1 });
  await train(cfg, { outDir: path.join(dir, 'two'), workers: 2 });
  await train(cfg, { outDir: path.join(dir, 'resumed'), workers: 2, maxSteps: 3 });
  await train(null, { outDir: path.join(dir, 'resumed'), workers: 2 });

  const [one, two, resumed] = [await losses(path.join(dir, 'one')), await losses(path.join(dir, 'two')), await losses(path.join(dir, 'resumed'))];
  assert.equal(one.length, 6);
  assert.deepEqual(resumed, two, 'a resumed 2-worker run logs the uninterrupted run’s losses exactly');
  for (let i = 0; i < 6; i++) {
    // Six steps of a tiny model: round-off stays at the float32 level (measured ≤ 3e-7 relative).
    assert.ok(Math.abs(one[i]! - two[i]!) <= 1e-4 * Math.max(1, Math.abs(one[i]!)), `step ${i + 1}: ${one[i]} (1 worker) vs ${two[i]} (2 workers)`);
  }
});

test('a worker count that does not divide the batch is refused before anything is written', async (t) => {
  const dir = await tempDir(t);
  const cfg = parseTrainConfig({ model: MODEL, batchSize: 8, steps: 2, evalEvery: 0, sampleEvery: 0 });
  await assert.rejects(train(cfg, { outDir: path.join(dir, 'run'), workers: 3 }), (e: unknown) => e instanceof TrainingError && /batchSize 8 does not split evenly over 3 workers/.test(e.message));
  await assert.rejects(train(cfg, { outDir: path.join(dir, 'run'), workers: 0 }), TrainingError);
  assert.equal(existsSync(path.join(dir, 'run')), false, 'no run directory was created');
  const params = initFlow(cfg.model as FlowConfig, 0);
  await assert.rejects(Replicas.start(cfg.model, params, 0, currentDevice()), ReplicaError);
  release(params);
});

test('--workers auto: the most workers within the thread budget that divide the batch', () => {
  assert.equal(autoWorkers(64, 2), 2);
  assert.equal(autoWorkers(64, 3), 2);
  assert.equal(autoWorkers(10, 4), 2);
  assert.equal(autoWorkers(7, 2), 1);
  assert.equal(autoWorkers(3, 8), 3);
  assert.equal(autoWorkers(64, 1), 1);
});
