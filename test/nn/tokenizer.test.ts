// The word tokenizer: captions' words round-trip; unknown words, overlong prompts and characters it
// lacks are reported, never silently dropped; a malformed or hostile tokenizer config is refused
// with one clear message.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WordTokenizer, checkTokenizerConfig, wordsOf, PromptError } from '../../src/nn/tokenizer.js';
import { captionsOf, MNIST_VOCABULARY } from '../../src/data/captions.js';

const attrs = Array.from({ length: 300 }, (_, i) => ({ label: i % 10, thickness: (['thick', 'thin', null] as const)[i % 3]!, slant: (['right', 'left', 'upright', null] as const)[i % 4]!, size: (['large', 'small', null] as const)[i % 5 % 3]! }));
const captions = captionsOf(attrs, MNIST_VOCABULARY, 3);

test('captions encode to ids and decode to their words', () => {
  const tok = WordTokenizer.fromCaptions(captions);
  assert.ok(tok.maxTokens >= 3 && tok.maxTokens <= 12, `room for the longest caption: ${tok.maxTokens}`);
  for (const c of captions) {
    const e = tok.encode(c);
    assert.deepEqual(e.unknown, []);
    assert.equal(e.truncated, 0);
    assert.equal(tok.decode(e.ids), wordsOf(c).join(' '));
    assert.ok(e.ids.slice(e.length).every((id) => id === 0), 'padding after the words');
    assert.ok(e.ids.slice(0, e.length).every((id) => id >= 1 && id < tok.vocabSize));
  }
  const empty = tok.encode('');
  assert.equal(empty.length, 0);
  assert.ok(empty.ids.every((id) => id === 0), 'the empty caption is all padding');
  assert.deepEqual(new WordTokenizer(JSON.parse(JSON.stringify(tok)) as never).encode(captions[0]!).ids, tok.encode(captions[0]!).ids, 'JSON round trip');
});

test('prompts: case and punctuation are ignored, unknown and overflowing words reported, foreign characters refused', () => {
  const tok = new WordTokenizer({ vocab: ['a', 'seven', 'thick', 'slanted'], maxTokens: 3 });
  assert.deepEqual([...tok.encode('A THICK, slanted seven!').ids], [1, 3, 4]);
  assert.equal(tok.encode('A THICK, slanted seven!').truncated, 1);
  assert.deepEqual(tok.encode('a purple seven').unknown, ['purple']);
  assert.throws(() => tok.encode('a thick séven'), (e: Error) => e instanceof PromptError && /characters the tokenizer does not know: "é" \(U\+00E9\)/.test(e.message));
  assert.throws(() => tok.encode('seven 🙂'), /U\+1F642/);
});

test('a malformed tokenizer config says what is wrong', () => {
  const cases: [unknown, RegExp][] = [
    [null, /expected an object/],
    [[], /expected an object/],
    [{ vocab: ['a'], maxTokens: 0 }, /'maxTokens' must be an integer in 1\.\.256, got 0/],
    [{ vocab: ['a'], maxTokens: 1e9 }, /'maxTokens'/],
    [{ vocab: ['a'], maxTokens: '4' }, /'maxTokens'/],
    [{ vocab: [], maxTokens: 4 }, /'vocab' must be a list/],
    [{ vocab: 'a b', maxTokens: 4 }, /'vocab' must be a list/],
    [{ vocab: ['a', 'a'], maxTokens: 4 }, /vocab\[1\] "a" appears twice/],
    [{ vocab: ['a', 'Seven'], maxTokens: 4 }, /vocab\[1\] is not a lower-case word/],
    [{ vocab: ['a', 'two words'], maxTokens: 4 }, /vocab\[1\]/],
    [{ vocab: ['a', 7], maxTokens: 4 }, /vocab\[1\]/],
    [{ vocab: ['__proto__'], maxTokens: 4 }, /vocab\[0\]/],
  ];
  for (const [raw, message] of cases) assert.throws(() => checkTokenizerConfig(raw, 'model/config.json text.tokenizer'), (e: Error) => e instanceof PromptError && /^model\/config\.json text\.tokenizer: /.test(e.message) && message.test(e.message), JSON.stringify(raw));
});
