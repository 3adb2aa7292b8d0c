import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import { loadModel } from '../../src/io/model.js';
import { generate } from '../../src/sampling/pipeline.js';
import { makePlans } from '../../src/sampling/plan.js';
import { NO_GUIDANCE } from '../../src/sampling/solvers.js';
import { evaluateBpd } from '../../src/train/trainer.js';
import { loadMnist } from '../../src/data/mnist.js';

const shipped = (name: string) => path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../checkpoints', name);

test('the shipped sampling checkpoint loads and samples finite images', async () => {
  const { cfg, params } = await loadModel(shipped('mnist'));
  assert.equal(cfg.numClasses, 10);
  assert.equal(cfg.noiseStd, 0.1);
  const r = await generate(params, cfg, { n: 2, labels: [3, 7], plans: makePlans('sequential', cfg.numBlocks, 49), guidance: NO_GUIDANCE, seed: 1 });
  assert.equal(r.nonFinite, 0, `${r.nonFinite} non-finite samples after ${r.redrawn} redraws`);
  assert.ok(r.images.every(Number.isFinite));
});

test('the shipped bits/dim checkpoint scores MNIST far better than an untrained flow', async () => {
  const { cfg, params } = await loadModel(shipped('mnist-uniform'));
  assert.equal(cfg.noiseStd, 0);
  const { mean } = await evaluateBpd(params, cfg, await loadMnist('test'), 50, { batchSize: 50 });
  // An untrained flow scores ~9 bits/dim; this one was measured at 1.783 on the full test set.
  assert.ok(mean < 3, `test bits/dim ${mean}`);
});
