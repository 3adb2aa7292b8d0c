// The sample-quality evaluation behind `starflow eval`: Fréchet distance, KID, precision/recall
// and class accuracy of a model's samples at each guidance weight, against a reference set of
// training images, with a floor (test images) and a ceiling (a diagonal Gaussian) scored the same
// way, the model's test bits/dim, and a report in a directory: metrics.json, report.md and PNGs
// (sample grids, the guidance sweep and, inside a training run, the loss and bits/dim curves).
import path from 'node:path';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { currentDevice, release } from '../engine/index.js';
import { Rng } from '../engine/rng.js';
import { loadModel, recordEvaluation } from '../io/model.js';
import type { SampleQuality } from '../io/shipped.js';
import { loadDataset } from '../data/load.js';
import type { ImageDataset } from '../data/dataset.js';
import { imageShapeOf, type Guidance, type GuidanceRule, type Model, type ModelConfig, type OdeSolverName } from '../models/model.js';
import { generate } from '../sampling/pipeline.js';
import { denoisesByDefault } from '../sampling/denoise.js';
import { plansFor, SOLVERS, type SolverChoice, type SolverName } from '../sampling/plan.js';
import { evaluationsOf, ODE_SOLVERS } from '../sampling/ode.js';
import { encodePng, imageGrid } from '../io/png.js';
import { promptText, type PromptText } from '../sampling/prompts.js';
import { CAPTION_VOCABULARIES } from '../data/captions.js';
import { makeDirs, writeFileAtomic } from '../io/files.js';
import { datasetImages, extract, loadFeatureNet, SHIPPED_FEATURES, type FeatureNetConfig, type LoadedFeatureNet } from './features.js';
import { argmaxRows, classAccuracy, featureSet, frechetFromFits, gaussianFit, kernelDistance, precisionRecall, type FeatureSet, type GaussianFit } from './metrics.js';
import { lineChart, sideBySide, type Series } from './chart.js';
import { checkModelAgainstExtractor, diagonalGaussianSamples } from './baselines.js';
import { evaluateBpd } from './likelihood.js';

/** Options that do not fit the model or each other. `option` names the EvalOptions field at fault, when one is. */
export class EvalError extends Error {
  override name = 'EvalError';
  constructor(
    message: string,
    readonly option?: keyof EvalOptions,
  ) {
    super(message);
  }
}

export type EvalOptions = {
  /** Model directory (config.json + model.safetensors). */
  modelDir: string;
  /** Feature extractor directory (default SHIPPED_FEATURES); its dataset supplies the reference and floor images. */
  featuresDir?: string;
  /** Where metrics.json, report.md and the PNGs go (created if missing). */
  outDir: string;
  /** Samples per guidance weight, and images in the floor (default 500, at least 4). */
  n?: number;
  /** Guidance weights to sweep (default [0]); the first is the headline figure. */
  weights?: number[];
  /** Default: the model's own (its sampler's guidanceRule). */
  guidanceRule?: GuidanceRule;
  /** Attention temperature of the unguided branch (default 1). */
  attnTemp?: number;
  /** A flow's solver (default sequential), or a velocity family's ODE solver (default euler). */
  solver?: SolverName | OdeSolverName;
  /** Velocity families (rectified flow, MeanFlow): step counts to sweep, one run per weight and count (default: the model's). */
  steps?: number[];
  /** Test images of the bits/dim figure (default n; 0: none). An ODE likelihood costs ~1 s an image on MNIST. */
  bpdImages?: number;
  /** gs-jacobi per-block plan. */
  strategy?: string;
  /** Samples per solver batch (default 100). */
  batchSize?: number;
  /** One score-based denoising step after sampling, at the model's noiseStd (default: for models trained with noise). */
  denoise?: boolean;
  /** Seed of the noise, the reference and floor subsets and KID's subsets (default 0). */
  seed?: number;
  /** Training images in the reference set (default 10000). */
  refN?: number;
  /** KID subsets (default 50). */
  kidSubsets?: number;
  /** One line per stage (what `starflow eval` prints on stderr). */
  onLog?: (line: string) => void;
  onProgress?: (e: EvalProgress) => void;
  /**
   * Record the headline figures (the first guidance weight) in the model's config.json as
   * provenance.evaluation.samples: how shipped models are compared, and the default model chosen.
   */
  record?: boolean;
};

/** Sampling progress at guidance weight `cfg`, the `run`-th of the sweep (from 0). */
export type EvalProgress = { stage: 'sample'; run: number; cfg: number; done: number; total: number };

export type SetMetrics = {
  name: string;
  n: number;
  frechet: number;
  kid: { mean: number; stdError: number };
  precision: number;
  recall: number;
  classAccuracy: number | null;
};

