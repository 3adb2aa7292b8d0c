// Small seeded PRNG for data pipelines. Not cryptographic; chosen so that every
// random decision (shuffles, flips, noise) is reproducible from a seed.

const TWO_32 = 4294967296;

// Murmur3 finaliser: a bijective avalanche on 32-bit words.
function mix32(z: number): number {
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

// Seeds may exceed 32 bits (e.g. Date.now()); fold the high word in rather than truncating it.
function seedWord(seed: number): number {
  if (!Number.isFinite(seed)) throw new Error(`rng seed must be a finite number, got ${seed}`);
  const s = Math.trunc(seed);
  const lo = s >>> 0;
  const hi = Math.floor(s / TWO_32) >>> 0;
  return mix32(lo ^ mix32(hi ^ 0x9e3779b9));
}

// Stream used by epochOrder, kept apart from small fork numbers a caller might pick.
const EPOCH_STREAM = 0x45504f43;

/** splitmix32-style generator: a Weyl sequence passed through mix32. */
export class Rng {
  private state: number;
  private seedBase: number;
  private spare: number | null = null;

  constructor(seed: number) {
    this.seedBase = seedWord(seed);
    this.state = this.seedBase;
  }

  nextU32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state);
  }

  /** Uniform in [0, 1) with 32 bits of resolution. */
  uniform(): number {
    return this.nextU32() / TWO_32;
  }

  /** Unbiased integer in [0, n), n ≤ 2^32. */
  int(n: number): number {
    if (!(n >= 1 && n <= TWO_32) || !Number.isInteger(n)) throw new Error(`rng.int: bad bound ${n}`);
    // Rejection removes the modulo bias that matters for large n.
    const limit = TWO_32 - (TWO_32 % n);
    let u = this.nextU32();
    while (u >= limit) u = this.nextU32();
    return u % n;
  }

  /** Standard normal via Box-Muller; the second variate is kept for the next call. */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const u1 = 1 - this.uniform(); // (0, 1] so log is finite
    const u2 = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    const t = 2 * Math.PI * u2;
    this.spare = r * Math.sin(t);
    return r * Math.cos(t);
  }

  /** Fisher-Yates shuffle in place; returns the same array. */
  shuffle<T extends { length: number; [i: number]: unknown }>(array: T): T {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = array[i];
      array[i] = array[j];
      array[j] = tmp;
    }
    return array;
  }

  /**
   * Independent generator for `stream`. Depends only on the constructor seed and
   * `stream`, not on how many numbers were drawn, so forks stay stable when code
   * that draws from the parent changes.
   */
  fork(stream: number): Rng {
    const child = new Rng(0);
    const word = seedWord(stream);
    const s = mix32(this.seedBase ^ mix32(word + 0x632be59b));
    child.seedBase = s;
    child.state = s;
    return child;
  }
}

/** A permutation of 0..n-1 determined only by (seed, epoch). */
export function epochOrder(n: number, seed: number, epoch: number): Uint32Array {
  if (!Number.isInteger(n) || n < 0) throw new Error(`epochOrder: bad size ${n}`);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  return new Rng(seed).fork(EPOCH_STREAM).fork(epoch).shuffle(order);
}
