// Training of any registered family (models/registry.ts): AdamW with warm-up + cosine, gradient
// clipping and an EMA of the weights, the gradient optionally split over data-parallel workers.
// The run is a pure function of (config, seed, step): batch indices, noise, label drops and the
// loss's own random draws at step s depend only on the seed and s, so a run resumed from a
// checkpoint reproduces the uninterrupted run's losses. Every checkpoint records how it was made
// (config.json's `provenance`).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { appendFile, readFile, rename, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { keep, release, countParams, currentDevice, threadBudget, type Params } from '../engine/index.js';
import { familyOf, initModel } from '../models/registry.js';
import { bitsPerDimOf, imageShapeOf, NO_GUIDANCE, type Model } from '../models/model.js';
import { paramsToHost, paramsFromHost } from '../nn/params.js';
import { initAdamState } from '../nn/optim.js';
import { optimize } from './loop.js';
import { makeApplyStep, type TrainState } from './step.js';
import { Replicas } from './replicas.js';
import { loadDataset } from '../data/load.js';
import { BatchSampler, makeBatch, addGaussianNoise, uniformDequantize, dropLabels } from '../data/transforms.js';
import { Rng } from '../engine/rng.js';
import { saveCheckpoint, loadCheckpoint, checkWeightsAgainst, type FlatTensors } from '../io/checkpoint.js';
import { AUTOENCODER_DIR, modelAutoencoder, splitConfigJson, type Provenance } from '../io/model.js';
import { autoencoderParts, type LoadedAutoencoder } from '../io/autoencoder.js';
import { encodeDataset } from './autoencoder.js';
import { CODE } from './code-version.js';
import { writePngGrid } from '../io/png.js';
import { makeDirs } from '../io/files.js';
import { generate, classRows } from '../sampling/pipeline.js';
import { denoisesByDefault } from '../sampling/denoise.js';
import { evaluateBpd } from '../eval/likelihood.js';
import { promptText } from '../sampling/prompts.js';
import { captionSource, CAPTION_VOCABULARIES, type CaptionSource } from '../data/captions.js';
import type { TokenizerConfig } from '../nn/tokenizer.js';
import type { ImageDataset } from '../data/dataset.js';
import { parseTrainConfig, type TrainConfig } from './config.js';

export type TrainEvent =
  | { type: 'warning'; message: string }
  | { type: 'archived'; from: string; to: string }
  /** `stopAt`: the step this invocation ends at (at most totalSteps); `seconds`: its time limit (Infinity without one). */
  | { type: 'start'; step: number; totalSteps: number; stopAt: number; seconds: number; params: number; resumed: boolean; workers: number }
  | { type: 'step'; step: number; totalSteps: number; loss: number; bpd: number | null; lr: number; gradNorm: number; stepsPerSec: number; etaSec: number }
  | { type: 'skip'; step: number; loss: number; inARow: number }
  | { type: 'eval'; step: number; bpd: number; images: number; latent: boolean }
  /** A latent model's training images were encoded once, before the first step. */
  | { type: 'latents'; images: number; shape: number[]; seconds: number }
  | { type: 'samples'; step: number; path: string }
  | { type: 'checkpoint'; step: number; dir: string }
  /** The schedule's length was fitted to the time limit (`fitSchedule`) from the speed of steps `measured`. */
  | { type: 'schedule'; steps: number; was: number; secondsPerStep: number; measured: [number, number] }
  | { type: 'stop'; step: number; reason: 'done' | 'time' | 'interrupted' };

