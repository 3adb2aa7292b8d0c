// Export to the references' own formats: the written model.pth holds exactly the reference's state
// dict (names, layouts, buffers: what its Model's load_state_dict(strict=True) needs), checked
// against the reference-made .pth files: by our own .pth reader everywhere, and by torch.load
// (weights_only=True) where /usr/bin/python3 has torch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import { convertCheckpoint, exportModel, readStateDictFile, ConvertError } from '../../src/io/convert.js';
import { saveModel } from '../../src/io/model.js';
import { initFlow, parseFlowConfig, tarflow } from '../../src/models/flow.js';
import { release } from '../../src/engine/index.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures');
const CASES = [
  { name: 'ml-starflow shared (text, RoPE, wider deep block)', pth: 'starflow/shared.pth', yaml: 'starflow/shared.yaml', format: 'ml-starflow' as const },
  { name: 'ml-starflow shared-options (identity block, RMSNorm, SwiGLU, GQA, no biases)', pth: 'starflow/shared-options.pth', yaml: 'starflow/shared-options.yaml', format: 'ml-starflow' as const },
  { name: 'ml-tarflow tiny model', pth: 'tiny_model_2_64_2_1_0.1.pth', yaml: undefined, format: 'ml-tarflow' as const },
];

function torchAvailable(): string | null {
  try {
    execFileSync('/usr/bin/python3', ['-c', 'import torch'], { stdio: 'ignore' });
    return null;
  } catch {
    return '/usr/bin/python3 has no torch (apt-get install python3-torch)';
  }
}

const COMPARE = `
import sys, torch
a = torch.load(sys.argv[1], map_location='cpu')
b = torch.load(sys.argv[2], map_location='cpu', weights_only=True)
assert list(a) == list(b) or set(a) == set(b), (set(a) ^ set(b))
for k in a:
    assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
    assert torch.equal(a[k], b[k]), k
print(len(a))
`;

for (const c of CASES) {
  test(`convert → export reproduces the reference's own .pth exactly: ${c.name}`, async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), 'sf-export-'));
    try {
      const original = path.join(FIXTURES, c.pth);
      await convertCheckpoint(original, path.join(dir, 'ours'), {}, c.yaml && path.join(FIXTURES, c.yaml));
      const r = await exportModel(path.join(dir, 'ours'), path.join(dir, 'out'), c.format);
      const written = r.files[0]!;
      // ml-tarflow's naming: {dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise} (no recorded dataset: 'model').
      if (c.format === 'ml-tarflow') assert.equal(path.basename(written), 'model_model_2_64_2_1_0.1.pth');
      const a = await readStateDictFile(original);
      const b = await readStateDictFile(written);
      assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
      for (const [k, v] of a) {
        assert.deepEqual(b.get(k)!.shape, v.shape, k);
        assert.deepEqual(b.get(k)!.data, v.data, k);
      }
      if (c.yaml) assert.match(await readFile(r.files[1]!, 'utf8'), /^arguments:\n- img_size: /);
      const why = torchAvailable();
      if (why) return t.skip(why);
      const n = execFileSync('/usr/bin/python3', ['-c', COMPARE, original, written], { encoding: 'utf8' }).trim();
      assert.equal(Number(n), a.size);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}

test('export refuses what a reference cannot hold, by name', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-export-'));
  try {
    await convertCheckpoint(path.join(FIXTURES, 'starflow/shared.pth'), path.join(dir, 'sf'), {}, path.join(FIXTURES, 'starflow/shared.yaml'));
    await assert.rejects(exportModel(path.join(dir, 'sf'), path.join(dir, 'x'), 'ml-tarflow'), (e: Error) => e instanceof ConvertError && /ml-tarflow's Model has no a start token, RoPE, softplus scales/.test(e.message));
    const cfg = parseFlowConfig({ model: 'tarflow', inChannels: 1, imgSize: 8, patchSize: 2, width: 64, numBlocks: 2, layersPerBlock: 1, numClasses: 10 });
    const params = initFlow(cfg, 0);
    await saveModel(path.join(dir, 'classes'), { family: tarflow, cfg, params });
    release(params);
    await assert.rejects(exportModel(path.join(dir, 'classes'), path.join(dir, 'y'), 'ml-starflow'), /ml-starflow's Model has no class embeddings/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("exports load strictly into ml-starflow's own Model and reproduce the fixture's z (STARFLOW_REFERENCE_DIR: an ml-starflow checkout)", async (t) => {
  const reference = process.env.STARFLOW_REFERENCE_DIR;
  if (!reference) return t.skip('set STARFLOW_REFERENCE_DIR to an apple/ml-starflow checkout (never copied here) to run it');
  const why = torchAvailable();
  if (why) return t.skip(why);
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-export-ref-'));
  try {
    for (const name of ['shared', 'shared-options']) {
      await convertCheckpoint(path.join(FIXTURES, `starflow/${name}.pth`), path.join(dir, name), {}, path.join(FIXTURES, `starflow/${name}.yaml`));
      await exportModel(path.join(dir, name), path.join(dir, `${name}-export`), 'ml-starflow');
      const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'load_export.py');
      const env: NodeJS.ProcessEnv = { ...process.env, PYTHONPATH: [reference, process.env.PYTHONPATH].filter(Boolean).join(':') };
      const out: string = execFileSync('/usr/bin/python3', [script, path.join(dir, `${name}-export`), path.join(FIXTURES, `starflow/${name}_inputs.safetensors`)], { encoding: 'utf8', env, maxBuffer: 1 << 24 });
      const z = (JSON.parse(out) as { z: number[] }).z;
      const want = (JSON.parse(await readFile(path.join(FIXTURES, `starflow/${name}_expected.json`), 'utf8')) as { z: number[] }).z;
      assert.equal(z.length, want.length);
      const worst = z.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i]!)), 0);
      assert.ok(worst < 1e-6, `${name}: the reference's z from our export differs by ${worst}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
