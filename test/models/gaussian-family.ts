// A deliberately tiny second model family for tests: a diagonal Gaussian over pixels, one mean and
// log-σ per pixel and class (label −1: the mean over classes). It has an exact likelihood and
// samples in one call, x = μ + σ·z. This file plus its `registerFamily` call is all it takes for
// the trainer (workers, resume, NaN guard, EMA, evaluation, sample grids), `generate`, the
// likelihood functions, checkpoint loading and the evaluation report to work with it.
import { np, type Arr } from '../../src/engine/index.js';
import { asObject, intField, numberField, withDefaults } from '../../src/models/config.js';
import { HALF_LOG_2PI, type ModelConfig, type ModelFamily } from '../../src/models/model.js';
import { registerFamily } from '../../src/models/registry.js';
import { embed } from '../../src/nn/layers.js';
import { shapesOf } from '../../src/nn/params.js';

export type GaussianConfig = ModelConfig & { model: 'diag-gaussian'; initLogStd: number };
export type GaussianParams = { mean: Arr; logStd: Arr };

const dims = (cfg: GaussianConfig) => cfg.inChannels * cfg.imgSize * cfg.imgSize;
const rows = (cfg: GaussianConfig) => Math.max(1, cfg.numClasses);

/** μ and log σ for each sample, [B, D]: its class's row (−1 and unconditional models: the mean row). */
function moments(p: GaussianParams, cfg: GaussianConfig, y: Arr): [Arr, Arr] {
  if (cfg.numClasses > 0) return [embed(p.mean, y.ref), embed(p.logStd, y)];
  y.dispose();
  return [p.mean, p.logStd]; // [1, D], broadcast over the batch
}

function nll(p: GaussianParams, cfg: GaussianConfig, x: Arr, y: Arr): Arr {
  const b = x.shape[0]!;
  const [mu, logStd] = moments(p, cfg, y);
  const u = x.reshape([b, -1]).sub(mu).mul(np.exp(logStd.ref.neg()));
  return np.square(u).mul(0.5).add(logStd).add(HALF_LOG_2PI).mean([1]);
}

export const gaussian: ModelFamily<GaussianConfig, GaussianParams> = {
  name: 'diag-gaussian',
  source: import.meta.url,
  describe: (cfg) => `diagonal Gaussian over ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize} pixels, ${cfg.numClasses} classes`,
  parseConfig(raw, where) {
    const o = withDefaults(asObject(raw, where), { model: 'diag-gaussian', numClasses: 0, noiseStd: 0, initLogStd: 0 }, ['inChannels', 'imgSize'], where);
    return {
      model: 'diag-gaussian',
      inChannels: intField(o, 'inChannels', where, 1),
      imgSize: intField(o, 'imgSize', where, 1),
      numClasses: intField(o, 'numClasses', where, 0),
      noiseStd: numberField(o, 'noiseStd', where, 0),
      initLogStd: numberField(o, 'initLogStd', where, -10),
    };
  },
  init: (cfg) => ({ mean: np.zeros([rows(cfg), dims(cfg)]), logStd: np.full([rows(cfg), dims(cfg)], cfg.initLogStd) }),
  paramShapes: (cfg) => shapesOf(() => gaussian.init(cfg, 0)),
  noiseShape: (cfg) => [cfg.inChannels, cfg.imgSize, cfg.imgSize],
  loss: (p, cfg, x, y) => nll(p, cfg, x, y).mean(),
  nll,
  sampler: (cfg) => ({
    kind: 'direct',
    sample(p, z, labels, g) {
      if (g.weight !== 0) throw new Error('a diagonal Gaussian has no guidance');
      const b = z.shape[0]!;
      const y = np.array(Int32Array.from(labels ?? new Array<number>(b).fill(-1)), { dtype: np.int32 });
      const [mu, logStd] = moments(p, cfg, y);
      return z.reshape([b, -1]).mul(np.exp(logStd)).add(mu).reshape([b, cfg.inChannels, cfg.imgSize, cfg.imgSize]);
    },
  }),
};

registerFamily(gaussian);
