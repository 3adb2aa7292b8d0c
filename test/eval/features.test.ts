// The feature extractor with random weights (no real training in the default suite): shapes,
// batching, checks, a checkpoint round trip and two seeded training steps on a toy dataset.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { release } from '../../src/engine/index.js';
import { Rng } from '../../src/engine/rng.js';
import { FEATURE_NET_DEFAULTS, extract, initFeatureNet, loadFeatureNet, saveFeatureNet, type FeatureNetConfig } from '../../src/eval/features.js';
import { trainClassifier } from '../../src/train/classifier.js';
import { checkModelAgainstExtractor, diagonalGaussianSamples } from '../../src/eval/baselines.js';
import { parseFlowConfig as parseModelConfig } from '../../src/models/flow.js';
import type { ImageDataset } from '../../src/data/dataset.js';

const small: FeatureNetConfig = { ...FEATURE_NET_DEFAULTS, conv1: 4, conv2: 8, hidden: 16 };

function images(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n * 784 }, () => rng.uniform() * 2 - 1);
}

function toyDataset(n: number): ImageDataset {
  const rng = new Rng(1);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
  // Class k: a bright 7×7 block at a class-specific place, on faint noise.
  const inBlock = (k: number, p: number) => {
    const [r, c] = [Math.floor(p / 28) - (k % 3) * 9, (p % 28) - Math.floor(k / 3) * 7];
    return r >= 0 && r < 7 && c >= 0 && c < 7;
  };
  const imgs = Uint8Array.from({ length: n * 784 }, (_, j) => (inBlock(Math.floor(j / 784) % 10, j % 784) ? 255 : rng.int(40)));
  return { images: imgs, labels, n, channels: 1, height: 28, width: 28, numClasses: 10 };
}

describe('feature extractor', () => {
  test('features [N, hidden] and logits [N, classes]; batching does not change them', async () => {
    const p = initFeatureNet(small, 0);
    const x = images(7, 2);
    const a = await extract(p, small, x, [7, 1, 28, 28], { batchSize: 3 });
    const b = await extract(p, small, x, [7, 1, 28, 28], { batchSize: 7 });
    assert.equal(a.features.length, 7 * 16);
    assert.equal(a.logits.length, 7 * 10);
    for (let i = 0; i < a.features.length; i++) assert.ok(Math.abs(a.features[i]! - b.features[i]!) < 1e-5);
    assert.ok(a.features.every((v) => v >= 0 && Number.isFinite(v)), 'ReLU features');
    release(p);
  });

  test('clear errors for images of another size and for no images', async () => {
    const p = initFeatureNet(small, 0);
    await assert.rejects(extract(p, small, new Float32Array(2 * 32 * 32), [2, 1, 32, 32]), /images are 1×32×32 but the feature extractor takes 1×28×28/);
    await assert.rejects(extract(p, small, new Float32Array(0), [0, 1, 28, 28]), /no images/);
    release(p);
    const model = parseModelConfig({ model: 'tarflow', inChannels: 1, imgSize: 32, patchSize: 4, width: 32, headDim: 16, numBlocks: 2, layersPerBlock: 1, numClasses: 10 });
    assert.throws(() => checkModelAgainstExtractor({ channels: model.inChannels, size: model.imgSize }, small, 'x'), /the model makes 1×32×32 images but the feature extractor \(x\) takes 1×28×28/);
  });

  test('checkpoint round trip', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'features-'));
    try {
      const p = initFeatureNet(small, 3);
      const x = images(4, 5);
      const before = await extract(p, small, x, [4, 1, 28, 28]);
      await saveFeatureNet(path.join(dir, 'fx'), { cfg: small, params: p, testAccuracy: 0.5 });
      const loaded = await loadFeatureNet(path.join(dir, 'fx'));
      assert.deepEqual(loaded.cfg, small);
      assert.equal(loaded.testAccuracy, 0.5);
      const after = await extract(loaded.params, loaded.cfg, x, [4, 1, 28, 28]);
      assert.deepEqual([...after.features], [...before.features]);
      release(p);
      release(loaded.params);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('training is seeded and lowers the loss on a toy set', async () => {
    const ds = toyDataset(64);
    const losses: number[][] = [[], []];
    for (const run of [0, 1]) {
      const net = await trainClassifier({ train: ds, cfg: small, epochs: 8, batchSize: 16, lr: 2e-2, seed: 4, onStep: (e) => losses[run]!.push(e.loss) });
      release(net.params);
    }
    assert.deepEqual(losses[0], losses[1]);
    const l = losses[0]!;
    assert.ok(l.at(-1)! < 0.5 * l[0]!, `loss ${l.join(", ")}`);
  });

  test('diagonal Gaussian ceiling: per-class samples in [-1, 1]', () => {
    const ds = toyDataset(40);
    const s = diagonalGaussianSamples(ds, 10, Array.from({ length: 10 }, (_, i) => i), 0);
    assert.equal(s.length, 10 * 784);
    assert.ok(s.every((v) => v >= -1 && v <= 1));
    // The corner of class k's block is always 255 in the toy set: its fitted mean is 1 with zero spread.
    for (let k = 0; k < 10; k++) assert.equal(s[k * 784 + (k % 3) * 9 * 28 + Math.floor(k / 3) * 7], 1);
  });
});
