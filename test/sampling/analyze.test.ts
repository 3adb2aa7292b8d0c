import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { Rng, normalArray } from '../../src/engine/index.js';
import { parseFlowConfig as parseModelConfig, tokenShape, tarflow } from '../../src/models/flow.js';
import { initFlow } from '../../src/models/flow.js';
import { analyzeSampling, spectralNorm, propose, type BlockAnalysis } from '../../src/sampling/analyze.js';
import { makePlans } from '../../src/sampling/plan.js';

test('spectralNorm: the largest singular value by power iteration', () => {
  // diag(3, 1) padded to 3×2, and a rank-one matrix u vᵀ with ‖u‖‖v‖ = 5.
  assert.ok(Math.abs(spectralNorm(Float32Array.of(3, 0, 0, 1, 0, 0), 3, 2) - 3) < 1e-5);
  assert.ok(Math.abs(spectralNorm(Float32Array.of(3, 4, 0, 0), 2, 2) - 5) < 1e-5);
  assert.equal(spectralNorm(new Float32Array(4), 2, 2), 0);
});

test('analyzeSampling on a tiny model: metrics per block and a strategy makePlans accepts', async () => {
  const cfg = parseModelConfig({ model: 'tarflow', inChannels: 1, imgSize: 8, patchSize: 2, width: 32, headDim: 16, numBlocks: 2, layersPerBlock: 1, numClasses: 3 });
  const params = initFlow(cfg, 0);
  params.blocks.forEach((b, i) => {
    b.projOut.w.dispose();
    b.projOut.w = normalArray(new Rng(5).fork(i), [cfg.width, 8], 0.03);
  });
  const { tokens } = tokenShape(cfg);
  const r = await analyzeSampling({ family: tarflow, cfg, params }, { n: 2 });
  assert.equal(r.blocks.length, 2);
  assert.deepEqual(r.blocks.map((b) => b.block), [1, 0]);
  for (const b of r.blocks) {
    for (const v of [b.crm, b.alphaZ, b.normScale, b.normShift, b.igmZ, b.igmZeros]) assert.ok(Number.isFinite(v) && v >= 0, `${JSON.stringify(b)}`);
    assert.ok(Math.abs(b.crm - (b.alphaZ * b.normScale + b.normShift)) < 1e-9);
    for (const it of [b.iterationsZ, b.iterationsZeros]) assert.ok(it >= 1 && it <= tokens - 1, `iterations ${it}`);
    // One sweep from z is not exact here (projOut is far from zero), and no metric is degenerate.
    assert.ok(b.igmZ > 0 && b.normShift > 0);
  }
  const plans = makePlans('gs-jacobi', cfg.numBlocks, tokens, r.strategy, { tol: 1e-6, init: r.init });
  assert.equal(plans.length, 2);
});

test('propose: a slow block is split into modules, the others get a capped whole-sequence Jacobi', () => {
  const mk = (order: number, crm: number, it: number): BlockAnalysis => ({
    order, block: 3 - order, crm, alphaZ: 1, normScale: 1, normShift: 1, meanLogScale: 0, igmZ: 0.1, igmZeros: 0.5, iterationsZ: it, iterationsZeros: it + 2, tough: false,
  });
  const p = propose([mk(0, 9, 40), mk(1, 1, 4), mk(2, 1.2, 5), mk(3, 1, 4)], 49);
  assert.equal(p.init, 'z');
  assert.equal(p.strategy, '0=6x8,*=1x9');
  assert.doesNotThrow(() => makePlans('gs-jacobi', 4, 49, p.strategy));
});
