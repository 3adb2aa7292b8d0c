// The diffusion-side baseline: a Diffusion Transformer (DiT, "Scalable Diffusion Models with
// Transformers") that predicts a velocity, trained as a rectified flow (SD3: "Scaling Rectified
// Flow Transformers for High-Resolution Image Synthesis") or as a MeanFlow ("Mean Flows for
// One-step Generative Modeling"). With text it is an MM-DiT: text and image tokens keep separate
// weights and meet in joint attention. The whole method is here: config, network, both training
// objectives, the velocity the samplers integrate (sampling/ode.ts) and the likelihood through
// the probability-flow ODE.
//
// Conventions: x_t = (1 − t)·x + t·ε, t = 0 data and t = 1 noise; the velocity is ε − x.
// Conditioning is adaLN-zero: a vector c = embed(t) [+ embed(t − r)] [+ class or pooled text]
// sets per-block shift, scale and gate, the gates zero at initialisation, so an untrained block is
// the identity. Label −1 selects a learned "no class" row (classifier-free guidance's negative).
import { np, jnn, lax, jvp, keep, release, mapTree, cachedJit, hostScalars, Rng, type Arr } from '../engine/index.js';
import { linear, mlp, initLinear, initMlp, initNormal, type Linear, type Mlp } from '../nn/layers.js';
import { initAttention, jointSelfAttention, selfAttention, type Attention, type AttentionShape } from '../nn/attention.js';
import { patchify, unpatchify } from '../nn/patches.js';
import { shapesOf } from '../nn/params.js';
import { encodeText, initTextEncoder, parseTextEncoder, textEncoderShape, type TextEncoder, type TextEncoderConfig } from '../nn/text-encoder.js';
import { asObject, ConfigError, intField, numberField, withDefaults } from './config.js';
import { HALF_LOG_2PI, type ModelConfig, type ModelFamily, type VelocitySampler } from './model.js';

// ---- config ----

export type DitObjective = 'rectified-flow' | 'meanflow';

export type DitConfig = ModelConfig & {
  model: 'dit';
  patchSize: number;
  width: number;
  /** Transformer blocks. */
  depth: number;
  headDim: number;
  mlpRatio: number;
  textTokens: number;
  textDim: number;
  /** The model's own text encoder (trained with it; conditioning input: token ids), or null. */
  textEncoder: TextEncoderConfig | null;
  objective: DitObjective;
  /** Training times: logit-normal, sigmoid(location + scale·n) (SD3), or uniform. */
  timeSampling: 'logit-normal' | 'uniform';
  timeLocation: number;
  timeScale: number;
  /** MeanFlow: the fraction of each batch trained with r < t (the rest with r = t, plain flow matching). */
  meanflowRatio: number;
  /** MeanFlow's adaptive loss weight 1/(‖Δ‖² + 1e-3)^p. */
  meanflowPower: number;
  /** Sampling defaults: steps (rectified flow 32, MeanFlow 1) and SD3's time shift. */
  sampleSteps: number;
  timeShift: number;
  /** Heun steps of the probability-flow ODE that `nll` integrates. */
  nllSteps: number;
  noiseStd: number;
  autoencoder: string | null;
};

const DEFAULTS = {
  model: 'dit', headDim: 32, mlpRatio: 4, numClasses: 0, textTokens: 0, textDim: 0, textEncoder: null, objective: 'rectified-flow',
  timeSampling: 'logit-normal', timeScale: 1, meanflowRatio: 0.25, meanflowPower: 1, timeShift: 1, nllSteps: 16, noiseStd: 0, autoencoder: null,
};
const REQUIRED = ['inChannels', 'imgSize', 'patchSize', 'width', 'depth'];

/** Divergences up to this many dimensions are exact (one JVP per dimension); above, Hutchinson's estimate. */
export const EXACT_DIVERGENCE_DIMS = 8;

