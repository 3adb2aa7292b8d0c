// The model interface's claim: a family defined in one file (gaussian-family.ts) and registered
// trains (on data-parallel workers), resumes, samples, is scored and reloaded through the shared
// code, with no change anywhere else.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import { gaussian } from './gaussian-family.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { train, readLog, CHECKPOINT_DIR } from '../../src/train/trainer.js';
import { loadModel } from '../../src/io/model.js';
import { generate } from '../../src/sampling/pipeline.js';
import { evaluateBpd } from '../../src/eval/likelihood.js';
import { classify } from '../../src/eval/classify.js';
import { NO_GUIDANCE } from '../../src/models/model.js';
import { loadMnist } from '../../src/data/mnist.js';
import { evaluateModel } from '../../src/eval/report.js';

const config = (over: Record<string, unknown> = {}) =>
  parseTrainConfig({
    model: { model: 'diag-gaussian', inChannels: 1, imgSize: 28, numClasses: 10 },
    noise: 'uniform',
    batchSize: 16,
    steps: 8,
    lr: 0.05,
    warmupSteps: 1,
    emaDecay: 0,
    logEvery: 1,
    evalEvery: 4,
    evalImages: 40,
    sampleEvery: 4,
    checkpointEvery: 2,
    ...over,
  });

type Row = { step?: number; loss?: number; testBpd?: number };
const losses = (rows: object[]) => (rows as Row[]).filter((r) => typeof r.loss === 'number').map((r) => [r.step, r.loss]);

test('a second family trains on 2 workers, resumes exactly, samples, is scored and reloads', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-family-'));
  const whole = path.join(dir, 'whole');
  const split = path.join(dir, 'split');
  await train(config(), { outDir: whole, workers: 2 });
  await train(config(), { outDir: split, workers: 2, maxSteps: 3 });
  const resumed = await train(null, { outDir: split, workers: 2 });
  assert.equal(resumed.step, 8);
  const a = losses(await readLog(whole));
  const b = losses(await readLog(split));
  assert.equal(a.length, 8);
  assert.deepEqual(b, a, 'the resumed run repeats the uninterrupted one');
  assert.ok(a[7]![1]! < a[0]![1]!, `the loss fell: ${a.map((r) => r[1]!.toFixed(3))}`);

  // Periodic evaluation and sample grids ran through the family's likelihood and sampler.
  const evals = ((await readLog(whole)) as Row[]).filter((r) => typeof r.testBpd === 'number');
  assert.deepEqual(evals.map((r) => r.step), [4, 8]);
  for (const s of ['step-000004.png', 'step-000008.png']) assert.ok((await readFile(path.join(whole, 'samples', s))).length > 100, s);

  const model = await loadModel(path.join(whole, CHECKPOINT_DIR));
  assert.equal(model.family, gaussian);
  assert.equal(model.provenance?.steps, 8);
  assert.equal(model.provenance?.workers, 2);
  const evaluation = model.provenance?.evaluation as { testBpd: { bitsPerDim: number; images: number; of: number } };
  assert.equal(evaluation.testBpd.of, 40);

  const test = await loadMnist('test');
  const bpd = await evaluateBpd(model, test, 40);
  assert.ok(Math.abs(bpd.finiteMean - evaluation.testBpd.bitsPerDim) < 1e-9, `${bpd.finiteMean} vs recorded ${evaluation.testBpd.bitsPerDim}`);
  const acc = await classify(model, test, 40);
  assert.ok(acc.accuracy > 0.2, `Bayes' rule with per-class Gaussians beats chance: ${acc.accuracy}`);

  const labels = [0, 1, 2, 3, -1];
  const g = await generate(model, { n: 5, labels, guidance: NO_GUIDANCE, seed: 3 });
  assert.deepEqual(g.shape, [5, 1, 28, 28]);
  assert.equal(g.nonFinite, 0);
  const again = await generate(model, { n: 5, labels, guidance: NO_GUIDANCE, seed: 3 });
  assert.deepEqual(again.images, g.images, 'a seed reproduces the samples');
  await assert.rejects(generate(model, { n: 2, guidance: NO_GUIDANCE, seed: 0, solver: { name: 'jacobi' } }), /sample in one call/);

  // starflow eval's library call scores it like any model: samples, floor, ceiling, bits/dim, curves.
  const r = await evaluateModel({ modelDir: path.join(whole, CHECKPOINT_DIR), outDir: path.join(dir, 'eval'), n: 20, refN: 200, kidSubsets: 5 });
  assert.equal(r.metrics.model.length, 1);
  assert.ok(Number.isFinite(r.metrics.model[0]!.frechet));
  assert.ok(r.metrics.floor.frechet < r.metrics.model[0]!.frechet, 'real test images score better than 8 steps of a diagonal Gaussian');
  assert.equal(r.metrics.testBpd?.n, 20);
  assert.ok(r.metrics.curves !== null, 'training curves from the run log');
  assert.match(r.markdown, /diagonal Gaussian over 1×28×28 pixels/);
});
