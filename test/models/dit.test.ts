// The DiT family: rectified flow and MeanFlow learn a 2-D mixture and carry Gaussian noise onto
// it (Euler/Heun for rectified flow, one step for MeanFlow); the probability-flow likelihood
// against a known density; request errors. 2-D points are 2×1×1 "images" (one token of 2 features).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { np, keep, release, fromF32, fromI32, toF32, toNumber, Rng, type Arr } from '../../src/engine/index.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { makeTrainStep, type TrainState } from '../../src/train/step.js';
import { initAdamState, adamScalars, cosineLr, ADAMW_DEFAULTS } from '../../src/nn/optim.js';
import { familyOf } from '../../src/models/registry.js';
import type { Model } from '../../src/models/model.js';
import { generate } from '../../src/sampling/pipeline.js';
import { nllOf } from '../../src/eval/likelihood.js';
import { timeSchedule } from '../../src/sampling/ode.js';
import { parseModelConfig } from '../../src/models/registry.js';
import { ConfigError } from '../../src/models/config.js';
import { promptText } from '../../src/sampling/prompts.js';
import { WordTokenizer } from '../../src/nn/tokenizer.js';

const MODES = [[1, 1], [1, -1], [-1, 1], [-1, -1]] as const;
const MODE_STD = 0.1;

function mixtureBatch(rng: Rng, b: number): { x: Float32Array; y: Int32Array } {
  const x = new Float32Array(2 * b);
  const y = new Int32Array(b);
  for (let i = 0; i < b; i++) {
    const k = Math.floor(rng.uniform() * MODES.length);
    y[i] = k;
    x[2 * i] = MODES[k]![0] + MODE_STD * rng.normal();
    x[2 * i + 1] = MODES[k]![1] + MODE_STD * rng.normal();
  }
  return { x, y };
}

/** Trains a tiny DiT on the mixture; returns the model with its EMA-free weights. */
async function trainOnMixture(objective: 'rectified-flow' | 'meanflow', steps: number): Promise<Model> {
  const cfg = parseTrainConfig({
    model: { model: 'dit', objective, inChannels: 2, imgSize: 1, patchSize: 1, width: 64, depth: 2, headDim: 32, numClasses: 4, timeLocation: 0, sampleSteps: 16 },
    noise: 'uniform',
    batchSize: 256,
    steps,
    lr: 3e-3,
    warmupSteps: 20,
    labelDrop: 0.1,
    emaDecay: 0,
  });
  const family = familyOf(cfg.model);
  const step = makeTrainStep(cfg);
  const params = family.init(cfg.model, 0);
  const adam = initAdamState(params);
  let state: TrainState = { params, m: adam.m, v: adam.v, ema: keep(params) };
  const rng = new Rng(3);
  const b = cfg.batchSize;
  const epsShape = family.lossNoiseShape!(cfg.model, b);
  for (let s = 0; s < steps; s++) {
    const { x, y } = mixtureBatch(rng, b);
    for (let i = 0; i < b; i++) if (rng.uniform() < cfg.labelDrop) y[i] = -1;
    const eps = Float32Array.from({ length: epsShape[0]! * epsShape[1]! }, () => rng.normal());
    const lr = cosineLr({ lr: cfg.lr, minLr: cfg.minLr, warmupSteps: cfg.warmupSteps, totalSteps: steps }, s);
    const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, s + 1);
    const out = step(keep(state), fromF32(x, [b, 2, 1, 1]), fromI32(y, [b]), np.array(lr), np.array(bc1), np.array(bc2), np.array(0), fromF32(eps, epsShape));
    assert.ok(Number.isFinite(await toNumber(out.loss)));
    (out.gradNorm as Arr).dispose();
    release(state);
    state = out.state;
  }
  const { params: trained, m, v, ema } = state;
  release([m, v, ema] as never);
  return { family, cfg: cfg.model, params: trained };
}

/** Mean distance from each sample to its label's mode, and the largest. */
function distances(images: Float32Array, labels: number[]): { mean: number; max: number } {
  const d = labels.map((k, i) => Math.hypot(images[2 * i]! - MODES[k]![0], images[2 * i + 1]! - MODES[k]![1]));
  return { mean: d.reduce((a, b) => a + b, 0) / d.length, max: Math.max(...d) };
}

const N = 400;
const labels = Array.from({ length: N }, (_, i) => i % 4);
// A sample of the mixture itself lies on average 0.1·√(π/2) ≈ 0.125 from its mode; the modes are 2 apart.
const ON_MIXTURE = 0.3;
// Measured 0.044 nats apart after 400 steps (the density is learnt, not exact): 0.1 leaves room for the seed.
const NLL_TOLERANCE = 0.1;

