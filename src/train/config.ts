// Training configuration: JSON or YAML, validated once here; every error names the field.
import { ConfigError } from '../models/config.js';
import { familyOf, parseModelConfig } from '../models/registry.js';
import { CAPTION_VOCABULARIES, captionWords } from '../data/captions.js';
import type { ModelConfig } from '../models/model.js';

export type NoiseType = 'gaussian' | 'uniform';

export type TrainConfig = {
  model: ModelConfig;
  /** Data specs: 'mnist:train', 'mnist:test', 'folder:/path'. */
  data: { train: string; test: string; flip: boolean };
  /** Gaussian noise augmentation (σ = model.noiseStd) or uniform dequantisation (for bits/dim runs). */
  noise: NoiseType;
  /** Probability of replacing a label by −1, so the model also learns p(x) for guidance. */
  labelDrop: number;
  batchSize: number;
  /** Length of the learning-rate schedule. */
  steps: number;
  lr: number;
  minLr: number;
  warmupSteps: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  gradClip: number;
  /** 0 disables the EMA; sampling and checkpoints then use the raw weights. */
  emaDecay: number;
  seed: number;
  logEvery: number;
  evalEvery: number;
  /** Test images used for the periodic bits/dim (the full split with `starflow nll`). */
  evalImages: number;
  sampleEvery: number;
  checkpointEvery: number;
  /** Consecutive non-finite losses tolerated before the run stops. */
  maxBadSteps: number;
};

const TRAIN_DEFAULTS: Omit<TrainConfig, 'model'> = {
  data: { train: 'mnist:train', test: 'mnist:test', flip: false },
  noise: 'gaussian',
  labelDrop: 0.1,
  batchSize: 64,
  steps: 2000,
  lr: 1e-3,
  minLr: 1e-6,
  warmupSteps: 100,
  weightDecay: 1e-4,
  beta1: 0.9,
  beta2: 0.95,
  gradClip: 1.0,
  emaDecay: 0.999,
  seed: 0,
  logEvery: 10,
  evalEvery: 500,
  evalImages: 1000,
  sampleEvery: 1000,
  checkpointEvery: 250,
  maxBadSteps: 20,
};

function num(o: Record<string, unknown>, k: string, where: string, check: (v: number) => boolean, what: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) {
    throw new ConfigError(`${where}: '${k}' must be ${what}, got ${JSON.stringify(v)}`);
  }
  return v;
}

const isInt = (min: number) => (v: number) => Number.isInteger(v) && v >= min;

/**
 * A model config whose text encoder names its vocabulary as "captions:KIND" gets the list of every
 * word of that dataset's captions (data/captions.ts); the checkpoint then stores the list.
 */
function withCaptionVocabulary(model: unknown, where: string): unknown {
  const enc = (model as { textEncoder?: { vocab?: unknown } } | null)?.textEncoder;
  const vocab = enc?.vocab;
  if (typeof vocab !== 'string' || !vocab.startsWith('captions:')) return model;
  const v = CAPTION_VOCABULARIES[vocab.slice('captions:'.length)];
  if (!v) throw new ConfigError(`${where}: 'textEncoder': 'vocab' "${vocab}" names no caption vocabulary (expected ${Object.keys(CAPTION_VOCABULARIES).map((k) => `"captions:${k}"`).join(', ')} or a list of words)`);
  return { ...(model as object), textEncoder: { ...enc, vocab: captionWords(v) } };
}

