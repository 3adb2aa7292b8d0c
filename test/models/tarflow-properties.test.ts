// Properties of the flow that hold for any weights, checked on tiny random models:
// - invertibility: forward (data → noise) then the sequential sampler (noise → data) is the identity;
// - the log-determinant: forward().logdet equals log|det ∂z/∂x| / D of the full Jacobian, taken
//   exactly by reverse-mode AD and its determinant by LU on the host in float64;
// - learning: the real jitted training step lowers the loss on a fixed small MNIST subset.
// The output projections initialise to zero (the untrained flow is nearly the identity), so the
// random models get their projOut weights perturbed to make every block a non-trivial map.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { np, fromF32, fromI32, toF32, toNumber, jit, grad, keep, release, Rng, type Arr } from '../../src/engine/index.js';
import { initFlow, forward, type FlowParams , tarflow } from '../../src/models/flow.js';
import { parseFlowConfig as parseModelConfig, tokenShape, type FlowConfig } from '../../src/models/flow.js';
import { sampleFromNoise, type BlockPlan } from '../../src/sampling/solvers.js';
import { NO_GUIDANCE } from '../../src/models/model.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { makeTrainStep, type TrainState } from '../../src/train/step.js';
import { initAdamState, adamScalars, cosineLr, emaDecayAt, ADAMW_DEFAULTS } from '../../src/nn/optim.js';
import { loadMnist } from '../../src/data/mnist.js';
import { makeBatch } from '../../src/data/transforms.js';
import { maxAbsDiff } from '../fixture.js';

/** STARFlow's options, each in a tiny model (head size 8 allows 2-D RoPE; conditioning in the deep block only). */
const STARFLOW_OPTIONS = [
  ['STARFlow: start token, RoPE, softplus with soft clip, L2R, final norm', { model: 'starflow', softClip: 2 }, undefined],
  ['STARFlow: 3 blocks [1, 0, 2] (an identity block), deep block twice as wide, 4 classes in the deep block only', { model: 'starflow', numBlocks: 3, layersPerBlock: [1, 0, 2], deepWidth: 32, numClasses: 4, condTopOnly: true }, [3, -1, 0]],
  ['STARFlow: RMSNorm, SwiGLU, qk-norm, post-norm, grouped-query attention (1 kv head), no biases, learned positions, exp scales', { model: 'starflow', norm: 'rms', mlp: 'swiglu', qkNorm: true, postNorm: true, kvHeads: 1, bias: false, positions: 'learned', scale: 'exp' }, undefined],
] as const;

function tinyConfig(over: Record<string, unknown> = {}): FlowConfig {
  return parseModelConfig({
    model: 'tarflow',
    inChannels: 1,
    imgSize: 8,
    patchSize: 2,
    width: 16,
    headDim: 8,
    numBlocks: 2,
    layersPerBlock: 1,
    ...over,
  });
}

/**
 * A random model whose blocks all do something: projOut weights ~ N(0, scale²) instead of 0.
 * scale 0.1 keeps z moderate (|z| ≲ 2 on these inputs); 0.4 makes |z| reach 1e5 on 16 dims,
 * where float32 round-off swamps the checks.
 */
function randomModel(cfg: FlowConfig, seed: number, scale = 0.1): FlowParams {
  const params = initFlow(cfg, seed);
  const rng = new Rng(seed + 1000);
  for (const block of params.blocks) {
    if (!block.projOut) continue; // an identity block
    const w = block.projOut.w;
    const data = new Float32Array(w.size);
    for (let i = 0; i < data.length; i++) data[i] = scale * rng.normal();
    block.projOut.w = fromF32(data, [...w.shape]);
    w.dispose();
    if (block.classEmbed) {
      // Class embeddings init at σ 0.01; make them matter for the labelled round trip.
      const e = block.classEmbed;
      const d = new Float32Array(e.size);
      for (let i = 0; i < d.length; i++) d[i] = 0.3 * rng.normal();
      block.classEmbed = fromF32(d, [...e.shape]);
      e.dispose();
    }
  }
  return params;
}

