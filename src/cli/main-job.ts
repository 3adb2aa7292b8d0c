// `npm start`: the main job on the embedded default. Trains the mnist preset for a while, then
// writes a sample grid and the test bits/dim, and says where.
import path from 'node:path';
import { loadPreset } from '../train/presets.js';
import { runMainJob } from '../train/main-job.js';
import { asUsageError, trainProgress, withInterrupt } from './train.js';
import { parse, numOpt, strOpt, startEngineFromOptions, ENGINE_HELP } from './common.js';

export const MAIN_HELP = `starflow main: train the mnist preset, then write samples and test bits/dim

Usage:
  npm start                      (= starflow main --minutes 15)
  starflow main [--minutes M] [--out DIR] [--preset NAME]

Writes DIR/samples.png, DIR/result.json (test bits/dim) and DIR/checkpoint/ (default DIR: runs/main);
an earlier run in DIR is moved to DIR.old-<time> first.
${ENGINE_HELP}`;

export async function mainJob(argv: string[]): Promise<void> {
  const o = parse(argv, { minutes: { type: 'string' }, out: { type: 'string' }, preset: { type: 'string' } });
  if (o.help) return void console.log(MAIN_HELP);
  const minutes = numOpt(o.minutes, 'minutes', 15, (x) => x > 0, 'a number > 0');
  const out = strOpt(o.out, 'out') ?? path.join('runs', 'main');
  const preset = strOpt(o.preset, 'preset') ?? 'mnist';
  await asUsageError(loadPreset(preset)); // fail fast on a bad name
  const device = await startEngineFromOptions(o);
  const r = await withInterrupt((signal) => runMainJob({ preset, outDir: out, minutes, signal, onEvent: trainProgress(out, device) }));
  const n = r.testBpd.perImage.length;
  const bad = r.testBpd.nonFinite.length;
  const bpdLine = bad ? `${r.testBpd.finiteMean.toFixed(4)} over ${n - bad} images (${bad} overflowed float32)` : r.testBpd.mean.toFixed(4);
  const objective = r.cfg.noiseStd > 0 ? ` — the model learned Gaussian-noised images (σ = ${r.cfg.noiseStd}), the recipe for samples; 'starflow train --preset mnist --noise uniform' makes a bits/dim model` : '';
  console.log(`samples: ${r.samples}\ntest bits/dim (${n} ${r.testData} images, uniform dequantisation): ${bpdLine}${objective}\nresult: ${r.resultFile}\ncheckpoint: ${r.checkpoint}`);
}
