// Bad input to the CLI gives one line on stderr, `starflow[ <cmd>]: error: ...`, a non-zero exit
// code and no stack trace (STARFLOW_DEBUG=1 is the only way to see one). Each case spawns
// bin/starflow.js with STARFLOW_THREADS=1; the model directories are built with the library.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import { captionWords, MNIST_VOCABULARY } from '../../src/data/captions.js';
import { starflow } from '../cli.js';
import { release } from '../../src/engine/index.js';
import { initFlow, tarflow } from '../../src/models/flow.js';
import { parseFlowConfig as parseModelConfig } from '../../src/models/flow.js';
import { saveModel } from '../../src/io/model.js';
import { dit } from '../../src/models/dit.js';
import { saveCheckpoint } from '../../src/io/checkpoint.js';
import { paramsToHost } from '../../src/nn/params.js';




/** Runs the CLI and checks the one-line error; returns the line. */
async function expectError(args: string[], pattern: RegExp, opts: { prefix?: string; code?: number } = {}): Promise<string> {
  const r = await starflow(args);
  const show = `starflow ${args.join(' ')}\nexit ${r.code}\nstderr:\n${r.stderr}\nstdout:\n${r.stdout}`;
  assert.notEqual(r.code, 0, show);
  if (opts.code !== undefined) assert.equal(r.code, opts.code, show);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  assert.ok(!lines.some((l) => /^\s+at /.test(l)), `no stack trace\n${show}`);
  assert.equal(lines.length, 1, `one line on stderr\n${show}`);
  const line = lines[0]!;
  const prefix = opts.prefix ?? `starflow ${args[0]}: error: `;
  assert.ok(line.startsWith(prefix), `starts with '${prefix}'\n${show}`);
  assert.match(line, pattern, show);
  assert.equal(r.stdout, '', `nothing on stdout\n${show}`);
  return line;
}

const MODEL = { model: 'tarflow', inChannels: 1, imgSize: 8, patchSize: 4, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1 };
const TRAIN = { model: { ...MODEL, imgSize: 28, patchSize: 7, numClasses: 10, noiseStd: 0.1 }, batchSize: 8, steps: 2 };

let dir = '';
let classModel = '';
let uncondModel = '';
let textModel = '';
let rfModel = '';
let meanflowModel = '';

async function writeModelDir(name: string, raw: object): Promise<string> {
  const cfg = parseModelConfig(raw);
  const d = path.join(dir, name);
  const params = initFlow(cfg, 0);
  await saveModel(d, { family: tarflow, cfg, params });
  release(params);
  return d;
}

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'starflow-cli-'));
  classModel = await writeModelDir('class10', { ...MODEL, numClasses: 10 });
  uncondModel = await writeModelDir('uncond', MODEL);
  textModel = await writeModelDir('text', { ...MODEL, textTokens: 6, textDim: 16, textEncoder: { vocab: captionWords(MNIST_VOCABULARY), layers: 1, heads: 2 } });
  const ditModel = async (name: string, objective: string) => {
    const cfg = dit.parseConfig({ inChannels: 1, imgSize: 8, patchSize: 4, width: 16, depth: 1, headDim: 8, numClasses: 10, objective }, name);
    const params = dit.init(cfg, 0);
    const d = path.join(dir, name);
    await saveModel(d, { family: dit, cfg, params });
    release(params);
    return d;
  };
  rfModel = await ditModel('rf', 'rectified-flow');
  meanflowModel = await ditModel('meanflow', 'meanflow');
});
after(() => rm(dir, { recursive: true, force: true }));

