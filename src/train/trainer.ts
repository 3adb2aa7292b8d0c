// Maximum-likelihood training of a TARFlow: AdamW with warm-up + cosine, gradient clipping and an
// EMA of the weights, all in one jitted step. The run is a pure function of (config, seed, step):
// batch indices, noise and label drops at step s depend only on the seed and s, so a run resumed
// from a checkpoint reproduces the uninterrupted run's losses.
import path from 'node:path';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { np, jit, keep, release, fromF32, fromI32, toF32, toNumber, countParams, currentDevice, threadBudget, type Arr } from '../engine/index.js';
import { initTarFlow, forward, bitsPerDim, type TarFlowParams } from '../models/tarflow.js';
import { tokenShape, type TarFlowConfig } from '../models/config.js';
import { paramsToHost, paramsFromHost, paramShapes } from '../nn/params.js';
import { ADAMW_DEFAULTS, adamScalars, cosineLr, emaDecayAt, initAdamState } from '../nn/optim.js';
import { makeApplyStep, type TrainState } from './step.js';
import { Replicas } from './replicas.js';
import { loadDataset } from '../data/load.js';
import { BatchSampler, makeBatch, addGaussianNoise, uniformDequantize, dropLabels } from '../data/transforms.js';
import { Rng } from '../engine/rng.js';
import type { ImageDataset } from '../data/dataset.js';
import { saveCheckpoint, loadCheckpoint, checkWeightsAgainst, type FlatTensors } from '../io/checkpoint.js';
import { writePngGrid } from '../io/png.js';
import { NO_GUIDANCE } from '../sampling/solvers.js';
import { generate } from '../sampling/pipeline.js';
import { makePlans } from '../sampling/plan.js';
import { parseTrainConfig, type TrainConfig } from './config.js';

export type TrainEvent =
  | { type: 'start'; step: number; totalSteps: number; params: number; resumed: boolean; workers: number }
  | { type: 'step'; step: number; totalSteps: number; loss: number; bpd: number; lr: number; gradNorm: number; stepsPerSec: number; etaSec: number }
  | { type: 'skip'; step: number; loss: number; inARow: number }
  | { type: 'eval'; step: number; bpd: number; images: number }
  | { type: 'samples'; step: number; path: string }
  | { type: 'checkpoint'; step: number; dir: string }
  | { type: 'stop'; step: number; reason: 'done' | 'time' | 'interrupted' };