function hostUniform(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());
}

async function roundTrip(cfg: FlowConfig, labels: number[] | undefined, seed: number) {
  const params = randomModel(cfg, seed);
  const b = 3;
  const shape = [b, cfg.inChannels, cfg.imgSize, cfg.imgSize];
  const x = hostUniform(b * tokenShape(cfg).dims, seed + 7);
  const y = labels ? fromI32(labels, [b]) : undefined;
  const r = forward(keep(params), cfg, fromF32(x, shape), y);
  r.logdet.dispose();
  // The forward map must not be the identity, or the test would prove nothing.
  const z = await toF32(r.z.ref);
  const plans: BlockPlan[] = Array.from({ length: cfg.layersPerBlock.filter((n) => n > 0).length }, () => ({ kind: 'sequential' }));
  const { images } = await sampleFromNoise({ family: tarflow, cfg, params }, r.z, labels, { plans, guidance: NO_GUIDANCE });
  const back = await toF32(images);
  release(params);
  return { x, z, back };
}

for (const [name, over, labels] of [
  ['unconditional, affine', {}, undefined],
  ['4 classes, affine', { numClasses: 4 }, [0, 3, 1]],
  ['unconditional, volume-preserving (nvp=false)', { nvp: false }, undefined],
  ['4 classes, volume-preserving, 3 blocks', { numClasses: 4, nvp: false, numBlocks: 3 }, [2, -1, 1]],
  ['4 classes, 2 layers per block', { numClasses: 4, layersPerBlock: 2 }, [1, 0, -1]],
  ...STARFLOW_OPTIONS,
] as const) {
  test(`x → z → x round trip through forward and the sequential sampler: ${name}`, async (t) => {
    const cfg = tinyConfig(over);
    const { x, z, back } = await roundTrip(cfg, labels ? [...labels] : undefined, 11);
    // z is in token order, x in image order: compare the sizes of the change instead.
    let moved = 0;
    const xt = x.length;
    for (let i = 0; i < xt; i++) moved += z[i]! ** 2 - x[i]! ** 2;
    assert.ok(z.some((v) => !Number.isFinite(v)) === false, 'z is finite');
    assert.ok(Math.abs(moved) > 1e-2, `the random flow changes x (Σz² − Σx² = ${moved})`);
    const err = maxAbsDiff(back, x);
    t.diagnostic(`round-trip max abs error ${err.toExponential(2)}`);
    assert.ok(err < 1e-4, `round-trip max abs error ${err}`);
  });
}

test('class labels change the map: inverting with other labels does not recover x', async () => {
  const cfg = tinyConfig({ numClasses: 4 });
  const params = randomModel(cfg, 5);
  const b = 2;
  const shape = [b, 1, 8, 8];
  const x = hostUniform(b * 64, 3);
  const r = forward(keep(params), cfg, fromF32(x, shape), fromI32([0, 1], [b]));
  r.logdet.dispose();
  const plans: BlockPlan[] = [{ kind: 'sequential' }, { kind: 'sequential' }];
  const { images } = await sampleFromNoise({ family: tarflow, cfg, params }, r.z, [2, 3], { plans, guidance: NO_GUIDANCE });
  const err = maxAbsDiff(await toF32(images), x);
  release(params);
  assert.ok(err > 1e-2, `wrong labels should not invert the flow (max abs error ${err})`);
});

// ---- log-determinant against the full Jacobian ----

/** log|det A| of a row-major n×n matrix, by LU with partial pivoting in float64. */
function logAbsDet(a: Float64Array, n: number): number {
  const m = Float64Array.from(a);
  let logdet = 0;
  for (let k = 0; k < n; k++) {
    let p = k;
    for (let i = k + 1; i < n; i++) if (Math.abs(m[i * n + k]!) > Math.abs(m[p * n + k]!)) p = i;
    const pivot = m[p * n + k]!;
    if (pivot === 0) return -Infinity;
    if (p !== k) {
      for (let j = 0; j < n; j++) {
        const t = m[k * n + j]!;
        m[k * n + j] = m[p * n + j]!;
        m[p * n + j] = t;
      }
    }
    logdet += Math.log(Math.abs(pivot));
    for (let i = k + 1; i < n; i++) {
      const f = m[i * n + k]! / pivot;
      if (f === 0) continue;
      for (let j = k; j < n; j++) m[i * n + j] = m[i * n + j]! - f * m[k * n + j]!;
    }
  }
  return logdet;
}

