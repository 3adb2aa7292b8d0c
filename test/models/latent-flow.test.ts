// Latent flows: a flow whose config names an autoencoder models its latents. Training encodes the
// set once and keeps the autoencoder inside the checkpoint (so the directory travels whole and
// resumes without the original), sampling decodes exactly what the flow draws, likelihoods are of
// the noisy latents, and a missing or mismatched autoencoder is named in the error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { fromF32, toF32 } from '../../src/engine/index.js';
import { initAutoencoder, latentCodec, parseAutoencoderConfig } from '../../src/models/autoencoder.js';
import { saveAutoencoder } from '../../src/io/autoencoder.js';
import { loadModel, saveModel } from '../../src/io/model.js';
import { CheckpointError } from '../../src/io/checkpoint.js';
import { train, TrainingError, type TrainEvent } from '../../src/train/trainer.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { initModel, parseModelConfig } from '../../src/models/registry.js';
import { generate } from '../../src/sampling/pipeline.js';
import { evaluateBpd } from '../../src/eval/likelihood.js';
import { loadMnist } from '../../src/data/mnist.js';
import { imageShapeOf } from '../../src/models/model.js';
import { starflow } from '../cli.js';

const AE = parseAutoencoderConfig({ model: 'autoencoder', inChannels: 1, imgSize: 28, channels: [4, 8], latentChannels: 2, latentScale: 2, decoderNoiseStd: 0.3 });
const FLOW = { model: 'starflow', inChannels: 2, imgSize: 7, patchSize: 1, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 10, noiseStd: 0.3 };

