// A flow with its own text encoder: the config names its vocabulary (or the captions'), the loss
// trains the encoder through the flow (its gradient reaches the encoder's weights), likelihoods
// from token ids equal those from the states the encoder gives, prompts become states with clear
// messages for what the tokenizer cannot read, sampling with guidance runs, and a checkpoint
// keeps the vocabulary and the encoder's weights.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import '../setup.js';
import * as E from '../../src/engine/index.js';
import { parseFlowConfig, tarflow, starflow, type FlowParams, type FlowConfig } from '../../src/models/flow.js';
import { captionWords, MNIST_VOCABULARY } from '../../src/data/captions.js';
import { WordTokenizer } from '../../src/nn/tokenizer.js';
import { promptText } from '../../src/sampling/prompts.js';
import { generate } from '../../src/sampling/pipeline.js';
import { loadModel, saveModel } from '../../src/io/model.js';
import { parseTrainConfig } from '../../src/train/config.js';
import type { Model } from '../../src/models/model.js';

const RAW = { model: 'tarflow', inChannels: 1, imgSize: 8, patchSize: 4, width: 32, headDim: 16, numBlocks: 2, layersPerBlock: 1, textTokens: 6, textDim: 16, textEncoder: { vocab: captionWords(MNIST_VOCABULARY), layers: 1, heads: 2 } };
const cfg = parseFlowConfig(RAW);
const model: Model<FlowConfig, FlowParams> = { family: tarflow, cfg, params: tarflow.init(cfg, 0) };
// Output projections start at zero (the untrained flow ignores its inputs); randomised, the text
// reaches the output and its gradient reaches the encoder.
model.params.blocks.forEach((b, i) => {
  b.projOut.w.dispose();
  b.projOut.w = E.normalArray(new E.Rng(9).fork(i), [cfg.width, 32], 0.05);
});
const tok = new WordTokenizer({ vocab: cfg.textEncoder!.vocab, maxTokens: cfg.textTokens });
const rng = new E.Rng(2);
const x = () => E.normalArray(rng.fork(1), [2, 1, 8, 8], 0.5);
const ids = (texts: string[]) => E.fromI32(Int32Array.from(texts.flatMap((t) => [...tok.encode(t).ids])), [texts.length, cfg.textTokens]);

