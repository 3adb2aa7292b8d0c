// The latent autoencoder: its convolutions against brute-force loops, its config's errors, the
// shapes it maps between, a short training run (the loss falls, the latents come out at unit
// variance, the decoder learns the noise level) and a save/load round trip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { fromF32, toF32, Rng } from '../../src/engine/index.js';
import { conv3x3, downsample2, upsample2 } from '../../src/nn/conv.js';
import {
  parseAutoencoderConfig,
  latentShape,
  initAutoencoder,
  latentCodec,
  type AutoencoderConfig,
} from '../../src/models/autoencoder.js';
import { ConfigError } from '../../src/models/config.js';
import { trainAutoencoder, trainAutoencoderRun, encodeDataset, AutoencoderError } from '../../src/train/autoencoder.js';
import { loadAutoencoder, saveAutoencoder } from '../../src/io/autoencoder.js';
import { CheckpointError } from '../../src/io/checkpoint.js';
import { loadMnist } from '../../src/data/mnist.js';
import type { ImageDataset } from '../../src/data/dataset.js';

const randoms = (rng: Rng, n: number) => Float32Array.from({ length: n }, () => rng.normal());

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
}

test('conv3x3 equals a brute-force SAME convolution (NHWC, taps row-major)', async () => {
  const [n, h, w, cin, cout] = [2, 5, 4, 3, 2];
  const rng = new Rng(1);
  const x = randoms(rng, n * h * w * cin);
  const wt = randoms(rng, 9 * cin * cout);
  const b = randoms(rng, cout);
  const got = await toF32(conv3x3({ w: fromF32(wt, [9 * cin, cout]), b: fromF32(b, [cout]) }, fromF32(x, [n, h, w, cin])));
  const want = new Float32Array(n * h * w * cout);
  for (let i = 0; i < n; i++) for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) for (let o = 0; o < cout; o++) {
    let s = b[o]!;
    for (let di = 0; di < 3; di++) for (let dj = 0; dj < 3; dj++) {
      const [rr, cc] = [r + di - 1, c + dj - 1];
      if (rr < 0 || rr >= h || cc < 0 || cc >= w) continue;
      for (let k = 0; k < cin; k++) s += x[((i * h + rr) * w + cc) * cin + k]! * wt[((di * 3 + dj) * cin + k) * cout + o]!;
    }
    want[((i * h + r) * w + c) * cout + o] = s;
  }
  assert.ok(maxDiff(got, want) < 1e-5, `max |Δ| ${maxDiff(got, want)}`);
});

test('downsample2 and upsample2 equal brute-force 2×2 stride-2 convolutions', async () => {
  const [n, h, w, cin, cout] = [2, 4, 6, 3, 2];
  const rng = new Rng(2);
  const x = randoms(rng, n * h * w * cin);
  const wd = randoms(rng, 4 * cin * cout);
  const bd = randoms(rng, cout);
  const down = await toF32(downsample2({ w: fromF32(wd, [4 * cin, cout]), b: fromF32(bd, [cout]) }, fromF32(x, [n, h, w, cin])));
  const want = new Float32Array(n * (h / 2) * (w / 2) * cout);
  for (let i = 0; i < n; i++) for (let r = 0; r < h / 2; r++) for (let c = 0; c < w / 2; c++) for (let o = 0; o < cout; o++) {
    let s = bd[o]!;
    for (let di = 0; di < 2; di++) for (let dj = 0; dj < 2; dj++) for (let k = 0; k < cin; k++) {
      s += x[((i * h + 2 * r + di) * w + 2 * c + dj) * cin + k]! * wd[((di * 2 + dj) * cin + k) * cout + o]!;
    }
    want[((i * (h / 2) + r) * (w / 2) + c) * cout + o] = s;
  }
  assert.ok(maxDiff(down, want) < 1e-5, `down: max |Δ| ${maxDiff(down, want)}`);

  // Transposed: each input pixel writes a 2×2 block, output channel o of tap (di, dj) at column (di·2 + dj)·cout + o.
  const z = randoms(rng, n * 2 * 3 * cin);
  const wu = randoms(rng, cin * 4 * cout);
  const bu = randoms(rng, 4 * cout);
  const up = await toF32(upsample2({ w: fromF32(wu, [cin, 4 * cout]), b: fromF32(bu, [4 * cout]) }, fromF32(z, [n, 2, 3, cin])));
  const wantUp = new Float32Array(n * 4 * 6 * cout);
  for (let i = 0; i < n; i++) for (let r = 0; r < 2; r++) for (let c = 0; c < 3; c++) for (let di = 0; di < 2; di++) for (let dj = 0; dj < 2; dj++) for (let o = 0; o < cout; o++) {
    const col = (di * 2 + dj) * cout + o;
    let s = bu[col]!;
    for (let k = 0; k < cin; k++) s += z[((i * 2 + r) * 3 + c) * cin + k]! * wu[k * 4 * cout + col]!;
    wantUp[((i * 4 + 2 * r + di) * 6 + 2 * c + dj) * cout + o] = s;
  }
  assert.ok(maxDiff(up, wantUp) < 1e-5, `up: max |Δ| ${maxDiff(up, wantUp)}`);
});

