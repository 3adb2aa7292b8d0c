import path from 'node:path';
import { parseTrainConfig, type TrainConfig } from '../train/config.js';
import { presetNames, loadPreset, loadConfigFile, PresetError } from '../train/presets.js';
import { train, CHECKPOINT_DIR, type TrainEvent } from '../train/trainer.js';
import { Progress } from './progress.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP } from './common.js';

export const TRAIN_HELP = `starflow train: train a TARFlow by maximum likelihood

Usage:
  starflow train --preset mnist [--out DIR] [--steps N | --minutes M]
  starflow train --config FILE.{json,yaml} [--out DIR]
  starflow train --resume DIR [--steps N | --minutes M]

Options:
  --preset NAME        a named config from presets/ (${presetNames().join(', ')})
  --config FILE        a training config (JSON or YAML); every field is validated
  --out DIR            run directory: log.jsonl, samples/, checkpoint/ (default runs/<preset or config name>)
  --resume DIR         continue the run in DIR from its checkpoint (same data order and randomness)
  --force              start afresh in an --out that holds a run, moving that run to DIR.old-<time>
  --steps N            stop after N more steps (the learning-rate schedule keeps the config's length)
  --minutes M          stop after M minutes
  --schedule-steps N   set the schedule length (the config's 'steps')
  --fit-schedule       with --minutes: shorten the schedule (at most 'steps') to the steps this
                       machine makes in M minutes (timed on the first steps), so that the
                       learning rate decays in time
  --noise TYPE         override the noise: gaussian (augmentation, for sampling) or uniform (bits/dim)
  --seed N             override the seed
  --workers N|auto     split every batch over N data-parallel worker threads, each with its own
                       one-thread engine (about 2x the steps per second on 2 cores); N must divide
                       the batch size. auto (default): as many as the thread budget (--threads,
                       every core) allows; 1 trains on the main thread with --threads kernel threads

Ctrl-C saves a checkpoint and exits; --resume continues from it.
${ENGINE_HELP}`;

/** The library's PresetError (an unknown preset, an unreadable config file) is a usage error here: exit code 2 and the --help hint. */
export async function asUsageError<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof PresetError) throw new UsageError(e.message);
    throw e;
  }
}

export async function trainCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    preset: { type: 'string' },
    config: { type: 'string' },
    out: { type: 'string' },
    resume: { type: 'string' },
    force: { type: 'boolean' },
    steps: { type: 'string' },
    minutes: { type: 'string' },
    'schedule-steps': { type: 'string' },
    noise: { type: 'string' },
    seed: { type: 'string' },
    workers: { type: 'string' },
    'fit-schedule': { type: 'boolean' },
  });
  if (o.help) return void console.log(TRAIN_HELP);
  const sources = ['preset', 'config', 'resume'].filter((k) => o[k] !== undefined);
  if (sources.length !== 1) throw new UsageError('give exactly one of --preset, --config or --resume (see starflow train --help)');
  let cfg: TrainConfig | null = null;
  let outDir: string;
  if (o.resume) {
    outDir = strOpt(o.resume, 'resume')!;
    if (o.noise || o.seed || o['schedule-steps']) throw new UsageError('--noise, --seed and --schedule-steps cannot change a resumed run');
    if (o.force) throw new UsageError('--force starts afresh; it does not go with --resume');
  } else {
    const name = o.preset ? strOpt(o.preset, 'preset')! : path.basename(strOpt(o.config, 'config')!).replace(/\.(json|ya?ml)$/, '');
    const raw = await asUsageError(o.preset ? loadPreset(name) : loadConfigFile(strOpt(o.config, 'config')!));
    const overrides: Record<string, unknown> = {};
    if (o.noise !== undefined) overrides.noise = o.noise;
    if (o.seed !== undefined) overrides.seed = intOpt(o.seed, 'seed', 0);
    if (o['schedule-steps'] !== undefined) overrides.steps = intOpt(o['schedule-steps'], 'schedule-steps', 1);
    cfg = parseTrainConfig({ ...raw, ...overrides }, 'command line');
    outDir = strOpt(o.out, 'out') ?? path.join('runs', name);
  }
  const maxSteps = o.steps === undefined ? undefined : intOpt(o.steps, 'steps', 1);
  const minutes = o.minutes === undefined ? undefined : numOpt(o.minutes, 'minutes', 0, (n) => n > 0, 'a number > 0');
  if (o['fit-schedule'] && (minutes === undefined || o.resume)) throw new UsageError('--fit-schedule needs --minutes, on a fresh run');
  const workers = o.workers === 'auto' || o.workers === undefined ? 'auto' : intOpt(o.workers, 'workers', 1);
  const device = await startEngineFromOptions(o);

  const r = await withInterrupt((signal) => train(cfg, { outDir, maxSteps, minutes, fitSchedule: Boolean(o['fit-schedule']), workers, signal, force: Boolean(o.force), onEvent: trainProgress(outDir, device) }));
  console.log(JSON.stringify({ step: r.step, checkpoint: r.checkpoint }));
}

