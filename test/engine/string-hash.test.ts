// jax-js's expression hash with strings composed once per distinct string must give exactly the
// values of jax-js's own step-per-character hash (its compiled-kernel cache is keyed by them).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import '../setup.js';
import { jaxInternals } from '../../src/engine/jax-internals.js';
import { installFastStringHash } from '../../src/engine/string-hash.js';

test("strings hash to jax-js's own values, mixed with numbers, booleans and nested hashes", async () => {
  const jax = await jaxInternals();
  assert.ok(jax, 'the pinned jax-js internals are reachable');
  const FpHash = jax.FpHash as unknown as { new (): { value: bigint; update(x: unknown): unknown }; prototype: { value: bigint; update(x: unknown): unknown } };
  const original = installFastStringHash(FpHash as never) as (this: unknown, x: unknown) => unknown;
  assert.notEqual(FpHash.prototype.update, original, 'the fast path is installed');
  const sequences: unknown[][] = [
    ['GlobalView', 'float32', 3, 2.5, true, null, undefined, 12345678901n, ''],
    ['Add', 'Add', 'x'.repeat(300), -7, 'ü∑—', 0],
    [Number.MAX_SAFE_INTEGER, 'int32', false, 'float32'],
  ];
  for (const values of sequences) {
    const fast = new FpHash();
    const slow = new FpHash();
    for (const v of values) {
      fast.update(v);
      original.call(slow, v);
    }
    assert.equal(fast.value, slow.value, JSON.stringify(values, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)));
  }
  // A whole expression, built twice (expressions cache their hash): the same under both.
  const { AluExp, AluVar } = jax;
  const build = () =>
    (AluExp as unknown as { add(a: unknown, b: unknown): unknown }).add(
      AluExp.globalIndex('float32', 0, 16, AluVar.gidx),
      AluExp.globalIndex('float32', 1, 16, AluVar.gidx),
    );
  const hash = (jax.FpHash as unknown as { hash(x: unknown): bigint }).hash;
  const viaFast = FpHash.prototype.update;
  FpHash.prototype.update = original as never;
  const expected = hash(build());
  FpHash.prototype.update = viaFast;
  assert.equal(hash(build()), expected);
});