test('logAbsDet (the host LU used below) is right on known matrices', () => {
  // det [[0, 2], [3, 4]] = −6 (needs a pivot); a permuted diagonal; a singular matrix.
  assert.ok(Math.abs(logAbsDet(Float64Array.from([0, 2, 3, 4]), 2) - Math.log(6)) < 1e-12);
  assert.ok(Math.abs(logAbsDet(Float64Array.from([0, 0, 5, 2, 0, 0, 0, 0.5, 0]), 3) - Math.log(5)) < 1e-12);
  assert.equal(logAbsDet(Float64Array.from([1, 2, 2, 4]), 2), -Infinity);
});

for (const [name, over, label] of [
  ['unconditional, 2 blocks', {}, undefined],
  ['3 classes, 3 blocks of 2 layers', { numClasses: 3, numBlocks: 3, layersPerBlock: 2 }, 2],
  ['volume-preserving (log-det 0)', { nvp: false }, undefined],
  ...STARFLOW_OPTIONS.map(([n, o, l]) => [n, o, l?.[0]] as const),
] as const) {
  test(`log-det equals log|det ∂z/∂x| / D of the AD Jacobian (1×4×4, D = 16): ${name}`, async (t) => {
    const cfg = tinyConfig({ imgSize: 4, ...over });
    const { dims: d, tokens, tokenDim } = tokenShape(cfg);
    assert.equal(d, 16);
    assert.equal(tokens * tokenDim, d);
    const params = randomModel(cfg, 23);
    const x1 = hostUniform(d, 99);
    // D copies of the image; the loss picks output i of copy i, so the gradient w.r.t. copy i is
    // row i of the Jacobian (samples do not interact). patchify is a permutation: |det| unchanged.
    const xs = new Float32Array(d * d);
    for (let i = 0; i < d; i++) xs.set(x1, i * d);
    const eye = new Float32Array(d * d);
    for (let i = 0; i < d; i++) eye[i * d + i] = 1;
    const labels = label === undefined ? undefined : new Array<number>(d).fill(label);
    const pick = (p: FlowParams, x: Arr, e: Arr, y: Arr) => {
      const r = forward(p, cfg, x, cfg.numClasses > 0 ? y : (y.dispose(), undefined));
      r.logdet.dispose();
      return r.z.reshape([d, d]).mul(e).sum();
    };
    const jac = jit((p: FlowParams, x: Arr, e: Arr, y: Arr) => grad(pick, { argnums: 1 })(p, x, e, y));
    const ys = fromI32(labels ?? new Array<number>(d).fill(0), [d]);
    const rows = await toF32(jac(keep(params), fromF32(xs, [d, 1, 4, 4]), fromF32(eye, [d, d]), ys));
    const j = Float64Array.from(rows); // row i: ∂z_i/∂x, x in image order
    const bruteForce = logAbsDet(j, d) / d;

    const r = forward(keep(params), cfg, fromF32(x1, [1, 1, 4, 4]), label === undefined ? undefined : fromI32([label], [1]));
    r.z.dispose();
    const logdet = await toNumber(r.logdet);
    release(params);
    assert.ok(Number.isFinite(bruteForce), `log|det J| = ${bruteForce}`);
    if (cfg.nvp) assert.ok(Math.abs(logdet) > 1e-3, `the random flow has a non-trivial log-det (${logdet})`);
    const err = Math.abs(logdet - bruteForce);
    t.diagnostic(`logdet ${logdet.toFixed(6)}, log|det J|/D ${bruteForce.toFixed(6)}, difference ${err.toExponential(2)}`);
    assert.ok(err < 1e-4, `logdet ${logdet} vs log|det J|/D ${bruteForce} (difference ${err})`);
  });
}

