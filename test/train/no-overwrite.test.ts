// A fresh run never overwrites an earlier one: `train --out DIR` into a directory holding a run is
// refused (before anything is written) unless --force, which moves the earlier run aside. Before,
// it replaced the checkpoint without a word and appended to the old log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import { parseTrainConfig } from '../../src/train/config.js';
import { train, TrainingError, type TrainEvent } from '../../src/train/trainer.js';
import { starflow } from '../cli.js';

const config = (over: Record<string, unknown> = {}) =>
  parseTrainConfig({
    model: { model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 1, layersPerBlock: 1, numClasses: 10, noiseStd: 0.1 },
    batchSize: 8,
    steps: 2,
    warmupSteps: 1,
    logEvery: 1,
    evalEvery: 0,
    sampleEvery: 0,
    ...over,
  });

test('a fresh run into a directory holding a run is refused; --force moves the earlier run aside', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-overwrite-'));
  const out = path.join(dir, 'run');
  await train(config(), { outDir: out, workers: 1 });
  const log = await readFile(path.join(out, 'log.jsonl'), 'utf8');
  await assert.rejects(train(config(), { outDir: out, workers: 1 }), (e: unknown) => e instanceof TrainingError && /holds an earlier run \(log\.jsonl, checkpoint\).*--resume.*--force/.test(e.message));
  assert.equal(await readFile(path.join(out, 'log.jsonl'), 'utf8'), log, 'the refused run wrote nothing');

  const events: TrainEvent[] = [];
  await train(config({ seed: 1 }), { outDir: out, workers: 1, force: true, onEvent: (e) => events.push(e) });
  const archived = events.find((e) => e.type === 'archived') as Extract<TrainEvent, { type: 'archived' }>;
  assert.ok(archived, 'the move is reported');
  assert.equal(await readFile(path.join(archived.to, 'log.jsonl'), 'utf8'), log, 'the earlier run is kept whole');
  assert.equal((await readdir(dir)).length, 2);

  const cfgFile = path.join(dir, 'cfg.json');
  await writeFile(cfgFile, JSON.stringify(config()));
  const r = await starflow(['train', '--config', cfgFile, '--out', out, '--workers', '1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /holds an earlier run/);
});

test('a warm-up longer than the schedule is warned about', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-warmup-'));
  const events: TrainEvent[] = [];
  await train(config({ warmupSteps: 5 }), { outDir: path.join(dir, 'run'), workers: 1, onEvent: (e) => events.push(e) });
  const w = events.find((e) => e.type === 'warning') as Extract<TrainEvent, { type: 'warning' }> | undefined;
  assert.match(w?.message ?? '', /warmupSteps \(5\) ≥ steps \(2\)/);
});
