// Reverse-mode gradients of every nn block against central finite differences, plus the optimiser
// pieces (AdamW, cosine schedule, clipping, EMA) against hand-computed values.
//
// Method. Each block f is turned into a scalar loss L = Σ f(x)·r with a fixed random r, and for
// ~16 random coordinates of each input tensor the AD gradient is compared with
// (L(x + h·e) − L(x − h·e)) / 2h, both evaluated by the float32 engine (the FD loss through `jit`).
// Error budget: the loss carries float32 round-off of about 1e-7 relative (a few 1e-7 absolute for
// these O(1) losses); the difference quotient divides that by 2h, so h = 1e-2 gives ~1e-5 of noise,
// and the O(h²·f''') truncation error of the central difference is ~1e-4 for these smooth blocks.
// Measured worst errors of the single blocks are 4e-6 … 8e-5, so their tolerance
// |fd − ad| ≤ 1e-3·(1 + |ad|) leaves a >10× margin. The tiny TARFlow (two blocks of attention,
// MLP and exp(−a)) sits higher, 3.6e-4 … 4.2e-4 over several coordinate draws, and h = 1e-2 is
// its sweet spot (h = 3e-3 gives 5.6e-4: round-off; h = 3e-2 gives 2e-3: truncation), so it is
// checked at 2e-3 (~5× margin). A wrong gradient (a dropped term, a transposed weight, a missing
// scale) is off by O(|ad|); the self-check below shows that even a 1% error is caught.
// Each check's worst error is printed as a diagnostic.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import '../setup.js';
import { np, lax, fromF32, fromI32, toF32, toNumber, jit, grad, type Arr } from '../../src/engine/index.js';
import { linear, layerNorm, rmsNorm, gelu, mlp, embed } from '../../src/nn/layers.js';
import { causalSelfAttention, cachedSelfAttention, selfAttention, commitKv, type AttentionShape } from '../../src/nn/attention.js';
import { encodeText, initTextEncoder, type TextEncoder } from '../../src/nn/text-encoder.js';
import { Rng } from '../../src/engine/rng.js';
import {
  adamwUpdate,
  initAdamState,
  adamScalars,
  cosineLr,
  clipByGlobalNorm,
  emaUpdate,
  type AdamWConfig,
} from '../../src/nn/optim.js';
import { parseFlowConfig as parseModelConfig } from '../../src/models/flow.js';
import { initFlow, forward, flowLoss, type FlowParams } from '../../src/models/flow.js';
import { paramsToHost, unflattenTree } from '../../src/nn/params.js';

type Host = { data: Float32Array | Int32Array; shape: number[] };

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** Uniform on [−scale, scale]. */
function rand(shape: number[], seed: number, scale = 1): Host {
  const r = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return { data: Float32Array.from({ length: n }, () => scale * (2 * r() - 1)), shape };
}

function ints(values: number[], shape = [values.length]): Host {
  return { data: Int32Array.from(values), shape };
}

function toArr(h: Host): Arr {
  return h.data instanceof Int32Array ? fromI32(h.data, h.shape) : fromF32(h.data, h.shape);
}

