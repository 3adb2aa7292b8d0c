// Training the feature extractor behind `starflow eval` (src/eval/features.ts): the classifier's
// cross-entropy through the shared optimisation loop (loop.ts) with AdamW (β₂ 0.999), a warm-up +
// cosine schedule to 0, no clipping and no EMA. A run is a pure function of the seed.
import { existsSync } from 'node:fs';
import { keep, release, fromF32, fromI32, countParams, currentDevice, type Params } from '../engine/index.js';
import { initAdamState } from '../nn/optim.js';
import { BatchSampler, makeBatch } from '../data/transforms.js';
import type { ImageDataset } from '../data/dataset.js';
import { loadDataset } from '../data/load.js';
import {
  FEATURE_NET_DEFAULTS,
  FeatureNetError,
  accuracyOn,
  classifierLoss,
  initFeatureNet,
  saveFeatureNet,
  type FeatureNetConfig,
  type FeatureNetParams,
} from '../eval/features.js';
import { gradStepOf, makeApplyStep, type TrainState } from './step.js';
import { optimize, type Schedule } from './loop.js';

export type FeatureTrainOptions = {
  train: ImageDataset;
  test?: ImageDataset;
  cfg?: FeatureNetConfig;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  weightDecay?: number;
  warmupSteps?: number;
  seed?: number;
  /** Stop after this many steps (tests, benchmarks); the schedule still spans every epoch. */
  maxSteps?: number;
  onStep?: (e: { step: number; totalSteps: number; loss: number; epoch: number; stepsPerSec: number }) => void;
  onEpoch?: (e: { epoch: number; testAccuracy?: number }) => void;
};

export type TrainedFeatureNet = { cfg: FeatureNetConfig; params: FeatureNetParams; testAccuracy?: number; steps: number; seconds: number; train: Record<string, number> };

/** Trains the classifier on a dataset, reporting test accuracy after every epoch. */
export async function trainClassifier(opts: FeatureTrainOptions): Promise<TrainedFeatureNet> {
  const cfg = opts.cfg ?? FEATURE_NET_DEFAULTS;
  const ds = opts.train;
  if (ds.channels !== cfg.inChannels || ds.height !== cfg.imgSize || ds.width !== cfg.imgSize) {
    throw new FeatureNetError(`training images are ${ds.channels}×${ds.height}×${ds.width} but the network takes ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize}`);
  }
  const epochs = opts.epochs ?? 3;
  const batchSize = opts.batchSize ?? 128;
  const seed = opts.seed ?? 0;
  const sampler = new BatchSampler(ds.n, batchSize, seed);
  const totalSteps = epochs * sampler.batchesPerEpoch;
  const schedule: Schedule = {
    lr: opts.lr ?? 2e-3,
    minLr: 0,
    warmupSteps: opts.warmupSteps ?? Math.min(200, Math.floor(totalSteps / 10)),
    steps: totalSteps,
    beta1: 0.9,
    beta2: 0.999,
    weightDecay: opts.weightDecay ?? 1e-4,
    gradClip: Infinity,
    emaDecay: 0,
  };
  const params = initFeatureNet(cfg, seed);
  const adam = initAdamState(params);
  const gradStep = gradStepOf((p, x, y) => classifierLoss(p as FeatureNetParams, cfg, x, y));
  const apply = makeApplyStep(schedule);
  const stopAt = Math.min(totalSteps, opts.maxSteps ?? Infinity);
  const t0 = performance.now();
  let testAccuracy: number | undefined;
  try {
    const r = await optimize({
      state: { params, m: adam.m, v: adam.v, ema: keep(params) } as TrainState,
      from: 0,
      stopAt,
      schedule,
      apply,
      batch(s) {
        const b = makeBatch(ds, sampler.batchIndices(s));
        return { x: b.x, xShape: [batchSize, ds.channels, ds.height, ds.width], y: b.y };
      },
      gradients: async (p: Params, b) => gradStep(keep(p), fromF32(b.x, b.xShape), fromI32(b.y, [batchSize])),
      onSkip: async (s, loss) => {
        throw new FeatureNetError(`training diverged at step ${s} (loss ${loss}); lower the learning rate`);
      },
      async onStep({ step, loss }, state) {
        opts.onStep?.({ step, totalSteps, loss, epoch: sampler.epochOf(step - 1), stepsPerSec: step / ((performance.now() - t0) / 1000) });
        if (step % sampler.batchesPerEpoch === 0 || step === stopAt) {
          if (opts.test) testAccuracy = await accuracyOn(state.params as FeatureNetParams, cfg, opts.test);
          opts.onEpoch?.({ epoch: Math.ceil(step / sampler.batchesPerEpoch), testAccuracy });
        }
      },
    });
    release([r.state.m, r.state.v, r.state.ema]);
    const trained = r.state.params as FeatureNetParams;
    return {
      cfg,
      params: trained,
      testAccuracy,
      steps: stopAt,
      seconds: (performance.now() - t0) / 1000,
      train: { epochs, batchSize, lr: schedule.lr, weightDecay: schedule.weightDecay, warmupSteps: schedule.warmupSteps, seed, params: countParams(trained) },
    };
  } finally {
    gradStep.dispose();
    apply.dispose();
  }
}

