// Charts carry a title and axis titles: the text is drawn where it belongs, and nothing is drawn
// there without it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lineChart } from '../../src/eval/chart.js';
import type { RasterImage } from '../../src/io/png.js';

/** Dark pixels (all channels < 128) inside a rectangle. */
function ink(im: RasterImage, x0: number, y0: number, x1: number, y1: number): number {
  let n = 0;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const o = (y * im.width + x) * 3;
    if (im.data[o]! < 128 && im.data[o + 1]! < 128 && im.data[o + 2]! < 128) n++;
  }
  return n;
}

const series = [{ points: [[0, 1], [1, 3], [2, 2]] as [number, number][], color: [0, 0, 255] as [number, number, number] }];

test('title on top, x title at the bottom, y title reading upwards on the left', () => {
  const plain = lineChart(series);
  const titled = lineChart(series, { title: 'class accuracy', xLabel: 'guidance weight', yLabel: 'accuracy' });
  const { width: w, height: h } = titled;
  assert.equal(ink(plain, 0, 0, w, 8), 0);
  assert.ok(ink(titled, 0, 0, w, 10) > 40, 'title drawn');
  assert.equal(ink(plain, 0, h - 6, w, h), 0); // below the tick labels
  assert.ok(ink(titled, 0, h - 6, w, h) > 10, 'x-axis title drawn');
  assert.equal(ink(plain, 0, 0, 8, h), 0);
  assert.ok(ink(titled, 0, 0, 9, h) > 30, 'y-axis title drawn');
});

test('letters draw (as capitals), unknown characters are skipped', () => {
  const a = lineChart(series, { title: 'abc' });
  const b = lineChart(series, { title: 'ABC' });
  assert.deepEqual(a.data, b.data);
  assert.equal(ink(lineChart(series, { title: '\u00e9\u00e9' }), 0, 0, a.width, 10), 0);
});
