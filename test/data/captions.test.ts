// Captions from labels and measured attributes: the measurements on synthetic strokes whose
// thickness, slant and height are known; the attributes' relation to the ink on real MNIST; the
// captions' words, variety and reproducibility.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attributesOf, captionsOf, caption, captionWords, measureInk, MNIST_VOCABULARY, FASHION_VOCABULARY, SLANTED_ABOVE } from '../../src/data/captions.js';
import { wordsOf } from '../../src/nn/tokenizer.js';
import { loadMnist } from '../../src/data/mnist.js';
import { Rng } from '../../src/engine/rng.js';

/** A 28×28 vertical bar `width` pixels wide over rows top..bottom, sheared by `shear` pixels per row upwards. */
function bar(width: number, shear: number, top = 4, bottom = 23): Uint8Array {
  const px = new Uint8Array(28 * 28);
  for (let y = top; y <= bottom; y++) {
    const x0 = Math.round(13 + shear * (13.5 - y));
    for (let x = x0; x < x0 + width; x++) px[y * 28 + x] = 255;
  }
  return px;
}

test('measureInk: ink grows with stroke width, slant follows the shear, height the rows', () => {
  const thin = measureInk(bar(1, 0), 28, 28);
  const thick = measureInk(bar(4, 0), 28, 28);
  assert.equal(thin.ink, 20);
  assert.equal(thick.ink, 80);
  assert.ok(Math.abs(thin.slant) < 1e-12, `upright bar: slant ${thin.slant}`);
  assert.equal(thin.height, 20);
  const right = measureInk(bar(2, 0.3), 28, 28);
  const left = measureInk(bar(2, -0.3), 28, 28);
  assert.ok(Math.abs(right.slant - 0.3) < 0.02, `right-leaning bar: slant ${right.slant}`);
  assert.ok(Math.abs(left.slant + 0.3) < 0.02, `left-leaning bar: slant ${left.slant}`);
  assert.equal(measureInk(bar(2, 0, 10, 14), 28, 28).height, 5);
  assert.deepEqual(measureInk(new Uint8Array(28 * 28), 28, 28), { ink: 0, slant: 0, height: 0 });
});

test('attributes on MNIST: thick images of a digit hold more ink than its thin ones, and slant words follow the measure', async () => {
  const ds = await loadMnist('test');
  const attrs = attributesOf(ds);
  assert.equal(attrs.length, ds.n);
  for (let d = 0; d < 10; d++) {
    const ink = (t: 'thick' | 'thin') => attrs.flatMap((a, i) => (a.label === d && a.thickness === t ? [measureInk(ds.images.subarray(i * 784, (i + 1) * 784), 28, 28).ink] : []));
    const [thick, thin] = [ink('thick'), ink('thin')];
    // Terciles: about a third of each digit in each word.
    const count = attrs.filter((a) => a.label === d).length;
    assert.ok(Math.abs(thick.length / count - 1 / 3) < 0.02 && Math.abs(thin.length / count - 1 / 3) < 0.02, `digit ${d}: ${thick.length} thick, ${thin.length} thin of ${count}`);
    assert.ok(Math.min(...thick) > Math.max(...thin), `digit ${d}: every thick image holds more ink than every thin one`);
  }
  for (const [i, a] of attrs.entries()) {
    if (a.slant !== 'right') continue;
    assert.ok(measureInk(ds.images.subarray(i * 784, (i + 1) * 784), 28, 28).slant > SLANTED_ABOVE);
  }
  const share = (s: string) => attrs.filter((a) => a.slant === s).length / attrs.length;
  assert.ok(share('right') > 0.05 && share('upright') > 0.05 && share('left') > 0.01, `slant shares: right ${share('right')}, upright ${share('upright')}, left ${share('left')}`);
});

test('captions name the class and only attributes the image has, vary, and reproduce from the seed', () => {
  const attrs = Array.from({ length: 400 }, (_, i) => ({ label: i % 10, thickness: (['thick', 'thin', null] as const)[i % 3]!, slant: (['right', 'left', 'upright', null] as const)[i % 4]!, size: (['large', 'small', null] as const)[i % 5 % 3]! }));
  const caps = captionsOf(attrs, MNIST_VOCABULARY, 1);
  assert.deepEqual(captionsOf(attrs, MNIST_VOCABULARY, 1), caps, 'same seed, same captions');
  assert.notDeepEqual(captionsOf(attrs, MNIST_VOCABULARY, 2), caps, 'another seed, other wording');
  const v = MNIST_VOCABULARY;
  const has = (c: string, words: string[]) => words.some((w) => new RegExp(`(^|[ ,])${w}($|[ ,])`).test(c));
  for (const [i, c] of caps.entries()) {
    const a = attrs[i]!;
    assert.ok(has(c, v.names[a.label]!), `"${c}" names ${a.label}`);
    for (const d of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].filter((d) => d !== a.label)) assert.ok(!has(c, v.names[d]!), `"${c}" names only ${a.label}`);
    if (a.thickness !== 'thick') assert.ok(!has(c, v.thick), `"${c}": no thick word for ${a.thickness}`);
    if (a.thickness !== 'thin') assert.ok(!has(c, v.thin), `"${c}": no thin word for ${a.thickness}`);
    if (a.slant !== 'upright') assert.ok(!has(c, v.upright), `"${c}": no upright word for ${a.slant}`);
    assert.match(c, /^[a-z0-9 ,-]+$/);
  }
  assert.ok(new Set(caps).size > 250, `varied: ${new Set(caps).size} distinct of 400`);
  // Every synonym of a thickness and every digit form turns up.
  for (const w of [...v.thick, ...v.thin, 'seven', '7']) assert.ok(caps.some((c) => has(c, [w])), `"${w}" used`);
  // Every word of every caption is in the vocabulary a text encoder is built with.
  for (const [v, name] of [[MNIST_VOCABULARY, 'mnist'], [FASHION_VOCABULARY, 'fashion']] as const) {
    const words = new Set(captionWords(v));
    for (const c of captionsOf(attrs, v, 4)) for (const w of wordsOf(c)) assert.ok(words.has(w), `${name}: "${w}" of "${c}" is in captionWords`);
  }
  assert.throws(() => caption({ label: 12, thickness: null, slant: null, size: null }, FASHION_VOCABULARY, new Rng(0)), /no name for class 12/);
});
