// Parity with apple/ml-starflow's own model code: the fixtures in test/fixtures/starflow/ (copied
// from ../shared/reference/starflow/, computed by ml-starflow's `transformer_flow.Model` in
// PyTorch; its README says how) are converted from the reference's .pth and YAML, then run
// forward (z, per-sample log-det, loss) and, for the unconditional case, sampled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import { fromF32, toF32, keep, release } from '../../src/engine/index.js';
import { forward, starflow, type FlowParams } from '../../src/models/flow.js';
import { patchify, unpatchify } from '../../src/nn/patches.js';
import { convertStarflowStateDict, readStateDictFile } from '../../src/io/convert.js';
import { readSafetensorsFile } from '../../src/io/files.js';
import { toFloat32 } from '../../src/io/safetensors.js';
import { paramsFromHost } from '../../src/nn/params.js';
import { sampleModel } from '../../src/sampling/solvers.js';
import { NO_GUIDANCE } from '../../src/models/model.js';

const DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/starflow');

type Expected = { z: number[]; z_shape: number[]; logdet: number[]; loss: number; loss_per_sample: number[]; sample_cfg0: number[]; [k: string]: unknown };

async function loadCase(name: string) {
  const sd = await readStateDictFile(path.join(DIR, `${name}.pth`));
  const { cfg, model } = convertStarflowStateDict(sd, await readFile(path.join(DIR, `${name}.yaml`), 'utf8'), `${name}.yaml`);
  const inputs = await readSafetensorsFile(path.join(DIR, `${name}_inputs.safetensors`));
  const tensor = (k: string) => {
    const t = inputs.tensors.get(k);
    return t ? { data: toFloat32(t), shape: t.shape } : undefined;
  };
  const expected = JSON.parse(await readFile(path.join(DIR, `${name}_expected.json`), 'utf8')) as Expected;
  return { cfg, params: paramsFromHost<FlowParams>(model), x: tensor('x')!, noise: tensor('noise')!, text: tensor('text'), negative: tensor('negative_text'), expected };
}

/** max |a − b| / (1e-5 + 1e-4·|b|): ≤ 1 means within 1e-5 absolute + 1e-4 relative everywhere. */
function closeness(a: ArrayLike<number>, b: ArrayLike<number>, abs = 1e-5, rel = 1e-4): number {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (abs + rel * Math.abs(b[i]!)));
  return worst;
}

const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a, (v, i) => Math.abs(v - b[i]!)).reduce((m, v) => Math.max(m, v), 0);

for (const name of ['shared-options', 'shared']) {
  test(`forward matches ml-starflow (${name}): z, log-det per sample and loss within 1e-5 + 1e-4·|x|`, async () => {
    const c = await loadCase(name);
    const x = fromF32(c.x.data, c.x.shape);
    const text = c.text && fromF32(c.text.data, c.text.shape);
    const r = forward(keep(c.params), c.cfg, x, undefined, text);
    const zImage = unpatchify(r.z.ref, c.cfg);
    assert.deepEqual(zImage.shape, c.expected.z_shape);
    const z = await toF32(zImage);
    const logdet = await toF32(r.logdet.ref);
    const zTok = await toF32(r.z);
    const perSample = Array.from(logdet, (ld, i) => {
      const d = zTok.length / logdet.length;
      let s = 0;
      for (let j = 0; j < d; j++) s += zTok[i * d + j]! ** 2;
      return (0.5 * s) / d - ld;
    });
    const loss = perSample.reduce((a, b) => a + b, 0) / perSample.length;
    assert.ok(closeness(z, c.expected.z) <= 1, `z: max |Δ| ${maxAbs(z, c.expected.z)}`);
    assert.ok(closeness(logdet, c.expected.logdet) <= 1, `log-det ${[...logdet]} vs ${c.expected.logdet}`);
    assert.ok(closeness(perSample, c.expected.loss_per_sample) <= 1, `per-sample loss ${perSample} vs ${c.expected.loss_per_sample}`);
    assert.ok(closeness([loss], [c.expected.loss]) <= 1, `loss ${loss} vs ${c.expected.loss}`);
    release(c.params);
  });
}

const sequential = (n: number) => Array.from({ length: n }, () => ({ kind: 'sequential' as const }));

test('sequential sampling matches ml-starflow (shared-options: start token, an identity block, RoPE, softplus, GQA, SwiGLU, qk-norm) within 1e-3', async () => {
  const c = await loadCase('shared-options');
  const model = { family: starflow, cfg: c.cfg, params: c.params };
  const noise = patchify(fromF32(c.noise.data, c.noise.shape), c.cfg.patchSize);
  const { images } = await sampleModel(model, noise, undefined, { plans: sequential(2), guidance: NO_GUIDANCE });
  const got = await toF32(images);
  assert.ok(maxAbs(got, c.expected.sample_cfg0) < 1e-3, `samples differ by ${maxAbs(got, c.expected.sample_cfg0)}`);
  release(c.params);
});

