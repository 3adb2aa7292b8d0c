// Model families side by side on MNIST: each trained checkpoint's samples scored the same way in
// one run (500 samples per guidance weight, Fréchet distance and class accuracy on the shipped
// feature net, samples/s), with the training wall-clock each one's provenance records, and for a
// latent model its autoencoder's on top.
//
//   npm run bench -- families --model latent=runs/a/checkpoint --model pixel=runs/b/checkpoint [--n 500] [--cfg 0,1,2,3] [--steps 1,2,4,8,16,32] [--bpd-n 200] [--out NAME]
//
// --steps applies to the families that integrate a velocity field (rectified flow, MeanFlow): a
// row per guidance weight and step count. A flow's sampling cost is fixed (one KV-cached pass per
// token and block). --bpd-n: test images of each model's bits/dim (the same for every model).
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
  /** Network evaluations per sample: velocity families' steps (Heun: 2 a step); flows: null (see tokenSteps). */
  tokenSteps: number | null;
  testBpd: { bitsPerDim: number; n: number; of: string } | null;
  runs: { cfg: number; steps: number | null; evaluations: number | null; frechet: number; classAccuracy: number; samplesPerSec: number }[];
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
  const steps = flag(args, 'steps')[0]?.split(',').map(Number);
  const bpdImages = flag(args, 'bpd-n')[0] === undefined ? undefined : Number(flag(args, 'bpd-n')[0]);
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
    const sampler = model.family.sampler(model.cfg);
    const velocity = sampler.kind === 'velocity';
    const r = await evaluateModel({ modelDir: m.dir, outDir: path.join(outDir, m.name), n, weights, ...(velocity && steps ? { steps } : {}), bpdImages, onLog: (l) => console.error(`  ${l}`) });
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
      tokenSteps: sampler.kind === 'autoregressive' ? (sampler.length - 1) * sampler.numBlocks : null,
      testBpd: r.metrics.testBpd && { bitsPerDim: r.metrics.testBpd.bitsPerDim, n: r.metrics.testBpd.n, of: r.metrics.testBpd.of },
      runs: r.metrics.model.map((x) => ({ cfg: x.cfg, steps: x.steps, evaluations: x.evaluations, frechet: x.frechet, classAccuracy: x.classAccuracy ?? NaN, samplesPerSec: x.samplesPerSec })),
    });
  }

  const best = (row: Row) => [...row.runs].sort((a, b) => a.frechet - b.frechet)[0]!;
  const lines = [
    `# Model families side by side (${new Date().toISOString().slice(0, 10)})`,
    '',
    `\`npm run bench -- families ${args.join(' ')}\`; ${n} samples per guidance weight (${weights.join(', ')}), scored on the shipped MNIST feature net; each model's own guidance rule; pixel models trained with noise are denoised.`,
    '',
    '| model | family | parameters | training (flow) | + autoencoder | training steps | best Fréchet (cfg, sampling steps) | class accuracy there | samples/s there | test bits/dim |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => {
      const b = best(r);
      const bpd = r.testBpd ? `${fmt(r.testBpd.bitsPerDim)}${r.testBpd.of === 'latents' ? ' (latents)' : ''}` : '–';
      return `| ${r.name} | ${r.latent ? 'latent ' : 'pixel '}${r.family} | ${(r.params / 1e6).toFixed(2)}M | ${fmt(r.trainSeconds / 60)} min | ${r.latent ? `${fmt(r.autoencoderSeconds / 60)} min` : '–'} | ${r.steps} | ${fmt(b.frechet)} (${b.cfg}${b.steps ? `, ${b.steps}` : ''}) | ${fmt(100 * b.classAccuracy)}% | ${fmt(b.samplesPerSec)} | ${bpd} |`;
    }),
    '',
    'Every guidance weight (and, for velocity families, step count). Network evaluations per sample: a velocity family\'s steps (with guidance, each evaluation runs both branches as one batch); a flow samples with one KV-cached pass per token and block (the count given).',
    '',
    '| model | cfg | network evaluations | Fréchet | class accuracy | samples/s |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.flatMap((r) => r.runs.map((x) => `| ${r.name} | ${x.cfg} | ${x.evaluations ?? `${r.tokenSteps} token steps`} | ${fmt(x.frechet)} | ${fmt(100 * x.classAccuracy)}% | ${fmt(x.samplesPerSec)} |`)),
    '',
  ];
  writeFileSync(path.join(outDir, 'results.json'), JSON.stringify({ date: new Date().toISOString(), n, weights, steps: steps ?? null, bpdImages: bpdImages ?? n, rows }, null, 2));
  writeFileSync(path.join(outDir, 'results.md'), lines.join('\n'));
  console.log(lines.join('\n'));
}
