// Sample-quality metrics over feature vectors: pure host math (Float64 accumulations), no engine.
//
//  - Fréchet distance between Gaussian fits of two feature sets (the statistic FID computes, here
//    on the features of our own MNIST classifier, so it is called the Fréchet distance: its values
//    are not comparable with published FIDs):
//      d² = |μ₁ − μ₂|² + tr(A) + tr(B) − 2 tr((A^{1/2} B A^{1/2})^{1/2}),
//    the symmetric form of tr((AB)^{1/2}); both square roots come from a cyclic Jacobi
//    eigen-decomposition of symmetric matrices.
//  - KID: the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³, averaged over
//    random subsets; mean and standard error.
//  - Precision and recall with k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019, k = 3).
//  - Class accuracy of predictions against intended labels.
import { Rng } from '../engine/rng.js';

export class MetricsError extends Error {
  override name = 'MetricsError';
}

/** n feature vectors of size d, row-major. */
export type FeatureSet = { n: number; d: number; data: ArrayLike<number> };

export function featureSet(data: ArrayLike<number>, n: number, d: number): FeatureSet {
  if (!Number.isInteger(n) || n < 0 || !Number.isInteger(d) || d < 1) throw new MetricsError(`bad feature set shape [${n}, ${d}]`);
  if (data.length !== n * d) throw new MetricsError(`a feature set of ${n}×${d} needs ${n * d} values, got ${data.length}`);
  return { n, d, data };
}

function checkSet(f: FeatureSet, what: string, min = 1): void {
  if (f.n === 0) throw new MetricsError(`${what} is empty (no feature vectors)`);
  if (f.n < min) throw new MetricsError(`${what} has ${f.n} feature vector${f.n === 1 ? '' : 's'}; at least ${min} are needed`);
  if (f.data.length !== f.n * f.d) throw new MetricsError(`${what}: ${f.data.length} values do not fill ${f.n}×${f.d}`);
}

function checkPair(a: FeatureSet, b: FeatureSet, min = 1): void {
  checkSet(a, 'the first feature set', min);
  checkSet(b, 'the second feature set', min);
  if (a.d !== b.d) throw new MetricsError(`feature sizes differ: ${a.d} vs ${b.d}`);
}

// ---- Gaussian fits and the Fréchet distance ----

export type GaussianFit = { d: number; mean: Float64Array; cov: Float64Array };

/** Mean and unbiased covariance (n − 1) of a feature set, in Float64. */
export function gaussianFit(f: FeatureSet): GaussianFit {
  checkSet(f, 'the feature set', 2);
  const { n, d, data } = f;
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j]! += data[i * d + j]!;
  for (let j = 0; j < d; j++) mean[j]! /= n;
  const cov = new Float64Array(d * d);
  const row = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) row[j] = data[i * d + j]! - mean[j]!;
    for (let j = 0; j < d; j++) {
      const rj = row[j]!;
      if (rj === 0) continue;
      const off = j * d;
      for (let k = j; k < d; k++) cov[off + k]! += rj * row[k]!;
    }
  }
  for (let j = 0; j < d; j++) {
    for (let k = j; k < d; k++) {
      const v = cov[j * d + k]! / (n - 1);
      cov[j * d + k] = v;
      cov[k * d + j] = v;
    }
  }
  return { d, mean, cov };
}

/**
 * Eigen-decomposition of a symmetric d×d matrix (row-major) by cyclic Jacobi rotations:
 * A = V diag(values) Vᵀ, eigenvectors in the columns of V. Converges quadratically; stops when the
 * off-diagonal mass is negligible against the diagonal.
 */
