import { loadModel } from '../io/model.js';
import { writeSafetensorsFile } from '../io/files.js';
import { fromFloat32 } from '../io/safetensors.js';
import { fromF32, toF32 } from '../engine/index.js';
import { denoise } from '../sampling/denoise.js';
import { readImageInputs } from '../io/inputs.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir, MODEL_DEFAULT } from './common.js';

export const DENOISE_HELP = `starflow denoise: one score-based (Tweedie) denoising step on images

Usage:
  starflow denoise --model DIR --input FILE.safetensors --out FILE.safetensors
                   [--x-key x] [--y-key y] [--sigma S] [--lr-scale M]

  --model DIR      model directory (${MODEL_DEFAULT})
  --input FILE     .safetensors file with noisy images [B, C, H, W]
  --x-key NAME     tensor name of the images (default x)
  --y-key NAME     tensor name of the labels [B] (class models)
  --sigma S        noise level (default: the model's noiseStd)
  --lr-scale M     step-size multiplier (default 1 = Tweedie: x + σ²·∇log p(x))
  --batch B        images per batch (default: all at once; the step size is per image either way)
  --out FILE       .safetensors file to write; the denoised images are tensor 'x'

The step is the reference's: the gradient of the mean loss over the batch, times B·D·σ².
${ENGINE_HELP}`;

export async function denoiseCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    model: { type: 'string' },
    input: { type: 'string' },
    'x-key': { type: 'string' },
    'y-key': { type: 'string' },
    sigma: { type: 'string' },
    'lr-scale': { type: 'string' },
    batch: { type: 'string' },
    out: { type: 'string' },
  });
  if (o.help) return void console.log(DENOISE_HELP);
  const dir = modelDir(o);
  const input = strOpt(o.input, 'input');
  if (!input) throw new UsageError('--input FILE.safetensors is required');
  const out = strOpt(o.out, 'out');
  if (!out) throw new UsageError('--out FILE.safetensors is required');
  if (!out.endsWith('.safetensors')) throw new UsageError(`--out must name a .safetensors file, got '${out}'`);
  const lrScale = numOpt(o['lr-scale'], 'lr-scale', 1, (x) => x >= 0, 'a number ≥ 0');
  await startEngineFromOptions(o);
  const model = await loadModel(dir);
  const { cfg } = model;
  if (model.autoencoder) throw new UsageError("this is a latent model: its samples are denoised in latent space, and its autoencoder's decoder was fine-tuned on noisy latents to absorb the noise; denoise takes images of a pixel model");
  const sigma = numOpt(o.sigma, 'sigma', cfg.noiseStd, (x) => x >= 0, 'a number ≥ 0');
  if (o.sigma === undefined && sigma === 0) throw new UsageError('this model has noiseStd 0: pass --sigma S');
  const { x, shape, labels } = await readImageInputs(input, strOpt(o['x-key'], 'x-key') ?? 'x', strOpt(o['y-key'], 'y-key'), model);
  const [b, c, h, w] = shape;
  const batch = intOpt(o.batch, 'batch', 1, b);
  const per = c * h * w;
  const result = new Float32Array(b * per);
  for (let s = 0; s < b; s += batch) {
    const n = Math.min(batch, b - s);
    const xs = fromF32(x.subarray(s * per, (s + n) * per), [n, c, h, w]);
    result.set(await toF32(denoise(model, xs, labels?.slice(s, s + n), sigma, lrScale)), s * per);
  }
  await writeSafetensorsFile(out, { x: fromFloat32(result, [b, c, h, w]) }, { sigma: String(sigma), lr_scale: String(lrScale) });
  console.error(`wrote ${b} denoised images to ${out} (σ ${sigma})`);
}
