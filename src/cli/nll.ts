import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { evaluateBpd } from '../train/trainer.js';
import { classify } from '../eval/classify.js';
import { readSafetensorsFile, writeSafetensorsFile } from '../io/files.js';
import { fromFloat32, toFloat32, toInt32, type TensorEntry } from '../io/safetensors.js';
import { fromF32, fromI32, jit, keep, toF32, type Arr } from '../engine/index.js';
import { forward, flowLoss, bitsPerDim, type TarFlowParams } from '../models/tarflow.js';
import type { TarFlowConfig } from '../models/config.js';
import { Progress } from './progress.js';
import { parse, intOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir } from './common.js';

export const NLL_HELP = `starflow nll: bits/dim of a dataset under a model

Usage:
  starflow nll --model DIR [--data mnist:test] [--n N] [--json]
  starflow nll --model DIR --input FILE.safetensors --x-key x [--y-key y] [--z-out FILE] [--json]

  --model DIR     model directory
  --data SPEC     mnist:test (default), mnist:train, folder:/path
  --n N           evaluate the first N images (default: all)
  --batch B       images per batch (default 200)
  --seed N        seed of the uniform dequantisation noise (default 1234)
  --json          print {"bpd": mean, "n": N} as JSON (with bpdFinite and nonFinite when some
                  image's likelihood underflows float32)

Images are uniformly dequantised and scored with the log 128 bin term, as ml-tarflow's
evaluate_bpd does; class models are scored as p(x | true label).

Exact inputs (for comparing with another implementation on the same tensors):
  --input FILE    a .safetensors file with images [B, C, H, W] in [-1, 1]; used as they are
                  (no dequantisation noise)
  --x-key NAME    tensor name of the images (default x)
  --y-key NAME    tensor name of the labels [B] (class models; -1 = no class)
  --z-out FILE    write the noise tokens as tensor 'z' [B, T, D] to a .safetensors file
  --json          print {"bpd": [per sample], "logdet": [per sample], "loss": L}: bits/dim with
                  the log 128 term, the summed log-determinant per dimension, and the training
                  loss 0.5·mean(z²) − mean(logdet)
${ENGINE_HELP}`;

export const CLASSIFY_HELP = `starflow classify: classify images by Bayes' rule with a class-conditional model

Usage:
  starflow classify --model DIR [--data mnist:test] [--n N] [--json]

Each image is scored under every class; the class with the highest likelihood wins.
${ENGINE_HELP}`;