export type TrainOptions = {
  outDir: string;
  /** Stop after this many steps in this invocation (the schedule still spans `config.steps`). */
  maxSteps?: number;
  /** Stop after this many minutes of training in this invocation. */
  minutes?: number;
  /**
   * With `minutes`, on a fresh run: set the schedule's length (`steps`, at most the config's) from
   * the speed of the first steps so that the learning rate decays to its end within the time limit,
   * on whatever machine runs it. The fitted length is recorded in the run's config; resuming keeps it.
   */
  fitSchedule?: boolean;
  signal?: AbortSignal;
  onEvent?: (e: TrainEvent) => void;
  /**
   * A fresh run into a directory that holds one (log.jsonl or checkpoint/) is refused, so an
   * earlier run is never overwritten; `force` moves the earlier run aside to DIR.old-<time>.
   */
  force?: boolean;
  /**
   * Data-parallel worker threads, each computing the gradient on an equal slice of every batch
   * with its own one-thread engine; 1 (the default) computes it on this thread; 'auto' takes the
   * most that divide the batch size within the engine's thread budget (STARFLOW_THREADS or every
   * core). Losses agree with one worker's to float32 round-off; a resumed run matches the
   * uninterrupted one exactly when both use the same count.
   */
  workers?: number | 'auto';
};

export class TrainingError extends Error {
  override name = 'TrainingError';
}

export const CHECKPOINT_DIR = 'checkpoint';

/** `fitSchedule` times steps FIT_SKIP .. FIT_SKIP + FIT_STEPS (at most) of a fresh run (the first ones compile). */
const FIT_SKIP = 10;
const FIT_STEPS = 30;

/**
 * A grid of samples: one row per class (class models) or per prompt (models with a text encoder),
 * or 64 unconditional samples; sequential solver, denoised for noise-trained models.
 */
export async function sampleGrid(model: Model, file: string, seed: number, prompts?: string[]): Promise<void> {
  const { cfg } = model;
  const rows = prompts ? prompts.length : Math.min(cfg.numClasses, 10);
  const n = rows > 0 ? 10 * rows : 64;
  const { labels, perRow } = classRows(n, prompts ? prompts.length : cfg.numClasses);
  const denoise = denoisesByDefault(model) ? { sigma: cfg.noiseStd, lrScale: 1 } : undefined;
  const text = prompts && (await promptText(model, labels!.map((row) => prompts[row]!)));
  const r = await generate(model, { n, ...(text ? { text: { states: text.states } } : { labels }), guidance: NO_GUIDANCE, seed, denoise });
  await writePngGrid(file, r.images, r.shape, { nrow: perRow });
}

function captionsFor(spec: string, ds: ImageDataset, tokenizer: TokenizerConfig, seed: number): CaptionSource {
  try {
    return captionSource(ds, tokenizer, seed);
  } catch (e) {
    throw new TrainingError(`the model reads captions; ${spec}: ${(e as Error).message}`);
  }
}

function prefixed(prefix: string, t: FlatTensors): FlatTensors {
  return new Map([...t].map(([k, v]) => [`${prefix}.${k}`, v]));
}

function unprefixed(prefix: string, t: FlatTensors): FlatTensors {
  const p = `${prefix}.`;
  return new Map([...t].filter(([k]) => k.startsWith(p)).map(([k, v]) => [k.slice(p.length), v]));
}

type TrainerState = { version: 1; step: number; train: TrainConfig; badSteps: number; seconds?: number };

/** What a run knows about itself when it saves: becomes config.json's provenance. */
type RunRecord = { step: number; badSteps: number; seconds: number; workers: number; device: string; evaluation?: Provenance };


async function saveRun(dir: string, cfg: TrainConfig, state: TrainState, run: RunRecord, ae?: LoadedAutoencoder): Promise<void> {
  const trainer: TrainerState = { version: 1, step: run.step, train: cfg, badSteps: run.badSteps, seconds: run.seconds };
  const provenance: Provenance = {
    software: 'starflow-ts',
    ...CODE,
    steps: run.step,
    seconds: Math.round(run.seconds),
    workers: run.workers,
    device: run.device,
    seed: cfg.seed,
    weights: cfg.emaDecay > 0 ? `EMA (decay ${cfg.emaDecay})` : 'raw',
    train: cfg,
    ...(run.evaluation ? { evaluation: run.evaluation } : {}),
    savedAt: new Date().toISOString(),
  };
  await saveCheckpoint(dir, {
    // A latent model's autoencoder travels inside its checkpoint.
    config: { ...cfg.model, ...(ae ? { autoencoder: AUTOENCODER_DIR } : {}), provenance },
    // model.safetensors holds the weights to sample with: the EMA when there is one.
    model: await paramsToHost(state.ema),
    optimizer: new Map([
      ...prefixed('params', await paramsToHost(state.params)),
      ...prefixed('m', await paramsToHost(state.m)),
      ...prefixed('v', await paramsToHost(state.v)),
    ]),
    trainer,
    ...(ae ? { components: { [AUTOENCODER_DIR]: await autoencoderParts(ae, ae.provenance) } } : {}),
  });
}

