// Models trained on Gaussian-noised images are denoised by default when samples are written as
// pictures (their raw samples carry the noise): `sample` without flags equals `--denoise`,
// `--no-denoise` keeps the raw draw. A .safetensors output holds the raw samples by default, as
// the reference's reverse returns them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import '../setup.js';
import { starflow } from '../cli.js';
import { parseSafetensors, toFloat32 } from '../../src/io/safetensors.js';

const SHIPPED = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../checkpoints/mnist'); // noiseStd 0.1

test('sample denoises a noise-trained model by default; --no-denoise turns it off', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sf-denoise-'));
  const run = async (out: string, flags: string[]) => {
    const r = await starflow(['sample', '--model', SHIPPED, '--n', '2', '--class', '4', '--seed', '3', '--out', out, ...flags]);
    assert.equal(r.code, 0, r.stderr);
    return readFile(out);
  };
  const draw = async (name: string, flags: string[]) => {
    const out = path.join(dir, `${name}.safetensors`);
    const f = parseSafetensors(new Uint8Array(await run(out, flags)), out);
    return toFloat32(f.tensors.get('samples')!, 'samples');
  };
  const picture = (name: string, flags: string[]) => run(path.join(dir, `${name}.png`), flags);
  assert.deepEqual(await picture('default', []), await picture('denoise', ['--denoise']));
  assert.notDeepEqual(await picture('default', []), await picture('raw', ['--no-denoise']));
  const denoised = await draw('denoised', ['--denoise']);
  const raw = await draw('raw', ['--no-denoise']);
  assert.deepEqual(await draw('default', []), raw, '.safetensors holds the raw samples by default');
  let d = 0;
  for (let i = 0; i < raw.length; i++) d = Math.max(d, Math.abs(raw[i]! - denoised[i]!));
  assert.ok(d > 1e-3, `denoising changed the samples by at most ${d}`);
  const both = await starflow(['sample', '--model', SHIPPED, '--n', '1', '--denoise', '--no-denoise', '--out', path.join(dir, 'x.png')]);
  assert.equal(both.code, 2);
  assert.match(both.stderr, /--denoise or --no-denoise, not both/);
});
