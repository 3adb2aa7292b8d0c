// Model families side by side on MNIST: each trained checkpoint's samples scored the same way in
// one run (500 samples per guidance weight, Fréchet distance and class accuracy on the shipped
// feature net, samples/s), with the training wall-clock each one's provenance records, and for a
// latent model its autoencoder's on top.
//
//   npm run bench -- families --model latent=runs/a/checkpoint --model pixel=runs/b/checkpoint [--n 500] [--cfg 0,1,2,3] [--out NAME]
//
// Samples are drawn as `starflow eval` draws them: each model's own guidance rule, and score
// denoising for pixel models trained with noise (a latent model's decoder absorbs it).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, fmt } from './common.js';
import { startNodeEngine } from '../src/engine/node.js';
import { evaluateModel } from '../src/eval/report.js';
import { loadModel } from '../src/io/model.js';
import { countParams } from '../src/engine/index.js';

type Row = {
  name: string;
  dir: string;
  family: string;
  latent: boolean;
  params: number;
  steps: number;
  trainSeconds: number;
  autoencoderSeconds: number;
  denoise: boolean;
  runs: { cfg: number; frechet: number; classAccuracy: number; samplesPerSec: number }[];
};

function flag(args: string[], name: string): string[] {
  const out: string[] = [];
  args.forEach((a, i) => a === `--${name}` && args[i + 1] !== undefined && out.push(args[i + 1]!));
  return out;
}

export async function main(args: string[]): Promise<void> {
  const models = flag(args, 'model').map((s) => {
    const at = s.indexOf('=');
    if (at < 1) throw new Error(`--model takes NAME=DIR, got '${s}'`);
    return { name: s.slice(0, at), dir: s.slice(at + 1) };
  });
  if (models.length === 0) throw new Error('give at least one --model NAME=DIR');
  const n = Number(flag(args, 'n')[0] ?? 500);
  const weights = (flag(args, 'cfg')[0] ?? '0,1,2,3').split(',').map(Number);
  const outName = flag(args, 'out')[0] ?? `families-${new Date().toISOString().slice(0, 10)}`;
  const outDir = path.join(ROOT, 'bench', 'results', outName);
  mkdirSync(outDir, { recursive: true });
  await startNodeEngine();

  const rows: Row[] = [];
  for (const m of models) {
    const model = await loadModel(m.dir);
    const prov = (model.provenance ?? {}) as { steps?: number; seconds?: number };
    const aeProv = (model.autoencoder as { provenance?: { seconds?: number } } | undefined)?.provenance;
    console.error(`${m.name}: ${m.dir}`);
    const r = await evaluateModel({ modelDir: m.dir, outDir: path.join(outDir, m.name), n, weights, onLog: (l) => console.error(`  ${l}`) });
    rows.push({
      name: m.name,
      dir: path.relative(ROOT, path.resolve(m.dir)),
      family: model.cfg.model,
      latent: Boolean(model.autoencoder),
      params: countParams(model.params) + (model.autoencoder ? countParams(model.autoencoder.params) : 0),
      steps: prov.steps ?? NaN,
      trainSeconds: prov.seconds ?? NaN,
      autoencoderSeconds: aeProv?.seconds ?? 0,
      denoise: r.metrics.denoise !== null,
      runs: r.metrics.model.map((x) => ({ cfg: x.cfg, frechet: x.frechet, classAccuracy: x.classAccuracy ?? NaN, samplesPerSec: x.samplesPerSec })),
    });
  }

  const best = (row: Row) => [...row.runs].sort((a, b) => a.frechet - b.frechet)[0]!;
  const lines = [
    `# Model families side by side (${new Date().toISOString().slice(0, 10)})`,
    '',
    `\`npm run bench -- families ${args.join(' ')}\`; ${n} samples per guidance weight (${weights.join(', ')}), scored on the shipped MNIST feature net; each model's own guidance rule; pixel models trained with noise are denoised.`,
    '',
    '| model | family | parameters | training (flow) | + autoencoder | steps | best Fréchet (cfg) | class accuracy there | samples/s there |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => {
      const b = best(r);
      return `| ${r.name} | ${r.latent ? 'latent ' : 'pixel '}${r.family} | ${(r.params / 1e6).toFixed(2)}M | ${fmt(r.trainSeconds / 60)} min | ${r.latent ? `${fmt(r.autoencoderSeconds / 60)} min` : '–'} | ${r.steps} | ${fmt(b.frechet)} (${b.cfg}) | ${fmt(100 * b.classAccuracy)}% | ${fmt(b.samplesPerSec)} |`;
    }),
    '',
    'Every guidance weight:',
    '',
    '| model | cfg | Fréchet | class accuracy | samples/s |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows.flatMap((r) => r.runs.map((x) => `| ${r.name} | ${x.cfg} | ${fmt(x.frechet)} | ${fmt(100 * x.classAccuracy)}% | ${fmt(x.samplesPerSec)} |`)),
    '',
  ];
  writeFileSync(path.join(outDir, 'results.json'), JSON.stringify({ date: new Date().toISOString(), n, weights, rows }, null, 2));
  writeFileSync(path.join(outDir, 'results.md'), lines.join('\n'));
  console.log(lines.join('\n'));
}