/** k distinct indices of 0..n−1 (all of them when n ≤ k). */
function sample(n: number, k: number, seed: number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  const r = lcg(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx.slice(0, Math.min(n, k));
}

type GradStats = { rel: number; abs: number; scale: number };
const show = (s: GradStats) =>
  `max error ${s.rel.toExponential(2)} (absolute ${s.abs.toExponential(2)}, largest |ad| checked ${s.scale.toExponential(2)})`;

const DEFAULT_H = 1e-2;
const DEFAULT_TOL = 1e-3;

/**
 * Checks ∂/∂inputs[i] of Σ fn(inputs)·r for every i in `wrt` on a random subset of coordinates.
 * `fn` consumes its arguments. Returns the largest error |fd − ad| / (1 + |ad|), the largest |fd − ad| and the largest |ad| seen.
 */
async function checkGrad(
  fn: (...xs: Arr[]) => Arr,
  inputs: Host[],
  wrt: number[],
  opts: { h?: number; tol?: number; coords?: number; seed?: number; label?: string } = {},
): Promise<GradStats> {
  const h = opts.h ?? DEFAULT_H;
  const tol = opts.tol ?? DEFAULT_TOL;
  const n = inputs.length;
  // The output shape, to draw r.
  const outShape = fn(...inputs.map(toArr)).shape;
  const r = rand(outShape, (opts.seed ?? 7) + 101);
  const loss = (...args: Arr[]) => {
    const xs = args.slice(0, n);
    return fn(...xs).mul(args[n]!).sum();
  };
  const lossJit = jit(loss);
  const evalLoss = (hosts: Host[]) => toNumber(lossJit(...hosts.map(toArr), toArr(r)));

  const grads = grad(loss, { argnums: wrt })(...inputs.map(toArr), toArr(r)) as unknown as Arr[];
  const ads: Float32Array[] = [];
  for (const g of grads) ads.push(await toF32(g));

  let worst = 0;
  let worstAbs = 0;
  let adScale = 0;
  for (const [gi, i] of wrt.entries()) {
    const base = inputs[i]!;
    assert.ok(base.data instanceof Float32Array, `input ${i} must be float to be differentiated`);
    const ad = ads[gi]!;
    assert.equal(ad.length, base.data.length);
    for (const c of sample(base.data.length, opts.coords ?? 16, (opts.seed ?? 7) + i)) {
      const plus = Float32Array.from(base.data);
      const minus = Float32Array.from(base.data);
      plus[c] = plus[c]! + h;
      minus[c] = minus[c]! - h;
      const at = (d: Float32Array) => inputs.map((x, k) => (k === i ? { data: d, shape: x.shape } : x));
      const fd = ((await evalLoss(at(plus))) - (await evalLoss(at(minus)))) / (plus[c]! - minus[c]!);
      const err = Math.abs(fd - ad[c]!) / (1 + Math.abs(ad[c]!));
      worst = Math.max(worst, err);
      worstAbs = Math.max(worstAbs, Math.abs(fd - ad[c]!));
      adScale = Math.max(adScale, Math.abs(ad[c]!));
      assert.ok(err <= tol, `${opts.label ?? ''} input ${i} coordinate ${c}: fd ${fd} vs ad ${ad[c]} (error ${err.toExponential(2)} > ${tol})`);
    }
  }
  lossJit.dispose();
  return { rel: worst, abs: worstAbs, scale: adScale };
}

/** A reference on every leaf of `p` except `owned` (consumed by the caller's function): the rest are reused across calls. */
function keepTree<T>(p: T, owned: Arr[]): T {
  const visit = (v: unknown): unknown => {
    if (v && typeof v === 'object' && 'ref' in (v as object) && 'shape' in (v as object)) return owned.includes(v as Arr) ? v : (v as Arr).ref;
    if (Array.isArray(v)) return v.map(visit);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, visit(x)]));
    return v;
  };
  return visit(p) as T;
}

test('the checker itself rejects a wrong gradient', async () => {
  // d/dx of x·stopGradient(x) is x by AD but 2x by finite differences.
  await assert.rejects(checkGrad((x) => x.ref.mul(lax.stopGradient(x)), [rand([8], 50)], [0]), /error/);
  // ...and a gradient off by 1%.
  await assert.rejects(
    checkGrad((x) => x.ref.mul(lax.stopGradient(x.ref)).mul(0.01).add(np.square(x).mul(0.995)), [rand([8], 51, 3)], [0]),
    /error/,
  );
});

const B = 2;
const T = 5;
const W = 12;

test('linear', async (t) => {
  const err = await checkGrad((x, w, b) => linear({ w, b }, x), [rand([B, T, W], 1), rand([W, 7], 2, 0.3), rand([7], 3, 0.1)], [0, 1, 2]);
  t.diagnostic(show(err));
});

test('layerNorm', async (t) => {
  const err = await checkGrad((x, g, b) => layerNorm({ g, b }, x), [rand([B, T, W], 4), rand([W], 5), rand([W], 6)], [0, 1, 2]);
  t.diagnostic(show(err));
});

