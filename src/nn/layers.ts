// Pure layers over parameter trees. Weights are stored [in, out] (x @ w): on the wasm backend a
// matmul against a transposed view is ~30% slower, so PyTorch's [out, in] is transposed at I/O.
import { np, jnn, normalArray, uniformArray, type Arr, type Rng } from '../engine/index.js';

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
 * erf comes from piecewise polynomials (max error 7e-8 in float32, the rounding level) rather
 * than jax-js's erf: its wasm backend vectorises only +, −, ×, min/max, where, so a kernel that
 * calls erf or exp runs scalar, and GELU forward + backward was ~18% of a training step.
 */
export function gelu(x: Arr): Arr {
  if (process.env.GELU_OLD) return jnn.gelu(x, { approximate: false });
  const t = np.minimum(np.abs(x.ref).mul(Math.SQRT1_2), ERF_PIECES_END); // erf(4) = 1 − 1.5e-8
  const pieceOf = (pick: (p: ErfPiece) => number): Arr => {
    let v: Arr = np.array(pick(ERF_PIECES[ERF_PIECES.length - 1]!));
    for (let i = ERF_PIECES.length - 2; i >= 0; i--) v = np.where(t.ref.less(ERF_PIECES[i + 1]!.from), pick(ERF_PIECES[i]!), v);
    return v;
  };
  const s = t.ref.sub(pieceOf((p) => p.center));
  let erf = pieceOf((p) => p.coef[ERF_DEGREE]!);
  for (let k = ERF_DEGREE - 1; k >= 0; k--) erf = erf.mul(s.ref).add(pieceOf((p) => p.coef[k]!));
  s.dispose();
  t.dispose();
  const signedErf = np.where(x.ref.less(0), erf.ref.neg(), erf);
  return x.mul(signedErf.add(1).mul(0.5));
}

type ErfPiece = { from: number; center: number; coef: number[] };
const ERF_DEGREE = 8;
const ERF_PIECES_END = 4;
/** erf(t) ≈ Σ coef[k]·(t − center)^k on [from, next from): Chebyshev fits, float32 coefficients. */
const ERF_PIECES: ErfPiece[] = [
  { from: 0, center: 0.375, coef: [0.4041168987751007, 0.9803528189659119, -0.3676322400569916, -0.23487599194049835, 0.1665792465209961, 0.045470159500837326, -0.05002359673380852, -0.0054121133871376514, 0.010566174983978271] },
  { from: 0.75, center: 1.125, coef: [0.8883882164955139, 0.31827396154403687, -0.35805824398994446, 0.16245178878307343, 0.027975698933005333, -0.061310064047575, 0.015488800592720509, 0.009481482207775116, -0.005637155380100012] },
  { from: 1.5, center: 2.0, coef: [0.9953222870826721, 0.02066698484122753, -0.0413338728249073, 0.04822300747036934, -0.034448131918907166, 0.013089115731418133, 0.0004947014967910945, -0.003385898657143116, 0.0014284428907558322] },
  { from: 2.5, center: 3.25, coef: [0.9999957084655762, 2.911384217441082e-05, -9.486897033639252e-05, 0.00019761722069233656, -0.00028652753098867834, 0.00030196228181011975, -0.0002635357959661633, 0.0001992764009628445, -8.245210483437404e-05] },
];

export type Mlp = { fc1: Linear; fc2: Linear };
export function mlp(p: Mlp, x: Arr): Arr {
  return linear(p.fc2, gelu(linear(p.fc1, x)));
}

/** SwiGLU feed-forward: fc2(silu(gate(x)) * up(x)). */
export type SwiGlu = { gate: Linear; up: Linear; fc2: Linear };
export function swiglu(p: SwiGlu, x: Arr): Arr {
  return linear(p.fc2, jnn.silu(linear(p.gate, x.ref)).mul(linear(p.up, x)));
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

export function initSwiGlu(rng: Rng, width: number, hidden: number): SwiGlu {
  return { gate: initLinear(rng.fork(0), width, hidden), up: initLinear(rng.fork(1), width, hidden), fc2: initLinear(rng.fork(2), hidden, width) };
}