export function parseDitConfig(raw: unknown, where = 'model config'): DitConfig {
  const obj = asObject(raw, where);
  const objective = obj.objective ?? 'rectified-flow';
  // MeanFlow's defaults (its paper's): times centred lower, one sampling step.
  const mf = objective === 'meanflow';
  const o = withDefaults(obj, { ...DEFAULTS, timeLocation: mf ? -0.4 : 0, sampleSteps: mf ? 1 : 32 }, REQUIRED, where);
  const int = (k: string, min: number) => intField(o, k, where, min);
  const fail = (msg: string): never => {
    throw new ConfigError(`${where}: ${msg}`);
  };
  const oneOf = <T extends string>(k: string, options: readonly T[]): T => {
    const v = o[k];
    if (typeof v !== 'string' || !(options as readonly string[]).includes(v)) fail(`'${k}' must be one of ${options.map((x) => `'${x}'`).join(', ')}, got ${JSON.stringify(v)}`);
    return v as T;
  };
  const timeLocation = o.timeLocation;
  if (typeof timeLocation !== 'number' || !Number.isFinite(timeLocation)) fail(`'timeLocation' must be a number, got ${JSON.stringify(timeLocation)}`);
  const cfg: DitConfig = {
    model: 'dit',
    inChannels: int('inChannels', 1),
    imgSize: int('imgSize', 1),
    patchSize: int('patchSize', 1),
    width: int('width', 1),
    depth: int('depth', 1),
    headDim: int('headDim', 1),
    mlpRatio: numberField(o, 'mlpRatio', where, 0),
    numClasses: int('numClasses', 0),
    textTokens: int('textTokens', 0),
    textDim: int('textDim', 0),
    textEncoder: null,
    objective: oneOf('objective', ['rectified-flow', 'meanflow'] as const),
    timeSampling: oneOf('timeSampling', ['logit-normal', 'uniform'] as const),
    timeLocation: timeLocation as number,
    timeScale: numberField(o, 'timeScale', where, 0),
    meanflowRatio: numberField(o, 'meanflowRatio', where, 0),
    meanflowPower: numberField(o, 'meanflowPower', where, 0),
    sampleSteps: int('sampleSteps', 1),
    timeShift: numberField(o, 'timeShift', where, 0),
    nllSteps: int('nllSteps', 1),
    noiseStd: numberField(o, 'noiseStd', where, 0),
    autoencoder: null,
  };
  if (cfg.imgSize % cfg.patchSize !== 0) fail(`'imgSize' (${cfg.imgSize}) must be a multiple of 'patchSize' (${cfg.patchSize})`);
  if (cfg.width % cfg.headDim !== 0) fail(`'width' (${cfg.width}) must be a multiple of 'headDim' (${cfg.headDim})`);
  if (cfg.width % 2 !== 0) fail(`'width' must be even (the time embedding's sines and cosines), got ${cfg.width}`);
  if (!(cfg.mlpRatio > 0)) fail(`'mlpRatio' must be > 0, got ${cfg.mlpRatio}`);
  if (cfg.meanflowRatio > 1) fail(`'meanflowRatio' must be in [0, 1], got ${cfg.meanflowRatio}`);
  if (!(cfg.timeShift > 0)) fail(`'timeShift' must be > 0, got ${cfg.timeShift}`);
  if ((cfg.textTokens > 0) !== (cfg.textDim > 0)) fail(`'textTokens' and 'textDim' are both 0 (no text) or both > 0, got ${cfg.textTokens} and ${cfg.textDim}`);
  if (cfg.textDim > 0 && cfg.numClasses > 0) fail('a model is conditioned by class labels or by text, not both');
  if (o.textEncoder !== null) cfg.textEncoder = parseTextEncoder(o.textEncoder, cfg, fail);
  if (o.autoencoder !== null) {
    if (typeof o.autoencoder !== 'string' || o.autoencoder.trim() === '') fail(`'autoencoder' must be null or the directory of an autoencoder, got ${JSON.stringify(o.autoencoder)}`);
    cfg.autoencoder = o.autoencoder as string;
  }
  return cfg;
}

