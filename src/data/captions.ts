// Captions for labelled image sets, made from the label and what can be measured on the image:
// ink mass (stroke thickness, relative to the class: a one has less ink than an eight), slant (the
// shear of the ink's second moments) and size (the ink's bounding-box height). The words vary from
// image to image (synonyms, digits as words and numerals, several sentence shapes, attributes left
// out), so that a text encoder learns the vocabulary rather than a fixed sentence. Everything is a
// pure function of the images, the labels and a seed.
import { Rng } from '../engine/rng.js';
import type { ImageDataset } from './dataset.js';
import { WordTokenizer, type TokenizerConfig } from '../nn/tokenizer.js';

export type Thickness = 'thick' | 'thin';
export type Slant = 'right' | 'left' | 'upright';
export type Size = 'large' | 'small';

/** What a caption may say about one image (null: unremarkable, never said). */
export type ImageAttributes = { label: number; thickness: Thickness | null; slant: Slant | null; size: Size | null };

/** Measurements of one single-channel image. */
export type InkMeasure = {
  /** Σ pixel / 255. */
  ink: number;
  /** Horizontal shift of the ink per unit of height, positive when the top leans right. */
  slant: number;
  /** Rows between the first and the last holding a pixel ≥ 128, plus one (0 for an empty image). */
  height: number;
};

/** Ink mass, slant and height of one image (`pixels`: height × width bytes). */
export function measureInk(pixels: Uint8Array, width: number, height: number): InkMeasure {
  let m = 0;
  let sx = 0;
  let sy = 0;
  let top = -1;
  let bottom = -1;
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const v = pixels[y * width + x]!;
      if (!v) continue;
      m += v;
      sx += v * x;
      sy += v * y;
      if (v >= 128) {
        if (top < 0) top = y;
        bottom = y;
      }
    }
  if (m === 0) return { ink: 0, slant: 0, height: 0 };
  const [cx, cy] = [sx / m, sy / m];
  let myy = 0;
  let mxy = 0;
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const v = pixels[y * width + x]!;
      if (!v) continue;
      myy += v * (y - cy) ** 2;
      mxy += v * (x - cx) * (y - cy);
    }
  // Rows grow downwards: a top leaning right means x falls as y grows, a negative covariance.
  return { ink: m / 255, slant: myy > 0 ? -mxy / myy : 0, height: top < 0 ? 0 : bottom - top + 1 };
}

/** |slant| under this is upright, over SLANTED leaning; in between nothing is said. */
export const UPRIGHT_BELOW = 0.08;
export const SLANTED_ABOVE = 0.22;

/**
 * The attributes of every image of a single-channel dataset. Thickness and size are relative to the
 * image's class: the lowest third of its class's ink masses is thin, the highest third thick (the
 * middle third gets no word), and likewise for heights (small, large). Slant is absolute.
 */
export function attributesOf(ds: ImageDataset): ImageAttributes[] {
  if (ds.channels !== 1) throw new Error(`captions need single-channel images, got ${ds.channels} channels`);
  const size = ds.width * ds.height;
  const measures = Array.from({ length: ds.n }, (_, i) => measureInk(ds.images.subarray(i * size, (i + 1) * size), ds.width, ds.height));
  const terciles = (pick: (m: InkMeasure) => number) =>
    Array.from({ length: ds.numClasses }, (_, c) => {
      const values = measures.filter((_, i) => ds.labels[i] === c).map(pick).sort((a, b) => a - b);
      const at = (q: number) => values[Math.min(values.length - 1, Math.floor(q * values.length))] ?? 0;
      return [at(1 / 3), at(2 / 3)] as const;
    });
  const inkCuts = terciles((m) => m.ink);
  const heightCuts = terciles((m) => m.height);
  return measures.map((m, i) => {
    const label = ds.labels[i]!;
    const [inkLo, inkHi] = inkCuts[label]!;
    const [hLo, hHi] = heightCuts[label]!;
    return {
      label,
      thickness: m.ink < inkLo ? 'thin' : m.ink > inkHi ? 'thick' : null,
      slant: Math.abs(m.slant) < UPRIGHT_BELOW ? 'upright' : m.slant > SLANTED_ABOVE ? 'right' : m.slant < -SLANTED_ABOVE ? 'left' : null,
      size: m.height < hLo ? 'small' : m.height > hHi ? 'large' : null,
    };
  });
}

/** The words a caption draws from. */
export type Vocabulary = {
  /** Per class: the ways to name it (the first is its plain name). */
  names: string[][];
  /** A noun phrase for the kind of image when the name is an adjective-less numeral ("the digit"). */
  kind: string[];
  thick: string[];
  thin: string[];
  right: string[];
  left: string[];
  upright: string[];
  large: string[];
  small: string[];
};

const DIGIT_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];

export const MNIST_VOCABULARY: Vocabulary = {
  names: DIGIT_WORDS.map((w, d) => [w, String(d)]),
  kind: ['digit', 'number', 'handwritten digit'],
  thick: ['thick', 'bold', 'heavy'],
  thin: ['thin', 'light', 'skinny'],
  right: ['slanted', 'leaning', 'tilted', 'leaning right', 'slanted to the right'],
  left: ['leaning left', 'tilted left', 'slanted to the left'],
  upright: ['upright', 'straight'],
  large: ['large', 'big', 'tall'],
  small: ['small', 'little', 'short'],
};