test('rectified flow: the learnt velocity carries Gaussian noise onto a 2-D mixture (Euler and Heun), and one step does not', async (t) => {
  const model = await trainOnMixture('rectified-flow', 400);
  const euler = await generate(model, { n: N, labels, seed: 1, solver: { name: 'euler', steps: 16 } });
  const heun = await generate(model, { n: N, labels, seed: 1, solver: { name: 'heun', steps: 8 } });
  const one = await generate(model, { n: N, labels, seed: 1, solver: { name: 'euler', steps: 1 } });
  const [e, h, o] = [euler, heun, one].map((r) => distances(r.images, labels));
  t.diagnostic(`mean distance to the mode: euler 16 ${e!.mean.toFixed(3)}, heun 8 ${h!.mean.toFixed(3)}, euler 1 ${o!.mean.toFixed(3)}`);
  assert.ok(e!.mean < ON_MIXTURE, `Euler, 16 steps: ${e!.mean}`);
  assert.ok(h!.mean < ON_MIXTURE, `Heun, 8 steps: ${h!.mean}`);
  // One Euler step of rectified flow lands on the mean of the paths: between the modes.
  assert.ok(o!.mean > e!.mean * 1.5, `one step ${o!.mean} vs 16 steps ${e!.mean}`);

  // Its likelihood through the probability-flow ODE (exact divergence in 2-D) against the
  // mixture's own density, on fresh points of the mixture.
  const rng = new Rng(11);
  const { x, y } = mixtureBatch(rng, 200);
  const model16 = { ...model, cfg: { ...model.cfg, nllSteps: 16 } } as Model;
  const nll = await toF32(nllOf(model16, fromF32(x, [200, 2, 1, 1]), fromI32(y, [200])));
  const trueNll = Array.from(y, (k, i) => {
    // −log p(x | k) per dimension: the class-conditional density the model is scored on.
    const d2 = (x[2 * i]! - MODES[k]![0]) ** 2 + (x[2 * i + 1]! - MODES[k]![1]) ** 2;
    return (d2 / (2 * MODE_STD ** 2) + Math.log(2 * Math.PI * MODE_STD ** 2)) / 2;
  });
  const mean = (xs: ArrayLike<number>) => Array.from(xs).reduce((a, b) => a + b, 0) / xs.length;
  t.diagnostic(`NLL per dimension on 200 mixture points: model ${mean(nll).toFixed(3)}, true ${mean(trueNll).toFixed(3)} nats`);
  assert.ok(Math.abs(mean(nll) - mean(trueNll)) < NLL_TOLERANCE, `model ${mean(nll)} vs true ${mean(trueNll)}`);
  release(model.params);
});

test("MeanFlow: one step lands on the 2-D mixture, where rectified flow's one step does not", async (t) => {
  const model = await trainOnMixture('meanflow', 400);
  const r = await generate(model, { n: N, labels, seed: 1, solver: { name: 'euler', steps: 1 } });
  const d = distances(r.images, labels);
  t.diagnostic(`MeanFlow, one step: mean distance ${d.mean.toFixed(3)}, max ${d.max.toFixed(3)}`);
  assert.ok(d.mean < ON_MIXTURE, `MeanFlow one step: ${d.mean}`);
  await assert.rejects(generate(model, { n: 2, labels: [0, 1], seed: 0, solver: { name: 'heun', steps: 2 } }), /instantaneous velocity/);
  release(model.params);
});

test('an untrained DiT (adaLN-zero: velocity 0) has the standard normal likelihood, and samples are the noise', async () => {
  const cfg = parseModelConfig({ model: 'dit', inChannels: 1, imgSize: 4, patchSize: 2, width: 16, depth: 1, headDim: 8, numClasses: 2, timeLocation: 0, sampleSteps: 3, nllSteps: 2 });
  const family = familyOf(cfg);
  const model: Model = { family, cfg, params: family.init(cfg, 0) };
  const x = Float32Array.from({ length: 2 * 16 }, (_, i) => Math.sin(i));
  const nll = await toF32(nllOf(model, fromF32(x, [2, 1, 4, 4]), fromI32([0, 1], [2])));
  for (let i = 0; i < 2; i++) {
    const want = x.subarray(16 * i, 16 * (i + 1)).reduce((a, v) => a + v * v, 0) / 32 + 0.5 * Math.log(2 * Math.PI);
    assert.ok(Math.abs(nll[i]! - want) < 1e-5, `${nll[i]} vs ${want}`);
  }
  const r = await generate(model, { n: 2, labels: [0, 1], seed: 4, solver: { name: 'heun', steps: 3 } });
  const noise = new Rng(4);
  assert.ok(Array.from(r.images).every((v) => Math.abs(v - noise.normal()) < 1e-6));
  release(model.params);
});

