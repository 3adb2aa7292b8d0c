// starflow train-features: the MNIST classifier behind the sample-quality metrics.
// starflow eval: Fréchet distance, KID, precision/recall and class accuracy of a model's samples
// against reference points computed the same way, with a report (metrics.json, report.md, PNGs).
import path from 'node:path';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { Rng } from '../engine/rng.js';
import { tokenShape, type TarFlowConfig } from '../models/config.js';
import { generate } from '../sampling/pipeline.js';
import { makePlans, SOLVERS } from '../sampling/plan.js';
import type { Guidance } from '../sampling/solvers.js';
import { encodePng, imageGrid } from '../io/png.js';
import { writeFileAtomic } from '../io/files.js';
import type { ImageDataset } from '../data/dataset.js';
import {
  FEATURE_NET_DEFAULTS,
  FeatureNetError,
  datasetImages,
  extract,
  loadFeatureNet,
  saveFeatureNet,
  trainClassifier,
  type FeatureNetConfig,
  type LoadedFeatureNet,
} from '../eval/features.js';
import { argmaxRows, classAccuracy, featureSet, frechetFromFits, gaussianFit, kernelDistance, precisionRecall, type FeatureSet, type GaussianFit } from '../eval/metrics.js';
import { lineChart, sideBySide, type Series } from '../eval/chart.js';
import { Progress } from './progress.js';
import { evaluateBpd } from '../train/trainer.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir } from './common.js';

/** The feature extractor that ships with the package (trained by `starflow train-features`). */
export const SHIPPED_FEATURES = fileURLToPath(new URL('../../checkpoints/mnist-features', import.meta.url));

// ---- train-features ----

export const TRAIN_FEATURES_HELP = `starflow train-features: train the classifier starflow eval scores samples with

Usage:
  starflow train-features [--data mnist] [--out checkpoints/mnist-features] [--epochs 4] [--seed 0]

  --data NAME      mnist (default) or fashion-mnist (needs Debian's dataset-fashion-mnist)
  --out DIR        checkpoint directory to write (default checkpoints/<data>-features)
  --epochs N       passes over <data>:train (default 4)
  --batch B        batch size (default 128)
  --lr LR          peak AdamW learning rate, warm-up then cosine to 0 (default 2e-3)
  --seed N         seed of the initial weights and the batch order (default 0)
  --conv1 C        channels of the first 3×3 convolution (default ${FEATURE_NET_DEFAULTS.conv1})
  --conv2 C        channels of the second 3×3 convolution (default ${FEATURE_NET_DEFAULTS.conv2})
  --hidden H       width of the penultimate layer = the feature size (default ${FEATURE_NET_DEFAULTS.hidden})
  --max-steps N    stop early (smoke tests; the schedule still spans every epoch)

The network: conv3×3 → ReLU → maxpool 2 → conv3×3 → ReLU → maxpool 2 → dense(hidden) → ReLU
(features) → dense(10) (logits). Prints the accuracy on <data>:test after every epoch; the final
one is stored in config.json as testAccuracy, the dataset as data. The same seed gives the same
weights.
${ENGINE_HELP}`;