const tokensOf = (cfg: DitConfig) => (cfg.imgSize / cfg.patchSize) ** 2;
const patchDim = (cfg: DitConfig) => cfg.inChannels * cfg.patchSize * cfg.patchSize;
const dimsOf = (cfg: DitConfig) => cfg.inChannels * cfg.imgSize * cfg.imgSize;
const attentionShape = (cfg: DitConfig): AttentionShape => ({ heads: cfg.width / cfg.headDim, headDim: cfg.headDim });

// ---- parameters ----

/** One stream of one block: its modulation (6 vectors from c), attention projections and MLP. */
type Stream = { mod: Linear; attn: Attention; mlp: Mlp };
type DitBlock = { image: Stream; text?: Stream };
export type DitParams = {
  patchIn: Linear;
  pos: Arr;
  time: Mlp;
  /** MeanFlow: the embedding of the interval t − r. */
  interval?: Mlp;
  /** [numClasses + 1, width]: the last row is "no class". */
  classes?: Arr;
  /** Text: states → text tokens, and their mean → the conditioning vector. */
  textIn?: Linear;
  textPool?: Linear;
  text?: TextEncoder;
  blocks: DitBlock[];
  final: { mod: Linear; out: Linear };
};

const zeroLinear = (fanIn: number, fanOut: number): Linear => ({ w: np.zeros([fanIn, fanOut]), b: np.zeros([fanOut]) });

export function initDit(cfg: DitConfig, seed: number): DitParams {
  const root = new Rng(seed);
  const w = cfg.width;
  const hidden = Math.floor(w * cfg.mlpRatio);
  const stream = (rng: Rng): Stream => ({ mod: zeroLinear(w, 6 * w), attn: initAttention(rng.fork(0), w, attentionShape(cfg)), mlp: initMlp(rng.fork(1), w, hidden) });
  const text = cfg.textDim > 0;
  return {
    patchIn: initLinear(root.fork(0), patchDim(cfg), w),
    pos: initNormal(root.fork(1), [tokensOf(cfg), w], 0.02),
    time: initMlp(root.fork(2), w, w),
    ...(cfg.objective === 'meanflow' ? { interval: initMlp(root.fork(3), w, w) } : {}),
    ...(cfg.numClasses > 0 ? { classes: initNormal(root.fork(4), [cfg.numClasses + 1, w], 0.02) } : {}),
    ...(text ? { textIn: initLinear(root.fork(5), cfg.textDim, w), textPool: initLinear(root.fork(6), cfg.textDim, w) } : {}),
    ...(cfg.textEncoder ? { text: initTextEncoder(root.fork(7), textEncoderShape(cfg)) } : {}),
    blocks: Array.from({ length: cfg.depth }, (_, i) => {
      const rng = root.fork(100 + i);
      return text ? { image: stream(rng.fork(0)), text: stream(rng.fork(1)) } : { image: stream(rng.fork(0)) };
    }),
    final: { mod: zeroLinear(w, 2 * w), out: { w: np.zeros([w, patchDim(cfg)]), b: np.zeros([patchDim(cfg)]) } },
  };
}

// ---- the network ----

/** Sinusoidal features of times t [B] (scaled by 1000, as DiT's timesteps), [B, width]. */
function timeFeatures(t: Arr, width: number): Arr {
  const half = width / 2;
  const freqs = Float32Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / half));
  const args = t.reshape([-1, 1]).mul(1000).mul(np.array(freqs, { shape: [1, half] }));
  return np.concatenate([np.cos(args.ref), np.sin(args)], 1);
}

/** The timestep MLP: linear, SiLU, linear. */
function embedTime(p: Mlp, t: Arr, width: number): Arr {
  return linear(p.fc2, jnn.silu(linear(p.fc1, timeFeatures(t, width))));
}

