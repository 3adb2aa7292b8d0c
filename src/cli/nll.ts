import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { evaluateBpd } from '../train/trainer.js';
import { classify } from '../eval/classify.js';
import { Progress } from './progress.js';
import { parse, intOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP } from './common.js';

export const NLL_HELP = `starflow nll: bits/dim of a dataset under a model

Usage:
  starflow nll --model DIR [--data mnist:test] [--n N] [--json]

  --model DIR     model directory
  --data SPEC     mnist:test (default), mnist:train, folder:/path
  --n N           evaluate the first N images (default: all)
  --batch B       images per batch (default 200)
  --seed N        seed of the uniform dequantisation noise (default 1234)
  --json          print {"bpd": mean, "n": N} as JSON

Images are uniformly dequantised and scored with the log 128 bin term, as ml-tarflow's
evaluate_bpd does; class models are scored as p(x | true label).
${ENGINE_HELP}`;

export const CLASSIFY_HELP = `starflow classify: classify images by Bayes' rule with a class-conditional model

Usage:
  starflow classify --model DIR [--data mnist:test] [--n N] [--json]

Each image is scored under every class; the class with the highest likelihood wins.
${ENGINE_HELP}`;

const OPTIONS = { model: { type: 'string' }, data: { type: 'string' }, n: { type: 'string' }, batch: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' } } as const;

async function setup(argv: string[], help: string) {
  const o = parse(argv, OPTIONS);
  if (o.help) {
    console.log(help);
    return null;
  }
  const dir = strOpt(o.model, 'model');
  if (!dir) throw new UsageError('--model DIR is required');
  await startEngineFromOptions(o);
  const { cfg, params } = await loadModel(dir);
  const spec = strOpt(o.data, 'data') ?? 'mnist:test';
  const ds = await loadDataset(spec, { size: cfg.imgSize, channels: cfg.inChannels });
  const n = intOpt(o.n, 'n', 1, ds.n);
  const batchSize = intOpt(o.batch, 'batch', 1, 200);
  return { o, cfg, params, ds, n, spec, batchSize };
}

export async function nllCommand(argv: string[]): Promise<void> {
  const s = await setup(argv, NLL_HELP);
  if (!s) return;
  const bar = new Progress('nll', Math.min(s.n, s.ds.n));
  const r = await evaluateBpd(s.params, s.cfg, s.ds, s.n, { batchSize: s.batchSize, seed: intOpt(s.o.seed, 'seed', 0, 1234), onBatch: (d) => bar.update(d) });
  if (s.o.json) console.log(JSON.stringify({ bpd: r.mean, n: r.perImage.length, data: s.spec }));
  else console.log(`${s.spec}: ${r.mean.toFixed(4)} bits/dim over ${r.perImage.length} images`);
}

export async function classifyCommand(argv: string[]): Promise<void> {
  const s = await setup(argv, CLASSIFY_HELP);
  if (!s) return;
  const bar = new Progress('classify', Math.min(s.n, s.ds.n));
  const r = await classify(s.params, s.cfg, s.ds, s.n, { batchSize: s.batchSize, onBatch: (d) => bar.update(d) });
  if (s.o.json) console.log(JSON.stringify({ accuracy: r.accuracy, n: r.n, data: s.spec }));
  else console.log(`${s.spec}: accuracy ${(100 * r.accuracy).toFixed(2)}% over ${r.n} images`);
}