export async function trainFeaturesCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    data: { type: 'string' },
    out: { type: 'string' },
    epochs: { type: 'string' },
    batch: { type: 'string' },
    lr: { type: 'string' },
    seed: { type: 'string' },
    conv1: { type: 'string' },
    conv2: { type: 'string' },
    hidden: { type: 'string' },
    'max-steps': { type: 'string' },
  });
  if (o.help) return void console.log(TRAIN_FEATURES_HELP);
  const data = strOpt(o.data, 'data') ?? 'mnist';
  if (data !== 'mnist' && data !== 'fashion-mnist') throw new UsageError(`--data must be mnist or fashion-mnist, got '${data}'`);
  const out = strOpt(o.out, 'out') ?? `checkpoints/${data}-features`;
  const cfg: FeatureNetConfig = {
    ...FEATURE_NET_DEFAULTS,
    conv1: intOpt(o.conv1, 'conv1', 1, FEATURE_NET_DEFAULTS.conv1),
    conv2: intOpt(o.conv2, 'conv2', 1, FEATURE_NET_DEFAULTS.conv2),
    hidden: intOpt(o.hidden, 'hidden', 2, FEATURE_NET_DEFAULTS.hidden),
  };
  const epochs = intOpt(o.epochs, 'epochs', 1, 4);
  const batchSize = intOpt(o.batch, 'batch', 1, 128);
  const lr = numOpt(o.lr, 'lr', 2e-3, (x) => x > 0, 'a number > 0');
  const seed = intOpt(o.seed, 'seed', 0, 0);
  const maxSteps = o['max-steps'] === undefined ? undefined : intOpt(o['max-steps'], 'max-steps', 1);
  const device = await startEngineFromOptions(o);
  const train = await loadDataset(`${data}:train`, { size: cfg.imgSize, channels: cfg.inChannels });
  const test = await loadDataset(`${data}:test`, { size: cfg.imgSize, channels: cfg.inChannels });
  console.log(`train-features: ${data}, ${device}, conv ${cfg.conv1}/${cfg.conv2}, hidden ${cfg.hidden}, ${epochs} epochs of batch ${batchSize}, seed ${seed}`);
  let bar: Progress | undefined;
  const net = await trainClassifier({
    train,
    test,
    cfg,
    epochs,
    batchSize,
    lr,
    seed,
    maxSteps,
    onStep: (e) => {
      bar ??= new Progress('train-features', Math.min(e.totalSteps, maxSteps ?? Infinity));
      bar.update(e.step, `loss ${e.loss.toFixed(4)} ${e.stepsPerSec.toFixed(1)} it/s`);
    },
    onEpoch: (e) => {
      const line = `epoch ${e.epoch}: test accuracy ${e.testAccuracy === undefined ? '?' : (100 * e.testAccuracy).toFixed(2) + '%'}`;
      if (bar) bar.note(line);
      else console.log(line);
    },
  });
  const command = `starflow train-features --data ${data} --out ${out} --epochs ${epochs} --batch ${batchSize} --lr ${lr} --seed ${seed} --conv1 ${cfg.conv1} --conv2 ${cfg.conv2} --hidden ${cfg.hidden}${maxSteps ? ` --max-steps ${maxSteps}` : ''}`;
  await saveFeatureNet(out, net, { data: `${data}:train`, command, seconds: Math.round(net.seconds), device });
  console.log(`test accuracy ${(100 * (net.testAccuracy ?? NaN)).toFixed(2)}% on ${test.n} ${data}:test images after ${net.steps} steps (${net.seconds.toFixed(0)} s); saved ${out}`);
}

// ---- eval ----

export const EVAL_HELP = `starflow eval: sample-quality metrics of a model, with a report

Usage:
  starflow eval --model DIR --n 500 [--cfg 0,1,2,3] [--solver sequential] --out DIR

  --model DIR          model directory (default: the shipped checkpoints/mnist)
  --n N                samples per guidance weight, and images in each reference point (default 500)
  --cfg W1,W2,...      guidance weights to sweep (default 0); the first is the headline figure
  --guidance-rule R    tarflow (default) or starflow
  --attn-temp T        attention temperature of the unguided branch (unconditional models)
  --solver NAME        ${SOLVERS.join(' | ')} (default sequential)
  --strategy S         gs-jacobi per-block plan (see starflow sample --help)
  --batch B            samples per solver batch (default 100)
  --denoise            one score-based denoising step after sampling, at the model's noiseStd
                       (for models trained on Gaussian-noised data)
  --seed N             seed of the noise, the reference subsets and KID's subsets (default 0)
  --features DIR       feature extractor (default: the shipped checkpoints/mnist-features); its
                       dataset (config.json 'data') supplies the reference and floor images
  --ref N              training images in the reference set (default 10000)
  --kid-subsets S      KID subsets (default 50; subset size min(1000, n))
  --out DIR            where to write metrics.json, report.md and the pictures (default eval-out)

Every image set is scored against the same reference set (N training images) through the same
classifier's penultimate features:
  - Fréchet distance between Gaussian fits (FID's formula on our own classifier's features: not
    comparable with published FIDs), KID (unbiased MMD², cubic kernel, mean ± standard error),
    precision and recall (k-NN manifolds, k = 3, against n reference images), and class accuracy
    (the classifier's prediction against the class a sample was drawn for).
  - floor: n test images of the extractor's dataset (what a perfect model would score at this n);
    ceiling: n samples of a diagonal Gaussian fitted to the training pixels (per class for class
    models), clipped to [-1, 1].
A model directory inside a training run (log.jsonl one level up) also gets loss and bits/dim curves.
${ENGINE_HELP}`;

export type SetMetrics = {
  name: string;
  n: number;
  frechet: number;
  kid: { mean: number; stdError: number };
  precision: number;
  recall: number;
  classAccuracy: number | null;
};