export function symmetricEigen(matrix: ArrayLike<number>, d: number, opts: { maxSweeps?: number; tol?: number } = {}): { values: Float64Array; vectors: Float64Array } {
  if (matrix.length !== d * d) throw new MetricsError(`symmetricEigen: ${matrix.length} values do not make a ${d}×${d} matrix`);
  const a = Float64Array.from(matrix);
  // Symmetrise (rounding in products of symmetric matrices leaves tiny asymmetries).
  for (let i = 0; i < d; i++) {
    for (let j = i + 1; j < d; j++) {
      const v = 0.5 * (a[i * d + j]! + a[j * d + i]!);
      a[i * d + j] = v;
      a[j * d + i] = v;
    }
  }
  const v = new Float64Array(d * d);
  for (let i = 0; i < d; i++) v[i * d + i] = 1;
  const maxSweeps = opts.maxSweeps ?? 60;
  const tol = opts.tol ?? 1e-30;
  for (let sweep = 0; sweep < maxSweeps; sweep++) {
    let off = 0;
    let diag = 0;
    for (let i = 0; i < d; i++) {
      diag += a[i * d + i]! ** 2;
      for (let j = i + 1; j < d; j++) off += a[i * d + j]! ** 2;
    }
    if (off <= tol * Math.max(diag, Number.MIN_VALUE) || off === 0) break;
    for (let p = 0; p < d - 1; p++) {
      for (let q = p + 1; q < d; q++) {
        const apq = a[p * d + q]!;
        if (apq === 0) continue;
        const app = a[p * d + p]!;
        const aqq = a[q * d + q]!;
        // Skip rotations below rounding: they cannot change the diagonal.
        if (Math.abs(apq) < 1e-300 || (sweep > 3 && Math.abs(apq) * 1e17 < Math.abs(app) && Math.abs(apq) * 1e17 < Math.abs(aqq))) {
          a[p * d + q] = 0;
          a[q * d + p] = 0;
          continue;
        }
        const theta = (aqq - app) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < d; k++) {
          const akp = a[k * d + p]!;
          const akq = a[k * d + q]!;
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (let k = 0; k < d; k++) {
          const apk = a[p * d + k]!;
          const aqk = a[q * d + k]!;
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
        a[p * d + q] = 0;
        a[q * d + p] = 0;
        for (let k = 0; k < d; k++) {
          const vkp = v[k * d + p]!;
          const vkq = v[k * d + q]!;
          v[k * d + p] = c * vkp - s * vkq;
          v[k * d + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  const values = new Float64Array(d);
  for (let i = 0; i < d; i++) values[i] = a[i * d + i]!;
  return { values, vectors: v };
}

/** The PSD square root V diag(√max(λ, 0)) Vᵀ of a symmetric matrix. */
export function sqrtPsd(matrix: ArrayLike<number>, d: number): Float64Array {
  const { values, vectors } = symmetricEigen(matrix, d);
  const out = new Float64Array(d * d);
  for (let k = 0; k < d; k++) {
    const s = Math.sqrt(Math.max(values[k]!, 0));
    if (s === 0) continue;
    for (let i = 0; i < d; i++) {
      const vik = vectors[i * d + k]! * s;
      if (vik === 0) continue;
      for (let j = 0; j < d; j++) out[i * d + j]! += vik * vectors[j * d + k]!;
    }
  }
  return out;
}

function matmul(a: Float64Array, b: Float64Array, d: number): Float64Array {
  const out = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < d; k++) {
      const aik = a[i * d + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < d; j++) out[i * d + j]! += aik * b[k * d + j]!;
    }
  }
  return out;
}

/** Fréchet distance (squared, as FID reports it) between two Gaussians. */
export function frechetFromFits(x: GaussianFit, y: GaussianFit): number {
  if (x.d !== y.d) throw new MetricsError(`feature sizes differ: ${x.d} vs ${y.d}`);
  const d = x.d;
  let meanTerm = 0;
  for (let j = 0; j < d; j++) meanTerm += (x.mean[j]! - y.mean[j]!) ** 2;
  let trA = 0;
  let trB = 0;
  for (let j = 0; j < d; j++) {
    trA += x.cov[j * d + j]!;
    trB += y.cov[j * d + j]!;
  }
  const rootA = sqrtPsd(x.cov, d);
  const m = matmul(matmul(rootA, y.cov, d), rootA, d);
  const { values } = symmetricEigen(m, d);
  let trRoot = 0;
  for (const l of values) trRoot += Math.sqrt(Math.max(l, 0));
  // Rounding can take an exact 0 a hair below zero.
  return Math.max(0, meanTerm + trA + trB - 2 * trRoot);
}

/** Fréchet distance between Gaussian fits of two feature sets (each needs ≥ 2 vectors). */
export function frechetDistance(a: FeatureSet, b: FeatureSet): number {
  checkPair(a, b, 2);
  return frechetFromFits(gaussianFit(a), gaussianFit(b));
}

// ---- KID ----

export type KidResult = { mean: number; stdError: number; subsets: number; subsetSize: number };

function dot(a: ArrayLike<number>, i: number, b: ArrayLike<number>, j: number, d: number): number {
  let s = 0;
  const oa = i * d;
  const ob = j * d;
  for (let k = 0; k < d; k++) s += a[oa + k]! * b[ob + k]!;
  return s;
}

/** Unbiased MMD² of two equal-sized index subsets under k(x, y) = (x·y/d + 1)³. */
function mmdUnbiased(a: FeatureSet, ia: ArrayLike<number>, b: FeatureSet, ib: ArrayLike<number>): number {
  const d = a.d;
  const m = ia.length;
  const k = (x: ArrayLike<number>, i: number, y: ArrayLike<number>, j: number) => (dot(x, i, y, j, d) / d + 1) ** 3;
  let kxx = 0;
  let kyy = 0;
  let kxy = 0;
  for (let i = 0; i < m; i++) {
    for (let j = i + 1; j < m; j++) {
      kxx += k(a.data, ia[i]!, a.data, ia[j]!);
      kyy += k(b.data, ib[i]!, b.data, ib[j]!);
    }
    for (let j = 0; j < m; j++) kxy += k(a.data, ia[i]!, b.data, ib[j]!);
  }
  return (2 * kxx) / (m * (m - 1)) + (2 * kyy) / (m * (m - 1)) - (2 * kxy) / (m * m);
}

/** `m` distinct indices of 0..n-1 (a partial Fisher-Yates shuffle). */
function choose(n: number, m: number, rng: Rng): Uint32Array {
  const idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) idx[i] = i;
  for (let i = 0; i < m; i++) {
    const j = i + rng.int(n - i);
    const t = idx[i]!;
    idx[i] = idx[j]!;
    idx[j] = t;
  }
  return idx.slice(0, m);
}

/**
 * Kernel Inception Distance on our features: the unbiased MMD² with the cubic polynomial kernel,
 * over `subsets` random subsets of size min(subsetSize, n_a, n_b) drawn without replacement
 * (seeded); mean and standard error of the mean over subsets.
 */
export function kernelDistance(a: FeatureSet, b: FeatureSet, opts: { subsets?: number; subsetSize?: number; seed?: number } = {}): KidResult {
  checkPair(a, b, 2);
  const subsets = opts.subsets ?? 50;
  if (!Number.isInteger(subsets) || subsets < 1) throw new MetricsError(`KID needs ≥ 1 subsets, got ${subsets}`);
  const m = Math.min(opts.subsetSize ?? 1000, a.n, b.n);
  if (m < 2) throw new MetricsError(`KID needs subsets of ≥ 2 vectors, got ${m}`);
  const rng = new Rng(opts.seed ?? 0);
  const vals: number[] = [];
  for (let s = 0; s < subsets; s++) vals.push(mmdUnbiased(a, choose(a.n, m, rng), b, choose(b.n, m, rng)));
  const mean = vals.reduce((x, y) => x + y, 0) / subsets;
  const variance = subsets > 1 ? vals.reduce((x, y) => x + (y - mean) ** 2, 0) / (subsets - 1) : 0;
  return { mean, stdError: Math.sqrt(variance / subsets), subsets, subsetSize: m };
}

// ---- precision and recall ----

function squaredDistances(a: FeatureSet, b: FeatureSet): Float64Array {
  const d = a.d;
  const na = new Float64Array(a.n);
  const nb = new Float64Array(b.n);
  for (let i = 0; i < a.n; i++) na[i] = dot(a.data, i, a.data, i, d);
  for (let j = 0; j < b.n; j++) nb[j] = dot(b.data, j, b.data, j, d);
  const out = new Float64Array(a.n * b.n);
  for (let i = 0; i < a.n; i++) {
    for (let j = 0; j < b.n; j++) out[i * b.n + j] = Math.max(0, na[i]! + nb[j]! - 2 * dot(a.data, i, b.data, j, d));
  }
  return out;
}

/** Squared distance from each vector to its k-th nearest neighbour in the same set (self excluded). */
function kthNeighbourRadii(f: FeatureSet, k: number): Float64Array {
  const dist = squaredDistances(f, f);
  const out = new Float64Array(f.n);
  const row = new Float64Array(f.n - 1);
  for (let i = 0; i < f.n; i++) {
    let c = 0;
    for (let j = 0; j < f.n; j++) if (j !== i) row[c++] = dist[i * f.n + j]!;
    row.sort();
    out[i] = row[k - 1]!;
  }
  return out;
}

/** Fraction of `probe` vectors inside the union of balls around `support` vectors. */
function coverage(probe: FeatureSet, support: FeatureSet, radii: Float64Array): number {
  const dist = squaredDistances(probe, support);
  let inside = 0;
  for (let i = 0; i < probe.n; i++) {
    for (let j = 0; j < support.n; j++) {
      if (dist[i * support.n + j]! <= radii[j]!) {
        inside++;
        break;
      }
    }
  }
  return inside / probe.n;
}

/**
 * Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
 * balls reaching every vector's k-th nearest neighbour. Precision = the share of generated
 * vectors on the real manifold; recall = the share of real vectors on the generated manifold.
 * Both sets need more than k vectors; they should be of equal size for the two to be comparable.
 */
export function precisionRecall(real: FeatureSet, generated: FeatureSet, k = 3): { precision: number; recall: number; k: number } {
  if (!Number.isInteger(k) || k < 1) throw new MetricsError(`k must be an integer ≥ 1, got ${k}`);
  checkPair(real, generated, k + 1);
  return {
    precision: coverage(generated, real, kthNeighbourRadii(real, k)),
    recall: coverage(real, generated, kthNeighbourRadii(generated, k)),
    k,
  };
}

// ---- classes ----

/** Row-wise argmax of [n, classes] logits. */
export function argmaxRows(logits: ArrayLike<number>, n: number, classes: number): Int32Array {
  if (logits.length !== n * classes) throw new MetricsError(`${logits.length} logits do not fill ${n}×${classes}`);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (logits[i * classes + c]! > logits[i * classes + best]!) best = c;
    out[i] = best;
  }
  return out;
}

/** Share of predictions equal to their intended label; labels < 0 (unconditional) are skipped. */
export function classAccuracy(predictions: ArrayLike<number>, labels: ArrayLike<number>): number {
  if (predictions.length !== labels.length) throw new MetricsError(`${predictions.length} predictions for ${labels.length} labels`);
  let n = 0;
  let right = 0;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i]! < 0) continue;
    n++;
    if (predictions[i] === labels[i]) right++;
  }
  if (n === 0) throw new MetricsError('class accuracy needs labelled samples (there are none)');
  return right / n;
}
