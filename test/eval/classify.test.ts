// Classification by Bayes' rule (src/eval/classify.ts) on a tiny random class-conditional TARFlow:
// the predictions must be the per-image argmin over classes of the NLL, computed here
// independently (one nllOf call per class over the whole set), whatever the batch size; the
// accuracy must count exactly the first n images; unconditional models are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { fromF32, fromI32, toF32, release, Rng } from '../../src/engine/index.js';
import { initFlow, parseFlowConfig, tarflow, type FlowConfig, type FlowParams } from '../../src/models/flow.js';
import type { Model } from '../../src/models/model.js';
import type { ImageDataset } from '../../src/data/dataset.js';
import { classify } from '../../src/eval/classify.js';
import { nllOf, LikelihoodError } from '../../src/eval/likelihood.js';

const CLASSES = 3;
const SIDE = 8;
/** Images classified (n) and held by the dataset (more, so that n < ds.n is exercised). */
const N = 7;
const DS_N = 9;

function tinyConfig(numClasses: number): FlowConfig {
  return parseFlowConfig({
    model: 'tarflow',
    inChannels: 1,
    imgSize: SIDE,
    patchSize: 2,
    width: 16,
    headDim: 8,
    numBlocks: 2,
    layersPerBlock: 1,
    numClasses,
  });
}

/**
 * A random model whose class matters: projOut weights ~ N(0, 0.1²) instead of 0 (an untrained flow
 * is nearly the identity and ignores the label) and class embeddings ~ N(0, 0.3²) instead of σ 0.01
 * (as randomModel in test/models/tarflow-properties.test.ts).
 */
function randomModel(cfg: FlowConfig, seed: number): FlowParams {
  const params = initFlow(cfg, seed);
  const rng = new Rng(seed + 1000);
  const redraw = (a: { size: number; shape: readonly number[]; dispose(): void }, std: number) => {
    const d = new Float32Array(a.size);
    for (let i = 0; i < d.length; i++) d[i] = std * rng.normal();
    a.dispose();
    return fromF32(d, [...a.shape]);
  };
  for (const block of params.blocks) {
    block.projOut.w = redraw(block.projOut.w, 0.1);
    if (block.classEmbed) block.classEmbed = redraw(block.classEmbed, 0.3);
  }
  return params;
}

/** DS_N random 1×8×8 byte images; labels filled in later. */
function randomImages(seed: number): Uint8Array {
  const rng = new Rng(seed);
  return Uint8Array.from({ length: DS_N * SIDE * SIDE }, () => Math.floor(256 * rng.uniform()));
}

/** The NLL of each of the first n images under each class, [class][image]; pixels mapped to [−1, 1] here, as makeBatch does. */
async function nllTable(model: Model, images: Uint8Array, n: number): Promise<Float32Array[]> {
  const x = Float32Array.from(images.subarray(0, n * SIDE * SIDE), (v) => (v / 255) * 2 - 1);
  const out: Float32Array[] = [];
  for (let k = 0; k < CLASSES; k++) {
    out.push(await toF32(nllOf(model, fromF32(x, [n, 1, SIDE, SIDE]), fromI32(Array(n).fill(k), [n]))));
  }
  return out;
}

test('classify picks the class with the smallest NLL, at any batch size, and counts only n images', async () => {
  const cfg = tinyConfig(CLASSES);
  const params = randomModel(cfg, 3);
  const model = { family: tarflow, cfg, params };
  const images = randomImages(77);

  // Brute force: per image, argmin over k of its NLL under label k (all DS_N images).
  const table = await nllTable(model, images, DS_N);
  const expected = Array.from({ length: DS_N }, (_, i) => {
    const nlls = table.map((t) => t[i]!);
    const best = nlls.indexOf(Math.min(...nlls));
    // The decision must not hinge on round-off, or a batch-size change could flip it legitimately:
    // the runner-up is at least 1e-4 nats/dim away (NLL round-off is ~1e-6).
    const margin = Math.min(...nlls.filter((_, k) => k !== best)) - nlls[best]!;
    assert.ok(margin > 1e-4, `image ${i}: classes too close (margin ${margin}; NLLs ${nlls})`);
    return best;
  });
  // A model whose prediction never changes would make the comparison weak.
  assert.ok(new Set(expected).size >= 2, `every image predicted as ${expected[0]}: the random model ignores the class`);

  // Labels: right for images 0, 2, 5, 6 and 8, wrong for 1, 3, 4 and 7. Of the first 7, 4 are right
  // (the last, 6, which the batch-size-3 run pads its last batch with, among them): counting the
  // padded copies would give 6/7. Of all 9, 5 are right; the second batch of 7 pads with image 8.
  const right = new Set([0, 2, 5, 6, 8]);
  const labels = Int32Array.from(expected, (k, i) => (right.has(i) ? k : (k + 1) % CLASSES));
  const ds: ImageDataset = { images, labels, n: DS_N, channels: 1, height: SIDE, width: SIDE, numClasses: CLASSES };

  const progress: [number, number][] = [];
  const small = await classify(model, ds, N, { batchSize: 3, onBatch: (done, total) => progress.push([done, total]) });
  const whole = await classify(model, ds, N, { batchSize: N });
  // n beyond the dataset: all DS_N images, in batches of 7 and 2 padded to 7 (the shape already compiled).
  const all = await classify(model, ds, 100, { batchSize: N });

  for (const [name, r, n, accuracy] of [
    ['n 7, batch size 3', small, N, 4 / 7],
    ['n 7, batch size 7', whole, N, 4 / 7],
    ['n 100 (9 images), batch size 7', all, DS_N, 5 / 9],
  ] as const) {
    assert.equal(r.n, n, name);
    assert.equal(r.predictions.length, n, name);
    assert.deepEqual([...r.predictions], expected.slice(0, n), `${name}: predictions differ from the brute-force argmin`);
    const share = [...r.predictions].filter((p, i) => p === labels[i]).length / n;
    assert.equal(r.accuracy, share, name);
    assert.equal(r.accuracy, accuracy, name);
  }
  assert.deepEqual(progress, [[3, 7], [6, 7], [7, 7]]);
  release(params);
});

test('classify refuses an unconditional model with a LikelihoodError', async () => {
  const cfg = tinyConfig(0);
  const params = initFlow(cfg, 1);
  const model = { family: tarflow, cfg, params };
  const ds: ImageDataset = {
    images: randomImages(5), labels: new Int32Array(DS_N), n: DS_N, channels: 1, height: SIDE, width: SIDE, numClasses: 1,
  };
  await assert.rejects(classify(model, ds, 4, { batchSize: 2 }), (e: unknown) => {
    assert.ok(e instanceof LikelihoodError, `expected a LikelihoodError, got ${e}`);
    assert.match(e.message, /class-conditional/);
    assert.match(e.message, /numClasses 0/);
    return true;
  });
  release(params);
});
