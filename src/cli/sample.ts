import { readFile } from 'node:fs/promises';
import { loadModel } from '../io/model.js';
import { promptText } from '../sampling/prompts.js';
import { currentDevice } from '../engine/index.js';
import { generate, classRows } from '../sampling/pipeline.js';
import { SOLVERS, type SolverName } from '../sampling/plan.js';
import { SamplingError } from '../sampling/solvers.js';
import type { Guidance, OdeSolverName } from '../models/model.js';
import { ODE_SOLVERS } from '../sampling/ode.js';
import { readNoiseInputs } from '../io/inputs.js';
import { denoisesByDefault } from '../sampling/denoise.js';
import { prepareSamplesOutput, saveSamples } from '../io/samples.js';
import { Progress } from './progress.js';
import { parse, intOpt, numOpt, strOpt, startEngineFromOptions, UsageError, ENGINE_HELP, modelDir, denoiseFlag, MODEL_DEFAULT } from './common.js';

export const SAMPLE_HELP = `starflow sample: draw images from a trained model

Usage:
  starflow sample --model DIR --n 64 --out samples.png [options]

What to draw:
  --model DIR            model directory (config.json + model.safetensors; ${MODEL_DEFAULT})
  --n N                  number of samples (default 64)
  --class K              class for every sample (class models; default: one row per class, ceil(n/10) each)
  --labels 0,1,2,...     one class per sample (-1 = unconditional)
  --seed N               noise seed (default 0): the same seed gives the same images on every solver
  --prompt TEXT          models with a text encoder: what every sample shows, e.g. "a thick slanted seven"
  --prompts FILE         one prompt per line (blank lines skipped): a row of samples per prompt

Guidance:
  --cfg W                guidance weight (default 0 = none)
  --guidance-rule R      tarflow (linear on log-scale and shift) or starflow (Gaussian product);
                         default: the model's (starflow for STARFlow configs, else tarflow)
  --annealed             ramp the weight linearly along the sequence
  --attn-temp T          attention temperature of the negative branch (needed for unconditional models)
  --guided-blocks 0,1    model block indices that get guidance (default all)

Solver:
  --solver NAME          flows: ${SOLVERS.join(' | ')} (default sequential, exact; Jacobi can be faster
                         at batch 1: bench/README.md); rectified flow and MeanFlow (dit models):
                         ${ODE_SOLVERS.join(' | ')} (default euler; MeanFlow: euler only)
  --steps N              dit models: steps from noise to image (default: the model's, 32 for
                         rectified flow, 1 for MeanFlow); Heun evaluates the network twice a step
  --strategy S           gs-jacobi per-block plan, blocks in sampling order: e.g. "0=8x32,*=1x10", "*=seq"
  --jacobi-tol E         stop a Jacobi module when mean((new−old)²)/mean(new²) < E, for every sample
                         (default 1e-6; block-jacobi: for the whole batch, default 1e-5;
                         ml-starflow's is 1e-3)
  --jacobi-max-iter N    iteration cap per module (default: the module length, which is exact;
                         block-jacobi: 32)
  --jacobi-block-size N  block-jacobi's chunk length (default 16, as ml-starflow's images)
  --jacobi-init z|zeros  initial guess (default z)
  --batch B              samples per solver batch (default: all at once)

Denoising:
  --denoise              one score-based (Tweedie) step after sampling (the default for models
                         trained on Gaussian-noised images, except for --out F.safetensors,
                         which holds the raw samples; --sigma for others)
  --no-denoise           keep the samples as the flow draws them
  --sigma S              noise level for denoising (default: the model's noiseStd)
  --denoise-lr M         step-size multiplier (default 1 = Tweedie)

Output:
  --out FILE             .png: a grid; .safetensors: the tensor 'samples' [n, C, H, W]; a directory: one PNG each
  --noise FILE           start from noise tokens in a .safetensors file instead of drawing them
  --noise-key NAME       tensor name of the noise (default 'noise'), shape [n, T, D] or image-shaped [n, C, H, W]
  --text-key NAME        text-conditioned models: the text-encoder states [n, L, D] in the --noise file
  --negative-text-key N  the negative's states (e.g. the empty caption's), needed for --cfg > 0
  --labels-key NAME      tensor name of per-sample labels in the noise file
  --json                 print timing and solver statistics as JSON
${ENGINE_HELP}`;