/** LayerNorm without parameters (adaLN supplies scale and shift). */
function normalize(x: Arr): Arr {
  const mu = x.ref.mean(-1, { keepdims: true });
  const xc = x.sub(mu);
  const variance = np.square(xc.ref).mean(-1, { keepdims: true });
  return xc.mul(np.reciprocal(np.sqrt(variance.add(1e-6))));
}

/** `n` modulation vectors [B, 1, W] from silu(c) [B, W]. */
function modulation(p: Linear, c: Arr, n: number, width: number): Arr[] {
  const m = linear(p, c);
  const b = m.shape[0]!;
  const out = Array.from({ length: n }, (_, k) => m.ref.slice([], [k * width, (k + 1) * width]).reshape([b, 1, width]));
  m.dispose();
  return out;
}

const modulate = (x: Arr, shift: Arr, scale: Arr) => normalize(x).mul(scale.add(1)).add(shift);

/** One block over the image tokens h (and the text tokens, MM-DiT), conditioned by silu(c). */
function block(p: DitBlock, cfg: DitConfig, h: Arr, text: Arr | undefined, c: Arr): { h: Arr; text?: Arr } {
  const w = cfg.width;
  const shape = attentionShape(cfg);
  const streams: [Stream, Arr][] = text && p.text ? [[p.text, text], [p.image, h]] : [[p.image, h]];
  const mods = streams.map(([s], i) => modulation(s.mod, i === streams.length - 1 ? c : c.ref, 6, w));
  const normed = streams.map(([, x], i) => modulate(x.ref, mods[i]![0]!, mods[i]![1]!));
  const attended = streams.length === 1 ? [selfAttention(streams[0]![0].attn, normed[0]!, shape)] : jointSelfAttention(streams.map(([s]) => s.attn), normed, shape);
  const out = streams.map(([s, x], i) => {
    const [, , g1, s2, sc2, g2] = mods[i]!;
    const y = x.add(attended[i]!.mul(g1!));
    return y.ref.add(mlp(s.mlp, modulate(y, s2!, sc2!)).mul(g2!));
  });
  return out.length === 1 ? { h: out[0]! } : { h: out[1]!, text: out[0]! };
}

/**
 * The network: velocity [B, C, H, W] at x [B, C, H, W] and time t [B], for a step to r [B]
 * (MeanFlow; rectified flow ignores r), labels int32 [B] and text states [B, L, textDim].
 * Consumes its arguments (params included).
 */
export function velocityNet(params: DitParams, cfg: DitConfig, x: Arr, t: Arr, r: Arr, labels: Arr, text?: Arr): Arr {
  const w = cfg.width;
  const b = x.shape[0]!;
  let h = linear(params.patchIn, patchify(x, cfg.patchSize)).add(params.pos);
  let c = params.interval ? embedTime(params.time, t.ref, w).add(embedTime(params.interval, t.sub(r), w)) : (r.dispose(), embedTime(params.time, t, w));
  if (params.classes) {
    const n = cfg.numClasses;
    const ids = np.where(labels.ref.less(0), n, labels);
    c = c.add(np.matmul(jnn.oneHot(ids, n + 1).astype(np.float32), params.classes));
  } else labels.dispose();
  let tokens: Arr | undefined;
  if (text) {
    c = c.add(linear(params.textPool!, text.ref.mean(1)));
    tokens = linear(params.textIn!, text);
  }
  c = jnn.silu(c);
  for (const bp of params.blocks) {
    const r2 = block(bp, cfg, h, tokens, c.ref);
    h = r2.h;
    tokens = r2.text;
  }
  tokens?.dispose();
  const [shift, scale] = modulation(params.final.mod, c, 2, w);
  const v = linear(params.final.out, modulate(h, shift!, scale!));
  return unpatchify(v.reshape([b, tokensOf(cfg), patchDim(cfg)]), cfg);
}

// ---- training ----

