// The main job (`npm start`): train the main preset on the embedded default data within a time
// budget (its schedule fitted to this machine's speed), then draw a guided grid with one row per
// class, measure test bits/dim and the samples' quality (Fréchet distance, class accuracy), and
// set them beside the shipped models' figures measured the same way.
import path from 'node:path';
import { train, CHECKPOINT_DIR, type TrainOptions } from './trainer.js';
import { loadPreset } from './presets.js';
import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { writeFileAtomic } from '../io/files.js';
import { writePngGrid } from '../io/png.js';
import { shippedModels, type SampleQuality } from '../io/shipped.js';
import { generate, classRows } from '../sampling/pipeline.js';
import { denoisesByDefault } from '../sampling/denoise.js';
import { evaluateBpd, type BpdResult } from '../eval/likelihood.js';
import { evaluateModel } from '../eval/report.js';
import { imageShapeOf, type ModelConfig } from '../models/model.js';

/** The preset `npm start` trains: of the configurations tried, the one that drew the best samples in 15 minutes on a 2-core machine (bench/results/main-job-candidates-2026-12-03.md). */
export const MAIN_PRESET = 'mnist-main';
/** The guidance weight of the main job's grid and sample-quality figures (the shipped models' are measured at it too). */
export const MAIN_GUIDANCE = 2;
/** Samples behind the Fréchet distance and class accuracy. */
export const MAIN_QUALITY_SAMPLES = 500;

export type MainJobResult = {
  samples: string;
  resultFile: string;
  checkpoint: string;
  report: string;
  testData: string;
  testBpd: BpdResult;
  quality: SampleQuality & { floorFrechet: number };
  /** The shipped models' figures at the same guidance and sample count, for comparison. */
  shipped: { name: string; samples: SampleQuality }[];
  steps: number;
  cfg: ModelConfig;
};

export async function runMainJob(
  o: {
    preset?: string;
    outDir: string;
    minutes: number;
    guidance?: number;
    /** Samples behind the quality figures (default MAIN_QUALITY_SAMPLES; the shipped models' are compared only at that count). */
    qualitySamples?: number;
    /** Test images for bits/dim (default: the whole test set). */
    testImages?: number;
    onLog?: (line: string) => void;
  } & Pick<TrainOptions, 'onEvent' | 'signal' | 'workers' | 'maxSteps'>,
): Promise<MainJobResult> {
  const cfg = await loadPreset(o.preset ?? MAIN_PRESET);
  const weight = o.guidance ?? MAIN_GUIDANCE;
  const log = o.onLog ?? (() => {});
  // A second `npm start` keeps the first one's run: it is moved to DIR.old-<time> (and said so).
  const run = await train(cfg, { outDir: o.outDir, minutes: o.minutes, maxSteps: o.maxSteps, fitSchedule: true, workers: o.workers ?? 'auto', signal: o.signal, onEvent: o.onEvent, force: true });
  const checkpoint = path.join(o.outDir, CHECKPOINT_DIR);
  const model = await loadModel(checkpoint);
  const denoise = denoisesByDefault(model) ? { sigma: model.cfg.noiseStd, lrScale: 1 } : undefined;

  log(`sampling a grid at guidance ${weight}${denoise ? ', denoised' : ''}`);
  const samples = path.join(o.outDir, 'samples.png');
  const n = model.cfg.numClasses > 0 ? 10 * Math.min(model.cfg.numClasses, 10) : 64;
  const { labels, perRow } = classRows(n, model.cfg.numClasses);
  const grid = await generate(model, { n, labels, guidance: { weight, rule: 'tarflow', annealed: false, attnTemp: 1 }, seed: 0, denoise });
  await writePngGrid(samples, grid.images, grid.shape, { nrow: perRow });

  log(`test bits/dim on ${cfg.data.test}`);
  const test = await loadDataset(cfg.data.test, imageShapeOf(model));
  const bpd = await evaluateBpd(model, test, Math.min(o.testImages ?? test.n, test.n));

  const qualityN = o.qualitySamples ?? MAIN_QUALITY_SAMPLES;
  log(`sample quality: ${qualityN} samples at guidance ${weight} against the feature extractor's reference images`);
  const reportDir = path.join(o.outDir, 'eval');
  const ev = await evaluateModel({ modelDir: checkpoint, outDir: reportDir, n: qualityN, weights: [weight] });
  const m = ev.metrics.model[0]!;
  const quality = { n: m.n, guidance: weight, denoise: Boolean(denoise), frechet: m.frechet, classAccuracy: m.classAccuracy ?? NaN, report: ev.reportFile, floorFrechet: ev.metrics.floor.frechet };
  const shipped = shippedModels()
    .filter((s) => s.samples && s.samples.guidance === weight && s.samples.n === qualityN)
    .map((s) => ({ name: s.name, samples: s.samples! }));

  const resultFile = path.join(o.outDir, 'result.json');
  const overflowed = bpd.nonFinite.length ? { testBpdFinite: bpd.finiteMean, nonFinite: bpd.nonFinite } : {};
  const result = {
    steps: run.step,
    testBpd: Number.isFinite(bpd.mean) ? bpd.mean : null,
    testBpdMeaning: model.cfg.noiseStd > 0
      ? `bits/dim of ${bpd.perImage.length} test images (uniform dequantisation) under a model trained on Gaussian-noised images (σ = ${model.cfg.noiseStd}): a sampling recipe, not a likelihood figure`
      : `bits/dim of ${bpd.perImage.length} test images (uniform dequantisation): the model's likelihood, lower is better`,
    images: bpd.perImage.length,
    ...overflowed,
    samples,
    sampleQuality: { ...quality, meaning: 'Fréchet distance between the features of the samples and of real training images (lower is better; real test images score floorFrechet); classAccuracy: the share of samples the shipped classifier assigns to the class asked for' },
    shipped,
  };
  await writeFileAtomic(resultFile, JSON.stringify(result, null, 2) + '\n');
  return { samples, resultFile, checkpoint, report: ev.reportFile, testData: cfg.data.test, testBpd: bpd, quality, shipped, steps: run.step, cfg: model.cfg };
}