/** The prompts of a file: one per line, blank lines skipped. */
async function readPromptFile(file: string): Promise<string[]> {
  let raw: string;
  try {
    raw = await readFile(file, 'utf8');
  } catch (e) {
    throw new UsageError(`--prompts: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const lines = raw.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
  if (lines.length === 0) throw new UsageError(`--prompts: ${file} holds no prompt`);
  return lines;
}

function intList(v: string, name: string): number[] {
  const xs = v.split(',').map((s) => Number(s.trim()));
  if (xs.some((x) => !Number.isInteger(x))) throw new UsageError(`--${name} must be a comma-separated list of integers, got '${v}'`);
  return xs;
}

export async function sampleCommand(argv: string[]): Promise<void> {
  const o = parse(argv, {
    model: { type: 'string' },
    n: { type: 'string' },
    class: { type: 'string' },
    labels: { type: 'string' },
    seed: { type: 'string' },
    cfg: { type: 'string' },
    'guidance-rule': { type: 'string' },
    annealed: { type: 'boolean' },
    'attn-temp': { type: 'string' },
    'guided-blocks': { type: 'string' },
    solver: { type: 'string' },
    steps: { type: 'string' },
    strategy: { type: 'string' },
    'jacobi-tol': { type: 'string' },
    'jacobi-block-size': { type: 'string' },
    'jacobi-max-iter': { type: 'string' },
    'jacobi-init': { type: 'string' },
    batch: { type: 'string' },
    denoise: { type: 'boolean' },
    'no-denoise': { type: 'boolean' },
    sigma: { type: 'string' },
    'denoise-lr': { type: 'string' },
    out: { type: 'string' },
    noise: { type: 'string' },
    'noise-key': { type: 'string' },
    'text-key': { type: 'string' },
    'negative-text-key': { type: 'string' },
    'labels-key': { type: 'string' },
    prompt: { type: 'string' },
    prompts: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (o.help) return void console.log(SAMPLE_HELP);
  const dir = modelDir(o);
  const out = strOpt(o.out, 'out') ?? 'samples.png';
  const seed = intOpt(o.seed, 'seed', 0, 0);
  const ruleOpt = strOpt(o['guidance-rule'], 'guidance-rule');
  if (ruleOpt !== undefined && ruleOpt !== 'tarflow' && ruleOpt !== 'starflow') throw new UsageError(`--guidance-rule must be tarflow or starflow, got '${ruleOpt}'`);
  const init = strOpt(o['jacobi-init'], 'jacobi-init') ?? 'z';
  if (init !== 'z' && init !== 'zeros') throw new UsageError(`--jacobi-init must be z or zeros, got '${init}'`);
  const solver = strOpt(o.solver, 'solver');
  if (solver !== undefined && ![...SOLVERS, ...ODE_SOLVERS].includes(solver as never)) throw new UsageError(`unknown solver '${solver}' (expected one of: ${[...SOLVERS, ...ODE_SOLVERS].join(', ')})`);
  const steps = o.steps === undefined ? undefined : intOpt(o.steps, 'steps', 1);

  await prepareSamplesOutput(out); // a bad --out fails now, not after sampling
  await startEngineFromOptions(o);
  const model = await loadModel(dir);
  const { cfg } = model;
  const sampler = model.family.sampler(cfg);
  const rule = ruleOpt ?? (sampler.kind === 'autoregressive' ? sampler.guidanceRule : 'tarflow');

  let n = intOpt(o.n, 'n', 1, 64);
  const fromFile = o.noise
    ? await readNoiseInputs(
        strOpt(o.noise, 'noise')!,
        { noise: strOpt(o['noise-key'], 'noise-key') ?? 'noise', labels: strOpt(o['labels-key'], 'labels-key'), text: strOpt(o['text-key'], 'text-key'), negativeText: strOpt(o['negative-text-key'], 'negative-text-key') },
        model,
      )
    : undefined;
  if (!fromFile && (o['text-key'] !== undefined || o['negative-text-key'] !== undefined || o['labels-key'] !== undefined)) {
    throw new UsageError('--labels-key, --text-key and --negative-text-key name tensors in the --noise file');
  }
  if (fromFile) n = fromFile.n;
  const noise = fromFile?.noise;
  const fileLabels = fromFile?.labels;
  let text = fromFile?.text;
  // Prompts: one per sample, through the model's own text encoder.
  if (o.prompt !== undefined && o.prompts !== undefined) throw new UsageError('give --prompt or --prompts, not both');
  let promptRows: number | undefined;
  if (o.prompt !== undefined || o.prompts !== undefined) {
    if (text) throw new UsageError('--prompt/--prompts and --text-key both give the text: choose one');
    const list = o.prompt !== undefined ? [String(o.prompt)] : await readPromptFile(strOpt(o.prompts, 'prompts')!);
    const rows = classRows(n, list.length);
    promptRows = list.length > 1 ? rows.perRow : undefined;
    const encoded = await promptText(model, rows.labels ? rows.labels.map((i) => list[i]!) : new Array<string>(n).fill(list[0]!));
    for (const w of encoded.warnings) console.error(`warning: ${w}`);
    text = { states: encoded.states, negative: encoded.negative };
  } else if (model.family.textEncoder?.(cfg) && !text) {
    throw new UsageError('this model draws what a prompt says: give --prompt TEXT or --prompts FILE');
  }

  if (o.class !== undefined && o.labels !== undefined) throw new UsageError('give --class or --labels, not both');
  let labels: number[] | undefined;
  if (cfg.numClasses > 0) {
    if (fileLabels) labels = fileLabels;
    else if (o.labels) labels = intList(o.labels as string, 'labels');
    else if (o.class !== undefined) labels = new Array<number>(n).fill(intOpt(o.class, 'class', -1));
    else labels = classRows(n, cfg.numClasses).labels!;
    if (labels.length !== n) throw new UsageError(`--labels gives ${labels.length} labels for ${n} samples`);
  } else if (o.class !== undefined || o.labels !== undefined) {
    throw new SamplingError('this model is unconditional: it takes no --class or --labels');
  }

  const guidance: Guidance = {
    weight: numOpt(o.cfg, 'cfg', 0, (x) => x >= 0, 'a number ≥ 0'),
    rule,
    annealed: Boolean(o.annealed),
    attnTemp: numOpt(o['attn-temp'], 'attn-temp', 1, (x) => x > 0, 'a number > 0'),
    blocks: o['guided-blocks'] ? intList(o['guided-blocks'] as string, 'guided-blocks') : undefined,
  };
  const maxIter = o['jacobi-max-iter'] === undefined ? undefined : intOpt(o['jacobi-max-iter'], 'jacobi-max-iter', 1);
  const choice = {
    name: (solver ?? (sampler.kind === 'velocity' ? 'euler' : 'sequential')) as SolverName | OdeSolverName,
    steps,
    strategy: strOpt(o.strategy, 'strategy'),
    tol: o['jacobi-tol'] === undefined ? undefined : numOpt(o['jacobi-tol'], 'jacobi-tol', 0, (x) => x >= 0, 'a number ≥ 0'),
    maxIter,
    init: init as 'z' | 'zeros',
    blockSize: o['jacobi-block-size'] === undefined ? undefined : intOpt(o['jacobi-block-size'], 'jacobi-block-size', 1),
  };
  // Raw tensor output (.safetensors) holds what the flow draws, as the reference's reverse returns it.
  const denoise = (denoiseFlag(o) ?? (denoisesByDefault(model) && !out.endsWith('.safetensors')))
    ? { sigma: numOpt(o.sigma, 'sigma', cfg.noiseStd, (x) => x >= 0, 'a number ≥ 0'), lrScale: numOpt(o['denoise-lr'], 'denoise-lr', 1, (x) => x >= 0, 'a number ≥ 0') }
    : undefined;

  const bar = new Progress('sample', 100);
  const r = await generate(model, {
    n,
    labels,
    solver: choice,
    guidance,
    seed,
    noise,
    batchSize: o.batch === undefined ? undefined : intOpt(o.batch, 'batch', 1),
    denoise,
    text,
    onProgress: (done, total) => bar.update(Math.round((100 * done) / total), ''),
  });
  bar.update(100);

  const nrow = promptRows ?? classRows(n, cfg.numClasses > 0 && !o.class && !o.labels && !fileLabels ? cfg.numClasses : 0).perRow;
  await saveSamples(out, r.images, r.shape, { nrow, metadata: { solver: choice.name, seed: String(seed) } });
  const iterations = r.stats.map((batch) => batch.map((s) => ({ block: s.block, calls: s.calls, iterations: s.iterations })));
  const summary = { out, n, seconds: r.seconds, samplesPerSec: n / r.seconds, solver: choice.name, ...(sampler.kind === 'velocity' ? { steps: steps ?? sampler.defaultSteps } : {}), device: currentDevice(), redrawn: r.redrawn, nonFinite: r.nonFinite, blocks: iterations[0] };
  if (r.redrawn > 0 || r.nonFinite > 0) {
    console.error(`note: ${r.redrawn} sample(s) overflowed and were drawn again; ${r.nonFinite} remain non-finite (an undertrained model or strong guidance)`);
  }
  if (o.json) console.log(JSON.stringify(summary));
  else console.error(`wrote ${n} samples to ${out} in ${r.seconds.toFixed(2)} s (${summary.samplesPerSec.toFixed(1)} samples/s, ${choice.name}${sampler.kind === 'velocity' ? `, ${steps ?? sampler.defaultSteps} steps` : ''})`);
}