test('autoencoder configs: defaults, and clear errors for what cannot work', () => {
  const cfg = parseAutoencoderConfig({ model: 'autoencoder', inChannels: 1, imgSize: 28 });
  assert.deepEqual(cfg.channels, [32, 64]);
  assert.deepEqual(latentShape(cfg), { channels: 4, size: 7 });
  assert.deepEqual(latentShape({ ...cfg, channels: [8, 8, 8], imgSize: 32 }), { channels: 4, size: 4 });
  const bad: [unknown, RegExp][] = [
    [{ model: 'autoencoder', inChannels: 1, imgSize: 30 }, /imgSize 30 is not divisible by the 4× reduction/],
    [{ model: 'autoencoder', inChannels: 1, imgSize: 28, channels: [] }, /'channels' must be a non-empty list/],
    [{ model: 'autoencoder', inChannels: 1, imgSize: 28, channels: [8, 0] }, /'channels' must be a non-empty list/],
    [{ model: 'tarflow', inChannels: 1, imgSize: 28 }, /not an autoencoder config/],
    [{ model: 'autoencoder', imgSize: 28 }, /inChannels/],
    [{ model: 'autoencoder', inChannels: 1, imgSize: 28, latentScale: 0 }, /latentScale/],
    [[1, 2], /autoencoder config/],
  ];
  for (const [raw, re] of bad) assert.throws(() => parseAutoencoderConfig(raw), (e: Error) => e instanceof ConfigError && re.test(e.message), JSON.stringify(raw));
});

test('encoder and decoder map images to latents of latentShape and back', async () => {
  const cfg = parseAutoencoderConfig({ model: 'autoencoder', inChannels: 3, imgSize: 16, channels: [4, 6, 8], latentChannels: 2 });
  const codec = latentCodec({ cfg, params: initAutoencoder(cfg, 0) });
  const z = codec.encode(fromF32(randoms(new Rng(3), 2 * 3 * 16 * 16), [2, 3, 16, 16]));
  assert.deepEqual(z.shape, [2, 2, 2, 2]);
  const x = codec.decode(z);
  assert.deepEqual(x.shape, [2, 3, 16, 16]);
  assert.ok((await toF32(x)).every(Number.isFinite));
});

/** The first n MNIST training images. */
async function mnistHead(n: number): Promise<ImageDataset> {
  const ds = await loadMnist('train');
  return { ...ds, n, images: ds.images.subarray(0, n * 784), labels: ds.labels.subarray(0, n) };
}

test('training lowers the reconstruction error, scales latents to unit variance and fine-tunes the decoder on noisy latents', async () => {
  const train = await mnistHead(512);
  const losses: Record<string, number[]> = { reconstruction: [], decoder: [] };
  let std = NaN;
  const ae = await trainAutoencoder({
    train,
    architecture: { channels: [8, 16], latentChannels: 2 },
    steps: 60,
    decoderSteps: 20,
    batchSize: 32,
    noiseStd: 0.25,
    onEvent: (e) => {
      if (e.type === 'step') losses[e.phase]!.push(e.loss);
      if (e.type === 'scale') std = e.std;
    },
  });
  const rec = losses.reconstruction!;
  assert.equal(rec.length, 60);
  assert.equal(losses.decoder!.length, 20);
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  assert.ok(mean(rec.slice(-10)) < 0.5 * mean(rec.slice(0, 10)), `reconstruction loss ${mean(rec.slice(0, 10))} → ${mean(rec.slice(-10))}`);
  assert.equal(ae.cfg.decoderNoiseStd, 0.25);
  assert.ok(Math.abs(ae.cfg.latentScale - 1 / std) < 1e-9 * ae.cfg.latentScale);
  // The scale was measured on these images (fewer than 4096): their scaled latents have unit spread.
  const z = await encodeDataset(ae, train);
  const m = z.reduce((a, b) => a + b, 0) / z.length;
  const s = Math.sqrt(z.reduce((a, b) => a + (b - m) ** 2, 0) / z.length);
  assert.ok(Math.abs(s - 1) < 1e-3, `latent std ${s}`);
  assert.equal(z.length, 512 * 2 * 7 * 7);
});