/** The model's figures at one guidance weight; `grid` is its sample grid's file name in outDir. */
export type ModelRun = SetMetrics & {
  nonFiniteSamples: number;
  cfg: number;
  /** Velocity families: steps, and network evaluations per sample (Heun: two a step; guidance's two branches run as one batch). */
  steps: number | null;
  evaluations: number | null;
  seconds: number;
  samplesPerSec: number;
  grid: string;
};

/** metrics.json. */
export type EvalMetrics = {
  modelDir: string;
  modelConfig: ModelConfig;
  n: number;
  seed: number;
  solver: SolverName | OdeSolverName;
  /** Velocity families: the step counts swept. */
  steps: number[] | null;
  strategy: string | null;
  denoise: { sigma: number; lrScale: number } | null;
  guidanceRule: GuidanceRule;
  device: string;
  features: { dir: string; config: FeatureNetConfig; testAccuracy: number | null };
  reference: { data: string; n: number; precisionRecallSupport: number };
  kid: { kernel: string; subsets: number; subsetSize: number };
  precisionRecallK: number;
  floor: SetMetrics;
  ceiling: SetMetrics;
  model: ModelRun[];
  /** Families without an exact likelihood: null. */
  /** `of`: pixels, or a latent model's latents (not comparable with pixel bits/dim). */
  testBpd: { data: string; n: number; bitsPerDim: number; nonFinite: number; of: 'pixels' | 'latents' } | null;
  ordered: { frechet: boolean };
  curves: { file: string; points: number; lastStep: number; lastTestBpd: number | null } | null;
};

export type EvalResult = {
  metrics: EvalMetrics;
  /** report.md's text. */
  markdown: string;
  /** outDir/metrics.json and outDir/report.md. */
  metricsFile: string;
  reportFile: string;
};

// ---- the model API, in one place: sampling and test bits/dim ----

type Sampler = (weight: number, steps: number | undefined, onProgress: (done: number, total: number) => void) => Promise<{ images: Float32Array; seconds: number }>;

/** Draws the run's n samples at a guidance weight. Checks the solver and strategy against the model at once. */
function makeSampler(
  model: Model,
  o: { n: number; labels: number[] | undefined; text?: PromptText; solver: SolverName | OdeSolverName; strategy?: string; steps?: number[]; rule: GuidanceRule; attnTemp: number; seed: number; batchSize: number; denoise?: { sigma: number; lrScale: number } },
): Sampler {
  const choice = (steps?: number): SolverChoice => ({ name: o.solver, strategy: o.strategy, steps });
  for (const steps of o.steps ?? [undefined]) plansFor(model, choice(steps)); // a bad solver, strategy or step count fails before any work
  return async (weight, steps, onProgress) => {
    const solver = choice(steps);
    const guidance: Guidance = { weight, rule: o.rule, annealed: false, attnTemp: o.attnTemp };
    const cond = o.text ? { text: { states: o.text.states, negative: o.text.negative } } : { labels: o.labels };
    const g = await generate(model, { n: o.n, ...cond, solver, guidance, seed: o.seed, batchSize: o.batchSize, denoise: o.denoise, onProgress });
    return { images: g.images, seconds: g.seconds };
  };
}

/** The model's bits/dim on the first n images of a test set, uniformly dequantised (as `starflow nll`). */
async function testBitsPerDim(model: Model, ds: ImageDataset, n: number, seed: number): Promise<{ n: number; bitsPerDim: number; nonFinite: number; of: 'pixels' | 'latents' }> {
  const bpd = await evaluateBpd(model, ds, n, { seed });
  return { n: bpd.perImage.length, bitsPerDim: bpd.finiteMean, nonFinite: bpd.nonFinite.length, of: model.autoencoder ? 'latents' : 'pixels' };
}

// ---- scoring ----

type Scorer = (name: string, images: Float32Array, labels: number[] | Int32Array | undefined) => Promise<SetMetrics>;

