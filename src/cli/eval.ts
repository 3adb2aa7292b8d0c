// starflow train-features: the MNIST classifier behind the sample-quality metrics.
// starflow eval: Fréchet distance, KID, precision/recall and class accuracy of a model's samples
// against reference points computed the same way, with a report (metrics.json, report.md, PNGs).
// Both are argument parsing, one library call (src/eval/) and messages.
import path from 'node:path';
import { existsSync } from 'node:fs';
import { SOLVERS, type SolverName } from '../sampling/plan.js';
import { ODE_SOLVERS } from '../sampling/ode.js';
import type { OdeSolverName } from '../models/model.js';
import { FEATURE_NET_DEFAULTS, SHIPPED_FEATURES, type FeatureNetConfig } from '../eval/features.js';
import { trainFeatureExtractor } from '../train/classifier.js';
import { evaluateModel, summaryTable, EvalError, type EvalOptions } from '../eval/report.js';
import { evaluatePromptFile } from '../eval/prompts.js';
import { Progress } from './progress.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir, denoiseFlag, MODEL_DEFAULT } from './common.js';

// ---- train-features ----

export const TRAIN_FEATURES_HELP = `starflow train-features: train the classifier starflow eval scores samples with

Usage:
  starflow train-features [--data mnist] [--out runs/mnist-features] [--epochs 4] [--seed 0]

  --data NAME      mnist (default) or fashion-mnist (needs Debian's dataset-fashion-mnist)
  --out DIR        checkpoint directory to write (default runs/<data>-features; an existing one
                   is refused unless --force, so the shipped checkpoints/ are never replaced unasked)
  --force          replace the extractor already in --out
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
    force: { type: 'boolean' },
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
  const out = strOpt(o.out, 'out') ?? `runs/${data}-features`;
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
  const command = `starflow train-features --data ${data} --out ${out} --epochs ${epochs} --batch ${batchSize} --lr ${lr} --seed ${seed} --conv1 ${cfg.conv1} --conv2 ${cfg.conv2} --hidden ${cfg.hidden}${maxSteps ? ` --max-steps ${maxSteps}` : ''}`;
  let bar: Progress | undefined;
  const net = await trainFeatureExtractor({
    data,
    out,
    force: Boolean(o.force),
    cfg,
    epochs,
    batchSize,
    lr,
    seed,
    maxSteps,
    command,
    onStart: () => console.log(`train-features: ${data}, ${device}, conv ${cfg.conv1}/${cfg.conv2}, hidden ${cfg.hidden}, ${epochs} epochs of batch ${batchSize}, seed ${seed}`),
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
  console.log(`test accuracy ${(100 * (net.testAccuracy ?? NaN)).toFixed(2)}% on ${net.testImages} ${data}:test images after ${net.steps} steps (${net.seconds.toFixed(0)} s); saved ${out}`);
}

// ---- eval ----

export const EVAL_HELP = `starflow eval: sample-quality metrics of a model, with a report

Usage:
  starflow eval --model DIR --n 500 [--cfg 0,1,2,3] [--solver sequential] --out DIR
  starflow eval --model DIR --prompts FILE.jsonl [--n 20] [--cfg 2] --out DIR