test('time schedule: uniform from 1 to 0, and SD3\'s shift moves the steps towards the noise', () => {
  assert.deepEqual(timeSchedule(4, 1), [1, 0.75, 0.5, 0.25, 0]);
  const shifted = timeSchedule(4, 3);
  assert.equal(shifted[0], 1);
  assert.equal(shifted[4], 0);
  assert.ok(Math.abs(shifted[2]! - 0.75) < 1e-12); // 3·0.5 / (1 + 2·0.5)
});

test('DiT configs: every bad field named', () => {
  const base = { model: 'dit', inChannels: 1, imgSize: 8, patchSize: 2, width: 32, depth: 1, timeLocation: 0, sampleSteps: 4 };
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ objective: 'diffusion' }, /'objective' must be one of 'rectified-flow', 'meanflow'/],
    [{ patchSize: 3 }, /'imgSize' \(8\) must be a multiple of 'patchSize' \(3\)/],
    [{ meanflowRatio: 2 }, /'meanflowRatio' must be in \[0, 1\]/],
    [{ numClasses: 10, textTokens: 4, textDim: 8 }, /class labels or by text, not both/],
    [{ timeShift: 0 }, /'timeShift' must be > 0/],
    [{ sampleSteps: 0 }, /'sampleSteps' must be an integer ≥ 1/],
    [{ timeSampling: 'beta' }, /'timeSampling' must be one of/],
    [{ depth: undefined }, /'depth' must be an integer ≥ 1/],
    [{ extra: 1 }, /unknown field 'extra'/],
  ];
  for (const [patch, re] of bad) assert.throws(() => parseModelConfig({ ...base, ...patch }), (e: Error) => e instanceof ConfigError && re.test(e.message), JSON.stringify(patch));
});

test('MM-DiT with its own text encoder: training reaches the text stream, and prompts change the samples', async () => {
  const cfg = parseTrainConfig({
    model: { model: 'dit', inChannels: 1, imgSize: 8, patchSize: 4, width: 32, depth: 2, headDim: 16, textTokens: 6, textDim: 16, textEncoder: { vocab: 'captions:mnist', layers: 1, heads: 2 } },
    noise: 'uniform',
    batchSize: 16,
    steps: 6,
    lr: 1e-2,
    warmupSteps: 1,
    labelDrop: 0,
    emaDecay: 0,
  });
  const family = familyOf(cfg.model);
  const step = makeTrainStep(cfg);
  const params = family.init(cfg.model, 0);
  const adam = initAdamState(params);
  let state: TrainState = { params, m: adam.m, v: adam.v, ema: keep(params) };
  const enc = family.textEncoder!(cfg.model)!;
  const tok = new WordTokenizer(enc.tokenizer);
  const ids = (text: string) => Array.from({ length: 6 }, (_, i) => tok.encode(text).ids[i] ?? 0);
  const captions = [ids('a thick seven'), ids('a thin one')];
  const rng = new Rng(5);
  const epsShape = family.lossNoiseShape!(cfg.model, 16);
  for (let s = 0; s < cfg.steps; s++) {
    // Sevens are bright, ones dark: something the text must tell apart.
    const y = Array.from({ length: 16 }, (_, i) => i % 2);
    const x = Float32Array.from({ length: 16 * 64 }, (_, i) => (y[Math.floor(i / 64)] === 0 ? 0.8 : -0.8) + 0.05 * rng.normal());
    const eps = Float32Array.from({ length: epsShape[0]! * epsShape[1]! }, () => rng.normal());
    const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, s + 1);
    const out = step(keep(state), fromF32(x, [16, 1, 8, 8]), fromI32(y.flatMap((k) => captions[k]!), [16, 6]), np.array(cfg.lr), np.array(bc1), np.array(bc2), np.array(0), fromF32(eps, epsShape));
    assert.ok(Number.isFinite(await toNumber(out.loss)));
    (out.gradNorm as Arr).dispose();
    release(state);
    state = out.state;
  }
  const model: Model = { family, cfg: cfg.model, params: state.params };
  release([state.m, state.v, state.ema] as never);
  const text = await promptText(model, ['a thick seven', 'a thin one']);
  const r = await generate(model, { n: 2, seed: 2, text: { states: text.states, negative: text.negative }, guidance: { weight: 1, rule: 'tarflow', annealed: false, attnTemp: 1 }, solver: { name: 'euler', steps: 4 } });
  const mean = (k: number) => r.images.subarray(64 * k, 64 * (k + 1)).reduce((a, b) => a + b, 0) / 64;
  // The same noise under two prompts: the seven comes out brighter than the one.
  assert.ok(mean(0) > mean(1) + 0.5, `seven ${mean(0)}, one ${mean(1)}`);
  release(model.params);
});
