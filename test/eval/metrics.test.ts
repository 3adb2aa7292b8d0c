// Sample-quality metrics: closed forms, unbiasedness, toy manifolds and clear errors. Pure host
// math except the last block, which runs the feature extractor with random weights (no training).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/rng.js';
import {
  MetricsError,
  argmaxRows,
  classAccuracy,
  featureSet,
  frechetDistance,
  frechetFromFits,
  gaussianFit,
  kernelDistance,
  precisionRecall,
  sqrtPsd,
  symmetricEigen,
  type FeatureSet,
} from '../../src/eval/metrics.js';

/** n draws of N(mean, L Lᵀ) for a lower-triangular or any square L (row-major, d×d). */
function gaussian(rng: Rng, n: number, mean: number[], L: number[][]): FeatureSet {
  const d = mean.length;
  const data = new Float64Array(n * d);
  const z = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < d; k++) z[k] = rng.normal();
    for (let j = 0; j < d; j++) {
      let v = mean[j]!;
      for (let k = 0; k < d; k++) v += L[j]![k]! * z[k]!;
      data[i * d + j] = v;
    }
  }
  return featureSet(data, n, d);
}

const eye = (d: number, s = 1) => Array.from({ length: d }, (_, i) => Array.from({ length: d }, (_, j) => (i === j ? s : 0)));

function randomSymmetric(rng: Rng, d: number): Float64Array {
  const a = new Float64Array(d * d);
  for (let i = 0; i < d; i++) for (let j = i; j < d; j++) a[i * d + j] = a[j * d + i] = rng.normal();
  return a;
}

describe('Jacobi eigen-decomposition and PSD square roots', () => {
  test('reconstructs a random symmetric 40×40 matrix; eigenvectors orthonormal', () => {
    const d = 40;
    const a = randomSymmetric(new Rng(1), d);
    const { values, vectors: v } = symmetricEigen(a, d);
    let err = 0;
    let orth = 0;
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        let s = 0;
        let o = 0;
        for (let k = 0; k < d; k++) {
          s += v[i * d + k]! * values[k]! * v[j * d + k]!;
          o += v[k * d + i]! * v[k * d + j]!;
        }
        err = Math.max(err, Math.abs(s - a[i * d + j]!));
        orth = Math.max(orth, Math.abs(o - (i === j ? 1 : 0)));
      }
    }
    assert.ok(err < 1e-10, `reconstruction error ${err}`);
    assert.ok(orth < 1e-12, `orthogonality error ${orth}`);
  });

  test('sqrtPsd squares back to a 128×128 covariance', () => {
    const d = 128;
    const rng = new Rng(2);
    const g = gaussianFit(gaussian(rng, 400, new Array(d).fill(0), eye(d)));
    const r = sqrtPsd(g.cov, d);
    let err = 0;
    for (let i = 0; i < d; i++) {
      for (let j = 0; j < d; j++) {
        let s = 0;
        for (let k = 0; k < d; k++) s += r[i * d + k]! * r[k * d + j]!;
        err = Math.max(err, Math.abs(s - g.cov[i * d + j]!));
      }
    }
    assert.ok(err < 1e-9, `max |R² − C| = ${err}`);
  });
});

describe('Fréchet distance', () => {
  test('identical sets give ~0', () => {
    const f = gaussian(new Rng(3), 300, [1, 2, 3, 4, 5, 6, 7, 8], eye(8, 0.5));
    assert.ok(frechetDistance(f, f) < 1e-8, `${frechetDistance(f, f)}`);
  });

  test('closed form for diagonal Gaussians: |δ|² + Σ (√a − √b)²', () => {
    const d = 3;
    const fit = (mean: number[], diag: number[]) => {
      const cov = new Float64Array(d * d);
      diag.forEach((v, i) => (cov[i * d + i] = v));
      return { d, mean: Float64Array.from(mean), cov };
    };
    const got = frechetFromFits(fit([0, 0, 0], [1, 4, 9]), fit([1, 2, 0], [4, 1, 9]));
    const want = 1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0;
    assert.ok(Math.abs(got - want) < 1e-10, `${got} vs ${want}`);
  });

  test('closed form for non-commuting 2×2 covariances: tr((AB)^½) from the eigenvalues of AB', () => {
    // A = diag(4, 1), B = [[2, 1], [1, 2]]: AB has eigenvalues λ, tr((AB)^½) = Σ √λ.
    const A = [4, 0, 0, 1];
    const B = [2, 1, 1, 2];
    const ab = [A[0]! * B[0]! + A[1]! * B[2]!, A[0]! * B[1]! + A[1]! * B[3]!, A[2]! * B[0]! + A[3]! * B[2]!, A[2]! * B[1]! + A[3]! * B[3]!];
    const tr = ab[0]! + ab[3]!;
    const det = ab[0]! * ab[3]! - ab[1]! * ab[2]!;
    const l1 = (tr + Math.sqrt(tr * tr - 4 * det)) / 2;
    const l2 = (tr - Math.sqrt(tr * tr - 4 * det)) / 2;
    const want = 0.25 + 5 + 4 - 2 * (Math.sqrt(l1) + Math.sqrt(l2));
    const got = frechetFromFits({ d: 2, mean: Float64Array.from([0, 0.5]), cov: Float64Array.from(A) }, { d: 2, mean: Float64Array.from([0, 0]), cov: Float64Array.from(B) });
    assert.ok(Math.abs(got - want) < 1e-10, `${got} vs ${want}`);
  });

  test('shifted Gaussian samples approach |δ|²', () => {
    const d = 4;
    const L = [
      [1, 0, 0, 0],
      [0.5, 1, 0, 0],
      [0.2, -0.3, 0.8, 0],
      [0, 0.4, 0.1, 0.6],
    ];
    const shift = [2, -1, 0.5, 0];
    const rng = new Rng(4);
    const a = gaussian(rng, 20000, [0, 0, 0, 0], L);
    const b = gaussian(rng, 20000, shift, L);
    const want = shift.reduce((s, v) => s + v * v, 0);
    const got = frechetDistance(a, b);
    assert.ok(Math.abs(got - want) < 0.05, `${got} vs ${want}`);
  });
});

