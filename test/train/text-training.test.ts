// Training a flow with its own text encoder on captioned MNIST: batches carry caption token ids
// [B, L] (split over data-parallel workers by rows), the periodic evaluation scores p(x | caption),
// the sample grid draws a row per digit word, and the checkpoint keeps the vocabulary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { currentDevice, fromF32, keep, mapTree, normalArray, toNumber, Rng } from '../../src/engine/index.js';
import { initFlow, type FlowConfig, type FlowParams } from '../../src/models/flow.js';
import { namedLeaves } from '../../src/nn/params.js';
import { makeGradStep } from '../../src/train/step.js';
import { Replicas, conditionArray, flattenParams } from '../../src/train/replicas.js';
import { train, readLog } from '../../src/train/trainer.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { loadModel } from '../../src/io/model.js';
import { evaluateBpd } from '../../src/eval/likelihood.js';
import { captionSource } from '../../src/data/captions.js';
import { loadMnist } from '../../src/data/mnist.js';

const MODEL = { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, noiseStd: 0.1, textTokens: 8, textDim: 16, textEncoder: { vocab: 'captions:mnist', layers: 1, heads: 2 } };

test('2 workers’ gradients on caption ids equal the whole batch’s', async () => {
  const cfg = parseTrainConfig({ model: MODEL }).model as FlowConfig;
  const rng = new Rng(4);
  const params = mapTree((a) => a.add(normalArray(rng, [...a.shape], 0.05)), initFlow(cfg, 0)) as FlowParams;
  const n = 4;
  const x = new Float32Array(n * 784).map(() => rng.normal() * 0.5);
  const captions = captionSource(await loadMnist('test'), { vocab: cfg.textEncoder!.vocab, maxTokens: cfg.textTokens });
  const y = captions.ids([0, 1, 2, 3], new Rng(1), 0.25);
  assert.equal(y.length, n * cfg.textTokens);
  const whole = makeGradStep(cfg)(keep(params), fromF32(x, [n, 1, 28, 28]), conditionArray(y, n));
  const replicas = await Replicas.start(cfg, params, 2, currentDevice());
  try {
    const split = await replicas.gradients(params, x, [n, 1, 28, 28], y);
    const [lw, ls] = [await toNumber(whole.loss), await toNumber(split.loss)];
    assert.ok(Math.abs(lw - ls) <= 1e-6 * Math.max(1, Math.abs(lw)), `loss ${lw} vs ${ls}`);
    const names = namedLeaves(params).map(([k]) => k);
    const [a, b] = [await flattenParams(whole.grads, names), await flattenParams(split.grads, names)];
    const textAt = names.findIndex((k) => k.startsWith('text.'));
    assert.ok(textAt >= 0, 'the encoder is among the parameters');
    let maxAbs = 0;
    let maxDiff = 0;
    a.forEach((v, i) => ((maxAbs = Math.max(maxAbs, Math.abs(v))), (maxDiff = Math.max(maxDiff, Math.abs(v - b[i]!)))));
    assert.ok(maxAbs > 1e-3, `the gradient is not trivial (max |g| ${maxAbs})`);
    assert.ok(maxDiff <= 1e-5 * maxAbs, `max |Δgrad| ${maxDiff} vs max |grad| ${maxAbs}`);
  } finally {
    await replicas.close();
  }
});

test('a text model trains on captions: evaluation, a prompt grid and a checkpoint with the vocabulary', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-text-train-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cfg = parseTrainConfig({ model: MODEL, batchSize: 8, steps: 6, lr: 1e-3, warmupSteps: 1, logEvery: 1, evalEvery: 3, evalImages: 16, sampleEvery: 6, checkpointEvery: 6 });
  await train(cfg, { outDir: dir, workers: 2 });
  const log = (await readLog(dir)) as { step?: number; loss?: number; testBpd?: number }[];
  const losses = log.filter((e) => typeof e.loss === 'number');
  assert.equal(losses.length, 6);
  assert.ok(losses.every((e) => Number.isFinite(e.loss)));
  // p(x | caption) of the first 16 test images at steps 3 and 6: finite bits/dim.
  const evals = log.filter((e) => typeof e.testBpd === 'number');
  assert.deepEqual(evals.map((e) => e.step), [3, 6]);
  assert.ok(evals.every((e) => Number.isFinite(e.testBpd) && e.testBpd! > 0), JSON.stringify(evals));
  assert.ok((await stat(path.join(dir, 'samples', 'step-000006.png'))).size > 0, 'the prompt grid (a row per digit word)');
  const model = await loadModel(path.join(dir, 'checkpoint'));
  assert.deepEqual((model.cfg as FlowConfig).textEncoder, (cfg.model as FlowConfig).textEncoder);
  assert.ok(namedLeaves(model.params).some(([k]) => k === 'text.tokens'));
  // Bits/dim as `starflow nll` computes them: p(x | each image's fixed caption).
  const test = await loadMnist('test');
  const r = await evaluateBpd(model, test, 8);
  assert.equal(r.nonFinite.length, 0);
  assert.deepEqual((await evaluateBpd(model, test, 8)).perImage, r.perImage, 'fixed captions: the same figure twice');
  const { captions: _, ...uncaptioned } = test;
  await assert.rejects(evaluateBpd(model, uncaptioned, 8), /this model reads captions: these images have no captions/);
});

test('images without a caption vocabulary have no captions', async () => {
  const { captions: _, ...uncaptioned } = await loadMnist('test');
  assert.throws(() => captionSource(uncaptioned, { vocab: ['a'], maxTokens: 4 }), /these images have no captions \(captions are made for mnist and fashion-mnist images\)/);
});