export const FASHION_VOCABULARY: Vocabulary = {
  names: [['t-shirt', 'top', 'tee'], ['trousers', 'pants'], ['pullover', 'sweater', 'jumper'], ['dress'], ['coat', 'jacket'], ['sandal'], ['shirt'], ['sneaker', 'trainer'], ['bag', 'handbag'], ['ankle boot', 'boot']],
  kind: ['item', 'piece of clothing'],
  thick: ['bright', 'pale'],
  thin: ['dark', 'faint'],
  right: ['tilted', 'leaning right'],
  left: ['leaning left', 'tilted left'],
  upright: ['upright', 'straight'],
  large: ['large', 'big'],
  small: ['small', 'little'],
};

/** Words of the sentence shapes around the vocabulary's. */
const FRAME_WORDS = ['a', 'an', 'with', 'strokes', 'and'];

/** Every word a caption from `vocab` can hold, sorted (a text encoder's vocabulary). */
export function captionWords(vocab: Vocabulary): string[] {
  const lists = [...vocab.names, vocab.kind, vocab.thick, vocab.thin, vocab.right, vocab.left, vocab.upright, vocab.large, vocab.small];
  return [...new Set([...FRAME_WORDS, ...lists.flat().flatMap((phrase) => phrase.split(' '))])].sort();
}

/** The caption vocabularies by dataset kind. */
export const CAPTION_VOCABULARIES: Record<string, Vocabulary> = { mnist: MNIST_VOCABULARY, 'fashion-mnist': FASHION_VOCABULARY };

/** One caption for an image's attributes; each attribute is left out with probability `drop`. */
export function caption(a: ImageAttributes, vocab: Vocabulary, rng: Rng, drop = 0.25): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng.uniform() * xs.length) % xs.length]!;
  const keep = <T>(v: T | null): T | null => (v !== null && rng.uniform() >= drop ? v : null);
  const names = vocab.names[a.label];
  if (!names) throw new Error(`caption: no name for class ${a.label}`);
  let name = pick(names);
  // A numeral reads better with its kind: "the digit 7".
  if (/^\d+$/.test(name) && rng.uniform() < 0.5) name = `${pick(vocab.kind)} ${name}`;
  const thickness = keep(a.thickness);
  const slant = keep(a.slant);
  const size = keep(a.size);
  const adjectives = [size && pick(vocab[size]), thickness && pick(vocab[thickness])].filter((w): w is string => !!w);
  const slantWord = slant && pick(vocab[slant]);
  const article = (next: string) => (/^[aeiou]/.test(next) ? 'an' : 'a');
  const shapes: (() => string)[] = [
    // "a thick slanted seven"
    () => {
      const words = [...adjectives, ...(slantWord && !slantWord.includes(' ') ? [slantWord] : []), name];
      const tail = slantWord && slantWord.includes(' ') ? `, ${slantWord}` : '';
      return `${article(words[0]!)} ${words.join(' ')}${tail}`;
    },
    // "seven, thick and slanted"
    () => {
      const attrs = [...adjectives, ...(slantWord ? [slantWord] : [])];
      return attrs.length === 0 ? name : `${name}, ${attrs.length === 1 ? attrs[0] : `${attrs.slice(0, -1).join(', ')} and ${attrs.at(-1)}`}`;
    },
    // "a 7 written with thick strokes, leaning"
    () => {
      const strokes = thickness ? ` with ${pick(vocab[thickness])} strokes` : '';
      const rest = [size && pick(vocab[size]), slantWord].filter(Boolean).join(', ');
      return `${article(name)} ${name}${strokes}${rest ? `, ${rest}` : ''}`;
    },
  ];
  return pick(shapes)().replace(/\s+/g, ' ').trim();
}

/** A caption for every image, image i drawing its words from (seed, i). */
export function captionsOf(attrs: ImageAttributes[], vocab: Vocabulary, seed: number, drop = 0.25): string[] {
  const root = new Rng(seed);
  return attrs.map((a, i) => caption(a, vocab, root.fork(i), drop));
}

/** Token ids of captions for a dataset's images, for a model's tokenizer. */
export type CaptionSource = {
  readonly maxTokens: number;
  /**
   * Ids [indices.length, maxTokens] (row-major): image i's caption drawn from `rng` (training: new
   * wording each time) or, with null, its fixed caption (evaluation); each one is the empty
   * caption (all 0) with probability `drop` (needs `rng`).
   */
  ids(indices: number[], rng: Rng | null, drop?: number): Int32Array;
};

export class CaptionError extends Error {
  override name = 'CaptionError';
}

/** Captions of a dataset's images (its `captions` vocabulary), tokenized for a model. */
export function captionSource(ds: ImageDataset, tokenizer: TokenizerConfig, seed = 0): CaptionSource {
  const kind = ds.captions;
  const vocab = kind === undefined ? undefined : CAPTION_VOCABULARIES[kind];
  if (!vocab) throw new CaptionError(`these images have no captions (captions are made for ${Object.keys(CAPTION_VOCABULARIES).join(' and ')} images)`);
  if (ds.numClasses > vocab.names.length) throw new CaptionError(`${kind} captions name ${vocab.names.length} classes; this dataset has ${ds.numClasses}`);
  const attrs = attributesOf(ds);
  const tok = new WordTokenizer(tokenizer);
  const fixed = new Rng(seed);
  const text = (index: number, rng: Rng | null) => caption(attrs[index]!, vocab, rng ? rng.fork(index) : fixed.fork(index));
  return {
    maxTokens: tok.maxTokens,
    ids(indices, rng, drop = 0) {
      const out = new Int32Array(indices.length * tok.maxTokens);
      indices.forEach((index, row) => {
        if (drop > 0 && rng!.uniform() < drop) return; // the empty caption
        out.set(tok.encode(text(index, rng)).ids, row * tok.maxTokens);
      });
      return out;
    },
  };
}
