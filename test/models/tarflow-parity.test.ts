import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { np, fromF32, fromI32, toF32, toNumber, jit, keep } from '../../src/engine/index.js';
import { forward, flowLoss, flowNll, type FlowParams } from '../../src/models/flow.js';
import { patchify } from '../../src/nn/patches.js';
import { bitsPerDim } from '../../src/models/model.js';
import { fromReferenceStateDict } from '../../src/io/reference-names.js';
import { paramsFromHost } from '../../src/nn/params.js';
import { loadFixture, fixtureStateDict, fixtureConfig, detTensor, maxRelDiff, maxAbsDiff, scaledMaxDiff, type FixtureCase } from '../fixture.js';

const fx = loadFixture();

function setup(c: FixtureCase) {
  const cfg = fixtureConfig(c);
  const params = paramsFromHost<FlowParams>(fromReferenceStateDict(fixtureStateDict(c), cfg));
  const x = detTensor([2, 1, 8, 8], 1.3, 0.2, 0.9);
  return { cfg, params, x };
}

for (const [name, c, labels] of [
  ['unconditional', fx.uncond, undefined],
  ['3-class', fx.cond3, [0, 2]],
] as const) {
  test(`forward matches ml-tarflow (${name}): z, logdets, loss, bits/dim within 1e-5`, async () => {
    const { cfg, params, x } = setup(c);
    const tok = await toF32(patchify(fromF32(x.data, x.shape), cfg.patchSize).slice(0, 0));
    assert.ok(maxAbsDiff(tok, c.patchify_first_token) < 1e-6);
    const f = jit((p: FlowParams, xs, ys) => {
      // mean(z²) after each block: the flow of the first k + 1 blocks.
      const z2 = p.blocks.map((_, k) => np.square(forward(keep({ blocks: p.blocks.slice(0, k + 1) }), { ...cfg, numBlocks: k + 1, layersPerBlock: cfg.layersPerBlock.slice(0, k + 1) }, xs.ref, ys.ref).z).mean());
      const r = forward(p, cfg, xs, ys);
      return { z: r.z.ref, logdet: r.logdet.ref, z2: np.stack(z2), loss: flowLoss(r.z.ref, r.logdet.ref), nll: flowNll(r.z, r.logdet) };
    });
    const y = labels ? fromI32([...labels], [2]) : fromI32([0, 0], [2]);
    const r = f(keep(params), fromF32(x.data, x.shape), y);
    const z = await toF32(r.z);
    assert.deepEqual(c.z_shape, [2, 16, 4]);
    // z relative to its largest entry: with fused multiply-add (wasm relaxed SIMD) entries near 0 move
    // by ~1e-5 absolute, so an entry-by-entry relative test would measure rounding of cancellations.
    assert.ok(scaledMaxDiff(z, c.z) < 1e-5, `z differs by ${maxAbsDiff(z, c.z)} (${scaledMaxDiff(z, c.z)} of max |z|)`);
    const logdet = await toF32(r.logdet);
    assert.ok(maxAbsDiff(logdet, c.logdets_per_sample) < 1e-5 * 10, `logdets ${logdet} vs ${c.logdets_per_sample}`);
    assert.ok(Math.abs((await toNumber(r.loss)) - c.loss) / Math.abs(c.loss) < 1e-5);
    assert.ok(maxRelDiff([...(await toF32(r.nll))].map(bitsPerDim), c.bpd_per_sample) < 1e-5);
    assert.ok(maxRelDiff(await toF32(r.z2), c.block_outputs_sq_mean) < 1e-5);
  });
}

test('null label (−1) uses the mean class embedding, as the reference', async () => {
  const { cfg, params, x } = setup(fx.cond3);
  const r = forward(params, cfg, fromF32(x.data, x.shape), fromI32([-1, -1], [2]));
  const expected = fx.cond3.logdets_null_label as number[];
  assert.ok(maxAbsDiff(await toF32(r.logdet), expected) < 1e-6);
  const z = await toF32(r.z);
  assert.ok(maxAbsDiff(z.slice(0, 8), fx.cond3.z_null_label_first8 as number[]) < 1e-5);
});