/**
 * The autoencoder a training config's latent model names: relative to the working directory, or
 * else to the package (presets name shipped ones, e.g. checkpoints/mnist-starflow/autoencoder).
 * A resumed run reads the copy in its own checkpoint.
 */
async function trainingAutoencoder(cfg: TrainConfig, ckDir: string, resumed: boolean): Promise<LoadedAutoencoder | undefined> {
  const m = cfg.model;
  if (!m.autoencoder) return undefined;
  if (resumed) return modelAutoencoder({ ...m, autoencoder: AUTOENCODER_DIR }, ckDir, `${ckDir}/config.json`);
  if (cfg.noise === 'uniform') throw new TrainingError("a latent model trains on its latents with Gaussian noise (noise: 'gaussian', the model's noiseStd), not uniform dequantisation");
  if (cfg.data.flip) throw new TrainingError('a latent model trains on latents encoded once: flip augmentation is not available (set data.flip to false)');
  const packageRoot = fileURLToPath(new URL('../../', import.meta.url));
  const base = !path.isAbsolute(m.autoencoder) && !existsSync(path.resolve(m.autoencoder)) && existsSync(path.resolve(packageRoot, m.autoencoder)) ? packageRoot : process.cwd();
  return modelAutoencoder(m, base, "the training config's model");
}

async function loadRun(dir: string): Promise<{ cfg: TrainConfig; state: TrainState; step: number; badSteps: number; seconds: number; evaluation?: Provenance }> {
  const ck = await loadCheckpoint(dir);
  const t = ck.trainer as TrainerState | undefined;
  if (!t || t.version !== 1 || !ck.optimizer) {
    throw new TrainingError(`${dir} is a model checkpoint without training state (trainer.json, optimizer.safetensors): it cannot be resumed`);
  }
  const cfg = parseTrainConfig(t.train, `${dir}/trainer.json: train`);
  const shapes = familyOf(cfg.model).paramShapes(cfg.model);
  checkWeightsAgainst(shapes, ck.model, `${dir}/model.safetensors`);
  const parts = ['params', 'm', 'v'].map((p) => {
    const flat = unprefixed(p, ck.optimizer!);
    checkWeightsAgainst(shapes, flat, `${dir}/optimizer.safetensors (${p})`);
    return paramsFromHost<Params>(flat);
  }) as [Params, Params, Params];
  const state: TrainState = { params: parts[0], m: parts[1], v: parts[2], ema: paramsFromHost<Params>(ck.model) };
  const evaluation = splitConfigJson(ck.config).provenance?.evaluation as Provenance | undefined;
  return { cfg, state, step: t.step, badSteps: t.badSteps, seconds: t.seconds ?? 0, evaluation };
}

