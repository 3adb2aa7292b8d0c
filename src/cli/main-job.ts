// `npm start`: the main job on the embedded default. Trains the mnist preset for a while, then
// writes a sample grid and the test bits/dim, and says where.
import path from 'node:path';
import { sampleGrid, CHECKPOINT_DIR } from '../train/trainer.js';
import { evaluateBpd } from '../eval/likelihood.js';
import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { writeFileAtomic } from '../io/files.js';
import { loadPreset } from '../train/presets.js';
import { asUsageError, trainCommand } from './train.js';
import { parse, numOpt, strOpt, startEngineFromOptions, ENGINE_HELP } from './common.js';

export const MAIN_HELP = `starflow main: train the mnist preset, then write samples and test bits/dim

Usage:
  npm start                      (= starflow main --minutes 15)
  starflow main [--minutes M] [--out DIR] [--preset NAME]

Writes DIR/samples.png, DIR/result.json (test bits/dim) and DIR/checkpoint/ (default DIR: runs/main).
${ENGINE_HELP}`;

export async function mainJob(argv: string[]): Promise<void> {
  const o = parse(argv, { minutes: { type: 'string' }, out: { type: 'string' }, preset: { type: 'string' } });
  if (o.help) return void console.log(MAIN_HELP);
  const minutes = numOpt(o.minutes, 'minutes', 15, (x) => x > 0, 'a number > 0');
  const out = strOpt(o.out, 'out') ?? path.join('runs', 'main');
  const preset = strOpt(o.preset, 'preset') ?? 'mnist';
  await asUsageError(loadPreset(preset)); // fail fast on a bad name
  // Training reports progress through the same path as `starflow train`.
  await trainCommand(['--preset', preset, '--out', out, '--minutes', String(minutes), ...(o.device ? ['--device', String(o.device)] : []), ...(o.threads ? ['--threads', String(o.threads)] : [])]);
  await startEngineFromOptions(o);
  const model = await loadModel(path.join(out, CHECKPOINT_DIR));
  const { cfg } = model;
  const samples = path.join(out, 'samples.png');
  await sampleGrid(model, samples, 0);
  const test = await loadDataset('mnist:test', { size: cfg.imgSize, channels: cfg.inChannels });
  const r = await evaluateBpd(model, test, test.n);
  const overflowed = r.nonFinite.length ? { testBpdFinite: r.finiteMean, nonFinite: r.nonFinite } : {};
  await writeFileAtomic(path.join(out, 'result.json'), JSON.stringify({ testBpd: Number.isFinite(r.mean) ? r.mean : null, images: test.n, ...overflowed, samples }, null, 2) + '\n');
  const bpdLine = r.nonFinite.length
    ? `${r.finiteMean.toFixed(4)} over ${test.n - r.nonFinite.length} images (${r.nonFinite.length} overflowed float32)`
    : r.mean.toFixed(4);
  const objective = cfg.noiseStd > 0 ? ` — the model learned Gaussian-noised images (σ = ${cfg.noiseStd}), the recipe for samples; 'starflow train --preset mnist --noise uniform' makes a bits/dim model` : '';
  console.log(`samples: ${samples}\ntest bits/dim (${test.n} MNIST test images, uniform dequantisation): ${bpdLine}${objective}\nresult: ${path.join(out, 'result.json')}\ncheckpoint: ${path.join(out, CHECKPOINT_DIR)}`);
}
