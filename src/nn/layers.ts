// Pure layers over parameter trees. Weights are stored [in, out] (x @ w): on the wasm backend a
// matmul against a transposed view is ~30% slower, so PyTorch's [out, in] is transposed at I/O.
import { np, jnn, lax, isDifferentiated, normalArray, uniformArray, type Arr, type Rng } from '../engine/index.js';

export type Linear = { w: Arr; b?: Arr };
export type Norm = { g: Arr; b?: Arr };

export function linear(p: Linear, x: Arr): Arr {
  const y = np.matmul(x, p.w);
  return p.b ? y.add(p.b) : y;
}

/** LayerNorm with a two-pass mean/variance (closer to PyTorch than a one-pass variance). */
export function layerNorm(p: Norm, x: Arr, eps = 1e-5): Arr {
  const mu = x.ref.mean(-1, { keepdims: true });
  const xc = x.sub(mu);
  const variance = np.square(xc.ref).mean(-1, { keepdims: true });
  const y = xc.mul(np.reciprocal(np.sqrt(variance.add(eps)))).mul(p.g);
  return p.b ? y.add(p.b) : y;
}

/** RMSNorm. `offset` 1 gives STARFlow's zero-initialised `(1 + g)` weight. */
export function rmsNorm(p: Norm, x: Arr, eps = 1e-6, offset = 0): Arr {
  const ms = np.square(x.ref).mean(-1, { keepdims: true });
  const y = x.mul(np.reciprocal(np.sqrt(ms.add(eps))));
  return y.mul(offset ? p.g.add(offset) : p.g);
}

/**
 * GELU, x·Φ(x), with the exact-erf definition (jax-js's default is the tanh approximation).
 * erf comes from one degree-16 polynomial on [0, 4] (max error 2.7e-7 in float32) rather than
 * jax-js's erf: its wasm backend vectorises only +, −, ×, min/max and where, so a kernel that
 * calls erf or exp runs scalar. One polynomial rather than pieces: per-piece coefficient selects
 * cost more than the higher degree.
 *
 * Under differentiation the gradient is given in closed form, Φ(x) + x·Φ'(x), with Φ' the
 * polynomial's derivative (what differentiating the polynomial gives; no exp, so it vectorises
 * too): the value is x·Φ(x) + x·Φ'(x)·(x − x) with both factors outside differentiation
 * (stopGradient), and a backward pass reads two saved arrays instead of every Horner step (the
 * MLP's backward kernel read 22). Elsewhere (sampling, likelihoods) Φ' would be wasted work.
 */
export function gelu(x: Arr): Arr {
  const differentiated = isDifferentiated(x);
  const fixed = differentiated ? lax.stopGradient(x.ref) : x.ref;
  const t = np.abs(fixed.ref).mul(Math.SQRT1_2);
  const inside = differentiated ? t.ref.less(ERF_END) : null; // erf(4) = 1 − 1.5e-8: flat beyond
  const s = np.minimum(t, ERF_END).sub(ERF_CENTER);
  const n = ERF_COEF.length;
  let erf: Arr = s.ref.mul(ERF_COEF[n - 1]!).add(ERF_COEF[n - 2]!);
  for (let k = n - 3; k >= 0; k--) erf = erf.mul(s.ref).add(ERF_COEF[k]!);
  let slope: Arr | null = null;
  if (inside) {
    slope = s.ref.mul((n - 1) * ERF_COEF[n - 1]!).add((n - 2) * ERF_COEF[n - 2]!);
    for (let k = n - 3; k >= 1; k--) slope = slope.mul(s.ref).add(k * ERF_COEF[k]!);
    slope = np.where(inside, slope, 0);
  }
  s.dispose();
  const cdf = np.where(fixed.ref.less(0), erf.ref.neg(), erf).add(1).mul(0.5);
  if (!slope) return (fixed.dispose(), x.mul(cdf));
  const xDensity = slope.mul(fixed.ref).mul(0.5 * Math.SQRT1_2); // x·Φ'(x)
  return x.ref.mul(cdf).add(xDensity.mul(x.sub(fixed)));
}

const ERF_END = 4;
const ERF_CENTER = 2;
/** erf(t) ≈ Σ ERF_COEF[k]·(t − 2)^k on [0, 4]: a Chebyshev fit, float32 coefficients. */
const ERF_COEF = [
  0.9953222870826721, 0.02066773734986782, -0.04133543372154236, 0.04821394011378288, -0.034434929490089417,
  0.013120608404278755, 0.0004325243062339723, -0.0034281169064342976, 0.0016271022614091635, -9.69614939094754e-6,
  -0.0002906234294641763, 8.535458619007841e-5, 1.8205972082796507e-5, -1.1796809303632472e-5, 2.351180796722474e-7,
  5.703815304514137e-7, -6.205608826803655e-8,
];

export type Mlp = { fc1: Linear; fc2: Linear };
export function mlp(p: Mlp, x: Arr): Arr {
  return linear(p.fc2, gelu(linear(p.fc1, x)));
}

/** Rows of an embedding table; a negative id selects the mean row (TARFlow's dropped label). */
export function embed(table: Arr, ids: Arr): Arr {
  const n = table.shape[0]!;
  const oneHot = jnn.oneHot(np.maximum(ids.ref, 0), n).astype(np.float32);
  const uniform = np.fullLike(oneHot.ref, 1 / n);
  const dropped = ids.less(0).reshape([-1, 1]);
  return np.matmul(np.where(dropped, uniform, oneHot), table);
}

// ---- initialisers (PyTorch's defaults, which the reference relies on) ----

/** PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias. */
export function initLinear(rng: Rng, fanIn: number, fanOut: number, opts: { bias?: boolean; zeroWeight?: boolean } = {}): Linear {
  const bound = 1 / Math.sqrt(fanIn);
  const w = opts.zeroWeight ? np.zeros([fanIn, fanOut]) : uniformArray(rng.fork(0), [fanIn, fanOut], -bound, bound);
  return opts.bias === false ? { w } : { w, b: uniformArray(rng.fork(1), [fanOut], -bound, bound) };
}

export function initNorm(width: number, opts: { bias?: boolean; zero?: boolean } = {}): Norm {
  const g = opts.zero ? np.zeros([width]) : np.ones([width]);
  return opts.bias === false ? { g } : { g, b: np.zeros([width]) };
}

export function initNormal(rng: Rng, shape: number[], std: number): Arr {
  return normalArray(rng, shape, std);
}

export function initMlp(rng: Rng, width: number, hidden: number): Mlp {
  return { fc1: initLinear(rng.fork(0), width, hidden), fc2: initLinear(rng.fork(1), hidden, width) };
}
