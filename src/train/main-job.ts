// The main job (`npm start`): train a preset for a while on the embedded default data, then write
// a sample grid and the model's test bits/dim next to the checkpoint.
import path from 'node:path';
import { train, sampleGrid, CHECKPOINT_DIR, type TrainOptions } from './trainer.js';
import { loadPreset } from './presets.js';
import { loadModel } from '../io/model.js';
import { loadDataset } from '../data/load.js';
import { writeFileAtomic } from '../io/files.js';
import { evaluateBpd, type BpdResult } from '../eval/likelihood.js';
import type { ModelConfig } from '../models/model.js';

export type MainJobResult = { samples: string; resultFile: string; checkpoint: string; testData: string; testBpd: BpdResult; cfg: ModelConfig };

export async function runMainJob(o: { preset: string; outDir: string; minutes: number } & Pick<TrainOptions, 'onEvent' | 'signal' | 'workers'>): Promise<MainJobResult> {
  const cfg = await loadPreset(o.preset);
  // A second `npm start` keeps the first one's run: it is moved to DIR.old-<time> (and said so).
  await train(cfg, { outDir: o.outDir, minutes: o.minutes, workers: o.workers ?? 'auto', signal: o.signal, onEvent: o.onEvent, force: true });
  const checkpoint = path.join(o.outDir, CHECKPOINT_DIR);
  const model = await loadModel(checkpoint);
  const samples = path.join(o.outDir, 'samples.png');
  await sampleGrid(model, samples, 0);
  const testData = cfg.data.test;
  const test = await loadDataset(testData, { size: model.cfg.imgSize, channels: model.cfg.inChannels });
  const r = await evaluateBpd(model, test, test.n);
  const overflowed = r.nonFinite.length ? { testBpdFinite: r.finiteMean, nonFinite: r.nonFinite } : {};
  const resultFile = path.join(o.outDir, 'result.json');
  await writeFileAtomic(resultFile, JSON.stringify({ testBpd: Number.isFinite(r.mean) ? r.mean : null, images: test.n, ...overflowed, samples }, null, 2) + '\n');
  return { samples, resultFile, checkpoint, testData, testBpd: r, cfg: model.cfg };
}