test('rmsNorm, offset 0 and offset 1', async (t) => {
  for (const offset of [0, 1]) {
    const err = await checkGrad((x, g) => rmsNorm({ g }, x, 1e-6, offset), [rand([B, T, W], 7), rand([W], 8, 0.5)], [0, 1], { label: `offset ${offset}` });
    t.diagnostic(`offset ${offset}: ${show(err)}`);
  }
});

test('gelu (exact erf)', async (t) => {
  const err = await checkGrad((x) => gelu(x), [rand([4, 16], 9, 3)], [0], { coords: 32 });
  t.diagnostic(show(err));
});

test('mlp', async (t) => {
  const hid = 20;
  const err = await checkGrad(
    (x, w1, b1, w2, b2) => mlp({ fc1: { w: w1, b: b1 }, fc2: { w: w2, b: b2 } }, x),
    [rand([B, T, W], 17), rand([W, hid], 18, 0.4), rand([hid], 19, 0.1), rand([hid, W], 20, 0.3), rand([W], 21, 0.1)],
    [0, 1, 2, 3, 4],
  );
  t.diagnostic(show(err));
});

test('embed w.r.t. the table, with a dropped (−1) label', async (t) => {
  const err = await checkGrad((table, ids) => embed(table, ids), [rand([3, 6], 22), ints([2, -1, 0, -1])], [0], { coords: 18 });
  t.diagnostic(show(err));
});

const shape: AttentionShape = { heads: 3, headDim: 4 };
const inner = shape.heads * shape.headDim;

test('causalSelfAttention w.r.t. input and qkv weight (temperature 0.7)', async (t) => {
  const err = await checkGrad(
    (x, qw, qb, pw, pb) => causalSelfAttention({ qkv: { w: qw, b: qb }, proj: { w: pw, b: pb } }, x, shape, 0.7),
    [rand([B, T, W], 23), rand([W, 3 * inner], 24, 0.5), rand([3 * inner], 25, 0.1), rand([inner, W], 26, 0.4), rand([W], 27, 0.1)],
    [0, 1, 2, 3],
    { coords: 20 },
  );
  t.diagnostic(show(err));
});

test('selfAttention (bidirectional) w.r.t. input and qkv weight', async (t) => {
  const err = await checkGrad(
    (x, qw, qb, pw, pb) => selfAttention({ qkv: { w: qw, b: qb }, proj: { w: pw, b: pb } }, x, shape),
    [rand([B, T, W], 33), rand([W, 3 * inner], 34, 0.5), rand([3 * inner], 35, 0.1), rand([inner, W], 36, 0.4), rand([W], 37, 0.1)],
    [0, 1, 2, 3],
    { coords: 20 },
  );
  t.diagnostic(show(err));
});

test('text encoder w.r.t. its token table, positions and a layer weight', async (t) => {
  const s = { vocabSize: 7, maxTokens: 5, width: 8, layers: 2, heads: 2 };
  const base = initTextEncoder(new Rng(3), s);
  const ids = ints([1, 4, 2, 0, 0, 6, 6, 3, 5, 0], [2, 5]);
  // O(1) embeddings: at the init's scale (0.02) the LayerNorm after them bends within a step h.
  const [tok, pos, fc1] = [rand([7, 8], 41), rand([5, 8], 42, 0.5), rand([8, 32], 43, 0.5)];
  const err = await checkGrad(
    (tokens, positions, w, idArr) => {
      const p: TextEncoder = { ...base, tokens, pos: positions, layers: base.layers.map((l, i) => (i === 1 ? { ...l, mlp: { ...l.mlp, fc1: { ...l.mlp.fc1, w } } } : l)) };
      return encodeText(keepTree(p, [tokens, positions, w]), s, idArr);
    },
    [tok, pos, fc1, ids],
    [0, 1, 2],
    { coords: 12 },
  );
  t.diagnostic(show(err));
});

