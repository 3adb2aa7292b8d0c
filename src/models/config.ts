// Model configurations: validated once at the edge, typed inside. `config.json` in a checkpoint
// directory holds exactly this object, so the architecture always travels with the weights.

export type TarFlowConfig = {
  model: 'tarflow';
  inChannels: number;
  imgSize: number;
  patchSize: number;
  /** Transformer width ("channels" in the reference). */
  width: number;
  numBlocks: number;
  layersPerBlock: number;
  /** Head size; the reference fixes 64, here it is free (width must be a multiple). */
  headDim: number;
  mlpRatio: number;
  /** 0 for an unconditional model. */
  numClasses: number;
  /** false: volume-preserving flow (shift only). */
  nvp: boolean;
  /** The σ of the Gaussian noise the model was trained with; used for score denoising. */
  noiseStd: number;
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const DEFAULTS: Omit<TarFlowConfig, 'inChannels' | 'imgSize' | 'patchSize' | 'width' | 'numBlocks' | 'layersPerBlock'> = {
  model: 'tarflow',
  headDim: 64,
  mlpRatio: 4,
  numClasses: 0,
  nvp: true,
  noiseStd: 0,
};

function intField(o: Record<string, unknown>, name: string, where: string, min: number): number {
  const v = o[name];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new ConfigError(`${where}: '${name}' must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Validates a model config (from JSON or YAML), filling defaults; every error names the field. */
export function parseModelConfig(raw: unknown, where = 'model config'): TarFlowConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`${where}: expected an object, got ${JSON.stringify(raw)}`);
  }
  const o = { ...DEFAULTS, ...(raw as Record<string, unknown>) } as Record<string, unknown>;
  const known = new Set(['model', 'inChannels', 'imgSize', 'patchSize', 'width', 'numBlocks', 'layersPerBlock', 'headDim', 'mlpRatio', 'numClasses', 'nvp', 'noiseStd']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw new ConfigError(`${where}: unknown field '${k}'`);
  if (o.model !== 'tarflow') throw new ConfigError(`${where}: 'model' must be "tarflow", got ${JSON.stringify(o.model)}`);
  const cfg: TarFlowConfig = {
    model: 'tarflow',
    inChannels: intField(o, 'inChannels', where, 1),
    imgSize: intField(o, 'imgSize', where, 1),
    patchSize: intField(o, 'patchSize', where, 1),
    width: intField(o, 'width', where, 1),
    numBlocks: intField(o, 'numBlocks', where, 1),
    layersPerBlock: intField(o, 'layersPerBlock', where, 1),
    headDim: intField(o, 'headDim', where, 1),
    mlpRatio: intField(o, 'mlpRatio', where, 1),
    numClasses: intField(o, 'numClasses', where, 0),
    nvp: o.nvp as boolean,
    noiseStd: o.noiseStd as number,
  };
  if (typeof cfg.nvp !== 'boolean') throw new ConfigError(`${where}: 'nvp' must be true or false, got ${JSON.stringify(o.nvp)}`);
  if (typeof cfg.noiseStd !== 'number' || !(cfg.noiseStd >= 0)) {
    throw new ConfigError(`${where}: 'noiseStd' must be a number ≥ 0, got ${JSON.stringify(o.noiseStd)}`);
  }
  if (cfg.imgSize % cfg.patchSize !== 0) {
    throw new ConfigError(`${where}: 'imgSize' (${cfg.imgSize}) must be a multiple of 'patchSize' (${cfg.patchSize})`);
  }
  if (cfg.width % cfg.headDim !== 0) {
    throw new ConfigError(`${where}: 'width' (${cfg.width}) must be a multiple of 'headDim' (${cfg.headDim})`);
  }
  if ((cfg.imgSize / cfg.patchSize) ** 2 < 2) throw new ConfigError(`${where}: the image must have at least 2 patches`);
  return cfg;
}

/** Sizes derived from a config. */
export function tokenShape(cfg: TarFlowConfig): { tokens: number; tokenDim: number; dims: number } {
  const side = cfg.imgSize / cfg.patchSize;
  return {
    tokens: side * side,
    tokenDim: cfg.inChannels * cfg.patchSize * cfg.patchSize,
    dims: cfg.inChannels * cfg.imgSize * cfg.imgSize,
  };
}