const OPTIONS = { model: { type: 'string' }, data: { type: 'string' }, n: { type: 'string' }, batch: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' } } as const;

const NLL_OPTIONS = { ...OPTIONS, input: { type: 'string' }, 'x-key': { type: 'string' }, 'y-key': { type: 'string' }, 'z-out': { type: 'string' } } as const;

async function setup(argv: string[], help: string, o = parse(argv, OPTIONS)) {
  if (o.help) {
    console.log(help);
    return null;
  }
  const dir = modelDir(o);
  await startEngineFromOptions(o);
  const { cfg, params } = await loadModel(dir);
  const spec = strOpt(o.data, 'data') ?? 'mnist:test';
  const ds = await loadDataset(spec, { size: cfg.imgSize, channels: cfg.inChannels });
  const n = intOpt(o.n, 'n', 1, ds.n);
  const batchSize = intOpt(o.batch, 'batch', 1, 200);
  return { o, cfg, params, ds, n, spec, batchSize };
}

export async function nllCommand(argv: string[]): Promise<void> {
  const o = parse(argv, NLL_OPTIONS);
  if (o.input !== undefined && !o.help) return nllOfInput(o);
  for (const k of ['x-key', 'y-key', 'z-out'] as const) if (o[k] !== undefined) throw new UsageError(`--${k} needs --input FILE`);
  const s = await setup(argv, NLL_HELP, o);
  if (!s) return;
  const bar = new Progress('nll', Math.min(s.n, s.ds.n));
  const r = await evaluateBpd(s.params, s.cfg, s.ds, s.n, { batchSize: s.batchSize, seed: intOpt(s.o.seed, 'seed', 0, 1234), onBatch: (d) => bar.update(d) });
  const n = r.perImage.length;
  if (s.o.json) {
    // JSON has no Infinity: bpd is null then, and the finite figures say the rest.
    const extra = r.nonFinite.length ? { bpdFinite: r.finiteMean, nonFinite: r.nonFinite } : {};
    console.log(JSON.stringify({ bpd: Number.isFinite(r.mean) ? r.mean : null, n, data: s.spec, ...extra }));
  } else if (r.nonFinite.length) {
    console.log(
      `${s.spec}: ${r.finiteMean.toFixed(4)} bits/dim over ${n - r.nonFinite.length} of ${n} images; ` +
        `${r.nonFinite.length} scored +inf (their z overflowed float32): image${r.nonFinite.length > 1 ? 's' : ''} ${r.nonFinite.slice(0, 10).join(', ')}${r.nonFinite.length > 10 ? ', …' : ''}`,
    );
  } else console.log(`${s.spec}: ${r.mean.toFixed(4)} bits/dim over ${n} images`);
}

export async function classifyCommand(argv: string[]): Promise<void> {
  const s = await setup(argv, CLASSIFY_HELP);
  if (!s) return;
  const bar = new Progress('classify', Math.min(s.n, s.ds.n));
  const r = await classify(s.params, s.cfg, s.ds, s.n, { batchSize: s.batchSize, onBatch: (d) => bar.update(d) });
  if (s.o.json) console.log(JSON.stringify({ accuracy: r.accuracy, n: r.n, data: s.spec }));
  else console.log(`${s.spec}: accuracy ${(100 * r.accuracy).toFixed(2)}% over ${r.n} images`);
}

/** Images (and labels) from a .safetensors file, checked against a model's config. */
export async function readInputs(
  file: string,
  xKey: string,
  yKey: string | undefined,
  cfg: TarFlowConfig,
): Promise<{ x: Float32Array; shape: [number, number, number, number]; labels: number[] | undefined }> {
  const f = await readSafetensorsFile(file);
  const get = (key: string): TensorEntry => {
    const t = f.tensors.get(key);
    if (!t) throw new UsageError(`${file} has no tensor '${key}' (it has: ${[...f.tensors.keys()].join(', ') || 'none'})`);
    return t;
  };
  const xt = get(xKey);
  const want = [cfg.inChannels, cfg.imgSize, cfg.imgSize];
  if (xt.shape.length !== 4 || xt.shape.slice(1).join(',') !== want.join(',') || xt.shape[0] === 0) {
    throw new UsageError(`'${xKey}' must have shape [B, ${want.join(', ')}] for this model, got [${xt.shape}]`);
  }
  const x = toFloat32(xt, `${file}: '${xKey}'`);
  if (x.some((v) => !Number.isFinite(v))) throw new UsageError(`'${xKey}' contains NaN or infinite values`);
  const b = xt.shape[0]!;
  let labels: number[] | undefined;
  if (cfg.numClasses > 0) {
    if (!yKey) throw new UsageError('this class-conditional model needs labels: pass --y-key NAME');
    const yt = get(yKey);
    const ys = yt.dtype.startsWith('F') ? Array.from(toFloat32(yt, yKey)) : Array.from(toInt32(yt, `${file}: '${yKey}'`));
    if (ys.length !== b) throw new UsageError(`'${yKey}' has ${ys.length} labels for ${b} images`);
    for (const y of ys) {
      if (!Number.isInteger(y) || y < -1 || y >= cfg.numClasses) throw new UsageError(`label ${y} in '${yKey}' is not a class of this model (-1 to ${cfg.numClasses - 1})`);
    }
    labels = ys;
  }
  return { x, shape: xt.shape as [number, number, number, number], labels };
}

type Scores = { z: Arr; logdet: Arr; loss: Arr; bpd: Arr };
const scoreFns = new Map<string, (p: TarFlowParams, x: Arr, y: Arr) => Scores>();

/** z, logdet, loss and bits/dim of a batch, compiled once per config. */
function scoresOf(params: TarFlowParams, cfg: TarFlowConfig, x: Arr, y: Arr): Scores {
  const key = JSON.stringify(cfg);
  let f = scoreFns.get(key);
  if (!f) {
    f = jit((p: TarFlowParams, xs: Arr, ys: Arr) => {
      const r = forward(p, cfg, xs, cfg.numClasses > 0 ? ys : (ys.dispose(), undefined));
      r.blockZ2.dispose();
      return { z: r.z.ref, logdet: r.logdet.ref, loss: flowLoss(r.z.ref, r.logdet.ref), bpd: bitsPerDim(r.z, r.logdet) };
    }) as unknown as (p: TarFlowParams, x: Arr, y: Arr) => Scores;
    scoreFns.set(key, f);
  }
  return f(keep(params), x, y);
}

async function nllOfInput(o: Record<string, string | boolean | undefined>): Promise<void> {
  const dir = modelDir(o);
  if (o.data !== undefined || o.n !== undefined || o.seed !== undefined) throw new UsageError('--input cannot be combined with --data, --n or --seed');
  const file = strOpt(o.input, 'input')!;
  const zOut = strOpt(o['z-out'], 'z-out');
  if (zOut !== undefined && !zOut.endsWith('.safetensors')) throw new UsageError(`--z-out must name a .safetensors file, got '${zOut}'`);
  await startEngineFromOptions(o);
  const { cfg, params } = await loadModel(dir);
  const { x, shape, labels } = await readInputs(file, strOpt(o['x-key'], 'x-key') ?? 'x', strOpt(o['y-key'], 'y-key'), cfg);
  const [b, c, h, w] = shape;
  const batch = intOpt(o.batch, 'batch', 1, 200);
  const per = c * h * w;
  const bpd = new Float32Array(b);
  const logdet = new Float32Array(b);
  const z = zOut ? new Float32Array(b * per) : undefined;
  let loss = 0;
  for (let s = 0; s < b; s += batch) {
    const n = Math.min(batch, b - s);
    const r = scoresOf(params, cfg, fromF32(x.subarray(s * per, (s + n) * per), [n, c, h, w]), fromI32(labels ? labels.slice(s, s + n) : new Array<number>(n).fill(0), [n]));
    bpd.set(await toF32(r.bpd), s);
    logdet.set(await toF32(r.logdet), s);
    // The loss is a mean over samples (and equal-sized dimensions), so batches combine by weight.
    loss += ((await toF32(r.loss))[0]! * n) / b;
    if (z) z.set(await toF32(r.z), s * per);
    else r.z.dispose();
  }
  if (zOut && z) {
    const tokens = (cfg.imgSize / cfg.patchSize) ** 2;
    await writeSafetensorsFile(zOut, { z: fromFloat32(z, [b, tokens, per / tokens]) });
  }
  if (o.json) console.log(JSON.stringify({ bpd: [...bpd], logdet: [...logdet], loss }));
  else {
    for (let i = 0; i < b; i++) console.log(`${i}\tbpd ${bpd[i]!.toFixed(6)}\tlogdet ${logdet[i]!.toFixed(6)}`);
    console.log(`loss ${loss.toFixed(6)} over ${b} images`);
  }
}