/** The text states of a batch: given, or encoded from caption ids y by the model's own encoder (consumes params.text). */
function textOf(params: DitParams, cfg: DitConfig, y: Arr, text?: Arr): Arr | undefined {
  if (text || !cfg.textEncoder) {
    if (params.text) release(params.text);
    return text;
  }
  return encodeText(params.text!, textEncoderShape(cfg), y.ref);
}

/** Labels for the network: y itself for class models, −1s otherwise (y may be caption ids). Consumes y. */
function labelsOf(cfg: DitConfig, y: Arr): Arr {
  if (cfg.numClasses > 0) return y;
  const b = y.shape[0]!;
  y.dispose();
  return np.full([b], -1, { dtype: np.int32 });
}

/** Extra standard-normal draws per sample beyond ε: two for t, two for r. */
const TIME_DRAWS = 4;

/** A training time per sample from two standard normals a, b [B]: logit-normal from a, or uniform as exp(−(a² + b²)/2). */
function drawTime(cfg: DitConfig, a: Arr, b: Arr): Arr {
  if (cfg.timeSampling === 'uniform') return np.exp(np.square(a).add(np.square(b)).mul(-0.5));
  b.dispose();
  return jnn.sigmoid(a.mul(cfg.timeScale).add(cfg.timeLocation));
}

const asImage = (t: Arr) => t.reshape([-1, 1, 1, 1]);

function ditLoss(params: DitParams, cfg: DitConfig, x: Arr, y: Arr, eps: Arr): Arr {
  const [b] = x.shape as [number];
  const d = dimsOf(cfg);
  const column = (k: number) => eps.ref.slice([], [d + k, d + k + 1]).reshape([b]);
  const noise = eps.ref.slice([], [0, d]).reshape(x.shape as number[]);
  const t1 = drawTime(cfg, column(0), column(1));
  const t2 = drawTime(cfg, column(2), column(3));
  eps.dispose();
  const states = textOf(params, cfg, y.ref);
  const labels = labelsOf(cfg, y);
  const along = (t: Arr) => x.ref.mul(asImage(t.ref).neg().add(1)).add(noise.ref.mul(asImage(t))); // x_t
  if (cfg.objective === 'rectified-flow') {
    t2.dispose();
    const xt = along(t1.ref);
    const pred = velocityNet(params, cfg, xt, t1.ref, t1, labels, states);
    return np.square(pred.sub(noise.sub(x))).mean();
  }
  // MeanFlow: u(z_t, r, t) regressed on v − (t − r)·du/dt, the total derivative along the
  // trajectory (a JVP with tangents v for z, 0 for r, 1 for t), under stop-gradient, with the
  // adaptive weight 1/(‖Δ‖² + c)^p.
  const k = Math.round(cfg.meanflowRatio * b);
  const apart = np.arange(b).less(k); // the first k samples of the (shuffled) batch have r < t
  const t = np.where(apart.ref, np.maximum(t1.ref, t2.ref), t1.ref);
  const r = np.where(apart, np.minimum(t1, t2), t.ref);
  const z = along(t.ref);
  const v = noise.sub(x);
  const frozen = mapTree(lax.stopGradient, keep(params as never)) as unknown as DitParams;
  const fixedText = states && lax.stopGradient(states.ref);
  const [u, dudt] = jvp(
    (zz: Arr, rr: Arr, tt: Arr) => velocityNet(keep(frozen as never) as unknown as DitParams, cfg, zz, tt, rr, labels.ref, fixedText?.ref),
    [z.ref, r.ref, t.ref],
    [v.ref, np.zerosLike(r.ref), np.onesLike(t.ref)],
  );
  release(frozen as never);
  fixedText?.dispose();
  u.dispose();
  const target = lax.stopGradient(v.sub(asImage(t.ref.sub(r.ref)).mul(dudt)));
  const pred = velocityNet(params, cfg, z, t, r, labels, states);
  const err = np.square(pred.sub(target)).mean([1, 2, 3]);
  const weight = lax.stopGradient(np.power(err.ref.add(MEANFLOW_EPS), -cfg.meanflowPower));
  return err.mul(weight).mean();
}