test('cachedSelfAttention w.r.t. input, cache and qkv weight (temperature 1.3)', async (t) => {
  const size = 6;
  const err = await checkGrad(
    (x, kT, v, qw, qb, pw, start) => {
      const [out, recent] = cachedSelfAttention({ qkv: { w: qw, b: qb }, proj: { w: pw } }, x, { kT: kT.ref, v: v.ref }, start.ref, shape, 1.3);
      const cache = commitKv({ kT, v }, recent, start, 2);
      return np.concatenate([out.reshape([-1]), cache.kT.reshape([-1]), cache.v.reshape([-1])]);
    },
    [
      rand([B, 2, W], 28),
      rand([B, shape.heads, shape.headDim, size], 29),
      rand([B, shape.heads, size, shape.headDim], 30),
      rand([W, 3 * inner], 31, 0.5),
      rand([3 * inner], 32, 0.1),
      rand([inner, W], 33, 0.4),
      ints([2], []),
    ],
    [0, 1, 2, 3],
    { coords: 20 },
  );
  t.diagnostic(show(err));
});

test('TARFlow loss w.r.t. the input and parameters of a tiny model', async (t) => {
  const cfg = parseModelConfig({ inChannels: 1, imgSize: 4, patchSize: 2, width: 16, headDim: 8, numBlocks: 2, layersPerBlock: 1, numClasses: 2 });
  const host = await paramsToHost(initFlow(cfg, 3) as never);
  // Perturb every parameter (projOut is zero at init, which would make the flow nearly trivial).
  const names = [...host.keys()];
  const leaves: Host[] = names.map((name, i) => {
    const p = host.get(name)!;
    const noise = rand(p.shape, 1000 + i, name.endsWith('projOut.w') ? 0.15 : 0.05).data as Float32Array;
    return { data: p.data.map((v, j) => v + noise[j]!), shape: p.shape };
  });
  const picked = [
    'blocks.0.projOut.w',
    'blocks.1.projOut.b',
    'blocks.1.layers.0.attn.qkv.w',
    'blocks.0.layers.0.mlp.fc1.w',
    'blocks.0.layers.0.attnNorm.g',
    'blocks.1.pos',
    'blocks.0.classEmbed',
    'blocks.0.projIn.w',
  ];
  for (const p of picked) assert.ok(names.includes(p), `no parameter ${p}`);
  const x = rand([2, 1, 4, 4], 40);
  const labels = ints([1, -1]);
  const err = await checkGrad(
    (xs, ys, ...ps) => {
      const params = unflattenTree(new Map(names.map((nm, i) => [nm, ps[i]!] as [string, Arr]))) as unknown as FlowParams;
      const r = forward(params, cfg, xs, ys);
      // ×100: the loss is a mean over 16·2 dimensions, so its raw gradients are ~1e-2 and the
      // (1 + |ad|) criterion would be nearly absolute; scaled, they are O(1) like the others.
      return flowLoss(r.z, r.logdet).mul(100);
    },
    [x, labels, ...leaves],
    [0, ...picked.map((p) => 2 + names.indexOf(p))],
    { coords: 12, tol: 2e-3 },
  );
  t.diagnostic(show(err));
});

// ---- optimiser ----