export type TrainOptions = {
  outDir: string;
  /** Stop after this many steps in this invocation (the schedule still spans `config.steps`). */
  maxSteps?: number;
  /** Stop after this many minutes of training in this invocation. */
  minutes?: number;
  signal?: AbortSignal;
  onEvent?: (e: TrainEvent) => void;
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

/** Nats per dimension → bits per dimension on 8-bit data (the log 128 bin term included). */
export function lossToBpd(loss: number): number {
  return (loss + 0.5 * Math.log(2 * Math.PI) + Math.log(128)) / Math.LN2;
}

/** Per-sample bits/dim of images under a model (labels −1 or a class each). */
const bpdFns = new Map<string, (p: TarFlowParams, x: Arr, y: Arr) => Arr>();
export function bitsPerDimOf(params: TarFlowParams, cfg: TarFlowConfig, x: Arr, y: Arr): Arr {
  const key = JSON.stringify(cfg);
  let f = bpdFns.get(key);
  if (!f) {
    f = jit((p: TarFlowParams, x: Arr, y: Arr) => {
      const r = forward(p, cfg, x, cfg.numClasses > 0 ? y : (y.dispose(), undefined));
      r.blockZ2.dispose();
      return bitsPerDim(r.z, r.logdet);
    }) as unknown as (p: TarFlowParams, x: Arr, y: Arr) => Arr;
    bpdFns.set(key, f);
  }
  return f(keep(params), x, y);
}

/**
 * Mean bits/dim over the first `n` images of a dataset, uniformly dequantised with a fixed seed
 * (as the reference evaluates likelihood). Class models are evaluated as p(x | true label).
 */
/**
 * Bits/dim per image. `mean` is over every image: +Infinity when the float32 likelihood of one
 * of them underflows (its z overflowed); `finiteMean` and `nonFinite` (indices) say what the
 * rest scored and which did.
 */
export type BpdResult = { mean: number; finiteMean: number; nonFinite: number[]; perImage: Float32Array };

export async function evaluateBpd(
  params: TarFlowParams,
  cfg: TarFlowConfig,
  ds: ImageDataset,
  n: number,
  opts: { batchSize?: number; seed?: number; onBatch?: (done: number, total: number) => void } = {},
): Promise<BpdResult> {
  const total = Math.min(n, ds.n);
  const bs = Math.min(opts.batchSize ?? 200, total);
  const rng = new Rng(opts.seed ?? 1234);
  const out = new Float32Array(total);
  for (let start = 0; start < total; start += bs) {
    // Static batch shape: the last batch is padded with repeats and the padding ignored.
    const idx = Array.from({ length: bs }, (_, i) => Math.min(start + i, total - 1));
    const batch = makeBatch(ds, idx);
    const x = uniformDequantize(batch.x, rng);
    const bpd = await toF32(bitsPerDimOf(params, cfg, fromF32(x, [bs, ds.channels, ds.height, ds.width]), fromI32(batch.y, [bs])));
    for (let i = 0; i < bs && start + i < total; i++) out[start + i] = bpd[i]!;
    opts.onBatch?.(Math.min(start + bs, total), total);
  }
  let s = 0;
  let finite = 0;
  const nonFinite: number[] = [];
  for (const [i, v] of out.entries()) {
    s += v;
    if (Number.isFinite(v)) finite += v;
    else nonFinite.push(i);
  }
  return { mean: s / total, finiteMean: finite / (total - nonFinite.length), nonFinite, perImage: out };
}

/** A grid of samples: one row per class (class models) or 64 unconditional samples, sequential solver, denoised for noise-trained models. */
export async function sampleGrid(params: TarFlowParams, cfg: TarFlowConfig, file: string, seed: number): Promise<void> {
  const perClass = cfg.numClasses > 0 ? 10 : 0;
  const n = cfg.numClasses > 0 ? perClass * Math.min(cfg.numClasses, 10) : 64;
  const labels = cfg.numClasses > 0 ? Array.from({ length: n }, (_, i) => Math.floor(i / perClass)) : undefined;
  const plans = makePlans('sequential', cfg.numBlocks, tokenShape(cfg).tokens);
  // A model trained on Gaussian-noised images samples them noisy: one score step removes it.
  const denoise = cfg.noiseStd > 0 ? { sigma: cfg.noiseStd, lrScale: 1 } : undefined;
  const r = await generate(params, cfg, { n, labels, plans, guidance: NO_GUIDANCE, seed, denoise });
  await writePngGrid(file, r.images, r.shape, { nrow: perClass || 8 });
}

function prefixed(prefix: string, t: FlatTensors): FlatTensors {
  return new Map([...t].map(([k, v]) => [`${prefix}.${k}`, v]));
}

function unprefixed(prefix: string, t: FlatTensors): FlatTensors {
  const p = `${prefix}.`;
  return new Map([...t].filter(([k]) => k.startsWith(p)).map(([k, v]) => [k.slice(p.length), v]));
}

type TrainerState = { version: 1; step: number; train: TrainConfig; badSteps: number };

async function saveRun(dir: string, cfg: TrainConfig, state: TrainState, step: number, badSteps: number): Promise<void> {
  const trainer: TrainerState = { version: 1, step, train: cfg, badSteps };
  await saveCheckpoint(dir, {
    config: cfg.model,
    // model.safetensors holds the weights to sample with: the EMA when there is one.
    model: await paramsToHost(state.ema),
    optimizer: new Map([
      ...prefixed('params', await paramsToHost(state.params)),
      ...prefixed('m', await paramsToHost(state.m)),
      ...prefixed('v', await paramsToHost(state.v)),
    ]),
    trainer,
  });
}

async function loadRun(dir: string): Promise<{ cfg: TrainConfig; state: TrainState; step: number; badSteps: number }> {
  const ck = await loadCheckpoint(dir);
  const t = ck.trainer as TrainerState | undefined;
  if (!t || t.version !== 1 || !ck.optimizer) {
    throw new TrainingError(`${dir} is a model checkpoint without training state (trainer.json, optimizer.safetensors): it cannot be resumed`);
  }
  const cfg = parseTrainConfig(t.train, `${dir}/trainer.json: train`);
  const shapes = expectedShapes(cfg.model);
  checkWeightsAgainst(shapes, ck.model, `${dir}/model.safetensors`);
  const parts = ['params', 'm', 'v'].map((p) => {
    const flat = unprefixed(p, ck.optimizer!);
    checkWeightsAgainst(shapes, flat, `${dir}/optimizer.safetensors (${p})`);
    return paramsFromHost<TarFlowParams>(flat);
  }) as [TarFlowParams, TarFlowParams, TarFlowParams];
  const state: TrainState = { params: parts[0], m: parts[1], v: parts[2], ema: paramsFromHost<TarFlowParams>(ck.model) };
  return { cfg, state, step: t.step, badSteps: t.badSteps };
}

/** The most data-parallel workers within a thread budget (the engine's) that divide the batch size. */
export function autoWorkers(batchSize: number, budget = threadBudget()): number {
  for (let w = Math.min(budget, batchSize); w > 1; w--) if (batchSize % w === 0) return w;
  return 1;
}

/** Parameter names and shapes a config implies. */
export function expectedShapes(cfg: TarFlowConfig): Map<string, number[]> {
  const p = initTarFlow(cfg, 0);
  const shapes = paramShapes(p);
  release(p);
  return shapes;
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
  if (config === null) {
    ({ cfg, state, step, badSteps } = await loadRun(ckDir));
    resumed = true;
  } else {
    cfg = config;
    const params = initTarFlow(cfg.model, cfg.seed);
    const adam = initAdamState(params);
    state = { params, m: adam.m, v: adam.v, ema: keep(params) }; // the EMA starts at the initial weights
  }
  const workers = opts.workers === 'auto' ? autoWorkers(cfg.batchSize) : (opts.workers ?? 1);
  if (!Number.isInteger(workers) || workers < 1) throw new TrainingError(`workers must be an integer ≥ 1, got ${workers}`);
  if (cfg.batchSize % workers !== 0) throw new TrainingError(`batchSize ${cfg.batchSize} does not split evenly over ${workers} workers (every replica takes an equal slice)`);
  await mkdir(path.join(opts.outDir, 'samples'), { recursive: true });
  const logFile = path.join(opts.outDir, 'log.jsonl');
  const log = (e: object) => appendFile(logFile, JSON.stringify(e) + '\n');

  const m = cfg.model;
  const shape = { size: m.imgSize, channels: m.inChannels };
  const trainData = await loadDataset(cfg.data.train, shape);
  const testData = cfg.evalEvery > 0 ? await loadDataset(cfg.data.test, shape) : undefined;
  if (m.numClasses > 0 && trainData.numClasses > m.numClasses) {
    throw new TrainingError(`the data has ${trainData.numClasses} classes but model.numClasses is ${m.numClasses}`);
  }
  const sampler = new BatchSampler(trainData.n, cfg.batchSize, cfg.seed);
  const applyStep = makeApplyStep(cfg);
  const replicas = await Replicas.start(m, state.params, workers, currentDevice());
  try {
    const nParams = countParams(state.params);
    emit({ type: 'start', step, totalSteps: cfg.steps, params: nParams, resumed, workers });

    const stopAt = Math.min(cfg.steps, opts.maxSteps !== undefined ? step + opts.maxSteps : Infinity);
    const deadline = opts.minutes !== undefined ? Date.now() + opts.minutes * 60_000 : Infinity;
    let reason: 'done' | 'time' | 'interrupted' = 'done';
    let lastCheckpoint = step;
    let haveCheckpoint = resumed; // a fresh run has none on disk until its first save
    const t0 = performance.now();
    const firstStep = step;
    const { channels, height, width } = trainData;

    while (step < cfg.steps) {
      if (step >= stopAt) break;
      if (opts.signal?.aborted) {
        reason = 'interrupted';
        break;
      }
      if (Date.now() >= deadline) {
        reason = 'time';
        break;
      }
      // Everything random at this step is derived from (seed, step).
      const rng = new Rng(cfg.seed).fork(step + 1);
      const batch = makeBatch(trainData, sampler.batchIndices(step), { flip: cfg.data.flip, rng });
      const x = cfg.noise === 'uniform' ? uniformDequantize(batch.x, rng) : addGaussianNoise(batch.x, m.noiseStd, rng);
      const y = dropLabels(batch.y, cfg.labelDrop, rng);
      const lr = cosineLr({ lr: cfg.lr, minLr: cfg.minLr, warmupSteps: cfg.warmupSteps, totalSteps: cfg.steps }, step);
      const { bc1, bc2 } = adamScalars({ ...ADAMW_DEFAULTS, beta1: cfg.beta1, beta2: cfg.beta2 }, step + 1);
      const g = await replicas.gradients(state.params, x, [cfg.batchSize, channels, height, width], y);
      const out = applyStep(keep(state), g.grads, np.array(lr), np.array(bc1), np.array(bc2), np.array(emaDecayAt(cfg.emaDecay, step)));
      const loss = await toNumber(g.loss);
      const gradNorm = await toNumber(out.gradNorm);
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        release(out.state); // keep the last good weights
        badSteps++;
        emit({ type: 'skip', step, loss, inARow: badSteps });
        await log({ step, skipped: true, loss: String(loss) });
        if (badSteps >= cfg.maxBadSteps) {
          throw new TrainingError(
            `training diverged: ${badSteps} non-finite losses in a row (last at step ${step}); ` +
              (haveCheckpoint
                ? `the last good checkpoint (step ${lastCheckpoint}) is in ${ckDir}. Lower 'lr' or raise 'warmupSteps' and resume or restart.`
                : `no checkpoint was written before that. Lower 'lr' or raise 'warmupSteps' and restart.`),
          );
        }
        step++;
        continue;
      }
      release(state);
      state = out.state;
      badSteps = 0;
      step++;

      if (step % cfg.logEvery === 0 || step === stopAt) {
        const elapsed = (performance.now() - t0) / 1000;
        const stepsPerSec = (step - firstStep) / elapsed;
        const e = { type: 'step' as const, step, totalSteps: cfg.steps, loss, bpd: lossToBpd(loss), lr, gradNorm, stepsPerSec, etaSec: (Math.min(stopAt, cfg.steps) - step) / stepsPerSec };
        emit(e);
        await log({ step, loss, bpd: e.bpd, lr, gradNorm, stepsPerSec, time: Date.now() });
      }
      if (testData && cfg.evalEvery > 0 && step % cfg.evalEvery === 0) {
        const r = await evaluateBpd(state.ema, m, testData, cfg.evalImages);
        emit({ type: 'eval', step, bpd: r.mean, images: Math.min(cfg.evalImages, testData.n) });
        await log({ step, testBpd: r.finiteMean, ...(r.nonFinite.length ? { testNonFinite: r.nonFinite.length } : {}), time: Date.now() });
      }
      if (cfg.sampleEvery > 0 && step % cfg.sampleEvery === 0) {
        const file = path.join(opts.outDir, 'samples', `step-${String(step).padStart(6, '0')}.png`);
        await sampleGrid(state.ema, m, file, cfg.seed);
        emit({ type: 'samples', step, path: file });
      }
      if (step % cfg.checkpointEvery === 0) {
        await saveRun(ckDir, cfg, state, step, badSteps);
        lastCheckpoint = step;
        haveCheckpoint = true;
        emit({ type: 'checkpoint', step, dir: ckDir });
      }
    }
    if (lastCheckpoint !== step || !resumed) {
      await saveRun(ckDir, cfg, state, step, badSteps);
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

export async function readLog(outDir: string): Promise<object[]> {
  const text = await readFile(path.join(outDir, 'log.jsonl'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as object);
}
