// Prompt evaluation: the JSON-lines file is checked line by line; the figures are computed right
// from samples whose ink and predicted digits are known; and `evaluatePromptFile` writes
// metrics.json and the grid for a text model.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtemp, readFile, rm, writeFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import '../setup.js';
import { captionWords, MNIST_VOCABULARY } from '../../src/data/captions.js';
import { parsePromptCases, scorePromptSamples, evaluatePromptFile, PromptFileError, type PromptCase } from '../../src/eval/prompts.js';
import { SHIPPED_FEATURES } from '../../src/eval/features.js';
import { parseFlowConfig, tarflow } from '../../src/models/flow.js';
import { saveModel } from '../../src/io/model.js';

test('prompt files: every line is checked, with its line number', () => {
  const ok = parsePromptCases('{"prompt": "a thick seven", "digit": 7, "thickness": "thick"}\n\n{"prompt": "zero", "digit": 0}\n', 'p.jsonl', 10);
  assert.deepEqual(ok, [{ prompt: 'a thick seven', digit: 7, thickness: 'thick' }, { prompt: 'zero', digit: 0, thickness: null }]);
  const bad: [string, RegExp][] = [
    ['{"prompt": "x", "digit": 1', /p\.jsonl:1: not a JSON object/],
    ['[1, 2]', /p\.jsonl:1: expected an object/],
    ['{"digit": 1}', /'prompt' must be a non-empty string/],
    ['{"prompt": "seven", "digit": 10}', /'digit' must be an integer in 0\.\.9, got 10/],
    ['{"prompt": "seven", "digit": "7"}', /'digit' must be an integer/],
    ['{"prompt": "seven", "digit": 7}\n{"prompt": "seven", "digit": 7, "thickness": "bold"}', /p\.jsonl:2: 'thickness' must be "thick", "thin" or null, got "bold"/],
    ['\n\n', /p\.jsonl: no prompts/],
  ];
  for (const [text, message] of bad) assert.throws(() => parsePromptCases(text, 'p.jsonl', 10), (e: Error) => e instanceof PromptFileError && message.test(e.message), text);
});

/** 28×28 images in [−1, 1]: a vertical bar `width` pixels wide on black. */
function bars(widths: number[]): Float32Array {
  const out = new Float32Array(widths.length * 784).fill(-1);
  widths.forEach((wd, i) => {
    for (let y = 4; y < 24; y++) for (let x = 12; x < 12 + wd; x++) out[i * 784 + y * 28 + x] = 1;
  });
  return out;
}

test('scores: accuracy per prompt, and thick prompts against thin ones of the same digit', () => {
  const cases: PromptCase[] = [
    { prompt: 'a thick seven', digit: 7, thickness: 'thick' },
    { prompt: 'a thin seven', digit: 7, thickness: 'thin' },
    { prompt: 'a thin one', digit: 1, thickness: 'thin' },
  ];
  // Two samples per prompt: the thick seven's bars are 4 wide, the thin ones 1 and 2.
  const images = bars([4, 4, 1, 1, 2, 2]);
  const r = scorePromptSamples(cases, 2, images, [6, 1, 28, 28], [7, 2, 7, 7, 1, 1]);
  assert.deepEqual(r.cases.map((c) => c.accuracy), [0.5, 1, 1]);
  assert.equal(r.promptAccuracy, 2.5 / 3);
  assert.deepEqual(r.cases.map((c) => c.meanInk), [80, 20, 40]);
  assert.equal(r.thicknessPairs, 1, 'the thin one is another digit: one pair');
  assert.equal(r.thicknessAgreement, 1);
  const swapped = scorePromptSamples(cases, 2, bars([1, 1, 4, 4, 2, 2]), [6, 1, 28, 28], [7, 7, 7, 7, 1, 1]);
  assert.equal(swapped.thicknessAgreement, 0);
  assert.equal(scorePromptSamples(cases.slice(2), 2, bars([2, 2]), [2, 1, 28, 28], [1, 1]).thicknessAgreement, null);
});

test('evaluatePromptFile writes metrics.json and a grid for a text model', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'starflow-prompts-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const cfg = parseFlowConfig({ model: 'tarflow', inChannels: 1, imgSize: 28, patchSize: 7, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, textTokens: 8, textDim: 16, textEncoder: { vocab: captionWords(MNIST_VOCABULARY), layers: 1, heads: 2 } });
  await saveModel(path.join(dir, 'model'), { family: tarflow, cfg, params: tarflow.init(cfg, 0) });
  const file = path.join(dir, 'prompts.jsonl');
  await writeFile(file, ['{"prompt": "a thick seven", "digit": 7, "thickness": "thick"}', '{"prompt": "a skinny 7", "digit": 7, "thickness": "thin"}', '{"prompt": "zero, purple", "digit": 0}'].join('\n'));
  const out = path.join(dir, 'out');
  const { report } = await evaluatePromptFile({ modelDir: path.join(dir, 'model'), promptsFile: file, featuresDir: SHIPPED_FEATURES, outDir: out, perPrompt: 3, seed: 1, guidance: { weight: 1, annealed: false, attnTemp: 1 } });
  const metrics = JSON.parse(await readFile(path.join(out, 'metrics.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(metrics.promptAccuracy, report.promptAccuracy);
  assert.ok(report.promptAccuracy >= 0 && report.promptAccuracy <= 1);
  assert.equal(metrics.thicknessPairs, 1);
  assert.equal((metrics.cases as unknown[]).length, 3);
  assert.deepEqual(report.warnings, ['prompt "zero, purple": left out a word the model does not know: purple']);
  assert.equal(metrics.guidanceRule, 'tarflow');
  assert.ok((await stat(path.join(out, 'samples.png'))).size > 0);
  await assert.rejects(evaluatePromptFile({ modelDir: path.join(dir, 'model'), promptsFile: path.join(dir, 'none.jsonl'), featuresDir: SHIPPED_FEATURES, outDir: out, perPrompt: 1, seed: 1, guidance: { weight: 0, annealed: false, attnTemp: 1 } }), /cannot read .*none\.jsonl \(ENOENT\)/);
});
