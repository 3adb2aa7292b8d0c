// `npm start`: the main job on the embedded default. Trains the main preset within a time budget,
// then writes a guided sample grid, test bits/dim and sample-quality figures, and says what they mean.
import path from 'node:path';
import { loadPreset } from '../train/presets.js';
import { runMainJob, MAIN_PRESET, MAIN_GUIDANCE } from '../train/main-job.js';
import { asUsageError, trainProgress, withInterrupt } from './train.js';
import { parse, numOpt, strOpt, startEngineFromOptions, ENGINE_HELP } from './common.js';

export const MAIN_HELP = `starflow main: train for a while, then draw guided samples and say how good they are

Usage:
  npm start                      (= starflow main --minutes 15)
  starflow main [--minutes M] [--out DIR] [--preset NAME] [--cfg W]

Trains the ${MAIN_PRESET} preset on MNIST for M minutes (default 15; the learning-rate schedule is
fitted to what this machine does in that time), then writes
  DIR/samples.png      one row per digit, guidance W (default ${MAIN_GUIDANCE}), denoised if the model needs it
  DIR/result.json      test bits/dim; Fréchet distance and class accuracy of 500 samples, beside the
                       shipped models' figures measured the same way
  DIR/eval/report.md   the sample-quality report
  DIR/checkpoint/      the model (config.json + model.safetensors; resumable)
Default DIR: runs/main; an earlier run there is moved to DIR.old-<time> first. Sampling and scoring
take a minute or two after training.
${ENGINE_HELP}`;

export async function mainJob(argv: string[]): Promise<void> {
  const o = parse(argv, { minutes: { type: 'string' }, out: { type: 'string' }, preset: { type: 'string' }, cfg: { type: 'string' } });
  if (o.help) return void console.log(MAIN_HELP);
  const minutes = numOpt(o.minutes, 'minutes', 15, (x) => x > 0, 'a number > 0');
  const guidance = numOpt(o.cfg, 'cfg', MAIN_GUIDANCE, (x) => x >= 0, 'a number ≥ 0');
  const out = strOpt(o.out, 'out') ?? path.join('runs', 'main');
  const preset = strOpt(o.preset, 'preset') ?? MAIN_PRESET;
  await asUsageError(loadPreset(preset)); // fail fast on a bad name
  const device = await startEngineFromOptions(o);
  const r = await withInterrupt((signal) =>
    runMainJob({ preset, outDir: out, minutes, guidance, signal, onEvent: trainProgress(out, device), onLog: (l) => console.error(l) }),
  );
  const n = r.testBpd.perImage.length;
  const bad = r.testBpd.nonFinite.length;
  const bpd = bad ? `${r.testBpd.finiteMean.toFixed(4)} over ${n - bad} images (${bad} overflowed float32)` : r.testBpd.mean.toFixed(4);
  const q = r.quality;
  const acc = (a: number) => (Number.isFinite(a) ? `${(100 * a).toFixed(1)}%` : '–');
  const lines = [
    `samples: ${r.samples} (one row per digit, guidance ${q.guidance}${q.denoise ? ', denoised' : ''})`,
    `sample quality (${q.n} samples, guidance ${q.guidance}): Fréchet distance ${q.frechet.toFixed(1)} (lower is better; real test images: ${q.floorFrechet.toFixed(1)}), class accuracy ${acc(q.classAccuracy)} (samples the classifier reads as the digit asked for)`,
    ...r.shipped.map((s) => `  shipped checkpoints/${s.name}: Fréchet distance ${s.samples.frechet.toFixed(1)}, class accuracy ${acc(s.samples.classAccuracy)}`),
    r.cfg.noiseStd > 0
      ? `test bits/dim (${n} ${r.testData} images): ${bpd} — of a model trained on Gaussian-noised images (σ = ${r.cfg.noiseStd}), not a likelihood figure to compare`
      : `test bits/dim (${n} ${r.testData} images, uniform dequantisation): ${bpd} (the exact likelihood; lower is better)`,
    `report: ${r.report}`,
    `result: ${r.resultFile}`,
    `checkpoint: ${r.checkpoint} (${r.steps} steps; sample more with: npx starflow sample --model ${r.checkpoint} --out grid.png)`,
  ];
  console.log(lines.join('\n'));
}