/** MeanFlow's c in the adaptive weight 1/(‖Δ‖² + c)^p. */
const MEANFLOW_EPS = 1e-3;

// ---- likelihood: the probability-flow ODE ----

/** Seed of the Hutchinson probes: fixed, so that a model's NLL of an image is a deterministic number. */
const PROBE_SEED = 0x5eed;

/**
 * NLL per sample in nats per dimension, [B]: x is carried from t = 0 to t = 1 along the
 * velocity (Heun, cfg.nllSteps steps), and log p(x) = log N(x₁) + ∫ div v dt (the instantaneous
 * change of variables). The divergence is exact for at most EXACT_DIVERGENCE_DIMS dimensions
 * (one JVP per basis vector), otherwise Hutchinson's estimate εᵀ(∂v/∂x)ε with one Rademacher
 * probe per step. MeanFlow integrates its instantaneous velocity u(x, t, t).
 */
function ditNll(params: DitParams, cfg: DitConfig, x: Arr, y: Arr, text?: Arr): Arr {
  const shape = x.shape as number[];
  const [b] = shape as [number];
  const d = dimsOf(cfg);
  const states = textOf(params, cfg, y.ref, text);
  const labels = labelsOf(cfg, y);
  const exact = d <= EXACT_DIVERGENCE_DIMS;
  const step = heunStep(cfg, exact, Boolean(states));
  const rng = new Rng(PROBE_SEED);
  const n = cfg.nllSteps;
  let state: [Arr, Arr] = [x, np.zeros([b])];
  for (let i = 0; i < n; i++) {
    const probe = exact ? np.zeros([1]) : np.array(Float32Array.from({ length: b * d }, () => (rng.uniform() < 0.5 ? -1 : 1)), { shape }); // exact: unused
    const times = hostScalars([i / n, (i + 1) / n]);
    const args = [keep(params as never), state[0], state[1], times, labels.ref, probe] as const;
    state = states ? step(...args, states.ref) : step(...args);
    // Run each step before queueing the next: jax-js dispatches lazily, and queued programs hold
    // their buffers (~0.4 GB a step at batch 20 for MNIST), which overran wasm's 4 GiB.
    state[1].ref.dataSync();
  }
  release(params as never);
  labels.dispose();
  states?.dispose();
  const [z, logdet] = state;
  return np.square(z).mean([1, 2, 3]).mul(0.5).add(HALF_LOG_2PI).sub(logdet.mul(1 / d));
}

/**
 * One Heun step of the probability-flow ODE from times[0] to times[1] (hostScalars): (z, ∫div) → (z, ∫div),
 * jitted once per config. The divergence is exact (one JVP per basis vector) or Hutchinson's with
 * the given ±1 probe. One program per step, not per integration: an unrolled ODE exceeds wasm's
 * 4 GiB.
 */
