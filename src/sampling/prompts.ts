// Prompts → the text states a text-conditioned model samples from, for models with their own text
// encoder (models/model.ts `textEncoder`): each prompt tokenized with the model's vocabulary and
// encoded once, and the empty caption's states as guidance's negative. Words outside the
// vocabulary and words past the model's text length are left out with a warning; a prompt with no
// word the model knows, or with characters the tokenizer lacks, is refused.
import { fromI32, toF32 } from '../engine/index.js';
import { PromptError, WordTokenizer, wordsOf } from '../nn/tokenizer.js';
import type { Model } from '../models/model.js';

export type PromptText = { states: Float32Array; negative: Float32Array; warnings: string[] };

/** Text states for `prompts` (one per sample, [n, L, D] row-major) and the empty caption's, repeated n times. */
export async function promptText(model: Model, prompts: string[]): Promise<PromptText> {
  const enc = model.family.textEncoder?.(model.cfg) ?? null;
  if (!enc) {
    throw new PromptError(
      (model.cfg.textDim ?? 0) > 0
        ? 'this model takes precomputed text states (--text-key), not prompts: it has no text encoder of its own'
        : 'this model is not text-conditioned: it takes no prompt',
    );
  }
  const tok = new WordTokenizer(enc.tokenizer);
  const L = tok.maxTokens;
  const warnings: string[] = [];
  const unique = [...new Set(prompts)];
  const ids = new Int32Array((unique.length + 1) * L); // the last row: the empty caption
  unique.forEach((p, i) => {
    if (wordsOf(p).length === 0) throw new PromptError('an empty prompt: give words (the empty caption is the unconditional text guidance compares against)');
    const e = tok.encode(p);
    const shown = p.length > 60 ? `${p.slice(0, 57)}...` : p;
    if (e.length === 0) throw new PromptError(`prompt "${shown}": none of its words is in the model's vocabulary (${tok.vocab.length} words, e.g. ${tok.vocab.slice(0, 8).join(', ')})`);
    if (e.unknown.length) warnings.push(`prompt "${shown}": left out ${e.unknown.length === 1 ? 'a word' : 'words'} the model does not know: ${e.unknown.join(', ')}`);
    if (e.truncated) warnings.push(`prompt "${shown}": the model reads ${L} words; the last ${e.truncated === 1 ? 'word was' : `${e.truncated} were`} left out`);
    ids.set(e.ids, i * L);
  });
  const states = await toF32(enc.encode(model.params, fromI32(ids, [unique.length + 1, L])));
  const width = states.length / (unique.length + 1);
  const row = new Map(unique.map((p, i) => [p, i]));
  const out = new Float32Array(prompts.length * width);
  const negative = new Float32Array(prompts.length * width);
  prompts.forEach((p, k) => {
    const i = row.get(p)!;
    out.set(states.subarray(i * width, (i + 1) * width), k * width);
    negative.set(states.subarray(unique.length * width), k * width);
  });
  return { states: out, negative, warnings };
}