test('text-conditioned sampling matches ml-starflow (shared: text prefix in the KV cache, deep block guided by the STARFlow rule, then the shallow block unguided) within 1e-3', async () => {
  const c = await loadCase('shared');
  const model = { family: starflow, cfg: c.cfg, params: c.params };
  const text = { states: fromF32(c.text!.data, c.text!.shape), negative: fromF32(c.negative!.data, c.negative!.shape) };
  for (const w of [0, 2]) {
    const want = c.expected[`sample_cfg${w}`] as number[];
    const noise = patchify(fromF32(c.noise.data, c.noise.shape), c.cfg.patchSize);
    const guidance = { weight: w, rule: 'starflow' as const, annealed: false, attnTemp: 1 };
    const { images } = await sampleModel(model, noise, undefined, { plans: sequential(2), guidance, text });
    const got = await toF32(images);
    assert.ok(maxAbs(got, want) < 1e-3, `guidance ${w}: samples differ by ${maxAbs(got, want)}`);
  }
  release([text.states, text.negative]);
  release(c.params);
});

test('the CLI end to end: convert --starflow-config; sample with image-shaped noise and text tensors (default rule: STARFlow\'s) and nll --text-key --json match the reference', async () => {
  const { starflow: cli } = await import('../cli.js');
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-starflow-cli-'));
  try {
    const modelDir = path.join(dir, 'model');
    const conv = await cli(['convert', '--from', path.join(DIR, 'shared.pth'), '--starflow-config', path.join(DIR, 'shared.yaml'), '--out', modelDir]);
    assert.equal(conv.code, 0, conv.stderr);
    const out = path.join(dir, 'samples.safetensors');
    const inputs = path.join(DIR, 'shared_inputs.safetensors');
    const r = await cli(['sample', '--model', modelDir, '--noise', inputs, '--text-key', 'text', '--negative-text-key', 'negative_text', '--cfg', '2', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const f = await readSafetensorsFile(out);
    const got = toFloat32(f.tensors.get('samples')!);
    const want = JSON.parse(await readFile(path.join(DIR, 'shared_expected.json'), 'utf8')).sample_cfg2 as number[];
    assert.ok(maxAbs(got, want) < 1e-3, `samples differ by ${maxAbs(got, want)}`);
    const nll = await cli(['nll', '--model', modelDir, '--input', inputs, '--x-key', 'x', '--text-key', 'text', '--json']);
    assert.equal(nll.code, 0, nll.stderr);
    const scored = JSON.parse(nll.stdout) as { loss: number; logdet: number[] };
    const expected = JSON.parse(await readFile(path.join(DIR, 'shared_expected.json'), 'utf8')) as Expected;
    assert.ok(closeness([scored.loss], [expected.loss]) <= 1, `nll --json loss ${scored.loss} vs ${expected.loss}`);
    assert.ok(closeness(scored.logdet, expected.logdet) <= 1, `nll --json logdet ${scored.logdet} vs ${expected.logdet}`);
    const noText = await cli(['nll', '--model', modelDir, '--input', inputs, '--x-key', 'x']);
    assert.match(noText.stderr, /needs text states: pass --text-key NAME/);
    const noNegative = await cli(['sample', '--model', modelDir, '--noise', inputs, '--text-key', 'text', '--cfg', '2', '--out', out]);
    assert.notEqual(noNegative.code, 0);
    assert.match(noNegative.stderr, /guidance on a text-conditioned model needs negative text states/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("block-jacobi (ml-starflow's block-wise Jacobi: chunks of 16, the batch's relative change, an iteration cap) converges to the reference's sequential samples", async () => {
  const { plansFor } = await import('../../src/sampling/plan.js');
  for (const [name, w] of [['shared-options', 0], ['shared', 2]] as const) {
    const c = await loadCase(name);
    const model = { family: starflow, cfg: c.cfg, params: c.params };
    const text = c.text && { states: fromF32(c.text.data, c.text.shape), negative: fromF32(c.negative!.data, c.negative!.shape) };
    const defaults = plansFor(model, { name: 'block-jacobi' });
    assert.deepEqual(defaults.map((p) => p.kind === 'jacobi' && [p.chunk, p.tol, p.maxIter, p.criterion]), defaults.map(() => [16, 1e-5, 32, 'batch']));
    const want = c.expected[`sample_cfg${w}`] as number[];
    const deviation = async (tol: number) => {
      const noise = patchify(fromF32(c.noise.data, c.noise.shape), c.cfg.patchSize);
      const guidance = { weight: w, rule: 'starflow' as const, annealed: false, attnTemp: 1 };
      const { images } = await sampleModel(model, noise, undefined, { plans: plansFor(model, { name: 'block-jacobi', tol }), guidance, text });
      return maxAbs(await toF32(images), want);
    };
    // ml-starflow's threshold (a relative change of 1e-3) stops early by design (measured: 0.055 and
    // 0.068 from sequential); the default, 1e-5, lands within 1e-2 (measured: 0.004 and 0.003); a
    // tight one reaches the sequential solution.
    const reference = await deviation(1e-3);
    const byDefault = await deviation(defaults[0]!.kind === 'jacobi' ? defaults[0]!.tol : NaN);
    const tight = await deviation(1e-10);
    assert.ok(tight < 1e-3, `${name}: block-jacobi at tol 1e-10 differs from sequential by ${tight}`);
    assert.ok(byDefault < 1e-2, `${name}: at the default tol by ${byDefault}`);
    assert.ok(reference < 0.2 && reference >= byDefault, `${name}: at ml-starflow's tol 1e-3 by ${reference}`);
    if (text) release([text.states, text.negative]);
    release(c.params);
  }
});
