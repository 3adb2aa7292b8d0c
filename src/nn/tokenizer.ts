// A word tokenizer for captions and prompts: lower-case words (letters, digits, hyphens, one
// apostrophe) over a fixed vocabulary, padded to a fixed length. Id 0 pads; the empty caption (all
// padding) is the unconditional text that caption dropout trains and guidance uses as its
// negative. It travels with a model as JSON ({ vocab, maxTokens }), checked when read.

export class PromptError extends Error {
  override name = 'PromptError';
}

export type TokenizerConfig = { vocab: string[]; maxTokens: number };

export type Encoded = {
  /** maxTokens ids, 0 after the last word. */
  ids: Int32Array;
  /** Words kept. */
  length: number;
  /** Words outside the vocabulary (left out), in order. */
  unknown: string[];
  /** Words past maxTokens (left out). */
  truncated: number;
};

const WORD = /^[a-z0-9]+(?:['-][a-z0-9]+)*$/;
const MAX_TOKENS_LIMIT = 256;
const MAX_VOCAB = 65536;

/** The words of a text: lower-cased, split at spaces and punctuation (, . ; : ! ?). */
export function wordsOf(text: string): string[] {
  const lower = text.toLowerCase();
  const bad = [...new Set([...lower].filter((ch) => !/[a-z0-9 \t\n,.;:!?'-]/.test(ch)))];
  if (bad.length) {
    const shown = bad.slice(0, 5).map((ch) => `"${ch}" (U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')})`).join(', ');
    throw new PromptError(`the text "${text.length > 60 ? text.slice(0, 57) + '...' : text}" has characters the tokenizer does not know: ${shown}; use letters a–z, digits, spaces, hyphens and , . ; : ! ? '`);
  }
  return lower.split(/[\s,.;:!?]+/).filter((w) => w.length > 0);
}

export class WordTokenizer {
  readonly vocab: readonly string[];
  readonly maxTokens: number;
  readonly #ids: Map<string, number>;

  constructor(config: TokenizerConfig) {
    const { vocab, maxTokens } = checkTokenizerConfig(config);
    this.vocab = vocab;
    this.maxTokens = maxTokens;
    this.#ids = new Map(vocab.map((w, i) => [w, i + 1]));
  }

  /** The vocabulary of a set of captions (every word, sorted), and room for the longest. */
  static fromCaptions(captions: string[], maxTokens?: number): WordTokenizer {
    const words = new Set<string>();
    let longest = 0;
    for (const c of captions) {
      const ws = wordsOf(c);
      ws.forEach((w) => words.add(w));
      longest = Math.max(longest, ws.length);
    }
    return new WordTokenizer({ vocab: [...words].sort(), maxTokens: maxTokens ?? Math.max(1, longest) });
  }

  /** Ids: 1 + the word's index in the vocabulary; 0 pads. */
  get vocabSize(): number {
    return this.vocab.length + 1;
  }

  encode(text: string): Encoded {
    const ids = new Int32Array(this.maxTokens);
    const unknown: string[] = [];
    let length = 0;
    let truncated = 0;
    for (const w of wordsOf(text)) {
      const id = this.#ids.get(w);
      if (id === undefined) unknown.push(w);
      else if (length < this.maxTokens) ids[length++] = id;
      else truncated++;
    }
    return { ids, length, unknown, truncated };
  }

  decode(ids: ArrayLike<number>): string {
    return Array.from(ids)
      .filter((id) => id > 0)
      .map((id) => this.vocab[id - 1] ?? '?')
      .join(' ');
  }

  toJSON(): TokenizerConfig {
    return { vocab: [...this.vocab], maxTokens: this.maxTokens };
  }
}

/** A tokenizer config as read from a file, checked: one clear message for anything malformed. */
export function checkTokenizerConfig(raw: unknown, where = 'tokenizer'): TokenizerConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PromptError(`${where}: expected an object { vocab, maxTokens }`);
  const { vocab, maxTokens } = raw as Record<string, unknown>;
  if (!Number.isInteger(maxTokens) || (maxTokens as number) < 1 || (maxTokens as number) > MAX_TOKENS_LIMIT) {
    throw new PromptError(`${where}: 'maxTokens' must be an integer in 1..${MAX_TOKENS_LIMIT}, got ${JSON.stringify(maxTokens)}`);
  }
  if (!Array.isArray(vocab) || vocab.length === 0 || vocab.length > MAX_VOCAB) throw new PromptError(`${where}: 'vocab' must be a list of 1..${MAX_VOCAB} words`);
  const seen = new Set<string>();
  for (const [i, w] of vocab.entries()) {
    if (typeof w !== 'string' || !WORD.test(w)) throw new PromptError(`${where}: vocab[${i}] is not a lower-case word: ${JSON.stringify(w)?.slice(0, 40)}`);
    if (seen.has(w)) throw new PromptError(`${where}: vocab[${i}] "${w}" appears twice`);
    seen.add(w);
  }
  return { vocab: vocab as string[], maxTokens: maxTokens as number };
}
