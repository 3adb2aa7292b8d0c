// Does a text model draw what it is asked? Each prompt of a JSON-lines file ({"prompt": "a thick
// seven", "digit": 7, "thickness": "thick" | "thin" | null}) is sampled `perPrompt` times; the
// project's classifier (the sample-quality metrics' feature network) names the digit of every
// sample, and the samples' ink mass tells thick from thin:
// - promptAccuracy: the share of samples whose predicted digit is the prompt's;
// - thicknessAgreement: over every pair of a "thick" and a "thin" prompt for the same digit, the
//   share where the thick prompt's samples hold more ink on average.
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { generate } from '../sampling/pipeline.js';
import { denoisesByDefault } from '../sampling/denoise.js';
import { loadModel } from '../io/model.js';
import { writePngGrid } from '../io/png.js';
import { makeDirs, writeFileAtomic } from '../io/files.js';
import { promptText } from '../sampling/prompts.js';
import { measureInk } from '../data/captions.js';
import { imageShapeOf, type Guidance, type Model } from '../models/model.js';
import { extract, loadFeatureNet, type LoadedFeatureNet } from './features.js';
import { argmaxRows } from './metrics.js';
import { shownPath } from './report.js';

export class PromptFileError extends Error {
  override name = 'PromptFileError';
}

export type PromptCase = { prompt: string; digit: number; thickness: 'thick' | 'thin' | null };

