// Every shipped preset validates, and the STARFlow pixel preset is the mnist-bpd recipe with
// STARFlow's options (so the two compare at the same width and depth).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { presetNames, loadPreset } from '../../src/train/presets.js';

test('every preset in presets/ loads and validates', async () => {
  const names = presetNames();
  assert.ok(names.includes('mnist-main') && names.includes('mnist-starflow-pixel'), names.join(', '));
  for (const name of names) await loadPreset(name);
});

test('mnist-starflow-pixel: mnist-bpd with a start token, RoPE, softplus scales with soft clip, L2R order', async () => {
  const sf = await loadPreset('mnist-starflow-pixel');
  const tf = await loadPreset('mnist-bpd');
  assert.equal(sf.model.model, 'starflow');
  const m = sf.model as typeof sf.model & Record<string, unknown>;
  assert.deepEqual([m.startToken, m.positions, m.scale, m.softClip, m.order], [true, 'rope', 'softplus', 4, 'L2R']);
  for (const k of ['width', 'numBlocks', 'layersPerBlock', 'headDim', 'patchSize', 'numClasses'] as const) {
    assert.deepEqual((sf.model as Record<string, unknown>)[k], (tf.model as Record<string, unknown>)[k], k);
  }
  assert.deepEqual({ ...sf, model: null }, { ...tf, model: null }, 'the same training recipe');
});
