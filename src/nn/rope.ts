// Rotary position embeddings as STARFlow uses them (apple/ml-starflow, misc/pe.py): image positions
// are 2-D and resolution-normalised, (row, column) · ptSeqLen / √(h·w), so one model serves several
// sizes; with a text axis (3-D) text tokens sit at (0, 0, t · ptSeqLen / textTokens) ahead of the
// image and image tokens at (row, column, 0). Half of the head's features are rotated per axis
// frequency band; each angle turns one interleaved pair (x₂ⱼ, x₂ⱼ₊₁).
import { np, type Arr } from '../engine/index.js';

export type RopeLayout = {
  /** Image tokens per side (h = w). */
  side: number;
  headDim: number;
  /** Positions are scaled to this many tokens per side (ml-starflow's pt_seq_len). */
  ptSeqLen: number;
  /** Text tokens of the model (txt_size); > 0 splits the frequencies 3-D, with 8 for the text axis. */
  textTokens: number;
  /** Whether this block's sequence starts with the text tokens (a text-conditioned block). */
  textPrefix: boolean;
};

/** Angles [S, headDim] for the block's sequence positions (text first, then the image in raster order). */
export function ropeAngles(o: RopeLayout): Float32Array {
  const half = o.headDim / 2;
  if (!Number.isInteger(half) || half % 2 !== 0) throw new Error(`RoPE needs a head size divisible by 4, got ${o.headDim}`);
  const threeD = o.textTokens > 0;
  const planar = threeD ? half - 8 : half; // features per band shared by the two image axes
  if (planar <= 0 || planar % 2 !== 0) throw new Error(`RoPE with a text axis needs a head size ≥ 36 and divisible by 4, got ${o.headDim}`);
  const freqs = Array.from({ length: planar / 2 }, (_, k) => 1 / 10000 ** ((2 * k) / planar));
  const textFreqs = threeD ? Array.from({ length: 8 }, (_, k) => 1 / 10000 ** (k / 8)) : [];
  const mean = o.side; // √(h·w) with h = w
  const positions: [number, number, number][] = [];
  const prefix = threeD && o.textPrefix ? o.textTokens : 0;
  for (let t = 0; t < prefix; t++) positions.push([0, 0, (t / o.textTokens) * o.ptSeqLen]);
  for (let r = 0; r < o.side; r++) for (let c = 0; c < o.side; c++) positions.push([(r / mean) * o.ptSeqLen, (c / mean) * o.ptSeqLen, 0]);
  const out = new Float32Array(positions.length * o.headDim);
  positions.forEach(([pr, pc, pt], s) => {
    const angles = [...freqs.map((f) => pr * f), ...freqs.map((f) => pc * f), ...textFreqs.map((f) => pt * f)];
    angles.forEach((a, j) => {
      out[s * o.headDim + 2 * j] = a;
      out[s * o.headDim + 2 * j + 1] = a;
    });
  });
  return out;
}

/** cos and sin tables [S, headDim] of a layout, as engine arrays (float64 angles, then float32). */
export function ropeTables(o: RopeLayout): { cos: Arr; sin: Arr } {
  const angles = ropeAngles(o);
  const shape = [angles.length / o.headDim, o.headDim];
  return { cos: np.array(angles.map(Math.cos), { shape }), sin: np.array(angles.map(Math.sin), { shape }) };
}

/** The pair rotation as a [d, d] matrix: x @ R turns each (x₂ⱼ, x₂ⱼ₊₁) into (−x₂ⱼ₊₁, x₂ⱼ). */
function pairRotation(d: number): Arr {
  const r = new Float32Array(d * d);
  for (let j = 0; j < d; j += 2) {
    r[(j + 1) * d + j] = -1; // out[2j] = −x[2j+1]
    r[j * d + j + 1] = 1; // out[2j+1] = x[2j]
  }
  return np.array(r, { shape: [d, d] });
}

/**
 * Rotates x [B, heads, L, d] by per-position tables cos, sin [L, d]: x·cos + rot(x)·sin, where
 * rot turns each pair (x₂ⱼ, x₂ⱼ₊₁) into (−x₂ⱼ₊₁, x₂ⱼ). rot is a matmul with a constant signed
 * permutation: on wasm a small matmul is faster than slicing the pairs apart and back.
 */
export function applyRope(x: Arr, cos: Arr, sin: Arr): Arr {
  const d = x.shape[3]!;
  const rotated = np.matmul(x.ref, pairRotation(d));
  return x.mul(cos).add(rotated.mul(sin));
}