describe('KID', () => {
  test('unbiased: averages to 0 over independent same-distribution pairs; clearly positive for a shift', () => {
    const rng = new Rng(5);
    const d = 16;
    const zero = new Array(d).fill(0);
    const vals: number[] = [];
    for (let t = 0; t < 40; t++) {
      vals.push(kernelDistance(gaussian(rng, 60, zero, eye(d)), gaussian(rng, 60, zero, eye(d)), { subsets: 1, seed: t }).mean);
    }
    const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
    const se = Math.sqrt(vals.reduce((a, b) => a + (b - mean) ** 2, 0) / (vals.length - 1) / vals.length);
    assert.ok(Math.abs(mean) < 3 * se, `same distribution: ${mean} ± ${se}`);
    const shifted = kernelDistance(gaussian(rng, 400, zero, eye(d)), gaussian(rng, 400, new Array(d).fill(0.5), eye(d)), { subsets: 10, subsetSize: 200 });
    assert.ok(shifted.mean > 20 * se && shifted.mean > 10 * shifted.stdError, `shifted: ${shifted.mean} ± ${shifted.stdError}`);
    assert.equal(shifted.subsetSize, 200);
  });

  test('seeded: the same seed gives the same value', () => {
    const rng = new Rng(6);
    const a = gaussian(rng, 50, [0, 0], eye(2));
    const b = gaussian(rng, 50, [1, 0], eye(2));
    assert.equal(kernelDistance(a, b, { seed: 3, subsets: 5, subsetSize: 20 }).mean, kernelDistance(a, b, { seed: 3, subsets: 5, subsetSize: 20 }).mean);
  });
});

describe('precision and recall', () => {
  test('identical sets: 1 and 1', () => {
    const f = gaussian(new Rng(7), 100, [0, 0], eye(2));
    const r = precisionRecall(f, f);
    assert.equal(r.precision, 1);
    assert.equal(r.recall, 1);
  });

  test('a generator collapsed onto part of the data: high precision, low recall', () => {
    const rng = new Rng(8);
    const real = gaussian(rng, 300, [0, 0], eye(2));
    // Generated: a tight cluster at the origin (mode collapse).
    const collapsed = gaussian(rng, 300, [0, 0], eye(2, 0.05));
    const r = precisionRecall(real, collapsed);
    assert.ok(r.precision > 0.95, `precision ${r.precision}`);
    assert.ok(r.recall < 0.3, `recall ${r.recall}`);
  });

  test('disjoint sets: 0 and 0', () => {
    const rng = new Rng(9);
    const r = precisionRecall(gaussian(rng, 50, [0, 0], eye(2)), gaussian(rng, 50, [100, 0], eye(2)));
    assert.deepEqual([r.precision, r.recall], [0, 0]);
  });
});

describe('class accuracy', () => {
  test('argmax and accuracy, unconditional labels skipped', () => {
    const pred = argmaxRows([0, 1, 5, 2, 0, 0, 9, 8, 7], 3, 3);
    assert.deepEqual([...pred], [2, 0, 0]);
    assert.equal(classAccuracy(pred, [2, 1, -1]), 0.5);
  });
});

describe('errors', () => {
  const f = featureSet(new Float64Array(20), 10, 2);
  const empty = featureSet(new Float64Array(0), 0, 2);
  test('empty inputs', () => {
    assert.throws(() => frechetDistance(empty, f), (e: Error) => e instanceof MetricsError && /empty/.test(e.message));
    assert.throws(() => kernelDistance(f, empty), /empty/);
    assert.throws(() => precisionRecall(empty, f), /empty/);
    assert.throws(() => classAccuracy([], []), /needs labelled samples/);
  });
  test('mismatched feature sizes', () => {
    const g = featureSet(new Float64Array(30), 10, 3);
    assert.throws(() => frechetDistance(f, g), /feature sizes differ: 2 vs 3/);
    assert.throws(() => kernelDistance(f, g), /feature sizes differ/);
    assert.throws(() => precisionRecall(f, g), /feature sizes differ/);
  });
  test('too few vectors and bad shapes', () => {
    assert.throws(() => frechetDistance(featureSet([1, 2], 1, 2), f), /at least 2/);
    assert.throws(() => precisionRecall(featureSet(new Float64Array(6), 3, 2), f), /at least 4/);
    assert.throws(() => featureSet([1, 2, 3], 2, 2), /needs 4 values/);
  });
});