/** Refuses to start a fresh run over an earlier one, or (force) renames the earlier one aside. */
async function setAsideEarlierRun(outDir: string, force: boolean, emit: (e: TrainEvent) => void): Promise<void> {
  const held = (await Promise.all(['log.jsonl', CHECKPOINT_DIR].map((f) => stat(path.join(outDir, f)).then(() => f, () => null)))).filter(Boolean);
  if (held.length === 0) return;
  if (!force) {
    throw new TrainingError(`${outDir} holds an earlier run (${held.join(', ')}): continue it with --resume ${outDir}, pick another --out, or pass --force to move it aside`);
  }
  const to = `${outDir.replace(/[\\/]+$/, '')}.old-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  await rename(outDir, to);
  emit({ type: 'archived', from: outDir, to });
}

/** The most data-parallel workers within a thread budget (the engine's) that divide the batch size. */
export function autoWorkers(batchSize: number, budget = threadBudget()): number {
  for (let w = Math.min(budget, batchSize); w > 1; w--) if (batchSize % w === 0) return w;
  return 1;
}

/**
 * Trains (or resumes) a run in `outDir`: logs to `log.jsonl`, writes sample grids to `samples/`
 * and an atomic checkpoint to `checkpoint/`. Resuming reads that checkpoint and continues.
 */
export async function train(config: TrainConfig | null, opts: TrainOptions): Promise<{ step: number; checkpoint: string }> {
  const ckDir = path.join(opts.outDir, CHECKPOINT_DIR);
  const emit = opts.onEvent ?? (() => {});
  let cfg: TrainConfig;
  let state: TrainState;
  let step = 0;
  let badSteps = 0;
  let resumed = false;
  let secondsBefore = 0; // training time of earlier invocations of this run
  let evaluation: Provenance | undefined;
  if (config === null) {
    ({ cfg, state, step, badSteps, seconds: secondsBefore, evaluation } = await loadRun(ckDir));
    resumed = true;
  } else {
    cfg = config;
    const { params } = initModel(cfg.model, cfg.seed);
    const adam = initAdamState(params);
    state = { params, m: adam.m, v: adam.v, ema: keep(params) }; // the EMA starts at the initial weights
  }
  const workers = opts.workers === 'auto' ? autoWorkers(cfg.batchSize) : (opts.workers ?? 1);
  if (!Number.isInteger(workers) || workers < 1) throw new TrainingError(`workers must be an integer ≥ 1, got ${workers}`);
  if (cfg.batchSize % workers !== 0) throw new TrainingError(`batchSize ${cfg.batchSize} does not split evenly over ${workers} workers (every replica takes an equal slice)`);
  if (!resumed && cfg.warmupSteps >= cfg.steps) {
    emit({ type: 'warning', message: `warmupSteps (${cfg.warmupSteps}) ≥ steps (${cfg.steps}): the learning rate never reaches lr (${cfg.lr}); lower 'warmupSteps' or raise 'steps'` });
  }
  if (!resumed) await setAsideEarlierRun(opts.outDir, opts.force ?? false, emit);
  await makeDirs(path.join(opts.outDir, 'samples'));
  const logFile = path.join(opts.outDir, 'log.jsonl');
  const log = (e: object) => appendFile(logFile, JSON.stringify(e) + '\n');

  const m = cfg.model;
  const family = familyOf(m);
  const ae = await trainingAutoencoder(cfg, ckDir, resumed);
  const shape = imageShapeOf({ cfg: m, autoencoder: ae }); // a latent model loads its autoencoder's images
  const trainData = await loadDataset(cfg.data.train, shape);
  const testData = cfg.evalEvery > 0 && family.nll ? await loadDataset(cfg.data.test, shape) : undefined;
  if (m.numClasses > 0 && trainData.numClasses > m.numClasses) {
    throw new TrainingError(`the data has ${trainData.numClasses} classes but model.numClasses is ${m.numClasses}`);
  }
  // A model with its own text encoder trains on captions of the images (data/captions.ts).
  const tokenizer = family.textEncoder?.(m)?.tokenizer ?? null;
  const trainCaptions = tokenizer && captionsFor(cfg.data.train, trainData, tokenizer, cfg.seed);
  if (tokenizer && testData) captionsFor(cfg.data.test, testData, tokenizer, cfg.seed); // fails now, not at the first evaluation
  const gridPrompts = tokenizer ? CAPTION_VOCABULARIES[trainData.captions!]!.names.slice(0, Math.min(trainData.numClasses, 10)).map((names) => names[0]!) : undefined;
  // A latent model trains on the latents of the training images, encoded once.
  const latentPer = m.inChannels * m.imgSize * m.imgSize;
  let trainLatents: Float32Array | undefined;
  if (ae) {
    const t = performance.now();
    trainLatents = await encodeDataset(ae, trainData);
    emit({ type: 'latents', images: trainData.n, shape: [m.inChannels, m.imgSize, m.imgSize], seconds: (performance.now() - t) / 1000 });
  }
  const sampler = new BatchSampler(trainData.n, cfg.batchSize, cfg.seed);
  const applyStep = makeApplyStep(cfg);
  const replicas = await Replicas.start(m, state.params, workers, currentDevice());
  try {
    const nParams = countParams(state.params);
    let stopAt = Math.min(cfg.steps, opts.maxSteps !== undefined ? step + opts.maxSteps : Infinity);
    const deadline = opts.minutes !== undefined ? Date.now() + opts.minutes * 60_000 : Infinity;
    emit({ type: 'start', step, totalSteps: cfg.steps, stopAt, seconds: (opts.minutes ?? Infinity) * 60, params: nParams, resumed, workers });
    let lastCheckpoint = step;
    let haveCheckpoint = resumed; // a fresh run has none on disk until its first save
    const t0 = performance.now();
    const firstStep = step;
    const device = currentDevice();
    const record = (): RunRecord => ({ step, badSteps, seconds: secondsBefore + (performance.now() - t0) / 1000, workers, device, evaluation });
    const modelOf = (params: Params): Model => ({ family, cfg: m, params, ...(ae ? { autoencoder: ae } : {}) });

    const schedule = { ...cfg }; // its length may be fitted below
    // Timed within the warm-up where it can be: the warm-up's learning rates do not depend on the
    // length, so the fitted run is the run its recorded config describes.
    const fit = opts.fitSchedule && !resumed && Number.isFinite(deadline) ? { from: FIT_SKIP, to: Math.max(FIT_SKIP + 5, Math.min(FIT_SKIP + FIT_STEPS, cfg.warmupSteps)), t: 0 } : undefined;
    const r = await optimize({
      state,
      from: step,
      stopAt,
      schedule,
      apply: applyStep,
      stop: (s) => (opts.signal?.aborted ? 'interrupted' : s >= stopAt ? 'done' : Date.now() >= deadline ? 'time' : undefined),
      // Everything random at a step is derived from (seed, step).
      batch(s) {
        const rng = new Rng(cfg.seed).fork(s + 1);
        const indices = sampler.batchIndices(s);
        const batch = trainLatents ? latentBatch(trainLatents, latentPer, trainData.labels, indices) : makeBatch(trainData, indices, { flip: cfg.data.flip, rng });
        const x = cfg.noise === 'uniform' ? uniformDequantize(batch.x, rng) : addGaussianNoise(batch.x, m.noiseStd, rng);
        const y = trainCaptions ? trainCaptions.ids([...indices], rng.fork(7), cfg.labelDrop) : dropLabels(batch.y, cfg.labelDrop, rng);
        const epsShape = family.lossNoiseShape?.(m, cfg.batchSize);
        const eps = epsShape && { data: Float32Array.from({ length: epsShape.reduce((a, b) => a * b, 1) }, () => rng.normal()), shape: epsShape };
        return { x, xShape: [cfg.batchSize, m.inChannels, m.imgSize, m.imgSize], y, eps };
      },
      gradients: (params, b) => replicas.gradients(params, b.x, b.xShape, b.y, b.eps),
      async onSkip(s, loss) {
        step = s + 1;
        badSteps++;
        emit({ type: 'skip', step: s, loss, inARow: badSteps });
        await log({ step: s, skipped: true, loss: String(loss) });
        if (badSteps >= cfg.maxBadSteps) {
          throw new TrainingError(
            `training diverged: ${badSteps} non-finite losses in a row (last at step ${s}); ` +
              (haveCheckpoint
                ? `the last good checkpoint (step ${lastCheckpoint}) is in ${ckDir}. Lower 'lr' or raise 'warmupSteps' and resume or restart.`
                : `no checkpoint was written before that. Lower 'lr' or raise 'warmupSteps' and restart.`),
          );
        }
      },
      async onStep({ step: done, loss, gradNorm, lr }, current) {
        step = done;
        state = current;
        badSteps = 0;
        if (fit && step === fit.from) fit.t = performance.now(); // the first steps include compiling
        if (fit && step === fit.to && fit.to < stopAt) {
          const secondsPerStep = (performance.now() - fit.t) / 1000 / (fit.to - fit.from);
          // 10% of the time is left for the periodic evaluations and sample grids.
          const fitted = Math.max(step + 1, Math.min(cfg.steps, step + Math.floor((0.9 * (deadline - Date.now())) / 1000 / secondsPerStep)));
          emit({ type: 'schedule', steps: fitted, was: cfg.steps, secondsPerStep, measured: [fit.from, fit.to] });
          await log({ step, schedule: fitted, was: cfg.steps, secondsPerStep });
          cfg = { ...cfg, steps: fitted };
          schedule.steps = fitted;
          stopAt = Math.min(stopAt, fitted);
        }
        if (step % cfg.logEvery === 0 || step === stopAt) {
          const stepsPerSec = (step - firstStep) / ((performance.now() - t0) / 1000);
          const e = { type: 'step' as const, step, totalSteps: cfg.steps, loss, bpd: family.nll && family.lossIsNll !== false ? bitsPerDimOf({ autoencoder: ae }, loss) : null, lr, gradNorm, stepsPerSec, etaSec: (stopAt - step) / stepsPerSec };
          emit(e);
          await log({ step, loss, bpd: e.bpd, lr, gradNorm, stepsPerSec, time: Date.now() });
        }
        if (testData && step % cfg.evalEvery === 0) {
          const r = await evaluateBpd(modelOf(state.ema), testData, cfg.evalImages);
          const images = r.perImage.length;
          evaluation = { testBpd: { data: cfg.data.test, bitsPerDim: r.finiteMean, images: images - r.nonFinite.length, of: images, step, weights: cfg.emaDecay > 0 ? 'EMA' : 'raw' } };
          emit({ type: 'eval', step, bpd: r.mean, images, latent: Boolean(ae) });
          await log({ step, testBpd: r.finiteMean, ...(r.nonFinite.length ? { testNonFinite: r.nonFinite.length } : {}), time: Date.now() });
        }
        if (cfg.sampleEvery > 0 && step % cfg.sampleEvery === 0) {
          const file = path.join(opts.outDir, 'samples', `step-${String(step).padStart(6, '0')}.png`);
          await sampleGrid(modelOf(state.ema), file, cfg.seed, gridPrompts);
          emit({ type: 'samples', step, path: file });
        }
        if (step % cfg.checkpointEvery === 0) {
          await saveRun(ckDir, cfg, state, record(), ae);
          lastCheckpoint = step;
          haveCheckpoint = true;
          emit({ type: 'checkpoint', step, dir: ckDir });
        }
      },
    });
    state = r.state;
    step = r.step;
    const reason = r.reason as 'done' | 'time' | 'interrupted';
    if (lastCheckpoint !== step || !resumed) {
      await saveRun(ckDir, cfg, state, record(), ae);
      emit({ type: 'checkpoint', step, dir: ckDir });
    }
    emit({ type: 'stop', step, reason });
    release(state);
    return { step, checkpoint: ckDir };
  } finally {
    applyStep.dispose();
    await replicas.close();
  }
}

/** Rows `indices` of a latent set ([n, per] row-major) with their labels. */
function latentBatch(latents: Float32Array, per: number, labels: Int32Array, indices: ArrayLike<number>): { x: Float32Array; y: Int32Array } {
  const x = new Float32Array(indices.length * per);
  const y = new Int32Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k]!;
    x.set(latents.subarray(i * per, (i + 1) * per), k * per);
    y[k] = labels[i]!;
  }
  return { x, y };
}

export async function readLog(outDir: string): Promise<object[]> {
  const text = await readFile(path.join(outDir, 'log.jsonl'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as object);
}