function numList(v: string, name: string): number[] {
  const xs = v.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || x < 0)) throw new UsageError(`--${name} must be a comma-separated list of numbers ≥ 0, got '${v}'`);
  return xs;
}

/** Checks that a generative model's images are what the extractor takes. */
export function checkModelAgainstExtractor(model: TarFlowConfig, fx: FeatureNetConfig, where: string): void {
  if (model.imgSize !== fx.imgSize || model.inChannels !== fx.inChannels) {
    throw new FeatureNetError(
      `the model makes ${model.inChannels}×${model.imgSize}×${model.imgSize} images but the feature extractor (${where}) takes ${fx.inChannels}×${fx.imgSize}×${fx.imgSize}`,
    );
  }
}

/** n samples of a diagonal Gaussian fitted to the training pixels (per class when `labels`), clipped to [-1, 1]. */
export function diagonalGaussianSamples(ds: ImageDataset, n: number, labels: number[] | undefined, seed: number): Float32Array {
  const per = ds.channels * ds.height * ds.width;
  const groups = labels ? Math.max(ds.numClasses, ...labels.map((l) => l + 1)) : 1;
  const sum = new Float64Array(groups * per);
  const sq = new Float64Array(groups * per);
  const count = new Float64Array(groups);
  for (let i = 0; i < ds.n; i++) {
    const g = labels ? ds.labels[i]! : 0;
    count[g]!++;
    for (let j = 0; j < per; j++) {
      const v = ds.images[i * per + j]! / 127.5 - 1;
      sum[g * per + j]! += v;
      sq[g * per + j]! += v * v;
    }
  }
  const rng = new Rng(seed).fork(7);
  const out = new Float32Array(n * per);
  for (let i = 0; i < n; i++) {
    const g = labels ? Math.max(0, labels[i]!) : 0;
    const c = Math.max(1, count[g]!);
    for (let j = 0; j < per; j++) {
      const mu = sum[g * per + j]! / c;
      const sd = Math.sqrt(Math.max(0, sq[g * per + j]! / c - mu * mu));
      out[i * per + j] = Math.max(-1, Math.min(1, mu + sd * rng.normal()));
    }
  }
  return out;
}

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

async function writePng(file: string, image: ReturnType<typeof imageGrid>): Promise<void> {
  await writeFileAtomic(file, encodePng(image));
}

type LogRow = { step?: number; loss?: number; bpd?: number; testBpd?: number; skipped?: boolean };

/** Loss and bits/dim curves of the training run a model directory belongs to, if any. */
async function trainingCurves(modelPath: string, outDir: string): Promise<{ file: string; points: number; lastStep: number; lastTestBpd?: number } | undefined> {
  const logFile = path.join(path.dirname(path.resolve(modelPath)), 'log.jsonl');
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
  const blue: [number, number, number] = [31, 119, 180];
  const orange: [number, number, number] = [230, 110, 20];
  const loss = lineChart([{ points: train.map((r) => [r.step!, r.loss!]), color: blue }]);
  const bpdSeries: Series[] = [{ points: train.filter((r) => typeof r.bpd === 'number').map((r) => [r.step!, r.bpd!]), color: blue }];
  if (test.length) bpdSeries.push({ points: test.map((r) => [r.step!, r.testBpd!]), color: orange, dots: true });
  const file = path.join(outDir, 'curves.png');
  await writePng(file, sideBySide([loss, lineChart(bpdSeries)]));
  return { file, points: train.length, lastStep: train.at(-1)!.step!, lastTestBpd: test.at(-1)?.testBpd };
}

const fmt = (v: number | null | undefined, digits = 3) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v.toFixed(digits));
const pct = (v: number | null) => (v === null ? '–' : `${(100 * v).toFixed(1)}%`);