test('log-det: a central finite-difference Jacobian agrees with the AD one (sanity check of the AD rows)', async (t) => {
  const cfg = tinyConfig({ imgSize: 4 });
  const d = 16;
  const params = randomModel(cfg, 31);
  const x1 = hostUniform(d, 5);
  const f = jit((p: FlowParams, x: Arr) => {
    const r = forward(p, cfg, x);
    r.logdet.dispose();
    return r.z;
  });
  // All 2·D perturbed images in one batch, float32; h = 1e-2 balances round-off and truncation.
  const h = 1e-2;
  const xs = new Float32Array(2 * d * d);
  for (let k = 0; k < d; k++) {
    xs.set(x1, 2 * k * d);
    xs.set(x1, (2 * k + 1) * d);
    xs[2 * k * d + k] = x1[k]! + h;
    xs[(2 * k + 1) * d + k] = x1[k]! - h;
  }
  const z = await toF32(f(keep(params), fromF32(xs, [2 * d, 1, 4, 4])));
  const j = new Float64Array(d * d); // j[i, k] = ∂z_i/∂x_k
  for (let k = 0; k < d; k++) for (let i = 0; i < d; i++) j[i * d + k] = (z[2 * k * d + i]! - z[(2 * k + 1) * d + i]!) / (2 * h);
  const r = forward(keep(params), cfg, fromF32(x1, [1, 1, 4, 4]));
  r.z.dispose();
  const logdet = await toNumber(r.logdet);
  release(params);
  const fd = logAbsDet(j, d) / d;
  t.diagnostic(`finite differences ${fd.toFixed(6)} vs logdet ${logdet.toFixed(6)}`);
  assert.ok(Math.abs(fd - logdet) < 2e-3, `finite differences ${fd} vs logdet ${logdet}`);
});

// ---- learning ----

test('likelihood improves: 30 jitted training steps lower the loss on a fixed MNIST subset', async (t) => {
  const cfg = parseTrainConfig({
    model: { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 },
    batchSize: 16,
    steps: 30,
    lr: 3e-3,
    warmupSteps: 3,
    labelDrop: 0,
    emaDecay: 0,
  });
  const ds = await loadMnist('train');
  const subset = 64;
  const step = makeTrainStep(cfg);
  const params = initFlow(cfg.model as FlowConfig, 0);
  const adam = initAdamState(params);
  let state: TrainState = { params, m: adam.m, v: adam.v, ema: keep(params) };
  const losses: number[] = [];
  const rng = new Rng(7);
  for (let s = 0; s < cfg.steps; s++) {
    const idx = Array.from({ length: cfg.batchSize }, (_, i) => (s * cfg.batchSize + i) % subset);
    const batch = makeBatch(ds, idx);
    for (let i = 0; i < batch.x.length; i++) batch.x[i] = batch.x[i]! + cfg.model.noiseStd * rng.normal();
    const lr = cosineLr({ lr: cfg.lr, minLr: cfg.minLr, warmupSteps: cfg.warmupSteps, totalSteps: cfg.steps }, s);
    const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, s + 1);
    const out = step(keep(state), fromF32(batch.x, [cfg.batchSize, 1, 28, 28]), fromI32(batch.y, [cfg.batchSize]), np.array(lr), np.array(bc1), np.array(bc2), np.array(emaDecayAt(cfg.emaDecay, s)));
    losses.push(await toNumber(out.loss));
    (out.gradNorm as Arr).dispose();
    release(state);
    state = out.state;
  }
  release(state);
  assert.ok(losses.every(Number.isFinite), `finite losses: ${losses}`);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const first = mean(losses.slice(0, 5));
  const last = mean(losses.slice(-5));
  t.diagnostic(`losses: ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  // Measured: first-5 ≈ 0.5 nats/dim above the last 5; 0.1 leaves a wide margin above noise.
  assert.ok(last < first - 0.1, `loss first 5 steps ${first.toFixed(4)}, last 5 ${last.toFixed(4)}: ${losses.map((l) => l.toFixed(3)).join(' ')}`);
});