Prompts (models with a text encoder): each line of FILE.jsonl is {"prompt": "a thick seven",
"digit": 7, "thickness": "thick" | "thin" | null}; --n samples per prompt (default 20) at the first
--cfg weight. metrics.json gets promptAccuracy (the classifier finds the prompt's digit) and
thicknessAgreement (thick prompts' samples hold more ink than the thin ones' of the same digit,
over every such pair); samples.png shows a row per prompt.

  --model DIR          model directory (${MODEL_DEFAULT})
  --n N                samples per guidance weight, and images in each reference point (default 500)
  --cfg W1,W2,...      guidance weights to sweep (default 0); the first is the headline figure
  --guidance-rule R    tarflow or starflow (default: the model's: starflow for STARFlow configs)
  --attn-temp T        attention temperature of the unguided branch (unconditional models)
  --solver NAME        flows: ${SOLVERS.join(' | ')} (default sequential); rectified flow and
                       MeanFlow: ${ODE_SOLVERS.join(' | ')} (default euler)
  --steps S1,S2,...    rectified flow and MeanFlow: step counts to sweep, a row per guidance weight
                       and step count (default: the model's), e.g. 1,2,4,8,16,32
  --bpd-n N            test images of the bits/dim figure (default: n; 0: none). Rectified flow's
                       and MeanFlow's likelihood integrates an ODE: about 1 s an MNIST image
  --strategy S         gs-jacobi per-block plan (see starflow sample --help)
  --batch B            samples per solver batch (default 100)
  --denoise            one score-based denoising step after sampling, at the model's noiseStd
                       (default for models trained on Gaussian-noised data)
  --no-denoise         do not denoise
  --seed N             seed of the noise, the reference subsets and KID's subsets (default 0)
  --features DIR       feature extractor (default: the shipped checkpoints/mnist-features); its
                       dataset (config.json 'data') supplies the reference and floor images
  --ref N              training images in the reference set (default 10000)
  --kid-subsets S      KID subsets (default 50; subset size min(1000, n))
  --out DIR            where to write metrics.json, report.md and the pictures (default eval-out)
  --record             also record the headline figures (first --cfg) in the model's config.json
                       (provenance.evaluation.samples): how shipped models are compared, and how the
                       default model is chosen

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

/** `starflow eval --prompts FILE.jsonl`: argument parsing, evaluatePromptFile, messages. */
async function promptsEval(o: ReturnType<typeof parse>): Promise<void> {
  const weights = o.cfg === undefined ? [0] : numList(strOpt(o.cfg, 'cfg')!, 'cfg');
  const rule = strOpt(o['guidance-rule'], 'guidance-rule');
  if (rule !== undefined && rule !== 'tarflow' && rule !== 'starflow') throw new UsageError(`--guidance-rule must be tarflow or starflow, got '${rule}'`);
  const featuresDir = strOpt(o.features, 'features') ?? SHIPPED_FEATURES;
  if (!existsSync(featuresDir)) throw new UsageError(`no feature extractor at ${featuresDir}: pass --features DIR`);
  await startEngineFromOptions(o);
  const bar = new Progress('sample prompts', 100);
  const { report, metricsFile, gridFile } = await evaluatePromptFile({
    modelDir: modelDir(o),
    promptsFile: strOpt(o.prompts, 'prompts')!,
    featuresDir,
    outDir: strOpt(o.out, 'out') ?? 'eval-out',
    perPrompt: intOpt(o.n, 'n', 1, 20),
    batchSize: intOpt(o.batch, 'batch', 1, 100),
    seed: intOpt(o.seed, 'seed', 0, 0),
    guidance: { weight: weights[0]!, rule, annealed: false, attnTemp: numOpt(o['attn-temp'], 'attn-temp', 1, (x) => x > 0, 'a number > 0') },
    denoise: denoiseFlag(o),
    onProgress: (done, total) => bar.update(Math.round((100 * done) / total), '%'),
  });
  for (const w of report.warnings) console.error(`warning: ${w}`);
  const pct = (x: number | null) => (x === null ? 'n/a (no digit with both a thick and a thin prompt)' : `${(100 * x).toFixed(1)}%`);
  console.log(`prompt accuracy ${pct(report.promptAccuracy)} over ${report.cases.length} prompts × ${report.perPrompt} samples (cfg ${report.guidance})`);
  console.log(`thickness agreement ${pct(report.thicknessAgreement)} over ${report.thicknessPairs} thick/thin pairs`);
  console.log(`wrote ${metricsFile} and ${gridFile}`);
}

function numList(v: string, name: string): number[] {
  const xs = v.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || x < 0)) throw new UsageError(`--${name} must be a comma-separated list of numbers ≥ 0, got '${v}'`);
  return xs;
}

export async function evalCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    record: { type: 'boolean' },
    model: { type: 'string' },
    n: { type: 'string' },
    cfg: { type: 'string' },
    'guidance-rule': { type: 'string' },
    'attn-temp': { type: 'string' },
    solver: { type: 'string' },
    steps: { type: 'string' },
    'bpd-n': { type: 'string' },
    strategy: { type: 'string' },
    batch: { type: 'string' },
    seed: { type: 'string' },
    features: { type: 'string' },
    ref: { type: 'string' },
    'kid-subsets': { type: 'string' },
    denoise: { type: 'boolean' },
    'no-denoise': { type: 'boolean' },
    out: { type: 'string' },
    prompts: { type: 'string' },
  });
  if (o.help) return void console.log(EVAL_HELP);
  if (o.prompts !== undefined) return promptsEval(o);
  if (o.n !== undefined && Number(o.n) === 0) throw new UsageError('--n 0: there are no samples to evaluate (use --n 4 or more; 500 is a sensible minimum)');
  const n = intOpt(o.n, 'n', 4, 500);
  const weights = o.cfg === undefined ? [0] : numList(strOpt(o.cfg, 'cfg')!, 'cfg');
  const rule = strOpt(o['guidance-rule'], 'guidance-rule');
  if (rule !== undefined && rule !== 'tarflow' && rule !== 'starflow') throw new UsageError(`--guidance-rule must be tarflow or starflow, got '${rule}'`);
  const attnTemp = numOpt(o['attn-temp'], 'attn-temp', 1, (x) => x > 0, 'a number > 0');
  const solver = strOpt(o.solver, 'solver');
  const solvers: readonly string[] = [...SOLVERS, ...ODE_SOLVERS];
  if (solver !== undefined && !solvers.includes(solver)) throw new UsageError(`unknown solver '${solver}' (expected one of: ${solvers.join(', ')})`);
  const steps = o.steps === undefined ? undefined : numList(strOpt(o.steps, 'steps')!, 'steps');
  if (steps?.some((k) => !Number.isInteger(k) || k < 1)) throw new UsageError(`--steps must be a comma-separated list of integers ≥ 1, got '${String(o.steps)}'`);
  const opts: EvalOptions = {
    n,
    weights,
    guidanceRule: rule,
    attnTemp,
    solver: solver as SolverName | OdeSolverName | undefined,
    steps,
    bpdImages: o['bpd-n'] === undefined ? undefined : intOpt(o['bpd-n'], 'bpd-n', 0),
    batchSize: intOpt(o.batch, 'batch', 1, 100),
    seed: intOpt(o.seed, 'seed', 0, 0),
    refN: intOpt(o.ref, 'ref', 2, 10000),
    kidSubsets: intOpt(o['kid-subsets'], 'kid-subsets', 1, 50),
    outDir: strOpt(o.out, 'out') ?? 'eval-out',
    modelDir: modelDir(o),
    featuresDir: strOpt(o.features, 'features') ?? SHIPPED_FEATURES,
    strategy: strOpt(o.strategy, 'strategy'),
    denoise: denoiseFlag(o),
    record: Boolean(o.record),
  };
  const fxDir = opts.featuresDir!;
  if (!existsSync(fxDir)) throw new UsageError(`no feature extractor at ${fxDir}: train one with 'starflow train-features --out ${fxDir}' or pass --features DIR`);

  await startEngineFromOptions(o);
  let bar: { run: number; progress: Progress } | undefined;
  const r = await evaluateModel({
    ...opts,
    onLog: (line) => process.stderr.write(`${line}\n`),
    onProgress: (e) => {
      if (bar?.run !== e.run) bar = { run: e.run, progress: new Progress(`sample cfg ${e.cfg}${steps ? `, ${steps[e.run % steps.length]} steps` : ''}`, 100) };
      bar.progress.update(Math.round((100 * e.done) / e.total), '%');
    },
  }).catch((e: unknown) => {
    // Options that do not fit this model (e.g. --denoise on a model trained without noise) are usage errors.
    throw e instanceof EvalError && e.option ? new UsageError(e.message) : e;
  });

  for (const line of summaryTable(r.metrics)) console.log(line);
  console.log(`ordered floor < model < ceiling: ${r.metrics.ordered.frechet ? 'yes' : 'no'}; wrote ${path.join(opts.outDir, 'report.md')} and metrics.json`);
}
