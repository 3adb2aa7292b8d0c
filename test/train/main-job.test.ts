// The main job (npm start) on the tiny preset: it trains with a fitted schedule, writes a guided,
// denoised grid with one row per class, scores the samples and sets the shipped models' figures
// beside them only when measured the same way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import { runMainJob } from '../../src/train/main-job.js';
import { decodePng } from '../../src/io/png.js';

test('runMainJob: a guided (cfg 2), denoised grid in class rows, sample quality and test bits/dim with what they mean', { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-main-'));
  try {
    const out = path.join(dir, 'main');
    const r = await runMainJob({ preset: 'mnist-tiny', outDir: out, minutes: 5, maxSteps: 4, qualitySamples: 20, testImages: 50, workers: 1 });
    assert.equal(r.steps, 4);
    const png = decodePng(await readFile(r.samples));
    // 10 rows of 28-pixel digits with 2-pixel padding: one row per class, 10 per row.
    assert.deepEqual([png.width, png.height], [10 * 30 + 2, 10 * 30 + 2]);
    const result = JSON.parse(await readFile(r.resultFile, 'utf8')) as {
      sampleQuality: { n: number; guidance: number; denoise: boolean; frechet: number; classAccuracy: number; meaning: string };
      testBpdMeaning: string;
      images: number;
      shipped: unknown[];
    };
    assert.equal(result.sampleQuality.guidance, 2);
    assert.equal(result.sampleQuality.denoise, true, 'the tiny preset trains on Gaussian-noised images');
    assert.equal(result.sampleQuality.n, 20);
    assert.ok(Number.isFinite(result.sampleQuality.frechet) && result.sampleQuality.classAccuracy >= 0);
    assert.match(result.sampleQuality.meaning, /lower is better/);
    assert.match(result.testBpdMeaning, /not a likelihood figure/);
    assert.equal(result.images, 50);
    assert.deepEqual(result.shipped, [], 'the shipped models were measured on 500 samples: not compared with 20');
    assert.ok((await readFile(r.report, 'utf8')).includes('cfg 2'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