test('AdamW: two steps match a hand-computed torch.optim.AdamW update', async () => {
  const cfg: AdamWConfig = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
  const p0 = { a: [0.5, -1.2, 2.0], b: { c: [0.1, 0.2, -0.3, 0.4] } };
  const gs = [
    { a: [0.3, -0.1, 0.02], b: { c: [1.5, -2.0, 0.0, 0.25] } },
    { a: [-0.2, 0.4, 0.01], b: { c: [0.5, 1.0, -0.7, 0.25] } },
  ];
  const lrs = [1e-2, 5e-3];
  // Reference in float64: decoupled decay, then m̂/(√v̂ + eps) with PyTorch's bias corrections.
  const ref = { a: [...p0.a], c: [...p0.b.c] };
  const m = { a: [0, 0, 0], c: [0, 0, 0, 0] };
  const v = { a: [0, 0, 0], c: [0, 0, 0, 0] };
  for (let s = 0; s < 2; s++) {
    const step = s + 1;
    for (const k of ['a', 'c'] as const) {
      const g = k === 'a' ? gs[s]!.a : gs[s]!.b.c;
      for (let i = 0; i < ref[k].length; i++) {
        ref[k][i] = ref[k][i]! * (1 - lrs[s]! * cfg.weightDecay);
        m[k][i] = cfg.beta1 * m[k][i]! + (1 - cfg.beta1) * g[i]!;
        v[k][i] = cfg.beta2 * v[k][i]! + (1 - cfg.beta2) * g[i]! ** 2;
        const denom = Math.sqrt(v[k][i]!) / Math.sqrt(1 - cfg.beta2 ** step) + cfg.eps;
        ref[k][i] = ref[k][i]! - (lrs[s]! / (1 - cfg.beta1 ** step)) * (m[k][i]! / denom);
      }
    }
  }
  let params = { a: fromF32(p0.a, [3]), b: { c: fromF32(p0.b.c, [2, 2]) } };
  let state = initAdamState(params); // borrows params
  for (let s = 0; s < 2; s++) {
    const { bc1, bc2 } = adamScalars(cfg, s + 1);
    const g = { a: fromF32(gs[s]!.a, [3]), b: { c: fromF32(gs[s]!.b.c, [2, 2]) } };
    const r = adamwUpdate(params, g, state, fromF32([lrs[s]!], []), fromF32([bc1], []), fromF32([bc2], []), cfg);
    params = r.params;
    state = r.state;
  }
  const a = await toF32(params.a);
  const c = await toF32(params.b.c);
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(a[i]! - ref.a[i]!) < 1e-6, `a[${i}]: ${a[i]} vs ${ref.a[i]}`);
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(c[i]! - ref.c[i]!) < 1e-6, `c[${i}]: ${c[i]} vs ${ref.c[i]}`);
  // The moments are the reference's too.
  const mA = await toF32(state.m.a);
  const vC = await toF32(state.v.b.c);
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(mA[i]! - m.a[i]!) < 1e-7);
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(vC[i]! - v.c[i]!) < 1e-7);
  state.m.b.c.dispose();
  state.v.a.dispose();
});

test('cosineLr at its key points', () => {
  const s = { lr: 1e-3, minLr: 1e-5, warmupSteps: 100, totalSteps: 1100 };
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) <= 1e-12 + 1e-12 * Math.abs(b), `${a} vs ${b}`);
  close(cosineLr(s, 0), 1e-6);
  close(cosineLr(s, 50), 1e-6 + (1e-3 - 1e-6) / 2);
  close(cosineLr(s, 100), 1e-3);
  close(cosineLr(s, 600), (1e-3 + 1e-5) / 2);
  close(cosineLr(s, 350), 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + Math.cos(Math.PI / 4)));
  close(cosineLr(s, 1100), 1e-5);
  close(cosineLr(s, 5000), 1e-5);
  close(cosineLr({ ...s, warmupSteps: 0, warmupFrom: 0 }, 0), 1e-3);
  close(cosineLr({ ...s, warmupFrom: 0 }, 25), 2.5e-4);
  // Monotone decay after warm-up.
  for (let k = 100; k < 1100; k += 50) assert.ok(cosineLr(s, k + 50) <= cosineLr(s, k));
});

test('clipByGlobalNorm scales only when the norm exceeds the limit', async () => {
  const g = () => ({ a: fromF32([3], [1]), b: [fromF32([0, 4], [2])] });
  const clipped = clipByGlobalNorm(g(), 1);
  assert.ok(Math.abs((await toNumber(clipped.norm)) - 5) < 1e-6);
  const a = await toF32(clipped.grads.a);
  const b = await toF32(clipped.grads.b[0]!);
  assert.ok(Math.abs(a[0]! - 0.6) < 1e-6 && Math.abs(b[1]! - 0.8) < 1e-6 && b[0] === 0, `${a} ${b}`);
  const kept = clipByGlobalNorm(g(), 10);
  assert.ok(Math.abs((await toNumber(kept.norm)) - 5) < 1e-6);
  assert.deepEqual([...(await toF32(kept.grads.a))], [3]);
  assert.deepEqual([...(await toF32(kept.grads.b[0]!))], [0, 4]);
});

test('emaUpdate: e ← decay·e + (1 − decay)·p', async () => {
  const e = emaUpdate({ w: fromF32([1, -2], [2]) }, { w: fromF32([3, 2], [2]) }, 0.9);
  const w = await toF32(e.w);
  assert.ok(Math.abs(w[0]! - 1.2) < 1e-6 && Math.abs(w[1]! + 1.6) < 1e-6, `${w}`);
});