function trainConfig(aeDir: string, over: Record<string, unknown> = {}) {
  return parseTrainConfig({
    model: { ...FLOW, autoencoder: aeDir },
    noise: 'gaussian',
    batchSize: 8,
    steps: 6,
    lr: 1e-3,
    warmupSteps: 1,
    logEvery: 1,
    evalEvery: 4,
    evalImages: 16,
    sampleEvery: 0,
    checkpointEvery: 2,
    ...over,
  });
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-latent-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('a latent flow trains on encoded latents, keeps its autoencoder in the checkpoint, resumes from it, and samples decoded images', async () =>
  withDir(async (dir) => {
    const aeDir = path.join(dir, 'ae');
    await saveAutoencoder(aeDir, { cfg: AE, params: initAutoencoder(AE, 1) });
    const events: TrainEvent[] = [];
    await train(trainConfig(aeDir), { outDir: path.join(dir, 'run'), maxSteps: 4, onEvent: (e) => events.push(e) });
    const latents = events.find((e) => e.type === 'latents');
    assert.ok(latents && latents.type === 'latents');
    assert.deepEqual(latents.shape, [2, 7, 7]);
    assert.equal(latents.images, 60000);
    const evals = events.filter((e) => e.type === 'eval');
    assert.equal(evals.length, 1);
    assert.ok(evals[0]!.type === 'eval' && evals[0]!.latent && Number.isFinite(evals[0]!.bpd));

    const ck = path.join(dir, 'run', 'checkpoint');
    const cfgJson = JSON.parse(await readFile(path.join(ck, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfgJson.autoencoder, 'autoencoder');
    assert.ok((await stat(path.join(ck, 'autoencoder', 'model.safetensors'))).size > 0);

    // Resuming reads the copy in the checkpoint: the original may be gone.
    await rm(aeDir, { recursive: true });
    const resumed: TrainEvent[] = [];
    await train(null, { outDir: path.join(dir, 'run'), onEvent: (e) => resumed.push(e) });
    const stop = resumed.find((e) => e.type === 'stop');
    assert.ok(stop && stop.type === 'stop' && stop.step === 6);

    const model = await loadModel(ck);
    assert.ok(model.autoencoder);
    assert.deepEqual(model.autoencoder.cfg, AE);
    assert.deepEqual(imageShapeOf(model), { channels: 1, size: 28 });
    const labels = [0, 1, 2, 3];
    const out = await generate(model, { n: 4, seed: 3, labels });
    assert.deepEqual(out.shape, [4, 1, 28, 28]);
    // The images are the decoder's output for exactly the latents the flow draws.
    const { autoencoder, ...flowOnly } = model;
    const z = await generate(flowOnly, { n: 4, seed: 3, labels });
    assert.deepEqual(z.shape, [4, 2, 7, 7]);
    const decoded = await toF32(latentCodec(autoencoder).decode(fromF32(z.images, z.shape)));
    assert.equal(decoded.reduce((m, v, i) => Math.max(m, Math.abs(v - out.images[i]!)), 0), 0);

    // Likelihoods of images are of their latents: seeded, so repeatable.
    const test = await loadMnist('test');
    const [a, b] = [await evaluateBpd(model, test, 8, { seed: 1 }), await evaluateBpd(model, test, 8, { seed: 1 })];
    assert.ok(Number.isFinite(a.mean));
    assert.equal(a.mean, b.mean);
  }));

test('latent training refuses uniform dequantisation and flips, and a missing autoencoder by name', async () =>
  withDir(async (dir) => {
    const aeDir = path.join(dir, 'ae');
    await saveAutoencoder(aeDir, { cfg: AE, params: initAutoencoder(AE, 1) });
    const run = (over: Record<string, unknown>) => train(trainConfig(aeDir, over), { outDir: path.join(dir, 'run'), maxSteps: 1, force: true });
    await assert.rejects(run({ noise: 'uniform' }), (e: Error) => e instanceof TrainingError && /not uniform dequantisation/.test(e.message));
    await assert.rejects(run({ data: { train: 'mnist:train', test: 'mnist:test', flip: true } }), (e: Error) => e instanceof TrainingError && /flip/.test(e.message));
    await assert.rejects(
      train(trainConfig(path.join(dir, 'nowhere')), { outDir: path.join(dir, 'run2'), maxSteps: 1 }),
      (e: Error) => /names the autoencoder '.*nowhere'.*cannot be loaded/.test(e.message),
    );
  }));

test('loading a latent model whose autoencoder is missing or does not fit its latents says which', async () =>
  withDir(async (dir) => {
    const model = { ...initModel(parseModelConfig(FLOW), 0), autoencoder: { cfg: AE, params: initAutoencoder(AE, 1) } };
    const modelDir = path.join(dir, 'm');
    await saveModel(modelDir, model);
    const back = await loadModel(modelDir);
    assert.deepEqual(back.autoencoder?.cfg, AE);

    // Another autoencoder whose latents have 3 channels, put in its place.
    const other = { ...AE, latentChannels: 3 };
    await saveAutoencoder(path.join(modelDir, 'autoencoder'), { cfg: other, params: initAutoencoder(other, 1) });
    await assert.rejects(loadModel(modelDir), (e: Error) => e instanceof CheckpointError && /draws 2×7×7 latents but its autoencoder .* makes 3×7×7: they do not belong together/.test(e.message));

    await rm(path.join(modelDir, 'autoencoder'), { recursive: true });
    await assert.rejects(loadModel(modelDir), (e: Error) => e instanceof CheckpointError && /names the autoencoder 'autoencoder'.*cannot be loaded/.test(e.message));

    // A config naming a directory elsewhere is resolved against the model's directory.
    const json = JSON.parse(await readFile(path.join(modelDir, 'config.json'), 'utf8')) as Record<string, unknown>;
    await saveAutoencoder(path.join(dir, 'shared-ae'), { cfg: AE, params: initAutoencoder(AE, 1) });
    await writeFile(path.join(modelDir, 'config.json'), JSON.stringify({ ...json, autoencoder: '../shared-ae' }));
    assert.deepEqual((await loadModel(modelDir)).autoencoder?.cfg, AE);
  }));

test('the CLI on a latent model: nll reports latent bits/dim and says what they measure; sample writes images; denoise refuses', async () =>
  withDir(async (dir) => {
    const modelDir = path.join(dir, 'm');
    await saveModel(modelDir, { ...initModel(parseModelConfig(FLOW), 0), autoencoder: { cfg: AE, params: initAutoencoder(AE, 1) } });
    const nll = await starflow(['nll', '--model', modelDir, '--n', '4']);
    assert.equal(nll.code, 0, nll.stderr);
    assert.match(nll.stdout, /mnist:test: [\d.]+ latent bits\/dim over 4 images/);
    assert.match(nll.stdout, /not comparable with/);
    const json = await starflow(['nll', '--model', modelDir, '--n', '4', '--json']);
    assert.equal(json.code, 0, json.stderr);
    assert.equal((JSON.parse(json.stdout) as { of: string }).of, 'latents');
    const grid = path.join(dir, 'grid.png');
    const sample = await starflow(['sample', '--model', modelDir, '--n', '2', '--class', '4', '--out', grid]);
    assert.equal(sample.code, 0, sample.stderr);
    assert.ok((await stat(grid)).size > 0);
    const denoise = await starflow(['denoise', '--model', modelDir, '--input', grid, '--out', path.join(dir, 'd.safetensors')]);
    assert.notEqual(denoise.code, 0);
    assert.match(denoise.stderr, /this is a latent model/);
  }));
