// Convolutions over NHWC arrays as matrix products. jax-js's direct convolution is ~10× slower
// than a matmul on wasm, so a 3×3 'SAME' convolution is an im2col (nine shifted slices of the
// padded input on the channel axis, then one product), and 2×2 stride-2 resampling is a reshape
// (space ↔ depth) beside one product.
import { np, type Arr } from '../engine/index.js';
import { linear, type Linear } from './layers.js';

/** 3×3 'SAME' convolution of NHWC `x`; `p.w` is [9·C_in, C_out], taps row-major. */
export function conv3x3(p: Linear, x: Arr): Arr {
  const [n, h, w, c] = x.shape as [number, number, number, number];
  const xp = np.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]);
  const taps: Arr[] = [];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) taps.push(xp.ref.slice([], [i, i + h], [j, j + w], []));
  xp.dispose();
  const cols = np.concatenate(taps, -1).reshape([n * h * w, 9 * c]);
  return linear(p, cols).reshape([n, h, w, -1]);
}

/** 2×2 stride-2 convolution (halves H and W); `p.w` is [4·C_in, C_out], the 2×2 window row-major. */
export function downsample2(p: Linear, x: Arr): Arr {
  const [n, h, w, c] = x.shape as [number, number, number, number];
  const windows = x.reshape([n, h / 2, 2, w / 2, 2, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([n * (h / 2) * (w / 2), 4 * c]);
  return linear(p, windows).reshape([n, h / 2, w / 2, -1]);
}

/** 2×2 stride-2 transposed convolution (doubles H and W); `p.w` is [C_in, 4·C_out]. */
export function upsample2(p: Linear, x: Arr): Arr {
  const [n, h, w] = x.shape as [number, number, number, number];
  const y = linear(p, x.reshape([n * h * w, -1]));
  const c = y.shape[1]! / 4;
  return y.reshape([n, h, w, 2, 2, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([n, 2 * h, 2 * w, c]);
}