/** The cases of a JSON-lines prompt file, each line checked (`where` names the file in messages). */
export function parsePromptCases(text: string, where: string, numClasses: number): PromptCase[] {
  const cases: PromptCase[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    const at = `${where}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new PromptFileError(`${at}: not a JSON object: ${line.slice(0, 60)}`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PromptFileError(`${at}: expected an object {"prompt", "digit", "thickness"}`);
    const { prompt, digit, thickness = null } = v as Record<string, unknown>;
    if (typeof prompt !== 'string' || prompt.trim() === '') throw new PromptFileError(`${at}: 'prompt' must be a non-empty string`);
    if (!Number.isInteger(digit) || (digit as number) < 0 || (digit as number) >= numClasses) throw new PromptFileError(`${at}: 'digit' must be an integer in 0..${numClasses - 1}, got ${JSON.stringify(digit)}`);
    if (thickness !== null && thickness !== 'thick' && thickness !== 'thin') throw new PromptFileError(`${at}: 'thickness' must be "thick", "thin" or null, got ${JSON.stringify(thickness)}`);
    cases.push({ prompt, digit: digit as number, thickness: thickness as PromptCase['thickness'] });
  });
  if (cases.length === 0) throw new PromptFileError(`${where}: no prompts`);
  return cases;
}

export type PromptCaseResult = PromptCase & { accuracy: number; meanInk: number; predicted: number[] };
export type PromptReport = {
  promptAccuracy: number;
  /** null when no digit has both a thick and a thin prompt. */
  thicknessAgreement: number | null;
  thicknessPairs: number;
  perPrompt: number;
  guidance: number;
  samples: Float32Array;
  cases: PromptCaseResult[];
  warnings: string[];
  seconds: number;
};

/**
 * The figures from samples already drawn: `images` [cases·perPrompt, C, H, W] in [−1, 1], case k's
 * in rows k·perPrompt …, and the classifier's digit for each.
 */
export function scorePromptSamples(
  cases: PromptCase[],
  perPrompt: number,
  images: Float32Array,
  shape: readonly [number, number, number, number],
  predicted: ArrayLike<number>,
): Pick<PromptReport, 'promptAccuracy' | 'thicknessAgreement' | 'thicknessPairs' | 'cases'> {
  const [, c, h, w] = shape;
  const per = c * h * w;
  const results: PromptCaseResult[] = cases.map((pc, k) => {
    const rows = Array.from({ length: perPrompt }, (_, i) => k * perPrompt + i);
    // Ink of the first channel, as bytes: what captions measured on the training images.
    const inks = rows.map((row) => {
      const bytes = Uint8Array.from(images.subarray(row * per, row * per + h * w), (v) => Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255));
      return measureInk(bytes, w, h).ink;
    });
    const pred = rows.map((row) => predicted[row]!);
    return { ...pc, accuracy: pred.filter((p) => p === pc.digit).length / rows.length, meanInk: inks.reduce((a, b) => a + b, 0) / inks.length, predicted: pred };
  });
  let pairs = 0;
  let agree = 0;
  for (const thick of results.filter((x) => x.thickness === 'thick'))
    for (const thin of results.filter((x) => x.thickness === 'thin' && x.digit === thick.digit)) {
      pairs++;
      if (thick.meanInk > thin.meanInk) agree++;
    }
  return {
    promptAccuracy: results.reduce((a, x) => a + x.accuracy, 0) / results.length,
    thicknessAgreement: pairs ? agree / pairs : null,
    thicknessPairs: pairs,
    cases: results,
  };
}

/** Samples every case `perPrompt` times (one batch per case) and scores them. */
export async function evaluatePrompts(
  model: Model,
  cases: PromptCase[],
  fx: LoadedFeatureNet,
  opts: { perPrompt: number; seed: number; guidance: Guidance; batchSize?: number; denoise?: { sigma: number; lrScale: number }; onProgress?: (done: number, total: number) => void },
): Promise<PromptReport> {
  const t0 = performance.now();
  const prompts = cases.flatMap((c) => new Array<string>(opts.perPrompt).fill(c.prompt));
  const text = await promptText(model, prompts);
  const r = await generate(model, {
    n: prompts.length,
    seed: opts.seed,
    guidance: opts.guidance,
    text: { states: text.states, negative: text.negative },
    // Bounded memory: guided sampling of hundreds at once outgrows wasm's 4 GiB.
    batchSize: opts.batchSize ?? 100,
    ...(opts.denoise ? { denoise: opts.denoise } : {}),
    onProgress: opts.onProgress,
  });
  const { logits, n } = await extract(fx.params, fx.cfg, r.images, r.shape);
  const scored = scorePromptSamples(cases, opts.perPrompt, r.images, r.shape, argmaxRows(logits, n, fx.cfg.numClasses));
  return {
    ...scored,
    perPrompt: opts.perPrompt,
    guidance: opts.guidance.weight,
    samples: r.images,
    warnings: text.warnings,
    seconds: (performance.now() - t0) / 1000,
  };
}

export type PromptFileOptions = {
  modelDir: string;
  promptsFile: string;
  featuresDir: string;
  outDir: string;
  perPrompt: number;
  seed: number;
  /** Samples per solver batch (default 100). */
  batchSize?: number;
  /** The rule defaults to the model's. */
  guidance: Omit<Guidance, 'rule'> & { rule?: Guidance['rule'] };
  /** Default: as the model samples (denoised when trained on Gaussian-noised images). */
  denoise?: boolean;
  onProgress?: (done: number, total: number) => void;
};

/**
 * `starflow eval --prompts FILE.jsonl`: scores the prompts of a file and writes metrics.json (the
 * figures, each prompt's accuracy and mean ink) and samples.png (a row per prompt) to outDir.
 */
export async function evaluatePromptFile(o: PromptFileOptions): Promise<{ report: PromptReport; metricsFile: string; gridFile: string }> {
  await makeDirs(o.outDir); // an output that cannot be made fails before any work
  const model = await loadModel(o.modelDir);
  const fx = await loadFeatureNet(o.featuresDir);
  let text: string;
  try {
    text = await readFile(o.promptsFile, 'utf8');
  } catch (e) {
    throw new PromptFileError(`cannot read ${o.promptsFile} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const cases = parsePromptCases(text, o.promptsFile, fx.cfg.numClasses);
  const denoise = (o.denoise ?? denoisesByDefault(model)) ? { sigma: model.cfg.noiseStd, lrScale: 1 } : undefined;
  const sampler = model.family.sampler(model.cfg);
  const guidance: Guidance = { ...o.guidance, rule: o.guidance.rule ?? (sampler.kind === 'autoregressive' ? sampler.guidanceRule : 'tarflow') };
  const report = await evaluatePrompts(model, cases, fx, { perPrompt: o.perPrompt, seed: o.seed, guidance, batchSize: o.batchSize, denoise, onProgress: o.onProgress });
  const { samples, ...figures } = report;
  const metricsFile = path.join(o.outDir, 'metrics.json');
  const gridFile = path.join(o.outDir, 'samples.png');
  const metrics = { model: shownPath(o.modelDir), prompts: shownPath(o.promptsFile), features: shownPath(o.featuresDir), seed: o.seed, denoise: Boolean(denoise), guidanceRule: guidance.rule, ...figures };
  await writeFileAtomic(metricsFile, JSON.stringify(metrics, null, 2) + '\n');
  const { channels: c, size: s } = imageShapeOf(model);
  await writePngGrid(gridFile, samples, [samples.length / (c * s * s), c, s, s], { nrow: o.perPrompt });
  return { report, metricsFile, gridFile };
}
