#!/usr/bin/env node
// starflow: one command per job. Errors are one line (STARFLOW_DEBUG=1 shows stack traces).
import '../engine/node-shims.js'; // before anything loads the engine
import { trainCommand, TRAIN_HELP } from './train.js';
import { sampleCommand, SAMPLE_HELP } from './sample.js';
import { nllCommand, classifyCommand, NLL_HELP, CLASSIFY_HELP } from './nll.js';
import { mainJob, MAIN_HELP } from './main-job.js';
import { infoCommand, INFO_HELP } from './info.js';
import { analyzeCommand, ANALYZE_HELP } from './analyze.js';
import { convertCommand, CONVERT_HELP, exportCommand, EXPORT_HELP } from './convert.js';
import { denoiseCommand, DENOISE_HELP } from './denoise.js';
import { evalCommand, trainFeaturesCommand, EVAL_HELP, TRAIN_FEATURES_HELP } from './eval.js';
import { trainAeCommand, TRAIN_AE_HELP } from './train-ae.js';
import { readFileSync } from 'node:fs';
import { UsageError } from './common.js';

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; help: string; summary: string }> = {
  train: { run: trainCommand, help: TRAIN_HELP, summary: 'train a model (presets, JSON/YAML configs, resume)' },
  sample: { run: sampleCommand, help: SAMPLE_HELP, summary: 'draw images: solvers, guidance, denoising' },
  nll: { run: nllCommand, help: NLL_HELP, summary: 'bits/dim of a dataset' },
  classify: { run: classifyCommand, help: CLASSIFY_HELP, summary: "classify images by Bayes' rule" },
  info: { run: infoCommand, help: INFO_HELP, summary: 'show a model directory: config and parameter count' },
  'analyze-sampling': { run: analyzeCommand, help: ANALYZE_HELP, summary: 'per-block Jacobi diagnostics (CRM, IGM, sweeps) and a gs-jacobi strategy' },
  convert: { run: convertCommand, help: CONVERT_HELP, summary: 'convert an ml-tarflow or ml-starflow checkpoint (.pth or .safetensors) to a model directory' },
  export: { run: exportCommand, help: EXPORT_HELP, summary: 'write a model as ml-tarflow or ml-starflow checkpoint files (model.pth, config.yaml)' },
  denoise: { run: denoiseCommand, help: DENOISE_HELP, summary: 'one score-based denoising step on images from a .safetensors file' },
  eval: { run: evalCommand, help: EVAL_HELP, summary: 'sample quality: Fréchet distance, KID, precision/recall, class accuracy; report' },
  'train-features': { run: trainFeaturesCommand, help: TRAIN_FEATURES_HELP, summary: 'train the MNIST classifier behind starflow eval' },
  'train-ae': { run: trainAeCommand, help: TRAIN_AE_HELP, summary: 'train the autoencoder of a latent flow (reconstruction, then the decoder on noisy latents)' },
  main: { run: mainJob, help: MAIN_HELP, summary: 'train the mnist preset, write samples and test bits/dim (npm start)' },
};

const USAGE = `starflow: TARFlow normalizing flows in TypeScript

Usage: starflow <command> [options]     (starflow <command> --help for each; starflow --version)

Commands:
${Object.entries(COMMANDS).map(([k, c]) => `  ${k.padEnd(Math.max(...Object.keys(COMMANDS).map((n) => n.length)))}  ${c.summary}`).join('\n')}
`;

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '--version' || cmd === 'version') {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    console.log(`starflow-ts ${pkg.version}`);
    return 0;
  }
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(cmd === 'help' && rest[0] && COMMANDS[rest[0]] ? COMMANDS[rest[0]]!.help : USAGE);
    return 0;
  }
  const c = COMMANDS[cmd];
  if (!c) {
    console.error(`starflow: error: unknown command '${cmd}' (commands: ${Object.keys(COMMANDS).join(', ')}; see starflow --help)`);
    return 2;
  }
  try {
    await c.run(rest);
    return 0;
  } catch (e) {
    const err = e as Error;
    if (process.env.STARFLOW_DEBUG) console.error(err.stack);
    // One line: a multi-line message (e.g. the list of mismatched tensors) is folded into it.
    const [head = '', ...more] = (err?.message ?? String(e)).split('\n').map((l) => l.trim()).filter(Boolean);
    const msg = more.length ? `${head} ${more.join('; ')}` : head;
    const hint = e instanceof UsageError && !msg.includes('--help') ? ` (see starflow ${cmd} --help)` : '';
    console.error(`starflow ${cmd}: error: ${msg}${hint}`);
    return e instanceof UsageError ? 2 : 1;
  }
}

// Output piped into a reader that stops early (`starflow info | head`): stop quietly.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const code = await run(process.argv.slice(2));
process.exitCode = code;
