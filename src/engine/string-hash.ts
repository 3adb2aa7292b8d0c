// jax-js 0.1.25 hashes every expression it builds (to look up compiled kernels and simplified
// forms) with a polynomial hash over BigInt: v ← (v·base + x) mod p, one step per character of
// every string (op names, dtypes), each step several BigInt allocations. In a first call that was
// ~10% of the time (sampling 1024 guided samples: 0.66 s of ~6.3 s). The steps of one string
// compose into one affine map, v ← v·base^n + c (mod p), so each distinct string's (base^n, c) is
// computed once and applied in two operations: the hash values are exactly the same.
const BASE = 873192869n; // jax-js's FpHash constants
const MODULUS = 3189051996290219n;
const MAX_CACHED = 10_000;

type Hasher = { value: bigint; update(x: unknown): Hasher };

/** Patches FpHash.prototype.update for strings; returns the original update (for the tests). */
export function installFastStringHash(FpHash: { prototype: Hasher }): (this: Hasher, x: unknown) => Hasher {
  const proto = FpHash.prototype as Hasher & { __starflowFastStrings?: (this: Hasher, x: unknown) => Hasher };
  if (proto.__starflowFastStrings) return proto.__starflowFastStrings;
  const original = proto.update;
  const maps = new Map<string, readonly [bigint, bigint]>();
  const mapOf = (s: string): readonly [bigint, bigint] => {
    let m = maps.get(s);
    if (!m) {
      let pow = 1n;
      let c = 0n;
      const step = (x: bigint) => {
        c = (c * BASE + x) % MODULUS;
        pow = (pow * BASE) % MODULUS;
      };
      step(BigInt(s.length));
      for (let i = 0; i < s.length; i++) step(BigInt(199 + s.charCodeAt(i)));
      m = [pow, c];
      if (maps.size < MAX_CACHED) maps.set(s, m);
    }
    return m;
  };
  proto.update = function (this: Hasher, x: unknown): Hasher {
    if (typeof x !== 'string') return original.call(this, x);
    const [pow, c] = mapOf(x);
    this.value = (this.value * pow + c) % MODULUS;
    return this;
  };
  proto.__starflowFastStrings = original;
  return original;
}
