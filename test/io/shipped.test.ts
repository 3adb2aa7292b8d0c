// The default model is the shipped model with the best recorded sample quality, and moves by itself
// when a better one ships; every shipped model records its figures, so the rule sees them all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import { release } from '../../src/engine/index.js';
import { initFlow, parseFlowConfig, tarflow } from '../../src/models/flow.js';
import { saveModel, recordEvaluation } from '../../src/io/model.js';
import { shippedModels, defaultShippedModel, shippedModelDir, SHIPPED_DIR } from '../../src/io/shipped.js';

const quality = (frechet: number) => ({ n: 500, guidance: 2, denoise: false, frechet, classAccuracy: 0.5, report: 'r.md' });

test('the default is the lowest recorded Fréchet distance; a better model moves it; feature extractors and unrated models are not candidates', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'sf-shipped-'));
  try {
    const cfg = parseFlowConfig({ inChannels: 1, imgSize: 8, patchSize: 4, width: 16, headDim: 8, numBlocks: 1, layersPerBlock: 1 });
    const params = initFlow(cfg, 0);
    const ship = async (name: string, samples?: object) => {
      await saveModel(path.join(root, name), { family: tarflow, cfg, params }, { note: 'kept', ...(samples ? { evaluation: { samples } } : {}) });
    };
    await ship('rough', quality(227));
    await ship('readable', quality(121));
    await ship('unrated');
    await mkdir(path.join(root, 'features'));
    await writeFile(path.join(root, 'features', 'config.json'), JSON.stringify({ model: 'mnist-cnn' }));
    await writeFile(path.join(root, 'features', 'model.safetensors'), '');
    assert.deepEqual(shippedModels(root).map((m) => [m.name, m.samples?.frechet ?? null]), [['readable', 121], ['rough', 227], ['unrated', null]]);
    assert.equal(defaultShippedModel(root)?.name, 'readable');
    assert.equal(shippedModelDir(undefined, root), path.join(root, 'readable'));

    // Recording figures on the unrated model (as `starflow eval --record` does) makes it a candidate.
    await recordEvaluation(path.join(root, 'unrated'), 'samples', quality(60));
    assert.equal(defaultShippedModel(root)?.name, 'unrated');
    const saved = JSON.parse(await readFile(path.join(root, 'unrated', 'config.json'), 'utf8')) as { width: number; provenance: { note: string; evaluation: { samples: { frechet: number } } } };
    assert.equal(saved.width, 16, 'the model config is kept');
    assert.equal(saved.provenance.note, 'kept', 'the rest of the provenance is kept');
    assert.equal(saved.provenance.evaluation.samples.frechet, 60);
    assert.throws(() => shippedModelDir('nope', root), /no shipped model "nope" \(shipped: readable, rough, unrated\)/);
    release(params);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('every shipped generative model records its sample quality at the same protocol, and the default is the best of them', () => {
  const models = shippedModels(SHIPPED_DIR);
  assert.ok(models.length >= 2);
  for (const m of models) {
    assert.ok(m.samples, `checkpoints/${m.name} records provenance.evaluation.samples ('starflow eval --record')`);
    assert.equal(m.samples.n, 500);
    assert.equal(m.samples.guidance, models[0]!.samples!.guidance, 'measured at one guidance weight, so they compare');
  }
  const best = [...models].sort((a, b) => a.samples!.frechet - b.samples!.frechet)[0]!;
  assert.equal(defaultShippedModel()?.name, best.name);
});
