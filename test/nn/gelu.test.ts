import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { jnn, jit, grad, fromF32, toF32, isDifferentiated } from '../../src/engine/index.js';
import { gelu } from '../../src/nn/layers.js';

// gelu() evaluates erf with a polynomial (vectorisable on wasm); it must stay the exact-erf GELU.
test('gelu matches the exact-erf GELU and its derivative on [-8, 8]', async () => {
  const xs = Float32Array.from({ length: 4001 }, (_, i) => -8 + (16 * i) / 4000);
  const exact = (v: Parameters<typeof gelu>[0]) => jnn.gelu(v, { approximate: false });
  const [ours, ref] = await Promise.all([toF32(jit(gelu)(fromF32(xs, [xs.length]))), toF32(jit(exact)(fromF32(xs, [xs.length])))]);
  const [dOurs, dRef] = await Promise.all([
    toF32(jit(grad((v) => gelu(v).sum()))(fromF32(xs, [xs.length]))),
    toF32(jit(grad((v) => exact(v).sum()))(fromF32(xs, [xs.length]))),
  ]);
  let worst = 0;
  let worstSlope = 0;
  for (let i = 0; i < xs.length; i++) {
    worst = Math.max(worst, Math.abs(ours[i]! - ref[i]!) / Math.max(1, Math.abs(xs[i]!)));
    worstSlope = Math.max(worstSlope, Math.abs(dOurs[i]! - dRef[i]!));
  }
  // erf's polynomial is within 2.7e-7 on [0, 4]: |Δ gelu| ≤ |x|·1.4e-7 plus float32 rounding.
  assert.ok(worst < 1e-6, `gelu differs by ${worst} (relative to max(1, |x|))`);
  assert.ok(worstSlope < 5e-5, `gelu' differs by ${worstSlope}`);
});

test('isDifferentiated tells gradient tracing (gelu then takes its closed-form gradient) from evaluation', async () => {
  const seen: boolean[] = [];
  const probe = (v: Parameters<typeof gelu>[0]) => (seen.push(isDifferentiated(v)), v);
  const xs = fromF32([0.5, -1.5], [2]);
  await toF32(jit(grad((v: Parameters<typeof gelu>[0]) => probe(v).sum()))(xs.ref));
  await toF32(jit((v: Parameters<typeof gelu>[0]) => probe(v).mul(2))(xs.ref));
  await toF32(probe(xs).mul(2));
  assert.deepEqual(seen, [true, false, false]);
});