test('encodeDataset refuses images of another shape; training refuses bad settings', async () => {
  const cfg = parseAutoencoderConfig({ model: 'autoencoder', inChannels: 1, imgSize: 32, channels: [4] });
  const train = await mnistHead(8);
  await assert.rejects(encodeDataset({ cfg, params: initAutoencoder(cfg, 0) }, train), (e: Error) => e instanceof AutoencoderError && /1×28×28 but the autoencoder takes 1×32×32/.test(e.message));
  await assert.rejects(trainAutoencoder({ train, steps: 0 }), /steps must be an integer ≥ 1, got 0/);
  await assert.rejects(trainAutoencoder({ train, steps: 1, noiseStd: Number.NaN }), /noise σ must be a finite number ≥ 0/);
});

test('an autoencoder saved and loaded is the same autoencoder; damaged directories get clear errors', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-ae-'));
  try {
    const cfg: AutoencoderConfig = { ...parseAutoencoderConfig({ model: 'autoencoder', inChannels: 1, imgSize: 28, channels: [4, 8], latentChannels: 2 }), latentScale: 1.7, decoderNoiseStd: 0.3 };
    const ae = { cfg, params: initAutoencoder(cfg, 5) };
    await saveAutoencoder(path.join(dir, 'ae'), ae, { software: 'starflow-ts', note: 'test' });
    const back = await loadAutoencoder(path.join(dir, 'ae'));
    assert.deepEqual(back.cfg, cfg);
    assert.equal(back.provenance?.note, 'test');
    const x = fromF32(randoms(new Rng(6), 3 * 784), [3, 1, 28, 28]);
    const [a, b] = [await toF32(latentCodec(ae).encode(x.ref)), await toF32(latentCodec(back).encode(x))];
    assert.equal(maxDiff(a, b), 0);

    // A config with a layout the weights do not have.
    const cfgFile = path.join(dir, 'ae', 'config.json');
    const json = JSON.parse(await readFile(cfgFile, 'utf8')) as Record<string, unknown>;
    await writeFile(cfgFile, JSON.stringify({ ...json, channels: [4, 16] }));
    await assert.rejects(loadAutoencoder(path.join(dir, 'ae')), (e: Error) => e instanceof CheckpointError && /model\.safetensors/.test(e.message));
    await writeFile(cfgFile, '{"model": "autoencoder", ');
    await assert.rejects(loadAutoencoder(path.join(dir, 'ae')), /config\.json/);
    await assert.rejects(loadAutoencoder(path.join(dir, 'missing')), /missing/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('trainAutoencoderRun saves with how it was made (data, command, commit) and refuses to replace a directory without force', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-ae-run-'));
  try {
    const out = path.join(dir, 'ae');
    const opts = { data: 'mnist:test', out, architecture: { channels: [4], latentChannels: 2 }, steps: 2, noiseStd: 0, batchSize: 8, command: 'starflow train-ae --steps 2' };
    await trainAutoencoderRun(opts);
    const back = await loadAutoencoder(out);
    assert.equal(back.provenance?.data, 'mnist:test');
    assert.equal(back.provenance?.command, 'starflow train-ae --steps 2');
    // The commit, or null where the code does not run from a git checkout of its own.
    const commit = back.provenance?.commit;
    assert.ok(commit === null || /^[0-9a-f]{40}$/.test(String(commit)), `commit ${String(commit)}`);
    assert.equal(back.cfg.decoderNoiseStd, 0);
    await assert.rejects(trainAutoencoderRun(opts), (e: Error) => e instanceof AutoencoderError && /exists: pass --force/.test(e.message));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