export function parseTrainConfig(raw: unknown, where = 'training config'): TrainConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${where}: expected an object with 'model' and training fields`);
  }
  const o = { ...TRAIN_DEFAULTS, ...(raw as Record<string, unknown>) } as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (k !== 'model' && !(k in TRAIN_DEFAULTS)) throw new ConfigError(`${where}: unknown field '${k}'`);
  }
  if (o.model === undefined) throw new ConfigError(`${where}: 'model' is missing`);
  const model = parseModelConfig(withCaptionVocabulary(o.model, `${where}: model`), `${where}: model`);
  const d = o.data as Record<string, unknown>;
  if (typeof d !== 'object' || d === null) throw new ConfigError(`${where}: 'data' must be an object`);
  const data = { ...TRAIN_DEFAULTS.data, ...d };
  for (const k of Object.keys(data)) if (!(k in TRAIN_DEFAULTS.data)) throw new ConfigError(`${where}: unknown field 'data.${k}'`);
  if (typeof data.train !== 'string') throw new ConfigError(`${where}: 'data.train' must be a data spec string such as "mnist:train"`);
  if (typeof data.test !== 'string') throw new ConfigError(`${where}: 'data.test' must be a data spec string such as "mnist:test"`);
  if (typeof data.flip !== 'boolean') throw new ConfigError(`${where}: 'data.flip' must be true or false`);
  if (o.noise !== 'gaussian' && o.noise !== 'uniform') {
    throw new ConfigError(`${where}: 'noise' must be "gaussian" or "uniform", got ${JSON.stringify(o.noise)}`);
  }
  if (o.noise === 'gaussian' && model.noiseStd <= 0) {
    throw new ConfigError(`${where}: 'model.noiseStd' must be > 0 with gaussian noise augmentation`);
  }
  const cfg: TrainConfig = {
    model,
    data: data as TrainConfig['data'],
    noise: o.noise,
    labelDrop: num(o, 'labelDrop', where, (v) => v >= 0 && v < 1, 'in [0, 1)'),
    batchSize: num(o, 'batchSize', where, isInt(1), 'an integer ≥ 1'),
    steps: num(o, 'steps', where, isInt(1), 'an integer ≥ 1'),
    lr: num(o, 'lr', where, (v) => v > 0, 'a number > 0'),
    minLr: num(o, 'minLr', where, (v) => v >= 0, 'a number ≥ 0'),
    warmupSteps: num(o, 'warmupSteps', where, isInt(0), 'an integer ≥ 0'),
    weightDecay: num(o, 'weightDecay', where, (v) => v >= 0, 'a number ≥ 0'),
    beta1: num(o, 'beta1', where, (v) => v >= 0 && v < 1, 'in [0, 1)'),
    beta2: num(o, 'beta2', where, (v) => v >= 0 && v < 1, 'in [0, 1)'),
    gradClip: num(o, 'gradClip', where, (v) => v > 0, 'a number > 0'),
    emaDecay: num(o, 'emaDecay', where, (v) => v >= 0 && v < 1, 'in [0, 1)'),
    seed: num(o, 'seed', where, isInt(0), 'an integer ≥ 0'),
    logEvery: num(o, 'logEvery', where, isInt(1), 'an integer ≥ 1'),
    evalEvery: num(o, 'evalEvery', where, isInt(0), 'an integer ≥ 0 (0 = never)'),
    evalImages: num(o, 'evalImages', where, isInt(1), 'an integer ≥ 1'),
    sampleEvery: num(o, 'sampleEvery', where, isInt(0), 'an integer ≥ 0 (0 = never)'),
    checkpointEvery: num(o, 'checkpointEvery', where, isInt(1), 'an integer ≥ 1'),
    maxBadSteps: num(o, 'maxBadSteps', where, isInt(1), 'an integer ≥ 1'),
  };
  // Dropping trains the unconditional branch guidance needs: a class model's mean label, a text
  // model's empty caption. Other models take no condition to drop.
  if (cfg.labelDrop > 0 && model.numClasses === 0 && !familyOf(model).textEncoder?.(model)) cfg.labelDrop = 0;
  // The model's noiseStd records the Gaussian noise it learned (the σ score denoising undoes).
  if (cfg.noise === 'uniform') cfg.model = { ...model, noiseStd: 0 };
  return cfg;
}
