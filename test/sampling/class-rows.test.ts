// Default labels lay out one row per class: `sample --n 64` on a 10-class model gave rows that were
// not classes (labels ⌊i·10/n⌋ in a grid 7 wide) before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { classRows } from '../../src/sampling/pipeline.js';

test('default labels: every grid row holds one class', () => {
  for (const n of [10, 20, 64, 100, 7]) {
    const { labels, perRow } = classRows(n, 10);
    assert.equal(labels!.length, n);
    for (let i = 0; i < n; i++) assert.equal(labels![i], Math.floor(i / perRow), `n ${n}, sample ${i}`);
    const rows = Math.ceil(n / perRow);
    for (let r = 0; r < rows; r++) assert.equal(new Set(labels!.slice(r * perRow, (r + 1) * perRow)).size, 1, `n ${n}: row ${r} mixes classes`);
    assert.ok(Math.max(...labels!) <= 9);
  }
  assert.deepEqual(classRows(64, 10).perRow, 7);
  assert.deepEqual(classRows(6, 3).labels, [0, 0, 1, 1, 2, 2]);
});

test('unconditional models: no labels, a square grid', () => {
  assert.deepEqual(classRows(64, 0), { labels: undefined, perRow: 8 });
});