function makeScorer(fx: LoadedFeatureNet, refFit: GaussianFit, refSubset: FeatureSet, kidOpts: { subsets: number; seed: number }, refFeatures: FeatureSet): Scorer {
  const shapeOf = (images: Float32Array): number[] => {
    const per = fx.cfg.inChannels * fx.cfg.imgSize * fx.cfg.imgSize;
    return [images.length / per, fx.cfg.inChannels, fx.cfg.imgSize, fx.cfg.imgSize];
  };
  return async (name, images, labels) => {
    const r = await extract(fx.params, fx.cfg, images, shapeOf(images));
    const f = featureSet(r.features, r.n, fx.cfg.hidden);
    const pr = precisionRecall(refSubset, f, 3);
    const kid = kernelDistance(f, refFeatures, { subsets: kidOpts.subsets, subsetSize: 1000, seed: kidOpts.seed });
    let acc: number | null = null;
    if (labels && Array.from(labels).some((l) => l >= 0)) acc = classAccuracy(argmaxRows(r.logits, r.n, fx.cfg.numClasses), labels);
    return { name, n: r.n, frechet: frechetFromFits(refFit, gaussianFit(f)), kid: { mean: kid.mean, stdError: kid.stdError }, precision: pr.precision, recall: pr.recall, classAccuracy: acc };
  };
}

/** Clips samples to [-1, 1] in place, NaN to -1 (as a saved image holds them); returns how many samples had a non-finite value. */
function clipSamples(images: Float32Array, n: number, per: number): number {
  let nonFinite = 0;
  for (let i = 0; i < n; i++) {
    let bad = false;
    for (let j = i * per; j < (i + 1) * per; j++) {
      const v = images[j]!;
      if (!Number.isFinite(v)) bad = true;
      images[j] = v >= 1 ? 1 : v >= -1 ? v : -1; // NaN fails both tests: -1
    }
    if (bad) nonFinite++;
  }
  return nonFinite;
}

// ---- pictures ----

type Rgb = [number, number, number];
const BLUE: Rgb = [31, 119, 180];
const ORANGE: Rgb = [230, 110, 20];
const GREEN: Rgb = [44, 160, 44];
const RED: Rgb = [214, 39, 40];

async function writePng(file: string, image: ReturnType<typeof imageGrid>): Promise<void> {
  await writeFileAtomic(file, encodePng(image));
}

type LogRow = { step?: number; loss?: number; bpd?: number; testBpd?: number; skipped?: boolean };

/**
 * Loss and bits/dim curves (outDir/curves.png) of the training run a model directory belongs to:
 * the run's log.jsonl one level up. Undefined when there is none or it has no training steps.
 */
/** A path as reports show it: relative to the working directory when inside it (reports get committed), else absolute. */
export function shownPath(p: string): string {
  const r = path.relative(process.cwd(), path.resolve(p));
  return r === '' || r.startsWith('..') || path.isAbsolute(r) ? path.resolve(p) : r;
}

export async function trainingCurves(modelDir: string, outDir: string): Promise<{ file: string; points: number; lastStep: number; lastTestBpd?: number } | undefined> {
  const logFile = path.join(path.dirname(path.resolve(modelDir)), 'log.jsonl');
  if (!existsSync(logFile)) return undefined;
  const rows: LogRow[] = [];
  for (const line of (await readFile(logFile, 'utf8')).split('\n')) {
    if (!line.trim()) continue;
    try {
      rows.push(JSON.parse(line) as LogRow);
    } catch {
      // a line cut by a kill mid-write
    }
  }
  const train = rows.filter((r) => !r.skipped && typeof r.step === 'number' && typeof r.loss === 'number');
  const test = rows.filter((r) => typeof r.step === 'number' && typeof r.testBpd === 'number');
  if (train.length === 0) return undefined;
  const loss = lineChart([{ points: train.map((r) => [r.step!, r.loss!]), color: BLUE }], { title: 'training loss', xLabel: 'step', yLabel: 'loss' });
  const bpdSeries: Series[] = [{ points: train.filter((r) => typeof r.bpd === 'number').map((r) => [r.step!, r.bpd!]), color: BLUE }];
  if (test.length) bpdSeries.push({ points: test.map((r) => [r.step!, r.testBpd!]), color: ORANGE, dots: true });
  const file = path.join(outDir, 'curves.png');
  await writePng(file, sideBySide([loss, lineChart(bpdSeries, { title: 'bits/dim: train (blue), test (orange)', xLabel: 'step', yLabel: 'bits/dim' })]));
  return { file, points: train.length, lastStep: train.at(-1)!.step!, lastTestBpd: test.at(-1)?.testBpd };
}