describe('CLI errors: one line on stderr, non-zero exit, no stack trace', { concurrency: 3 }, () => {
  test('unknown command', async () => {
    await expectError(['frobnicate'], /unknown command 'frobnicate'.*train/, { prefix: 'starflow: error: ', code: 2 });
  });

  test('unknown option', async () => {
    await expectError(['train', '--bogus', '1'], /'--bogus'.*see starflow train --help/, { code: 2 });
  });

  test('train: config that is not valid JSON', async () => {
    const f = path.join(dir, 'bad.json');
    await writeFile(f, '{ "model": { "model": "tarflow", }');
    await expectError(['train', '--config', f], /bad\.json: not valid JSON/);
  });

  test('train: YAML config with a wrong type names the field', async () => {
    const f = path.join(dir, 'wrong-type.yaml');
    await writeFile(
      f,
      ['model:', ...Object.entries(TRAIN.model).map(([k, v]) => `  ${k}: ${v}`), 'batchSize: eight', 'steps: 2', ''].join('\n'),
    );
    await expectError(['train', '--config', f], /'batchSize' must be an integer ≥ 1, got "eight"/);
  });

  test('train: config with an unknown field', async () => {
    const f = path.join(dir, 'unknown-field.json');
    await writeFile(f, JSON.stringify({ ...TRAIN, batchsize: 8 }));
    await expectError(['train', '--config', f], /unknown field 'batchsize'/);
  });

  test('train: --workers that does not divide the batch size', async () => {
    const f = path.join(dir, 'workers.json');
    await writeFile(f, JSON.stringify(TRAIN));
    await expectError(['train', '--config', f, '--out', path.join(dir, 'workers-run'), '--workers', '3'], /batchSize 8 does not split evenly over 3 workers/);
    await expectError(['train', '--config', f, '--workers', '0'], /--workers must be an integer ≥ 1, got '0'/, { code: 2 });
  });

  test('sample: prompts that are empty, in characters the tokenizer lacks, all unknown words, or for a model without text', async () => {
    await expectError(['sample', '--model', textModel, '--n', '1', '--prompt', ''], /an empty prompt/);
    await expectError(['sample', '--model', textModel, '--n', '1', '--prompt', 'un sept élégant'], /characters the tokenizer does not know: "é" \(U\+00E9\)/);
    await expectError(['sample', '--model', textModel, '--n', '1', '--prompt', 'purple cat'], /none of its words is in the model's vocabulary/);
    await expectError(['sample', '--model', textModel, '--n', '1'], /this model draws what a prompt says: give --prompt TEXT or --prompts FILE/, { code: 2 });
    await expectError(['sample', '--model', textModel, '--n', '1', '--prompts', path.join(dir, 'no-prompts.txt')], /--prompts: cannot read .*no-prompts\.txt \(ENOENT\)/, { code: 2 });
    await expectError(['sample', '--model', classModel, '--n', '1', '--prompt', 'a seven'], /this model is not text-conditioned: it takes no prompt/);
  });

  test('sample: a prompt with unknown or too many words samples, with a warning for each', async () => {
    const out = path.join(dir, 'prompted.png');
    const r = await starflow(['sample', '--model', textModel, '--n', '2', '--prompt', 'a purple thick slanted seven with bold strokes', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /warning: prompt "a purple thick slanted seven with bold strokes": left out a word the model does not know: purple/);
    assert.match(r.stderr, /the model reads 6 words; the last word was left out/);
    assert.ok((await readFile(out)).length > 0);
  });

  test('sample: missing model directory', async () => {
    await expectError(['sample', '--model', path.join(dir, 'missing'), '--n', '1'], /no such checkpoint directory: .*missing/);
  });

  test('sample: model directory whose config.json is corrupt', async () => {
    const d = await writeModelDir('corrupt-config', MODEL);
    await writeFile(path.join(d, 'config.json'), '{"model": "tarflow", "width": 16,');
    await expectError(['sample', '--model', d, '--n', '1'], /config\.json: invalid JSON at line 1/);
  });

  test('sample: truncated model.safetensors', async () => {
    const d = await writeModelDir('truncated', MODEL);
    const f = path.join(d, 'model.safetensors');
    const bytes = await readFile(f);
    await writeFile(f, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    await expectError(['sample', '--model', d, '--n', '1'], /model\.safetensors/);
  });

  test('sample: weights of the wrong shape (the message names the tensor)', async () => {
    const cfg = parseModelConfig(MODEL);
    const params = initFlow(cfg, 0);
    const host = await paramsToHost(params);
    release(params);
    const name = 'blocks.1.projIn.w';
    const t = host.get(name);
    assert.ok(t, `the model has a tensor ${name} (it has ${[...host.keys()].join(', ')})`);
    host.set(name, { shape: [t.shape[0]! + 1, t.shape[1]!], data: new Float32Array((t.shape[0]! + 1) * t.shape[1]!) });
    const d = path.join(dir, 'wrong-shape');
    await saveCheckpoint(d, { config: cfg, model: host });
    const line = await expectError(['sample', '--model', d, '--n', '1'], /weights do not match the model/);
    assert.ok(line.includes(`${name}: expected [${t.shape.join(',')}], file has [${t.shape[0]! + 1},${t.shape[1]}]`), line);
  });

  test('sample: --class 12 on a 10-class model', async () => {
    await expectError(['sample', '--model', classModel, '--n', '2', '--class', '12'], /class 12 is out of range: this model has classes 0\.\.9/);
  });

  test('sample: negative numbers are values (--class -1 draws unconditionally); --class with --labels is refused', async () => {
    const out = path.join(dir, 'uncond.safetensors');
    const r = await starflow(['sample', '--model', classModel, '--n', '2', '--class', '-1', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const l = await starflow(['sample', '--model', classModel, '--n', '2', '--labels', '-1,3', '--out', out]);
    assert.equal(l.code, 0, l.stderr);
    await expectError(['sample', '--model', classModel, '--n', '2', '--class', '-2'], /--class must be an integer ≥ -1, got '-2'/, { code: 2 });
    await expectError(['sample', '--model', classModel, '--n', '2', '--class', '3', '--labels', '1,2'], /give --class or --labels, not both/, { code: 2 });
  });

  test('sample --out into directories that do not exist yet: made before sampling', async () => {
    const out = path.join(dir, 'not', 'yet', 'grid.png');
    const r = await starflow(['sample', '--model', classModel, '--n', '2', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await readFile(out)).length > 0);
  });

  test('outputs that cannot be created fail at once with one line (no endless mkdir under /proc)', { timeout: 60_000 }, async () => {
    const file = path.join(dir, 'a-file');
    await writeFile(file, '');
    await expectError(['sample', '--model', classModel, '--n', '2', '--out', path.join(file, 'grid.png')], /a-file is not a directory/);
    if (process.platform !== 'linux') return;
    await expectError(['sample', '--model', classModel, '--n', '2', '--out', '/proc/starflow-x/grid.png'], /cannot create directory \/proc\/starflow-x/);
    await expectError(['train', '--preset', 'mnist-tiny', '--steps', '1', '--out', '/proc/starflow-x/run'], /cannot create directory \/proc\/starflow-x/);
    await expectError(['eval', '--model', classModel, '--features', classModel, '--n', '4', '--out', '/proc/starflow-x/eval'], /cannot create directory \/proc\/starflow-x/);
  });

  test('convert --starflow-config (ml-starflow): malformed YAML, unsupported options and mismatched tensors, named in one line', async () => {
    const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/starflow');
    const pth = path.join(fixtures, 'shared.pth');
    const yaml = await readFile(path.join(fixtures, 'shared.yaml'), 'utf8');
    const write = async (name: string, text: string) => {
      const f = path.join(dir, name);
      await writeFile(f, text);
      return f;
    };
    const out = path.join(dir, 'sf-out');
    await expectError(['convert', '--from', pth, '--starflow-config', await write('bad.yaml', 'arguments:\n- img_size: [4\n'), '--out', out], /bad\.yaml: not valid YAML/);
    await expectError(['convert', '--from', pth, '--starflow-config', await write('adaln.yaml', yaml + '- adaln: 1\n'), '--out', out], /'adaln: 1' is not supported/);
    await expectError(['convert', '--from', pth, '--starflow-config', await write('wide.yaml', yaml.replace('channels: 64', 'channels: 128')), '--out', out], /blocks\.0\.proj_in\.weight: expected \[128,2\], file has \[64,2\]/);
    await expectError(['convert', '--from', pth, '--starflow-config', await write('norm.yaml', yaml + '- norm_type: batch_norm\n'), '--out', out], /'norm_type' must be layer_norm, rms_norm or none, got "batch_norm"/);
    // An invalid value is named by ml-starflow's argument, not the project's field.
    await expectError(['convert', '--from', pth, '--starflow-config', await write('zero.yaml', yaml.replace('channels: 64', 'channels: 0')), '--out', out], /zero\.yaml.*'channels' must be/);
  });

  test('train-features refuses to replace an existing extractor without --force', async () => {
    const out = path.join(dir, 'features-here');
    await writeFile(path.join(dir, 'marker'), '');
    await import('node:fs/promises').then((fs) => fs.mkdir(out));
    await expectError(['train-features', '--out', out, '--max-steps', '1'], /features-here exists: pass --force/);
  });

  test('train-ae: a missing --out, bad levels or channels, and an existing autoencoder without --force', async () => {
    await expectError(['train-ae', '--steps', '1'], /--out DIR is required/, { code: 2 });
    await expectError(['train-ae', '--out', path.join(dir, 'ae-x'), '--levels', '32,zero'], /--levels must be positive integers separated by commas, got '32,zero'/, { code: 2 });
    await expectError(['train-ae', '--out', path.join(dir, 'ae-x'), '--channels', '2'], /--channels must be 1 or 3, got 2/, { code: 2 });
    await expectError(['train-ae', '--out', path.join(dir, 'ae-x'), '--levels', '8,8,8', '--steps', '1'], /imgSize 28 is not divisible by the 8× reduction of 3 levels/);
    const out = path.join(dir, 'ae-here');
    await import('node:fs/promises').then((fs) => fs.mkdir(out));
    await expectError(['train-ae', '--out', out, '--steps', '1'], /ae-here exists: pass --force/);
  });

  test('sample: --cfg 1 on an unconditional model without --attn-temp', async () => {
    await expectError(['sample', '--model', uncondModel, '--n', '2', '--cfg', '1'], /attention temperature.*--attn-temp/);
  });

  test('sample: --solver foo', async () => {
    await expectError(['sample', '--model', classModel, '--solver', 'foo'], /unknown solver 'foo' \(expected one of: sequential, jacobi, gs-jacobi, block-jacobi, euler, heun\)/, { code: 2 });
  });

  test('sample: --steps 0, a solver a family lacks, --steps on a flow', async () => {
    await expectError(['sample', '--model', rfModel, '--n', '2', '--steps', '0'], /--steps must be an integer ≥ 1, got '0'/, { code: 2 });
    await expectError(['sample', '--model', rfModel, '--n', '2', '--solver', 'jacobi'], /dit models sample with euler or heun, not 'jacobi'/);
    await expectError(['sample', '--model', meanflowModel, '--n', '2', '--solver', 'heun'], /this model samples with euler: heun needs the instantaneous velocity/);
    await expectError(['sample', '--model', classModel, '--n', '2', '--solver', 'heun'], /heun integrates a velocity field: tarflow models are inverted block by block/);
    await expectError(['sample', '--model', classModel, '--n', '2', '--steps', '4'], /--steps applies to rectified-flow and MeanFlow models/);
    await expectError(['eval', '--model', classModel, '--n', '4', '--steps', '1,x'], /--steps must be a comma-separated list/, { code: 2 });
  });

  test('sample: --n 0', async () => {
    await expectError(['sample', '--model', classModel, '--n', '0'], /--n must be an integer ≥ 1, got '0'/, { code: 2 });
  });

  test('sample: --model with an empty value', async () => {
    const line = await expectError(['sample', '--model=', '--n', '2'], /--model needs a value/, { code: 2 });
    assert.equal(line.split('--help').length, 2, `the help hint appears once: ${line}`);
  });
});

test('STARFLOW_DEBUG=1 shows the stack trace', async () => {
  const r = await starflow(['sample', '--model', path.join(dir, 'missing')], { STARFLOW_DEBUG: '1' });
  assert.notEqual(r.code, 0);
  assert.ok(r.stderr.split('\n').some((l) => /^\s+at /.test(l)), r.stderr);
  assert.match(r.stderr, /starflow sample: error: no such checkpoint directory/);
});


