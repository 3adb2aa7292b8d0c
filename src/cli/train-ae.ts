import { trainAutoencoderRun, type AutoencoderEvent } from '../train/autoencoder.js';
import { evaluateAutoencoderDir } from '../eval/autoencoder.js';
import { fmt } from '../eval/report.js';
import { Progress } from './progress.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP } from './common.js';

export const TRAIN_AE_HELP = `starflow train-ae: train the autoencoder a latent flow models the latents of

Usage:
  starflow train-ae --data mnist:train --out DIR [--steps 2000] [--decoder-steps 600] [--noise 0.3]

  --data SPEC          mnist:train (default), fashion-mnist:train or an image folder
  --size S             folders: side to load the images at (default 28)
  --channels 1|3       folders: grey or colour (default 1)
  --out DIR            autoencoder directory to write (config.json + model.safetensors); an existing
                       one is refused unless --force
  --force              replace the autoencoder in --out
  --levels C1,C2,...   channels per level, finest first; each level halves the side (default 32,64:
                       28×28 images → 7×7 latents)
  --latent-channels N  channels of the latents (default 4)
  --steps N            phase 1, reconstruction: steps of encoder and decoder (default 2000)
  --decoder-steps N    phase 2: steps of the decoder alone on noisy latents (default 600)
  --noise SIGMA        σ of the latent noise in phase 2: the noiseStd of the latent flow that will
                       use it (default 0.3, STARFlow's; 0 skips phase 2)
  --batch B            batch size (default 64)
  --lr LR              peak learning rate of phase 1 (phase 2: a quarter; default 2e-3)
  --seed N             seed of the weights, batch order and noise (default 0)
  --eval-images N      test images the reconstruction figures are measured on (default 1000)

Phase 1 trains encoder and decoder on the mean squared reconstruction error; the latents' scale
is then measured on training images (latentScale in config.json, so that latents have unit
variance). Phase 2 fine-tunes the decoder on encode(x) + σε, as STARFlow does, so that decoded
samples of a flow trained at noise σ need no score-denoising step. At the end, PSNR and the
Fréchet distance of reconstructions (clean and noisy latents) on the test split are printed and
recorded in config.json. A latent flow names the directory in its config ("autoencoder").
${ENGINE_HELP}`;

export async function trainAeCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    data: { type: 'string' },
    size: { type: 'string' },
    channels: { type: 'string' },
    out: { type: 'string' },
    force: { type: 'boolean' },
    levels: { type: 'string' },
    'latent-channels': { type: 'string' },
    steps: { type: 'string' },
    'decoder-steps': { type: 'string' },
    noise: { type: 'string' },
    batch: { type: 'string' },
    lr: { type: 'string' },
    seed: { type: 'string' },
    'eval-images': { type: 'string' },
  });
  if (o.help) return void console.log(TRAIN_AE_HELP);
  const data = strOpt(o.data, 'data') ?? 'mnist:train';
  const out = strOpt(o.out, 'out');
  if (!out) throw new UsageError('--out DIR is required (where the autoencoder is written)');
  const levels = strOpt(o.levels, 'levels')?.split(',').map((v) => Number(v));
  if (levels && levels.some((c) => !Number.isInteger(c) || c < 1)) throw new UsageError(`--levels must be positive integers separated by commas, got '${o.levels as string}'`);
  const channels = intOpt(o.channels, 'channels', 1, 1);
  if (channels !== 1 && channels !== 3) throw new UsageError(`--channels must be 1 or 3, got ${channels}`);
  const opts = {
    data,
    out,
    force: Boolean(o.force),
    size: intOpt(o.size, 'size', 2, 28),
    channels,
    architecture: { ...(levels ? { channels: levels } : {}), latentChannels: intOpt(o['latent-channels'], 'latent-channels', 1, 4) },
    steps: intOpt(o.steps, 'steps', 1, 2000),
    decoderSteps: intOpt(o['decoder-steps'], 'decoder-steps', 0, 600),
    noiseStd: numOpt(o.noise, 'noise', 0.3, (x) => x >= 0 && Number.isFinite(x), 'a number ≥ 0'),
    batchSize: intOpt(o.batch, 'batch', 1, 64),
    lr: numOpt(o.lr, 'lr', 2e-3, (x) => x > 0, 'a number > 0'),
    seed: intOpt(o.seed, 'seed', 0, 0),
  };
  const evalImages = intOpt(o['eval-images'], 'eval-images', 1, 1000);
  const device = await startEngineFromOptions(o);
  const command = `starflow train-ae ${argv.join(' ')}`.trim();
  let bar: Progress | undefined;
  const onEvent = (e: AutoencoderEvent) => {
    if (e.type === 'start') {
      console.log(`${e.phase === 'reconstruction' ? 'phase 1: encoder + decoder on reconstruction' : `phase 2: the decoder on latents + ${opts.noiseStd}·ε`} (${e.steps} steps, ${e.params.toLocaleString('en-US')} parameters, ${device})`);
      bar = new Progress(e.phase === 'reconstruction' ? 'reconstruct' : 'decoder', e.steps);
    } else if (e.type === 'step') {
      bar?.update(e.step, `loss ${e.loss.toFixed(4)}`);
    } else {
      console.log(`latent scale ${e.latentScale.toFixed(4)} (the encoder's latents had standard deviation ${e.std.toFixed(4)})`);
    }
  };
  const ae = await trainAutoencoderRun({ ...opts, command, onEvent });
  console.log(`saved ${out} (${Math.round(ae.seconds)} s of training on ${ae.trainImages.toLocaleString('en-US')} images)`);
  const r = await evaluateAutoencoderDir(out, { n: evalImages, seed: opts.seed });
  const fd = (v: number | null) => (v === null ? '' : `, Fréchet distance ${fmt(v, 2)}`);
  console.log(`reconstructions of ${r.images} ${r.data} images: PSNR ${r.psnr.toFixed(2)} dB${fd(r.frechet)}`);
  if (r.noisy) console.log(`from latents + ${r.noisy.sigma}·ε (what flow samples decode from): PSNR ${r.noisy.psnr.toFixed(2)} dB${fd(r.noisy.frechet)}`);
}