/** The guidance sweep: Fréchet distance (log scale) and class accuracy against the weight, floor and ceiling as flat lines. */
async function guidanceChart(file: string, weights: number[], floor: SetMetrics, ceiling: SetMetrics, runs: ModelRun[]): Promise<void> {
  const xs = weights.length > 1 ? [Math.min(...weights), Math.max(...weights)] : [weights[0]! - 0.5, weights[0]! + 0.5];
  const flat = (v: number | null, color: Rgb): Series[] => (v === null ? [] : [{ points: xs.map((x) => [x, v] as [number, number]), color, dots: false }]);
  const sweep = [...runs].sort((a, b) => a.cfg - b.cfg); // the line runs left to right, whatever the sweep's order
  const distChart = lineChart([...flat(floor.frechet, GREEN), ...flat(ceiling.frechet, RED), { points: sweep.map((r) => [r.cfg, r.frechet]), color: BLUE, dots: true }], { logY: true, title: 'frechet distance (log): model, real images (green), gaussian (red)', xLabel: 'guidance weight', yLabel: 'frechet' });
  const accChart = lineChart([...flat(floor.classAccuracy, GREEN), ...flat(ceiling.classAccuracy, RED), { points: sweep.filter((r) => r.classAccuracy !== null).map((r) => [r.cfg, r.classAccuracy!]), color: BLUE, dots: true }], { title: 'class accuracy: model, real images (green), gaussian (red)', xLabel: 'guidance weight', yLabel: 'accuracy' });
  await writePng(file, sideBySide([distChart, accChart]));
}

/** Fréchet distance against steps (log-log), one line per guidance weight, the floor flat. */
async function stepsChart(file: string, floor: SetMetrics, runs: ModelRun[]): Promise<void> {
  const steps = runs.map((r) => r.steps!);
  const xs = [Math.min(...steps), Math.max(...steps)];
  const colors = [BLUE, RED, [160, 90, 200], [230, 140, 30], [40, 40, 40]] as Rgb[];
  const weights = [...new Set(runs.map((r) => r.cfg))];
  const series: Series[] = [
    { points: xs.map((x) => [x, floor.frechet] as [number, number]), color: GREEN, dots: false },
    ...weights.map((w, i) => ({ points: runs.filter((r) => r.cfg === w).sort((a, b) => a.steps! - b.steps!).map((r) => [r.steps!, r.frechet] as [number, number]), color: colors[i % colors.length]!, dots: true })),
  ];
  const title = `frechet distance (log) by steps; guidance ${weights.map((w, i) => `${w}: ${['blue', 'red', 'purple', 'orange', 'black'][i % 5]}`).join(', ')}`;
  await writePng(file, lineChart(series, { logY: true, title, xLabel: 'steps', yLabel: 'frechet' }));
}

// ---- text ----

/** A figure for a table: '–' when missing or not finite. */
export const fmt = (v: number | null | undefined, digits = 3): string => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
/** A share as a percentage: '–' when not applicable. */
export const pct = (v: number | null): string => (v === null ? '–' : `${(100 * v).toFixed(1)}%`);

const accuracyText = (a: number | null | undefined) => (a === null || a === undefined ? '?' : (100 * a).toFixed(2) + '%');

/** The tab-separated summary `starflow eval` prints: a header, then floor, the model at each weight, ceiling. */
export function summaryTable(m: EvalMetrics): string[] {
  return [
    `set\tfrechet\tkid\tprecision\trecall\tclass_acc`,
    ...[m.floor, ...m.model, m.ceiling].map((s) => `${s.name}\t${fmt(s.frechet)}\t${fmt(s.kid.mean, 4)}\t${fmt(s.precision)}\t${fmt(s.recall)}\t${pct(s.classAccuracy)}`),
  ];
}

