// starflow-ts/core: the browser-safe library (no Node imports): models, samplers, formats.
export { startEngine, currentDevice, parseDevice, Rng, type Device, type Arr } from './engine/index.js';
export { ConfigError } from './models/config.js';
export { bitsPerDim, bitsPerDimOf, imageShapeOf, NO_GUIDANCE, type Model, type ModelConfig, type ModelFamily, type Guidance, type GuidanceRule, type AutoregressiveSampler, type DirectSampler, type BlockInverse, type FlowSteps } from './models/model.js';
export { registerFamily, familyOf, familyNames, parseModelConfig, initModel } from './models/registry.js';
export { tarflow, parseFlowConfig, tokenShape, initFlow, forward, flowLoss, flowNll, guide, type FlowConfig, type FlowParams } from './models/flow.js';
export { patchify, unpatchify } from './nn/patches.js';
export {
  parseAutoencoderConfig,
  initAutoencoder,
  encodeImages,
  decodeLatents,
  latentCodec,
  latentShape,
  type Autoencoder,
  type AutoencoderConfig,
  type AutoencoderParams,
} from './models/autoencoder.js';
export { sampleFromNoise, sampleModel, invertBlock, SamplingError, type BlockPlan, type SampleOptions } from './sampling/solvers.js';
export { makePlans, plansFor, SOLVERS, type SolverName, type SolverChoice } from './sampling/plan.js';
export { generate, drawNoise, type GenerateOptions } from './sampling/pipeline.js';
export { denoise } from './sampling/denoise.js';
export { nllOf, scoreImages, evaluateBpd, LikelihoodError, type BpdResult } from './eval/likelihood.js';
export { classify } from './eval/classify.js';
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