/** The datasets a feature extractor can be trained on: '<name>:train', scored on '<name>:test'. */
export const FEATURE_DATASETS = ['mnist', 'fashion-mnist'] as const;
export type FeatureDataset = (typeof FEATURE_DATASETS)[number];

export type TrainFeatureExtractorOptions = Omit<FeatureTrainOptions, 'train' | 'test'> & {
  /** mnist (default) or fashion-mnist: trains on its train split, reports accuracy on its test split. */
  data?: FeatureDataset;
  /** Checkpoint directory to write (config.json + model.safetensors); one that exists is refused unless `force`. */
  out: string;
  force?: boolean;
  /** How the extractor was made (a command line), stored in config.json. */
  command?: string;
  /** Called once both datasets are loaded, before the first step. */
  onStart?: (e: { data: FeatureDataset; trainImages: number; testImages: number }) => void;
};

export type TrainedFeatureExtractor = TrainedFeatureNet & { out: string; data: FeatureDataset; testImages: number };

/**
 * Loads `<data>:train` and `<data>:test`, trains the classifier on the first (defaults: 4 epochs
 * of batch 128, peak lr 2e-3, seed 0, FEATURE_NET_DEFAULTS), reports accuracy on the second
 * after every epoch and saves it to `out` with its dataset, command, training time and device in
 * config.json. The caller owns the returned parameters.
 */
export async function trainFeatureExtractor(opts: TrainFeatureExtractorOptions): Promise<TrainedFeatureExtractor> {
  const { data = 'mnist', out, force, command, onStart, cfg = FEATURE_NET_DEFAULTS, ...schedule } = opts;
  if (!(FEATURE_DATASETS as readonly string[]).includes(data)) throw new FeatureNetError(`a feature extractor trains on ${FEATURE_DATASETS.join(' or ')}, not '${data}'`);
  if (!force && existsSync(out)) throw new FeatureNetError(`${out} exists: pass --force to replace it, or pick another --out`);
  const shape = { size: cfg.imgSize, channels: cfg.inChannels };
  const train = await loadDataset(`${data}:train`, shape);
  const test = await loadDataset(`${data}:test`, shape);
  onStart?.({ data, trainImages: train.n, testImages: test.n });
  const net = await trainClassifier({ ...schedule, train, test, cfg, epochs: schedule.epochs ?? 4, batchSize: schedule.batchSize ?? 128, lr: schedule.lr ?? 2e-3, seed: schedule.seed ?? 0 });
  await saveFeatureNet(out, net, { data: `${data}:train`, ...(command === undefined ? {} : { command }), seconds: Math.round(net.seconds), device: currentDevice() });
  return { ...net, out, data, testImages: test.n };
}