/** report.md. `fxDir` as the caller gave it; `summary`: the model's architecture. */
function renderReport(m: EvalMetrics, fxDir: string, summary: string): string {
  const { floor, ceiling, model: runs, testBpd, curves } = m;
  const cfg = m.modelConfig;
  const head = runs[0]!;
  const perClass = cfg.numClasses > 0;
  const trainSpec = m.reference.data;
  const testSpec = m.reference.data.replace(/:train$/, ':test');
  const row = (label: string, s: SetMetrics) =>
    `| ${label} | ${fmt(s.frechet)} | ${fmt(s.kid.mean, 4)} ± ${fmt(s.kid.stdError, 4)} | ${fmt(s.precision)} | ${fmt(s.recall)} | ${pct(s.classAccuracy)} |`;
  return [
    `# Sample quality: ${path.basename(m.modelDir) === 'checkpoint' ? path.basename(path.dirname(m.modelDir)) : path.basename(m.modelDir)}`,
    '',
    `Model \`${m.modelDir}\` (${summary}), ${m.n} samples per guidance weight${m.steps ? ' and step count' : ''}, ${m.solver} solver${m.denoise ? `, denoised at σ = ${m.denoise.sigma}` : ''}, seed ${m.seed}, ${m.device}.`,
    '',
    `Features: the ${m.features.config.hidden}-d penultimate layer of our ${trainSpec.replace(/:train$/, '')} classifier (\`${fxDir}\`, test accuracy ${accuracyText(m.features.testAccuracy)}). ` +
      `Every set is compared with the same ${m.reference.n} ${trainSpec} images. The Fréchet distance is FID's formula on these features: it is not comparable with published FIDs, ` +
      `and like FID it is biased upwards at small n, so only figures at the same n compare.`,
    '',
    '| set | Fréchet distance | KID (± s.e.) | precision | recall | class accuracy |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    row(`floor (${floor.n} ${testSpec} images)`, floor),
    ...runs.map((r) => row(`**${r.name}**`, r)),
    row(`ceiling (diagonal Gaussian${perClass ? ' per class' : ''})`, ceiling),
    '',
    `Ordered floor < model < ceiling (Fréchet distance, cfg ${head.cfg}): **${m.ordered.frechet ? 'yes' : 'no'}**.`,
    '',
    testBpd?.of === 'latents'
      ? `Test latent bits/dim of the model: ${fmt(testBpd.bitsPerDim, 3)} on the autoencoder's latents of ${testBpd.n} ${testSpec} images with the training noise (σ = ${cfg.noiseStd}), as \`starflow nll\`: the flow's fit to the latents, not comparable with pixel bits/dim.`
      : testBpd
      ? `Test bits/dim of the model: ${fmt(testBpd.bitsPerDim, 3)} on ${testBpd.n} ${testSpec} images (uniform dequantisation, as \`starflow nll\`${testBpd.nonFinite ? `; ${testBpd.nonFinite} images overflowed float32 and are left out` : ''})${cfg.noiseStd > 0 ? `; this model was trained on Gaussian-noised data (σ = ${cfg.noiseStd}), so the figure is not its training objective` : ''}.`
      : 'This model family has no exact likelihood: no test bits/dim.',
    '',
    `Class accuracy is the share of samples the classifier assigns to the class they were drawn for${perClass ? '' : ' (this model is unconditional: not applicable)'}; for the floor, the classifier's accuracy on those test images.`,
    `Precision and recall use k = ${m.precisionRecallK} nearest-neighbour manifolds against ${m.reference.precisionRecallSupport} reference images; KID uses ${m.kid.subsets} subsets of ${m.kid.subsetSize}.`,
    '',
    '## Samples',
    '',
    ...runs.flatMap((r) => [`${r.name.replace(/^model, /, '')} (${r.samplesPerSec.toFixed(1)} samples/s):`, '', `![samples ${r.name.replace(/^model, /, '')}](${r.grid})`, '']),
    'Reference points: test images (floor) and the diagonal Gaussian (ceiling):',
    '',
    '![floor](floor.png) ![ceiling](ceiling.png)',
    '',
    '## Guidance sweep',
    '',
    'Left: Fréchet distance (log scale) against the guidance weight; right: class accuracy. Blue: the model; green: floor; red: ceiling.',
    '',
    '![guidance sweep](guidance.png)',
    '',
    ...(m.steps
      ? [
          '| cfg | steps | network evaluations | Fréchet distance | KID | precision | recall | class accuracy | samples/s | samples with NaN/inf |',
          '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
          ...runs.map((r) => `| ${r.cfg} | ${r.steps} | ${r.evaluations} | ${fmt(r.frechet)} | ${fmt(r.kid.mean, 4)} | ${fmt(r.precision)} | ${fmt(r.recall)} | ${pct(r.classAccuracy)} | ${r.samplesPerSec.toFixed(1)} | ${r.nonFiniteSamples} |`),
          '',
          `Network evaluations per sample (${m.solver}); with guidance (cfg > 0) each evaluation runs the conditional and unconditional branches as one batch of twice the rows.`,
          ...(m.steps.length > 1 ? ['', 'Fréchet distance (log) against the number of steps, one line per guidance weight (green: floor):', '', '![steps sweep](steps.png)'] : []),
        ]
      : [
          '| cfg | Fréchet distance | KID | precision | recall | class accuracy | samples/s | samples with NaN/inf |',
          '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
          ...runs.map((r) => `| ${r.cfg} | ${fmt(r.frechet)} | ${fmt(r.kid.mean, 4)} | ${fmt(r.precision)} | ${fmt(r.recall)} | ${pct(r.classAccuracy)} | ${r.samplesPerSec.toFixed(1)} | ${r.nonFiniteSamples} |`),
        ]),
    '',
    'Samples are scored as a saved image holds them: clipped to [-1, 1], NaN as black. Samples/s are timed after one untimed warm-up batch (guided and unguided each), so compilation is left out.',
    '',
    ...(curves
      ? [
          '## Training',
          '',
          `From \`${path.join(path.dirname(m.modelDir), 'log.jsonl')}\` (${curves.points} logged steps, last step ${curves.lastStep}${curves.lastTestBpd !== null ? `, last test bits/dim ${curves.lastTestBpd.toFixed(3)}` : ''}). Left: training loss; right: bits/dim (blue: training batches, orange: test).`,
          '',
          '![training curves](curves.png)',
          '',
        ]
      : []),
  ].join('\n');
}