/** Runs `work` with Ctrl-C turned into an abort signal (a second Ctrl-C quits at once). */
export async function withInterrupt<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const abort = new AbortController();
  const onSigint = () => {
    if (abort.signal.aborted) process.exit(130);
    abort.abort();
    process.stderr.write('\ninterrupted: saving a checkpoint (Ctrl-C again to quit at once)\n');
  };
  process.on('SIGINT', onSigint);
  try {
    return await work(abort.signal);
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/** Training events as a progress bar and notes on stderr. */
export function trainProgress(outDir: string, device: string): (e: TrainEvent) => void {
  let bar: Progress | undefined;
  return (e) => {
    switch (e.type) {
      case 'start':
        console.error(`${e.resumed ? 'resuming' : 'training'} in ${outDir} on ${device}${e.workers > 1 ? ` × ${e.workers} workers` : ''}: ${(e.params / 1e6).toFixed(2)}M parameters, step ${e.step}/${e.totalSteps}`);
        bar = new Progress('train', e.stopAt, { from: e.step, limit: e.seconds });
        break;
      case 'step':
        bar?.update(e.step, `loss ${e.loss.toFixed(4)} ${e.bpd === null ? '' : `bpd ${e.bpd.toFixed(3)} `}lr ${e.lr.toExponential(1)} ${e.stepsPerSec.toFixed(2)} it/s`);
        break;
      case 'skip':
        bar?.note(`step ${e.step}: non-finite loss (${e.loss}), step skipped (${e.inARow} in a row)`);
        break;
      case 'eval':
        bar?.note(`step ${e.step}: test ${e.latent ? 'latent ' : ''}bits/dim ${e.bpd.toFixed(4)} (${e.images} images)`);
        break;
      case 'samples':
        bar?.note(`step ${e.step}: samples → ${e.path}`);
        break;
      case 'checkpoint':
        break;
      case 'latents':
        console.error(`encoded ${e.images.toLocaleString('en-US')} training images to ${e.shape.join('×')} latents with the model's autoencoder (${e.seconds.toFixed(1)} s)`);
        break;
      case 'schedule':
        bar?.note(`schedule fitted to the time limit: ${e.steps} steps (${e.secondsPerStep.toFixed(2)} s/step over steps ${e.measured[0]}–${e.measured[1]}; the config had ${e.was})`);
        if (bar) bar.total = e.steps;
        break;
      case 'warning':
        console.error(`warning: ${e.message}`);
        break;
      case 'archived':
        console.error(`moved the earlier run in ${e.from} to ${e.to}`);
        break;
      case 'stop':
        bar?.note(`stopped at step ${e.step} (${e.reason}); checkpoint in ${path.join(outDir, CHECKPOINT_DIR)}`);
        break;
    }
  };
}
