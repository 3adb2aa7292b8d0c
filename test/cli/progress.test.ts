// The time-left estimate of the training bar: a resumed run counts only its own steps, and a
// --minutes limit caps it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { remainingSeconds } from '../../src/cli/progress.js';

test('resumed at step 1000 of 2000: 100 steps in 60 s leave 900 steps = 540 s (not 60·(2000/1100 − 1) = 49 s)', () => {
  assert.equal(remainingSeconds(60, 1100, 2000, 1000), 540);
});

test('a fresh run: the plain proportion', () => {
  assert.equal(remainingSeconds(30, 100, 400), 90);
});

test('a time limit caps the estimate; nothing done yet gives the limit, finished gives 0', () => {
  assert.equal(remainingSeconds(60, 1100, 2000, 1000, 300), 240);
  assert.equal(remainingSeconds(0, 1000, 2000, 1000, 900), 900);
  assert.equal(remainingSeconds(0, 1000, 2000, 1000), Infinity);
  assert.equal(remainingSeconds(10, 2000, 2000, 1000, 900), 0);
});
