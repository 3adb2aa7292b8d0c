// starflow-ts/core: the browser-safe library (no Node imports): models, samplers, formats.
export { startEngine, currentDevice, parseDevice, Rng, type Device, type Arr } from './engine/index.js';
export { parseModelConfig, tokenShape, ConfigError, type TarFlowConfig } from './models/config.js';
export { initTarFlow, forward, flowLoss, bitsPerDim, patchify, unpatchify, type TarFlowParams } from './models/tarflow.js';
export { sampleFromNoise, invertBlock, NO_GUIDANCE, SamplingError, type BlockPlan, type Guidance, type SampleOptions } from './sampling/solvers.js';
export { makePlans, SOLVERS, type SolverName } from './sampling/plan.js';
export { generate, drawNoise, type GenerateOptions } from './sampling/pipeline.js';
export { denoise } from './sampling/denoise.js';
export { guide, type GuidanceRule } from './sampling/step.js';
export { imageGrid, encodePng, decodePng } from './io/png.js';
export { encodeGif } from './io/gif.js';
export { parseSafetensors, serializeSafetensors, SafetensorsError } from './io/safetensors.js';
export { makeBatch, BatchSampler, uniformDequantize, addGaussianNoise, dropLabels, parseDataSpec } from './data/transforms.js';
export type { ImageDataset } from './data/dataset.js';
export {
  featureSet,
  gaussianFit,
  frechetDistance,
  frechetFromFits,
  kernelDistance,
  precisionRecall,
  classAccuracy,
  MetricsError,
  type FeatureSet,
  type KidResult,
} from './eval/metrics.js';
