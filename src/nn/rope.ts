// Rotary position embeddings (RoPE) as pure functions, for 1-D sequences and for STARFlow's
// multi-axis positions (image rows and columns, plus a text position or a video frame).
//
// A head of size d holds d/2 rotary slots: slot i rotates the interleaved feature pair
// (2i, 2i+1) by the angle pos·freq_i. The slots are handed out to position axes in order: with
// axes [y, x, t] and counts [12, 12, 8] (d = 64), slots 0..11 follow the row, 12..23 the column
// and 24..31 the third axis. Within one axis the frequencies form a geometric ladder
//
//     freq_k = base^(−k / span),  k = 0 .. slots−1,   span defaulting to `slots`,
//
// so plain 1-D RoPE over d/2 slots is freq_k = 10000^(−2k/d), a 2-D image axis of 12 slots is
// 10000^(−2k/24) (the 24 slots of the image part, shared out between the two spatial axes), and a
// third axis of 8 slots is 10000^(−k/8). `span` lets an axis use a ladder other than its own length.
//
// The tables are computed on the host in float64 (angles of large positions lose nothing to
// float32 arithmetic) and only the final cos/sin are rounded to float32.
import { np, fromF32, type Arr } from '../engine/index.js';

export type RopeAxis = {
  /** Rotary slots (feature pairs) given to this axis. */
  slots: number;
  /** Base of the frequency ladder (default 10000). */
  base?: number;
  /** Exponent denominator: freq_k = base^(−k/span). Default: `slots`. */
  span?: number;
};

export type RopeSpec = RopeAxis[];

export class RopeError extends Error {
  override name = 'RopeError';
}

/** The standard 1-D spec for a head of size d: d/2 slots, freq_k = 10000^(−2k/d). */
export function rope1d(headDim: number, base = 10000): RopeSpec {
  if (headDim % 2 !== 0) throw new RopeError(`RoPE needs an even head size, got ${headDim}`);
  return [{ slots: headDim / 2, base }];
}

/**
 * STARFlow's split for a head of size d: `imageSlots` slots (default 3/4 of d/2) shared equally
 * by the two image axes (row, column), the rest for a third axis (text position or frame).
 * Positions are then [row, column, third] per token. d = 64 gives 12 + 12 + 8.
 */
export function ropeImageAndThird(headDim: number, imageSlots = Math.round((headDim / 2) * 0.75), base = 10000): RopeSpec {
  const half = headDim / 2;
  if (headDim % 2 !== 0) throw new RopeError(`RoPE needs an even head size, got ${headDim}`);
  if (imageSlots % 2 !== 0 || imageSlots <= 0 || imageSlots >= half) {
    throw new RopeError(`image slots must be even and in (0, ${half}), got ${imageSlots}`);
  }
  const perAxis = imageSlots / 2;
  return [
    { slots: perAxis, base },
    { slots: perAxis, base },
    { slots: half - imageSlots, base },
  ];
}

/** Total rotary slots of a spec (must equal headDim/2 when applied). */
export function ropeSlots(spec: RopeSpec): number {
  return spec.reduce((n, a) => n + a.slots, 0);
}

/** Frequencies of every slot, in slot order (float64). */
export function ropeFrequencies(spec: RopeSpec): Float64Array {
  const out = new Float64Array(ropeSlots(spec));
  let i = 0;
  for (const axis of spec) {
    if (!Number.isInteger(axis.slots) || axis.slots < 0) throw new RopeError(`axis slots must be a non-negative integer, got ${axis.slots}`);
    const base = axis.base ?? 10000;
    const span = axis.span ?? axis.slots;
    for (let k = 0; k < axis.slots; k++) out[i++] = base ** (-k / span);
  }
  return out;
}

/**
 * Rotation angles on the host: [T, slots] row-major, angle[t, i] = positions[t][axis(i)]·freq_i.
 * `positions[t]` has one entry per axis of the spec.
 */
export function ropeAngles(positions: number[][], spec: RopeSpec): Float64Array {
  const freqs = ropeFrequencies(spec);
  const axisOf: number[] = spec.flatMap((a, j) => Array<number>(a.slots).fill(j));
  const n = freqs.length;
  const out = new Float64Array(positions.length * n);
  positions.forEach((pos, t) => {
    if (pos.length !== spec.length) {
      throw new RopeError(`token ${t} has ${pos.length} position coordinates, the spec has ${spec.length} axes`);
    }
    for (let i = 0; i < n; i++) out[t * n + i] = pos[axisOf[i]!]! * freqs[i]!;
  });
  return out;
}

export type RopeTables = { cos: Arr; sin: Arr };

/** cos and sin tables, each [T, slots] float32 (slots = headDim/2), from per-token positions. */
export function ropeTables(positions: number[][], spec: RopeSpec): RopeTables {
  const angles = ropeAngles(positions, spec);
  const shape = [positions.length, ropeSlots(spec)];
  return {
    cos: fromF32(Float32Array.from(angles, Math.cos), shape),
    sin: fromF32(Float32Array.from(angles, Math.sin), shape),
  };
}

/** Positions 0..T−1 for a 1-D spec. */
export function sequencePositions(t: number): number[][] {
  return Array.from({ length: t }, (_, i) => [i]);
}

/** [row, column] of an h×w grid in raster order, optionally with a constant third coordinate. */
export function gridPositions(h: number, w: number, third?: number): number[][] {
  const out: number[][] = [];
  for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) out.push(third === undefined ? [r, c] : [r, c, third]);
  return out;
}

/**
 * Rotates interleaved pairs: for x [..., T, d] and tables [T, d/2] (or anything broadcastable
 * to [..., T, d/2]), (x₂ᵢ, x₂ᵢ₊₁) ↦ (x₂ᵢ·cos − x₂ᵢ₊₁·sin, x₂ᵢ·sin + x₂ᵢ₊₁·cos). Consumes x, cos, sin.
 */
export function applyRope(x: Arr, cos: Arr, sin: Arr): Arr {
  const shape = x.shape;
  const d = shape.at(-1)!;
  const half = cos.shape.at(-1)!;
  if (d !== 2 * half) throw new RopeError(`RoPE tables have ${half} slots, the head size is ${d} (needs ${2 * half})`);
  const pairs = x.reshape([...shape.slice(0, -1), half, 2]);
  const lead = shape.slice(0, -1).map((): [] => []);
  const x0 = pairs.ref.slice(...lead, [], [0, 1]); // [..., T, d/2, 1]
  const x1 = pairs.slice(...lead, [], [1, 2]);
  const c = cos.reshape([...cos.shape, 1]);
  const s = sin.reshape([...sin.shape, 1]);
  const y0 = x0.ref.mul(c.ref).sub(x1.ref.mul(s.ref));
  const y1 = x0.mul(s).add(x1.mul(c));
  return np.concatenate([y0, y1], -1).reshape(shape);
}

/**
 * Rows start..start+L−1 of full tables [S, slots] (`start`: int32 scalar array), picked with a
 * one-hot matrix so the shapes stay static: one compiled decoding step serves every position.
 */
export function ropeRows(tables: RopeTables, start: Arr, length: number): RopeTables {
  const size = tables.cos.shape[0]!;
  const rows = np.arange(length, undefined, undefined, { dtype: np.int32 }).add(start);
  const pick = rows
    .reshape([length, 1])
    .equal(np.arange(size, undefined, undefined, { dtype: np.int32 }).reshape([1, size]))
    .astype(np.float32);
  return { cos: np.matmul(pick.ref, tables.cos), sin: np.matmul(pick, tables.sin) };
}