export async function evalCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    model: { type: 'string' },
    n: { type: 'string' },
    cfg: { type: 'string' },
    'guidance-rule': { type: 'string' },
    'attn-temp': { type: 'string' },
    solver: { type: 'string' },
    strategy: { type: 'string' },
    batch: { type: 'string' },
    seed: { type: 'string' },
    features: { type: 'string' },
    ref: { type: 'string' },
    'kid-subsets': { type: 'string' },
    denoise: { type: 'boolean' },
    out: { type: 'string' },
  });
  if (o.help) return void console.log(EVAL_HELP);
  if (o.n !== undefined && Number(o.n) === 0) throw new UsageError('--n 0: there are no samples to evaluate (use --n 4 or more; 500 is a sensible minimum)');
  const n = intOpt(o.n, 'n', 4, 500);
  const weights = o.cfg === undefined ? [0] : numList(strOpt(o.cfg, 'cfg')!, 'cfg');
  const rule = strOpt(o['guidance-rule'], 'guidance-rule') ?? 'tarflow';
  if (rule !== 'tarflow' && rule !== 'starflow') throw new UsageError(`--guidance-rule must be tarflow or starflow, got '${rule}'`);
  const attnTemp = numOpt(o['attn-temp'], 'attn-temp', 1, (x) => x > 0, 'a number > 0');
  const solver = strOpt(o.solver, 'solver') ?? 'sequential';
  if (!(SOLVERS as readonly string[]).includes(solver)) throw new UsageError(`unknown solver '${solver}' (expected one of: ${SOLVERS.join(', ')})`);
  const batch = intOpt(o.batch, 'batch', 1, 100);
  const seed = intOpt(o.seed, 'seed', 0, 0);
  const refN = intOpt(o.ref, 'ref', 2, 10000);
  const kidSubsets = intOpt(o['kid-subsets'], 'kid-subsets', 1, 50);
  const outDir = strOpt(o.out, 'out') ?? 'eval-out';
  const mDir = modelDir(o);
  const fxDir = strOpt(o.features, 'features') ?? SHIPPED_FEATURES;
  if (!existsSync(fxDir)) throw new UsageError(`no feature extractor at ${fxDir}: train one with 'starflow train-features --out ${fxDir}' or pass --features DIR`);

  const device = await startEngineFromOptions(o);
  const { cfg, params } = await loadModel(mDir);
  const fx = await loadFeatureNet(fxDir);
  checkModelAgainstExtractor(cfg, fx.cfg, fxDir);
  if (o.denoise && !(cfg.noiseStd > 0)) throw new UsageError('--denoise needs a model trained with Gaussian noise (this one has noiseStd 0)');
  const denoise = o.denoise ? { sigma: cfg.noiseStd, lrScale: 1 } : undefined;
  const plans = makePlans(solver, cfg.numBlocks, tokenShape(cfg).tokens, strOpt(o.strategy, 'strategy'));
  await mkdir(outDir, { recursive: true });
  const shape = { size: fx.cfg.imgSize, channels: fx.cfg.inChannels };
  // The extractor's own dataset: reference and floor come from it (train and test splits).
  const trainSpec = fx.data;
  const testSpec = trainSpec.replace(/:train$/, ':test');
  const trainDs = await loadDataset(trainSpec, shape);
  const testDs = await loadDataset(testSpec, shape);
  const log = (s: string) => process.stderr.write(`${s}\n`);
  log(`eval: ${device}, model ${mDir}, extractor ${fxDir} (test accuracy ${fx.testAccuracy === undefined ? '?' : (100 * fx.testAccuracy).toFixed(2) + '%'}), n ${n}, cfg ${weights.join(',')}`);

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

  const labels = cfg.numClasses > 0 ? Array.from({ length: n }, (_, i) => i % cfg.numClasses) : undefined;
  const gauss = diagonalGaussianSamples(trainDs, n, labels, seed);
  const ceiling = await score(`ceiling: diagonal Gaussian${labels ? ' per class' : ''}`, gauss, labels);
  log(`ceiling: Fréchet ${fmt(ceiling.frechet)}`);
  const dims = [n, fx.cfg.inChannels, fx.cfg.imgSize, fx.cfg.imgSize] as const;
  const gridN = Math.min(n, 100);
  const grid = (x: Float32Array) => imageGrid(x.subarray(0, gridN * dims[1] * dims[2] * dims[3]), [gridN, dims[1], dims[2], dims[3]], { nrow: 10 });
  await writePng(path.join(outDir, 'ceiling.png'), grid(gauss));
  await writePng(path.join(outDir, 'floor.png'), grid(floorImgs.x));

  const runs: (SetMetrics & { nonFiniteSamples: number; cfg: number; seconds: number; samplesPerSec: number; grid: string })[] = [];
  for (const w of weights) {
    const guidance: Guidance = { weight: w, rule, annealed: false, attnTemp };
    const bar = new Progress(`sample cfg ${w}`, 100);
    const g = await generate(params, cfg, { n, labels, plans, guidance, seed, batchSize: batch, denoise, onProgress: (d, t) => bar.update(Math.round((100 * d) / t), '%') });
    // Scored as saved images are: clipped to [-1, 1], NaN as black; samples with non-finite values are counted.
    const per = dims[1] * dims[2] * dims[3];
    let nonFinite = 0;
    for (let i = 0; i < n; i++) {
      let bad = false;
      for (let j = i * per; j < (i + 1) * per; j++) {
        const v = g.images[j]!;
        if (!Number.isFinite(v)) bad = true;
        g.images[j] = v >= 1 ? 1 : v >= -1 ? v : -1; // NaN fails both tests: -1
      }
      if (bad) nonFinite++;
    }
    const m = { ...(await score(`model, cfg ${w}`, g.images, labels)), nonFiniteSamples: nonFinite };
    const gridFile = `samples-cfg${w}.png`;
    await writePng(path.join(outDir, gridFile), grid(g.images));
    runs.push({ ...m, cfg: w, seconds: g.seconds, samplesPerSec: n / g.seconds, grid: gridFile });
    log(`cfg ${w}: Fréchet ${fmt(m.frechet)}, KID ${fmt(m.kid.mean, 4)}, class accuracy ${pct(m.classAccuracy)} (${(n / g.seconds).toFixed(1)} samples/s${nonFinite ? `; ${nonFinite} samples had NaN/inf pixels, scored as clipped` : ''})`);
  }

  // The model's likelihood of n test images of the same dataset, as `starflow nll` scores it.
  const bpd = await evaluateBpd(params, cfg, testDs, n, { seed });
  const testBpd = { data: testSpec, n: bpd.perImage.length, bitsPerDim: bpd.finiteMean, nonFinite: bpd.nonFinite.length };
  log(`test bits/dim: ${fmt(testBpd.bitsPerDim, 3)} on ${testBpd.n} ${testSpec} images${testBpd.nonFinite ? ` (${testBpd.nonFinite} overflowed)` : ''}`);

  // The guidance sweep: distance (log scale) and class accuracy against the weight.
  const blue: [number, number, number] = [31, 119, 180];
  const green: [number, number, number] = [44, 160, 44];
  const red: [number, number, number] = [214, 39, 40];
  const xs = weights.length > 1 ? [Math.min(...weights), Math.max(...weights)] : [weights[0]! - 0.5, weights[0]! + 0.5];
  const flat = (v: number | null, color: [number, number, number]): Series[] => (v === null ? [] : [{ points: xs.map((x) => [x, v] as [number, number]), color, dots: false }]);
  const distChart = lineChart([...flat(floor.frechet, green), ...flat(ceiling.frechet, red), { points: runs.map((r) => [r.cfg, r.frechet]), color: blue, dots: true }], { logY: true });
  const accChart = lineChart([...flat(floor.classAccuracy, green), ...flat(ceiling.classAccuracy, red), { points: runs.filter((r) => r.classAccuracy !== null).map((r) => [r.cfg, r.classAccuracy!]), color: blue, dots: true }]);
  await writePng(path.join(outDir, 'guidance.png'), sideBySide([distChart, accChart]));
  const curves = await trainingCurves(mDir, outDir);

  const head = runs[0]!;
  const ordered = floor.frechet < head.frechet && head.frechet < ceiling.frechet;
  const metrics = {
    modelDir: path.resolve(mDir),
    modelConfig: cfg,
    n,
    seed,
    solver,
    strategy: strOpt(o.strategy, 'strategy') ?? null,
    denoise: denoise ?? null,
    guidanceRule: rule,
    device,
    features: { dir: path.resolve(fxDir), config: fx.cfg, testAccuracy: fx.testAccuracy ?? null },
    reference: { data: trainSpec, n: refR.n, precisionRecallSupport: supportN },
    kid: { kernel: '(x·y/d + 1)^3', subsets: kidSubsets, subsetSize: Math.min(1000, n, refR.n) },
    precisionRecallK: 3,
    floor,
    ceiling,
    model: runs,
    testBpd,
    ordered: { frechet: ordered },
    curves: curves ? { file: path.basename(curves.file), points: curves.points, lastStep: curves.lastStep, lastTestBpd: curves.lastTestBpd ?? null } : null,
  };
  await writeFileAtomic(path.join(outDir, 'metrics.json'), JSON.stringify(metrics, null, 2) + '\n');

  const row = (label: string, m: SetMetrics) =>
    `| ${label} | ${fmt(m.frechet)} | ${fmt(m.kid.mean, 4)} ± ${fmt(m.kid.stdError, 4)} | ${fmt(m.precision)} | ${fmt(m.recall)} | ${pct(m.classAccuracy)} |`;
  const md = [
    `# Sample quality: ${path.basename(path.resolve(mDir)) === 'checkpoint' ? path.basename(path.dirname(path.resolve(mDir))) : path.basename(path.resolve(mDir))}`,
    '',
    `Model \`${path.resolve(mDir)}\` (${cfg.numBlocks} blocks × ${cfg.layersPerBlock} layers, width ${cfg.width}, patch ${cfg.patchSize}, ${cfg.numClasses} classes), ${n} samples per guidance weight, ${solver} solver${denoise ? `, denoised at σ = ${denoise.sigma}` : ''}, seed ${seed}, ${device}.`,
    '',
    `Features: the ${fx.cfg.hidden}-d penultimate layer of our ${trainSpec.replace(/:train$/, '')} classifier (\`${fxDir}\`, test accuracy ${fx.testAccuracy === undefined ? '?' : (100 * fx.testAccuracy).toFixed(2) + '%'}). ` +
      `Every set is compared with the same ${refR.n} ${trainSpec} images. The Fréchet distance is FID's formula on these features: it is not comparable with published FIDs, ` +
      `and like FID it is biased upwards at small n, so only figures at the same n compare.`,
    '',
    '| set | Fréchet distance | KID (± s.e.) | precision | recall | class accuracy |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    row(`floor (${floor.n} ${testSpec} images)`, floor),
    ...runs.map((r) => row(`**model, cfg ${r.cfg}**`, r)),
    row(`ceiling (diagonal Gaussian${labels ? ' per class' : ''})`, ceiling),
    '',
    `Ordered floor < model < ceiling (Fréchet distance, cfg ${head.cfg}): **${ordered ? 'yes' : 'no'}**.`,
    '',
    `Test bits/dim of the model: ${fmt(testBpd.bitsPerDim, 3)} on ${testBpd.n} ${testSpec} images (uniform dequantisation, as \`starflow nll\`${testBpd.nonFinite ? `; ${testBpd.nonFinite} images overflowed float32 and are left out` : ''})${cfg.noiseStd > 0 ? `; this model was trained on Gaussian-noised data (σ = ${cfg.noiseStd}), so the figure is not its training objective` : ''}.`,
    '',
    `Class accuracy is the share of samples the classifier assigns to the class they were drawn for${labels ? '' : ' (this model is unconditional: not applicable)'}; for the floor, the classifier's accuracy on those test images.`,
    `Precision and recall use k = 3 nearest-neighbour manifolds against ${supportN} reference images; KID uses ${kidSubsets} subsets of ${Math.min(1000, n, refR.n)}.`,
    '',
    '## Samples',
    '',
    ...runs.flatMap((r) => [`cfg ${r.cfg} (${r.samplesPerSec.toFixed(1)} samples/s):`, '', `![samples cfg ${r.cfg}](${r.grid})`, '']),
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
    '| cfg | Fréchet distance | KID | precision | recall | class accuracy | samples/s | samples with NaN/inf |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...runs.map((r) => `| ${r.cfg} | ${fmt(r.frechet)} | ${fmt(r.kid.mean, 4)} | ${fmt(r.precision)} | ${fmt(r.recall)} | ${pct(r.classAccuracy)} | ${r.samplesPerSec.toFixed(1)} | ${r.nonFiniteSamples} |`),
    '',
    'Samples are scored as a saved image holds them: clipped to [-1, 1], NaN as black.',
    '',
    ...(curves
      ? [
          '## Training',
          '',
          `From \`${path.join(path.dirname(path.resolve(mDir)), 'log.jsonl')}\` (${curves.points} logged steps, last step ${curves.lastStep}${curves.lastTestBpd !== undefined ? `, last test bits/dim ${curves.lastTestBpd.toFixed(3)}` : ''}). Left: training loss; right: bits/dim (blue: training batches, orange: test).`,
          '',
          '![training curves](curves.png)',
          '',
        ]
      : []),
  ].join('\n');
  await writeFileAtomic(path.join(outDir, 'report.md'), md);

  console.log(`set\tfrechet\tkid\tprecision\trecall\tclass_acc`);
  for (const m of [floor, ...runs, ceiling]) console.log(`${m.name}\t${fmt(m.frechet)}\t${fmt(m.kid.mean, 4)}\t${fmt(m.precision)}\t${fmt(m.recall)}\t${pct(m.classAccuracy)}`);
  console.log(`ordered floor < model < ceiling: ${ordered ? 'yes' : 'no'}; wrote ${path.join(outDir, 'report.md')} and metrics.json`);
}