test('a training config resolves "captions:mnist" to the captions\' words; a malformed text encoder is refused', () => {
  assert.deepEqual(parseTrainConfig({ model: { ...RAW, textEncoder: { ...RAW.textEncoder, vocab: 'captions:mnist' } }, noise: 'uniform' }).model, cfg);
  assert.throws(() => parseTrainConfig({ model: { ...RAW, textEncoder: { ...RAW.textEncoder, vocab: 'captions:cifar' } }, noise: 'uniform' }), /"captions:cifar" names no caption vocabulary/);
  // Caption dropout (labelDrop) trains the empty caption, guidance's negative: kept for text models.
  assert.equal(parseTrainConfig({ model: RAW, noise: 'uniform', labelDrop: 0.1 }).labelDrop, 0.1);
  assert.equal(parseTrainConfig({ model: { ...RAW, textEncoder: null, textTokens: 0, textDim: 0 }, noise: 'uniform', labelDrop: 0.1 }).labelDrop, 0);
  assert.equal(parseFlowConfig({ ...RAW, textEncoder: { ...RAW.textEncoder, vocab: ['a', 'seven'] } }).textEncoder!.vocab.length, 2);
  const bad: [unknown, RegExp][] = [
    [{ ...RAW, textEncoder: { ...RAW.textEncoder, vocab: 'captions:mnist' } }, /'vocab' must be a list of words \("captions:mnist" names a vocabulary only in a training config/],
    [{ ...RAW, textTokens: 0, textDim: 0 }, /'textEncoder' needs 'textTokens'/],
    [{ ...RAW, textEncoder: { ...RAW.textEncoder, heads: 3 } }, /'textEncoder': 'width' \(16\) must be a multiple of 'heads' \(3\)/],
    [{ ...RAW, textEncoder: { ...RAW.textEncoder, depth: 2 } }, /unknown field 'depth'/],
    [{ ...RAW, textEncoder: { ...RAW.textEncoder, vocab: ['a', 'a'] } }, /appears twice/],
    [{ ...RAW, textEncoder: 'big' }, /'textEncoder' must be null or an object/],
  ];
  for (const [raw, message] of bad) assert.throws(() => parseFlowConfig(raw), message);
});

test('training reaches the text encoder, and captions change the likelihood', async () => {
  const loss = (p: FlowParams, xs: E.Arr, ys: E.Arr) => tarflow.loss(p, cfg, xs, ys);
  const [value, grads] = E.valueAndGrad(loss)(E.keep(model.params), x(), ids(['a thick seven', '']));
  assert.ok(Number.isFinite(await E.toNumber(value)));
  const g = grads as FlowParams;
  for (const [name, leaf] of [['tokens', g.text!.tokens], ['layer 0 qkv', g.text!.layers[0]!.attn.qkv.w]] as const) {
    const v = await E.toF32(leaf.ref);
    assert.ok(v.some((u) => Math.abs(u) > 0), `the gradient reaches the encoder's ${name}`);
  }
  E.release(g);
  const nll = async (texts: string[]) => E.toF32(tarflow.nll!(E.keep(model.params), cfg, x(), ids(texts)));
  const [withText, empty] = [await nll(['a thick seven', 'a thin two']), await nll(['', ''])];
  assert.notDeepEqual(withText, empty, 'the text conditions the flow');
  // The same from the states the encoder gives.
  const enc = tarflow.textEncoder!(cfg)!;
  const states = enc.encode(model.params, ids(['a thick seven', 'a thin two']));
  const fromStates = await E.toF32(tarflow.nll!(E.keep(model.params), cfg, x(), E.fromI32([0, 0], [2]), states));
  assert.deepEqual(fromStates, withText);
});

test('prompts: states per prompt, the empty caption as negative, warnings and refusals', async (t) => {
  const r = await promptText(model, ['a thick seven', 'a purple seven', 'a thick seven']);
  const width = cfg.textTokens * cfg.textDim;
  assert.equal(r.states.length, 3 * width);
  assert.deepEqual(r.states.subarray(0, width), r.states.subarray(2 * width), 'the same prompt, the same states');
  assert.deepEqual(r.warnings, ['prompt "a purple seven": left out a word the model does not know: purple']);
  const empty = await E.toF32(tarflow.textEncoder!(cfg)!.encode(model.params, E.fromI32(new Int32Array(cfg.textTokens), [1, cfg.textTokens])));
  // Encoded in a batch of 4 rows here and of 1 there: the native GEMM blocks the two differently,
  // which moves float32 results by a few ulp (max |Δ| 4.8e-7 on values up to 2.3, measured); on
  // wasm (jax-js kernels or the wasm products) they are identical.
  const neg = r.negative.subarray(width, 2 * width);
  const maxDiff = neg.reduce((m, v, i) => Math.max(m, Math.abs(v - empty[i]!)), 0);
  t.diagnostic(`max |Δ| ${maxDiff}`);
  assert.ok(maxDiff <= (E.matmulBackend().startsWith('wasm') ? 0 : 5e-6), `max |Δ| ${maxDiff}`);
  const long = await promptText(model, ['a thick slanted little seven with bold strokes']);
  assert.match(long.warnings.join('\n'), /the model reads 6 words; the last 2 were left out/);
  await assert.rejects(promptText(model, ['  ']), /an empty prompt/);
  await assert.rejects(promptText(model, ['purple cat']), /none of its words is in the model's vocabulary/);
  await assert.rejects(promptText(model, ['sept ç']), /characters the tokenizer does not know: "ç"/);
  const plain = parseFlowConfig({ ...RAW, textEncoder: null, textTokens: 0, textDim: 0 });
  await assert.rejects(promptText({ family: tarflow, cfg: plain, params: tarflow.init(plain, 0) }, ['a seven']), /not text-conditioned/);
});

test('guided samples from prompts, and a checkpoint keeps the vocabulary and the encoder', async () => {
  const text = await promptText(model, ['a thick seven', 'a thin two']);
  const r = await generate(model, { n: 2, seed: 1, guidance: { weight: 1, rule: 'tarflow', annealed: false, attnTemp: 1 }, text });
  assert.equal(r.images.length, 2 * 64);
  assert.ok(r.images.every(Number.isFinite));
  const dir = path.join(mkdtempSync(path.join(os.tmpdir(), 'starflow-text-')), 'model');
  await saveModel(dir, model);
  const back = await loadModel(dir);
  assert.deepEqual((back.cfg as FlowConfig).textEncoder, cfg.textEncoder);
  const again = await promptText(back, ['a thick seven']);
  assert.deepEqual(again.states, (await promptText(model, ['a thick seven'])).states);
});

test('a STARFlow (RoPE with a text axis, only the deep block conditioned) trains and samples with its own encoder', async () => {
  const sf = parseFlowConfig({ ...RAW, model: 'starflow', width: 48, headDim: 24, layersPerBlock: [1, 2], condTopOnly: true });
  const m: Model<FlowConfig, FlowParams> = { family: starflow, cfg: sf, params: starflow.init(sf, 0) };
  const [loss] = E.valueAndGrad((p: FlowParams, xs: E.Arr, ys: E.Arr) => starflow.loss(p, sf, xs, ys))(E.keep(m.params), x(), ids(['a thick seven', '']));
  assert.ok(Number.isFinite(await E.toNumber(loss)));
  const text = await promptText(m, ['a thick seven', 'zero']);
  const r = await generate(m, { n: 2, seed: 0, guidance: { weight: 2, rule: 'starflow', annealed: false, attnTemp: 1 }, text });
  assert.ok(r.images.every(Number.isFinite));
});
