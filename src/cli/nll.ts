import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { evaluateBpd, scoreImages } from '../eval/likelihood.js';
import { classify } from '../eval/classify.js';
import { writeSafetensorsFile } from '../io/files.js';
import { fromFloat32 } from '../io/safetensors.js';
import { readImageInputs } from '../io/inputs.js';
import { HALF_LOG_2PI, imageShapeOf } from '../models/model.js';
import { Progress } from './progress.js';
import { parse, intOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir, MODEL_DEFAULT } from './common.js';

export const NLL_HELP = `starflow nll: bits/dim of a dataset under a model

Usage:
  starflow nll [--model DIR] [--data mnist:test] [--n N] [--json]
  starflow nll --model DIR --input FILE.safetensors --x-key x [--y-key y | --text-key K] [--z-out FILE] [--json]

  --model DIR     model directory (${MODEL_DEFAULT})
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
  --text-key NAME tensor name of the text-encoder states [B, L, D] (text-conditioned models)
  --z-out FILE    write the noise tokens as tensor 'z' [B, T, D] to a .safetensors file
  --json          print {"bpd": [per sample], "logdet": [per sample], "loss": L}: bits/dim with
                  the log 128 term, the summed log-determinant per dimension, and the training
                  loss 0.5·mean(z²) − mean(logdet)
${ENGINE_HELP}`;

export const CLASSIFY_HELP = `starflow classify: classify images by Bayes' rule with a class-conditional model

Usage:
  starflow classify [--model DIR] [--data mnist:test] [--n N] [--json]     (model ${MODEL_DEFAULT})

Each image is scored under every class; the class with the highest likelihood wins.
${ENGINE_HELP}`;

const OPTIONS = { model: { type: 'string' }, data: { type: 'string' }, n: { type: 'string' }, batch: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' } } as const;

const NLL_OPTIONS = { ...OPTIONS, input: { type: 'string' }, 'x-key': { type: 'string' }, 'y-key': { type: 'string' }, 'text-key': { type: 'string' }, 'z-out': { type: 'string' } } as const;

async function setup(argv: string[], help: string, o = parse(argv, OPTIONS)) {
  if (o.help) {
    console.log(help);
    return null;
  }
  const dir = modelDir(o);
  await startEngineFromOptions(o);
  const model = await loadModel(dir);
  const spec = strOpt(o.data, 'data') ?? 'mnist:test';
  const ds = await loadDataset(spec, imageShapeOf(model));
  const n = intOpt(o.n, 'n', 1, ds.n);
  const batchSize = intOpt(o.batch, 'batch', 1, 200);
  return { o, model, ds, n, spec, batchSize };
}

const LATENT_NOTE = `
(a latent model: −log₂ p per latent dimension of its autoencoder's latents of the images, with the
noise it was trained on; it measures the flow's fit to the latents and is not comparable with the
bits/dim of a pixel model)`;

export async function nllCommand(argv: string[]): Promise<void> {
  const o = parse(argv, NLL_OPTIONS);
  if (o.input !== undefined && !o.help) return nllOfInput(o);
  for (const k of ['x-key', 'y-key', 'text-key', 'z-out'] as const) if (o[k] !== undefined) throw new UsageError(`--${k} needs --input FILE`);
  const s = await setup(argv, NLL_HELP, o);
  if (!s) return;
  const bar = new Progress('nll', Math.min(s.n, s.ds.n));
  const r = await evaluateBpd(s.model, s.ds, s.n, { batchSize: s.batchSize, seed: intOpt(s.o.seed, 'seed', 0, 1234), onBatch: (d) => bar.update(d) });
  const n = r.perImage.length;
  const unit = s.model.autoencoder ? 'latent bits/dim' : 'bits/dim';
  if (s.o.json) {
    // JSON has no Infinity: bpd is null then, and the finite figures say the rest.
    const extra = r.nonFinite.length ? { bpdFinite: r.finiteMean, nonFinite: r.nonFinite } : {};
    console.log(JSON.stringify({ bpd: Number.isFinite(r.mean) ? r.mean : null, n, data: s.spec, of: s.model.autoencoder ? 'latents' : 'pixels', ...extra }));
  } else if (r.nonFinite.length) {
    console.log(
      `${s.spec}: ${r.finiteMean.toFixed(4)} ${unit} over ${n - r.nonFinite.length} of ${n} images; ` +
        `${r.nonFinite.length} scored +inf (their z overflowed float32): image${r.nonFinite.length > 1 ? 's' : ''} ${r.nonFinite.slice(0, 10).join(', ')}${r.nonFinite.length > 10 ? ', …' : ''}`,
    );
  } else console.log(`${s.spec}: ${r.mean.toFixed(4)} ${unit} over ${n} images${s.model.autoencoder ? LATENT_NOTE : ''}`);
}

export async function classifyCommand(argv: string[]): Promise<void> {
  const s = await setup(argv, CLASSIFY_HELP);
  if (!s) return;
  const bar = new Progress('classify', Math.min(s.n, s.ds.n));
  const r = await classify(s.model, s.ds, s.n, { batchSize: s.batchSize, onBatch: (d) => bar.update(d) });
  if (s.o.json) console.log(JSON.stringify({ accuracy: r.accuracy, n: r.n, data: s.spec }));
  else console.log(`${s.spec}: accuracy ${(100 * r.accuracy).toFixed(2)}% over ${r.n} images`);
}

async function nllOfInput(o: Record<string, string | boolean | undefined>): Promise<void> {
  const dir = modelDir(o);
  if (o.data !== undefined || o.n !== undefined || o.seed !== undefined) throw new UsageError('--input cannot be combined with --data, --n or --seed');
  const file = strOpt(o.input, 'input')!;
  const zOut = strOpt(o['z-out'], 'z-out');
  if (zOut !== undefined && !zOut.endsWith('.safetensors')) throw new UsageError(`--z-out must name a .safetensors file, got '${zOut}'`);
  await startEngineFromOptions(o);
  const model = await loadModel(dir);
  const { x, shape, labels, text } = await readImageInputs(file, strOpt(o['x-key'], 'x-key') ?? 'x', strOpt(o['y-key'], 'y-key'), model, strOpt(o['text-key'], 'text-key'));
  const b = shape[0];
  const flow = model.family.encode !== undefined;
  const r = await scoreImages(model, x, shape, labels, { batchSize: intOpt(o.batch, 'batch', 1, 200), encode: flow, text });
  // The reference's training loss, 0.5·mean(z²) − mean(logdet) = mean NLL − ½·log 2π.
  const loss = r.nll.reduce((a, v) => a + v, 0) / b - HALF_LOG_2PI;
  if (zOut) {
    if (!r.z) throw new UsageError(`--z-out needs a flow; ${model.family.name} models have no noise for an image`);
    await writeSafetensorsFile(zOut, { z: fromFloat32(r.z, [b, ...model.family.noiseShape(model.cfg)]) });
  }
  const logdet = r.logdet ? [...r.logdet] : undefined;
  if (o.json) console.log(JSON.stringify({ bpd: [...r.bpd], ...(logdet ? { logdet } : {}), loss }));
  else {
    for (let i = 0; i < b; i++) console.log(`${i}\tbpd ${r.bpd[i]!.toFixed(6)}${logdet ? `\tlogdet ${logdet[i]!.toFixed(6)}` : ''}`);
    console.log(`loss ${loss.toFixed(6)} over ${b} images`);
  }
}
