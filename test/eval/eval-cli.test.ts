import { starflow } from '../cli.js';
// starflow eval end to end on a tiny random model and a tiny random feature extractor (no
// training): the files it writes, the training curves of a run directory, and its clear errors.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { release } from '../../src/engine/index.js';
import { initFlow, tarflow } from '../../src/models/flow.js';
import { parseFlowConfig as parseModelConfig } from '../../src/models/flow.js';
import { saveModel } from '../../src/io/model.js';
import { captionWords, MNIST_VOCABULARY } from '../../src/data/captions.js';
import { FEATURE_NET_DEFAULTS, initFeatureNet, saveFeatureNet } from '../../src/eval/features.js';



let dir = '';
const model = (size: number) => ({ model: 'tarflow', inChannels: 1, imgSize: size, patchSize: size === 28 ? 7 : 8, width: 32, headDim: 16, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 });

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'eval-cli-'));
  for (const [name, size] of [['run/checkpoint', 28], ['m32', 32]] as const) {
    const cfg = parseModelConfig(model(size));
    const p = initFlow(cfg, 0);
    await saveModel(path.join(dir, name), { family: tarflow, cfg, params: p });
    release(p);
  }
  const log = Array.from({ length: 20 }, (_, i) => JSON.stringify({ step: 10 * (i + 1), loss: 1 - i / 20, bpd: 3 - i / 20 })).join('\n');
  await writeFile(path.join(dir, 'run', 'log.jsonl'), log + '\n' + JSON.stringify({ step: 200, testBpd: 2.1 }) + '\n');
  const fx = { ...FEATURE_NET_DEFAULTS, conv1: 4, conv2: 8, hidden: 16 };
  const p = initFeatureNet(fx, 0);
  await saveFeatureNet(path.join(dir, 'fx'), { cfg: fx, params: p, testAccuracy: 0.1 });
  release(p);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('starflow eval', () => {
  test('a model with its own text encoder draws each class from its name and is scored for class accuracy', async () => {
    const cfg = parseModelConfig({ model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, noiseStd: 0.1, textTokens: 8, textDim: 16, textEncoder: { vocab: captionWords(MNIST_VOCABULARY), layers: 1, heads: 2 } });
    const p = initFlow(cfg, 0);
    await saveModel(path.join(dir, 'text'), { family: tarflow, cfg, params: p });
    release(p);
    const out = path.join(dir, 'out-text');
    const r = await starflow(['eval', '--model', path.join(dir, 'text'), '--features', path.join(dir, 'fx'), '--n', '12', '--ref', '60', '--kid-subsets', '2', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /class c drawn from the prompt "zero", "one", "two", .*"nine"/);
    const m = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8'));
    assert.ok(m.model[0].classAccuracy >= 0 && m.model[0].classAccuracy <= 1, `class accuracy ${m.model[0].classAccuracy}`);
  });

  test('writes metrics.json, report.md, sample grids, the guidance sweep and training curves', async () => {
    const out = path.join(dir, 'out');
    const r = await starflow(['eval', '--model', path.join(dir, 'run/checkpoint'), '--features', path.join(dir, 'fx'), '--n', '12', '--ref', '60', '--kid-subsets', '2', '--cfg', '0,1', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const m = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8'));
    assert.equal(m.n, 12);
    assert.equal(m.model.length, 2);
    assert.deepEqual(m.model.map((x: { cfg: number }) => x.cfg), [0, 1]);
    for (const s of [m.floor, m.ceiling, ...m.model]) {
      assert.ok(Number.isFinite(s.frechet) && s.frechet >= 0);
      assert.ok(s.precision >= 0 && s.precision <= 1 && s.recall >= 0 && s.recall <= 1);
      assert.ok(Number.isFinite(s.kid.mean));
    }
    assert.equal(m.curves.lastTestBpd, 2.1);
    const report = await readFile(path.join(out, 'report.md'), 'utf8');
    assert.match(report, /Fréchet distance/);
    assert.match(report, /curves\.png/);
    for (const f of ['samples-cfg0.png', 'samples-cfg1.png', 'guidance.png', 'curves.png', 'floor.png', 'ceiling.png']) await access(path.join(out, f));
  });

  test('--n 0 is a clear error', async () => {
    const r = await starflow(['eval', '--model', path.join(dir, 'run/checkpoint'), '--features', path.join(dir, 'fx'), '--n', '0', '--out', path.join(dir, 'o2')]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^starflow eval: error: --n 0: there are no samples to evaluate/);
  });

  test('a model of another image size than the extractor is a clear error', async () => {
    await mkdir(path.join(dir, 'o3'), { recursive: true });
    const r = await starflow(['eval', '--model', path.join(dir, 'm32'), '--features', path.join(dir, 'fx'), '--n', '8', '--out', path.join(dir, 'o3')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the model makes 1×32×32 images but the feature extractor .* takes 1×28×28/);
  });
});
