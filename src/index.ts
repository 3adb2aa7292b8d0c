// starflow-ts (Node): the library API the CLI is built on. The shims come first: jax-js builds
// its wasm backend (and worker pool) when its module loads. Browsers import 'starflow-ts/core'.
import './engine/node-shims.js';
export * from './core.js';
export { startNodeEngine } from './engine/node.js';
export { shippedModels, defaultShippedModel, shippedModelDir, SHIPPED_DIR, type ShippedModel, type SampleQuality } from './io/shipped.js';
export { loadModel, saveModel, type LoadedModel, type Provenance } from './io/model.js';
export { loadAutoencoder, saveAutoencoder, type LoadedAutoencoder } from './io/autoencoder.js';
export { trainAutoencoder, trainAutoencoderRun, encodeDataset, AutoencoderError, type AutoencoderTrainOptions } from './train/autoencoder.js';
export { evaluateAutoencoder, evaluateAutoencoderDir, type ReconstructionFigures } from './eval/autoencoder.js';
export { saveCheckpoint, loadCheckpoint, CheckpointError } from './io/checkpoint.js';
export { loadDataset } from './data/load.js';
export { loadMnist, loadMnistLike, type MnistKind, type MnistSplit } from './data/mnist.js';
export { loadImageFolder } from './data/image-folder.js';
export { train, sampleGrid, TrainingError, type TrainEvent, type TrainOptions } from './train/trainer.js';
export { runMainJob, type MainJobResult } from './train/main-job.js';
export { parseTrainConfig, type TrainConfig } from './train/config.js';
export { loadFeatureNet, saveFeatureNet, extract, features, datasetImages, FeatureNetError, FEATURE_NET_DEFAULTS, SHIPPED_FEATURES, type FeatureNetConfig } from './eval/features.js';
export { trainClassifier, trainFeatureExtractor, FEATURE_DATASETS, type TrainFeatureExtractorOptions } from './train/classifier.js';
export { evaluateModel, trainingCurves, summaryTable, EvalError, type EvalOptions, type EvalProgress, type EvalResult, type EvalMetrics, type SetMetrics, type ModelRun } from './eval/report.js';
export { diagonalGaussianSamples, checkModelAgainstExtractor } from './eval/baselines.js';
export { loadPreset, loadConfigFile, readConfigFile, PresetError, PRESET_DIR } from './train/presets.js';