// ---- the evaluation ----

function checkOptions(o: EvalOptions): void {
  const int = (v: number | undefined, name: keyof EvalOptions, min: number) => {
    if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new EvalError(`${name} must be an integer ≥ ${min}, got ${v}`, name);
  };
  int(o.n, 'n', 4);
  int(o.batchSize, 'batchSize', 1);
  int(o.seed, 'seed', 0);
  int(o.refN, 'refN', 2);
  int(o.kidSubsets, 'kidSubsets', 1);
  if (o.weights !== undefined && (o.weights.length === 0 || o.weights.some((w) => !Number.isFinite(w) || w < 0))) {
    throw new EvalError(`weights must be a non-empty list of numbers ≥ 0, got [${o.weights.join(', ')}]`, 'weights');
  }
  if (o.guidanceRule !== undefined && o.guidanceRule !== 'tarflow' && o.guidanceRule !== 'starflow') throw new EvalError(`guidanceRule must be tarflow or starflow, got '${o.guidanceRule}'`, 'guidanceRule');
  if (o.attnTemp !== undefined && !(o.attnTemp > 0)) throw new EvalError(`attnTemp must be a number > 0, got ${o.attnTemp}`, 'attnTemp');
  const solvers: readonly string[] = [...SOLVERS, ...ODE_SOLVERS];
  if (o.solver !== undefined && !solvers.includes(o.solver)) throw new EvalError(`unknown solver '${o.solver}' (expected one of: ${solvers.join(', ')})`, 'solver');
  if (o.steps !== undefined && (o.steps.length === 0 || o.steps.some((k) => !Number.isInteger(k) || k < 1))) throw new EvalError(`steps must be a non-empty list of integers ≥ 1, got [${o.steps.join(', ')}]`, 'steps');
  int(o.bpdImages, 'bpdImages', 0);
}

/**
 * Evaluates a model's samples and writes the report into outDir: metrics.json, report.md,
 * samples-cfg<w>.png for each guidance weight, floor.png, ceiling.png, guidance.png and, for a
 * model inside a training run, curves.png. Every image set is scored against the same reference
 * set (refN training images of the extractor's dataset) through the extractor's penultimate
 * features; the floor is n test images of that dataset, the ceiling n samples of a diagonal
 * Gaussian fitted to the training pixels (per class for class models). The engine must be started.
 */