function heunStep(cfg: DitConfig, exact: boolean, withText: boolean): (p: DitParams, z: Arr, logdet: Arr, times: Arr, labels: Arr, probe: Arr, text?: Arr) => [Arr, Arr] {
  return cachedJit(`dit-nll-step:${exact}:${withText}:${JSON.stringify(cfg)}`, () => (p: DitParams, z: Arr, logdet: Arr, times: Arr, labels: Arr, probe: Arr, text?: Arr): [Arr, Arr] => {
    const shape = z.shape as number[];
    const [b] = shape as [number];
    const d = dimsOf(cfg);
    /** The velocity at (zz, time k) and its divergence [B]; consumes zz. */
    const field = (zz: Arr, k: number): [Arr, Arr] => {
      const t = np.broadcastTo(times.ref.slice([k, k + 1]), [b]);
      const f = (u: Arr) => velocityNet(keep(p as never) as unknown as DitParams, cfg, u, t.ref, t.ref, labels.ref, text?.ref);
      const directions = exact
        ? Array.from({ length: d }, (_, j) => np.array(Float32Array.from({ length: b * d }, (_, i) => (i % d === j ? 1 : 0)), { shape }))
        : [probe.ref];
      let v: Arr | undefined;
      let div: Arr | undefined;
      for (const e of directions) {
        const [out, jv] = jvp(f, [zz.ref], [e.ref]);
        const term = jv.mul(e).sum([1, 2, 3]);
        div = div ? div.add(term) : term;
        if (v) out.dispose();
        else v = out;
      }
      zz.dispose();
      t.dispose();
      return [v!, div!];
    };
    const dt = times.ref.slice([1, 2]).sub(times.ref.slice([0, 1]));
    const [v0, div0] = field(z.ref, 0);
    const [v1, div1] = field(z.ref.add(v0.ref.mul(dt.ref)), 1);
    const half = dt.mul(0.5);
    const next: [Arr, Arr] = [z.add(v0.add(v1).mul(half.ref)), logdet.add(div0.add(div1).mul(half))];
    release([p, times, labels, probe, ...(text ? [text] : [])] as never);
    return next;
  });
}

// ---- the family ----

function describeDit(cfg: DitConfig): string {
  const encoder = cfg.textEncoder ? `, its own ${cfg.textEncoder.layers}-layer encoder over ${cfg.textEncoder.vocab.length} words` : '';
  const cond = cfg.textDim > 0 ? `MM-DiT, text (${cfg.textTokens} × ${cfg.textDim}${encoder})` : `DiT, ${cfg.numClasses} classes`;
  const space = cfg.autoencoder ? `latents (of the autoencoder in ${cfg.autoencoder}/)` : 'images';
  const objective = cfg.objective === 'meanflow' ? 'MeanFlow' : 'rectified flow';
  return `${objective} ${cond}: ${cfg.depth} blocks, width ${cfg.width}, ${cfg.inChannels}×${cfg.imgSize}×${cfg.imgSize} ${space} in ${cfg.patchSize}×${cfg.patchSize} patches; ${cfg.sampleSteps} step${cfg.sampleSteps > 1 ? 's' : ''} by default`;
}

export const dit: ModelFamily<DitConfig, DitParams> = {
  name: 'dit',
  source: import.meta.url,
  describe: describeDit,
  parseConfig: (raw, where) => parseDitConfig({ model: 'dit', ...(raw as object) }, where),
  init: initDit,
  paramShapes: (cfg) => shapesOf(() => initDit(cfg, 0)),
  noiseShape: (cfg) => [cfg.inChannels, cfg.imgSize, cfg.imgSize],
  lossNoiseShape: (cfg, batch) => [batch, dimsOf(cfg) + TIME_DRAWS],
  loss: (params, cfg, x, y, eps) => ditLoss(params, cfg, x, y, eps!),
  lossIsNll: false,
  nll: ditNll,
  jitNll: false,
  textEncoder: (cfg) =>
    cfg.textEncoder
      ? { tokenizer: { vocab: cfg.textEncoder.vocab, maxTokens: cfg.textTokens }, encode: (params, ids) => encodeText(keep(params.text!), textEncoderShape(cfg), ids) }
      : null,
  sampler: (cfg): VelocitySampler<DitParams> => ({
    kind: 'velocity',
    // Heun needs the instantaneous velocity: MeanFlow's average velocity over a step is not one.
    solvers: cfg.objective === 'meanflow' ? ['euler'] : ['euler', 'heun'],
    defaultSteps: cfg.sampleSteps,
    timeShift: cfg.timeShift,
    velocity: (params, x, t, r, labels, text) => velocityNet(keep(params as never) as unknown as DitParams, cfg, x, t, r, labels, text),
    toImages: (x) => x,
  }),
};