export async function evaluateModel(opts: EvalOptions): Promise<EvalResult> {
  checkOptions(opts);
  const n = opts.n ?? 500;
  const weights = opts.weights ?? [0];
  const attnTemp = opts.attnTemp ?? 1;
  let rule: GuidanceRule = 'tarflow'; // the model's own default once it is loaded
  const batch = opts.batchSize ?? 100;
  const seed = opts.seed ?? 0;
  const refN = opts.refN ?? 10000;
  const kidSubsets = opts.kidSubsets ?? 50;
  const { outDir, modelDir: mDir } = opts;
  const fxDir = opts.featuresDir ?? SHIPPED_FEATURES;
  const log = opts.onLog ?? (() => {});
  const device = currentDevice();

  await makeDirs(outDir); // before any work: an output that cannot be made fails at once
  const model = await loadModel(mDir);
  let fx: LoadedFeatureNet | undefined;
  try {
    const { cfg } = model;
    fx = await loadFeatureNet(fxDir);
    checkModelAgainstExtractor(imageShapeOf(model), fx.cfg, fxDir);
    if (opts.denoise && !(cfg.noiseStd > 0)) throw new EvalError('denoising needs a model trained with Gaussian noise (this one has noiseStd 0)', 'denoise');
    const denoise = (opts.denoise ?? denoisesByDefault(model)) ? { sigma: cfg.noiseStd, lrScale: 1 } : undefined;
    const shape = { size: fx.cfg.imgSize, channels: fx.cfg.inChannels };
    // The extractor's own dataset: reference and floor come from it (train and test splits).
    const trainSpec = fx.data;
    const testSpec = trainSpec.replace(/:train$/, ':test');
    const trainDs = await loadDataset(trainSpec, shape);
    const testDs = await loadDataset(testSpec, shape);
    // A model with its own text encoder draws each class from its name as the prompt ("seven"), so
    // that class accuracy measures it as it does class-conditional models.
    const classNames = model.family.textEncoder?.(cfg) && trainDs.captions ? CAPTION_VOCABULARIES[trainDs.captions]?.names : undefined;
    const classes = cfg.numClasses > 0 ? cfg.numClasses : classNames ? classNames.length : 0;
    const labels = classes > 0 ? Array.from({ length: n }, (_, i) => i % classes) : undefined;
    const text = classNames && labels ? await promptText(model, labels.map((l) => classNames[l]![0]!)) : undefined;
    if (classNames) log(`text model: class c drawn from the prompt "${classNames.map((names) => names[0]).join('", "')}"`);
    const sampler = model.family.sampler(cfg);
    rule = opts.guidanceRule ?? (sampler.kind === 'autoregressive' ? sampler.guidanceRule : 'tarflow');
    const velocity = sampler.kind === 'velocity' ? sampler : undefined;
    const solver = opts.solver ?? (velocity ? 'euler' : 'sequential');
    if (opts.steps && !velocity) throw new EvalError(`${model.family.name} models are not sampled in steps of a velocity field: steps apply to rectified-flow and MeanFlow models`, 'steps');
    const stepCounts: (number | undefined)[] = opts.steps ?? [velocity?.defaultSteps];
    const sample = makeSampler(model, { n, labels, text, solver, strategy: opts.strategy, steps: opts.steps, rule, attnTemp, seed, batchSize: batch, denoise });
    // One untimed batch before the first guided and the first unguided run, so that samples/s
    // leaves out compilation (the compiled steps depend on the batch and on guidance, not on steps).
    const warm = Math.min(batch, n);
    const warmUp = makeSampler(model, { n: warm, labels: labels?.slice(0, warm), text: text && { ...text, states: text.states.subarray(0, text.states.length / n * warm), negative: text.negative?.subarray(0, text.negative.length / n * warm) }, solver, strategy: opts.strategy, steps: opts.steps, rule, attnTemp, seed, batchSize: batch, denoise });
    const warmed = new Set<boolean>();
    log(`eval: ${device}, model ${mDir}, extractor ${fxDir} (test accuracy ${accuracyText(fx.testAccuracy)}), n ${n}, cfg ${weights.join(',')}`);

    // The reference set: refN training images in a seeded order; its first n are the support of
    // precision/recall, so both sides of those have n vectors.
    const t0 = performance.now();
    const order = new Rng(seed).fork(1).shuffle(Uint32Array.from({ length: trainDs.n }, (_, i) => i));
    const ref = datasetImages(trainDs, order.subarray(0, Math.min(refN, trainDs.n)));
    const refR = await extract(fx.params, fx.cfg, ref.x, ref.shape);
    const refFeatures = featureSet(refR.features, refR.n, fx.cfg.hidden);
    const refFit = gaussianFit(refFeatures);
    const supportN = Math.min(n, refR.n);
    const refSubset = featureSet(refR.features.subarray(0, supportN * fx.cfg.hidden), supportN, fx.cfg.hidden);
    const score = makeScorer(fx, refFit, refSubset, { subsets: kidSubsets, seed }, refFeatures);
    log(`reference: ${refR.n} ${trainSpec} images (${((performance.now() - t0) / 1000).toFixed(1)} s)`);

    const testOrder = new Rng(seed).fork(2).shuffle(Uint32Array.from({ length: testDs.n }, (_, i) => i));
    const floorImgs = datasetImages(testDs, testOrder.subarray(0, Math.min(n, testDs.n)));
    const floor = await score(`floor: ${testSpec} images`, floorImgs.x, floorImgs.y);
    log(`floor: Fréchet ${fmt(floor.frechet)}`);

    const gauss = diagonalGaussianSamples(trainDs, n, labels, seed);
    const ceiling = await score(`ceiling: diagonal Gaussian${labels ? ' per class' : ''}`, gauss, labels);
    log(`ceiling: Fréchet ${fmt(ceiling.frechet)}`);
    const dims = [n, fx.cfg.inChannels, fx.cfg.imgSize, fx.cfg.imgSize] as const;
    const per = dims[1] * dims[2] * dims[3];
    const gridN = Math.min(n, 100);
    const grid = (x: Float32Array) => imageGrid(x.subarray(0, gridN * per), [gridN, dims[1], dims[2], dims[3]], { nrow: 10 });
    await writePng(path.join(outDir, 'ceiling.png'), grid(gauss));
    await writePng(path.join(outDir, 'floor.png'), grid(floorImgs.x));

    const runs: ModelRun[] = [];
    for (const [i, w] of weights.entries()) {
      for (const [j, steps] of stepCounts.entries()) {
        const run = i * stepCounts.length + j;
        if (!warmed.has(w > 0)) {
          warmed.add(w > 0);
          await warmUp(w, steps, () => {});
        }
        const g = await sample(w, steps, (done, total) => opts.onProgress?.({ stage: 'sample', run, cfg: w, done, total }));
        // Scored as saved images are: clipped to [-1, 1], NaN as black; samples with non-finite values are counted.
        const nonFinite = clipSamples(g.images, n, per);
        const name = `model, cfg ${w}${steps ? `, ${steps} steps` : ''}`;
        const m = { ...(await score(name, g.images, labels)), nonFiniteSamples: nonFinite };
        const gridFile = steps ? `samples-cfg${w}-steps${steps}.png` : `samples-cfg${w}.png`;
        await writePng(path.join(outDir, gridFile), grid(g.images));
        const evaluations = steps ? evaluationsOf({ solver: solver as OdeSolverName, steps }) : null;
        runs.push({ ...m, cfg: w, steps: steps ?? null, evaluations, seconds: g.seconds, samplesPerSec: n / g.seconds, grid: gridFile });
        log(`${name}: Fréchet ${fmt(m.frechet)}, KID ${fmt(m.kid.mean, 4)}, class accuracy ${pct(m.classAccuracy)} (${(n / g.seconds).toFixed(1)} samples/s${nonFinite ? `; ${nonFinite} samples had NaN/inf pixels, scored as clipped` : ''})`);
      }
    }

    // The model's likelihood of n test images of the same dataset, as `starflow nll` scores it.
    const bpdImages = opts.bpdImages ?? n;
    const testBpd = model.family.nll && bpdImages > 0 ? { data: testSpec, ...(await testBitsPerDim(model, testDs, bpdImages, seed)) } : null;
    if (testBpd) log(`test ${testBpd.of === 'latents' ? 'latent ' : ''}bits/dim: ${fmt(testBpd.bitsPerDim, 3)} on ${testBpd.n} ${testSpec} images${testBpd.nonFinite ? ` (${testBpd.nonFinite} overflowed)` : ''}`);

    // The guidance sweep at the first step count; the step sweep, one line per weight.
    await guidanceChart(path.join(outDir, 'guidance.png'), weights, floor, ceiling, runs.filter((r) => r.steps === runs[0]!.steps));
    if (stepCounts.length > 1) await stepsChart(path.join(outDir, 'steps.png'), floor, runs);
    const curves = await trainingCurves(mDir, outDir);

    const head = runs[0]!;
    const metrics: EvalMetrics = {
      modelDir: shownPath(mDir),
      modelConfig: cfg,
      n,
      seed,
      solver,
      steps: stepCounts[0] === undefined ? null : (stepCounts as number[]),
      strategy: opts.strategy ?? null,
      denoise: denoise ?? null,
      guidanceRule: rule,
      device,
      features: { dir: shownPath(fxDir), config: fx.cfg, testAccuracy: fx.testAccuracy ?? null },
      reference: { data: trainSpec, n: refR.n, precisionRecallSupport: supportN },
      kid: { kernel: '(x·y/d + 1)^3', subsets: kidSubsets, subsetSize: Math.min(1000, n, refR.n) },
      precisionRecallK: 3,
      floor,
      ceiling,
      model: runs,
      testBpd,
      ordered: { frechet: floor.frechet < head.frechet && head.frechet < ceiling.frechet },
      curves: curves ? { file: path.basename(curves.file), points: curves.points, lastStep: curves.lastStep, lastTestBpd: curves.lastTestBpd ?? null } : null,
    };
    const metricsFile = path.join(outDir, 'metrics.json');
    await writeFileAtomic(metricsFile, JSON.stringify(metrics, null, 2) + '\n');
    const markdown = renderReport(metrics, shownPath(fxDir), model.family.describe(model.cfg));
    const reportFile = path.join(outDir, 'report.md');
    await writeFileAtomic(reportFile, markdown);
    if (opts.record) {
      const samples: SampleQuality = { n, guidance: head.cfg, denoise: Boolean(denoise), frechet: head.frechet, classAccuracy: head.classAccuracy ?? NaN, report: shownPath(reportFile) };
      await recordEvaluation(mDir, 'samples', { ...samples, ...(head.steps ? { steps: head.steps } : {}), seed, solver, features: shownPath(fxDir), floorFrechet: floor.frechet, measuredAt: new Date().toISOString().slice(0, 10) });
    }
    return { metrics, markdown, metricsFile, reportFile };
  } finally {
    if (fx) release(fx.params);
    release(model.params);
  }
}
