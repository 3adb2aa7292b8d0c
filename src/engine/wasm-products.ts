// Matrix products as hand-written WASM SIMD, for the browser and for Node without the native addon.
// jax-js 0.1.25 lowers a matmul to a reduction kernel and generates generic tiled code for it; a
// product module made here for the kernel's exact shape (sizes and strides are constants) keeps
// a register tile of accumulators and uses relaxed SIMD's fused multiply-add where the runtime
// has it. It follows jax-js's kernel convention, kernel(inputs.., out, begin, end) over output
// elements, so jax-js runs it as its own: on the calling thread or split over its worker pool.
//
// Two layouts, chosen by the strides:
// - columns: the right operand's rows are contiguous (x·W, dy·W, Aᵀ·B): R × 8 output tiles, the
//   left operand's elements broadcast, the right's rows loaded 8 wide;
// - dots: both operands contiguous along k (x·Wᵀ, q·kᵀ): 2 × 4 output tiles of 4-wide partial
//   sums over k, added across lanes at the end.
// The kernel's epilogue (a bias or a residual added, a scale) is applied as the tile is stored,
// when it is built of +, −, × and negation over the product, constants and loads at the output's
// position; other kernels stay with jax-js.
import type { JaxInternals } from './jax-internals.js';
import { planMatmul, type MatmulPlan } from './native-route.js';
import type { PrepareFns } from './kernel-cache.js';
import { F32, I32, V128, f32, functionModule, get, hasRelaxedSimd, i32, op, set, simd, tee } from './wasm-asm.js';

// Shapes of jax-js's expression objects, as far as this reads them.
type View = { shape: number[]; strides: number[]; offset: number; mask: unknown };
type Exp = KernelLike['exp'];
type KernelLike = Parameters<typeof planMatmul>[0];

/** A load in the epilogue: argument, element offset, strides over the row dimensions, column stride. */
type EpilogueLoad = { arg: number; offset: number; rowDims: { after: number; size: number; stride: number }[]; colStride: 0 | 1 };

/** The epilogue as a tree over the product (`acc`), constants and loads. */
type Epi = { kind: 'acc' } | { kind: 'const'; value: number } | { kind: 'load'; load: number } | { kind: 'neg'; a: Epi } | { kind: 'add' | 'sub' | 'mul'; a: Epi; b: Epi };

export type ProductKernel = { plan: MatmulPlan; layout: 'columns' | 'dots'; epilogue: Epi; loads: EpilogueLoad[]; nargs: number };

/** Products with fewer multiply-adds than this stay with jax-js. */
const MIN_MACS = 16 * 16 * 16;
/**
 * Aᵀ·B (the left operand strided along k) over a longer k stays with jax-js: without packing, each
 * step of k reads new cache lines of both operands, and jax-js's generated kernel was faster at
 * k = 1,024 and 3,136 (bench/wasm-gemm.ts; ahead at 256 and 512).
 */
const MAX_STRIDED_K = 512;

/** The product kernel for a jax-js kernel this module can run, or null. */
export function planProductKernel(kernel: KernelLike, jax: JaxInternals): ProductKernel | null {
  const plan = planMatmul(kernel, jax);
  if (!plan) return null;
  const macs = plan.M * plan.N * plan.K * plan.batch.reduce((p, ax) => p * ax.size, 1);
  if (macs < MIN_MACS) return null;
  // The output must be the contiguous rows × N array the kernel writes (row r = batch·M + m).
  let expected = plan.M * plan.N;
  for (let i = plan.batch.length - 1; i >= 0; i--) {
    if (plan.batch[i]!.c !== expected) return null;
    expected *= plan.batch[i]!.size;
  }
  if (expected !== kernel.size) return null;
  const sAk = plan.transA ? plan.lda : 1;
  const sBn = plan.transB ? plan.ldb : 1;
  const sBk = plan.transB ? 1 : plan.ldb;
  const layout = sBn === 1 && plan.N > 1 ? 'columns' : sAk === 1 && sBk === 1 ? 'dots' : null;
  if (!layout || (layout === 'columns' && sAk !== 1 && plan.K > MAX_STRIDED_K)) return null;

  // The output's own shape (the product views' shape without k), for the epilogue's loads.
  const productView = (kernel.exp.src[0]!.arg as [number, { views: View[] }])[1].views[0]!;
  const outShape = productView.shape.slice(0, -1);
  let colDims = 0;
  for (let p = 1; colDims < outShape.length && p !== plan.N; colDims++) p *= outShape[outShape.length - 1 - colDims]!;
  if (outShape.slice(outShape.length - colDims).reduce((p, d) => p * d, 1) !== plan.N) return null;
  const expectedIndices = jax.unravelAlu(outShape, jax.AluVar.gidx).map((e) => (e as { simplify(): Exp }).simplify());
  const loads: EpilogueLoad[] = [];
  const lower = (e: Exp): Epi | null => {
    if (e.dtype !== 'float32') return null;
    switch (e.op) {
      case 'Variable':
        return e.arg === 'acc' ? { kind: 'acc' } : null;
      case 'Const':
        return typeof e.arg === 'number' ? { kind: 'const', value: e.arg } : null;
      case 'Neg': {
        const a = lower(e.src[0]!);
        return a && { kind: 'neg', a };
      }
      case 'Add':
      case 'Sub':
      case 'Mul': {
        const a = lower(e.src[0]!);
        const b = a && lower(e.src[1]!);
        return b ? { kind: e.op.toLowerCase() as 'add' | 'sub' | 'mul', a: a!, b } : null;
      }
      case 'GlobalView': {
        const load = epilogueLoad(e, outShape, colDims, expectedIndices, jax);
        if (!load) return null;
        loads.push(load);
        return { kind: 'load', load: loads.length - 1 };
      }
      default:
        return null;
    }
  };
  const epilogue = lower(kernel.reduction!.epilogue);
  if (!epilogue) return null;
  return { plan, layout, epilogue, loads, nargs: kernel.nargs };
}

function epilogueLoad(e: Exp, outShape: number[], colDims: number, expected: Exp[], jax: JaxInternals): EpilogueLoad | null {
  const [arg, st] = e.arg as [number, { views: View[] }];
  if (st.views.length !== 1) return null;
  const view = st.views[0]!;
  if (view.mask !== null || view.shape.length !== outShape.length || view.shape.some((d, i) => d !== outShape[i])) return null;
  if (!jax.deepEqual(e.src, expected)) return null;
  // Along a row the load must step by 1 or 0 elements per column.
  const nDims = outShape.length;
  let colStride: number | null = null;
  let span = 1;
  for (let d = nDims - 1; d >= nDims - colDims; d--) {
    if (outShape[d] === 1) continue;
    const s = view.strides[d]!;
    if (colStride === null) colStride = s;
    if (s !== colStride * span) return null;
    span *= outShape[d]!;
  }
  if (colStride !== null && colStride !== 0 && colStride !== 1) return null;
  const rowDims: EpilogueLoad['rowDims'] = [];
  let after = 1;
  for (let d = nDims - colDims - 1; d >= 0; d--) {
    if (outShape[d]! > 1 && view.strides[d] !== 0) rowDims.push({ after, size: outShape[d]!, stride: view.strides[d]! });
    after *= outShape[d]!;
  }
  return { arg, offset: view.offset, rowDims, colStride: (colStride ?? 0) as 0 | 1 };
}

/** The module bytes of a product kernel: kernel(inputs.., out, begin, end). */
export function productModule(pk: ProductKernel, opts: { relaxed: boolean; sharedMemory: boolean }): Uint8Array<ArrayBuffer> {
  const { plan, layout } = pk;
  const { M, N, K } = plan;
  const sAm = plan.transA ? 1 : plan.lda;
  const sAk = plan.transA ? plan.lda : 1;
  const sBk = plan.transB ? 1 : plan.ldb;
  const sBn = plan.transB ? plan.ldb : 1;
  // Locals: parameters first, then i32 scratch, then v128 registers.
  const nParams = pk.nargs + 3;
  const OUT = pk.nargs;
  const [BEGIN, END] = [pk.nargs + 1, pk.nargs + 2];
  let nextI32 = nParams;
  const i32Local = () => nextI32++;
  const [r, rEnd, m, bIdx, pA0, pB0, pC, j, k, pa, pb] = [i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local(), i32Local()];
  const TILE_ROWS = layout === 'columns' ? 4 : 2;
  const loadRow = pk.loads.map(() => Array.from({ length: TILE_ROWS }, i32Local));
  const nI32 = nextI32 - nParams;
  let nextF32 = nextI32;
  const fAcc = Array.from({ length: TILE_ROWS * 4 }, () => nextF32++);
  const nF32 = nextF32 - nextI32;
  let nextV = nextF32;
  const vAcc = Array.from({ length: TILE_ROWS * 4 }, () => nextV++);
  const va = nextV++;
  const vb = [nextV++, nextV++, nextV++, nextV++];
  const vA = [nextV++, nextV++];
  const nV128 = nextV - nextF32;

  const madd = (a: number[], b: number[], c: number) =>
    opts.relaxed ? [...a, ...b, ...get(c), ...op.f32x4RelaxedMadd] : [...a, ...b, ...op.f32x4Mul, ...get(c), ...op.f32x4Add];
  const addConst = (v: number) => (v ? [...i32(v), ...op.i32Add] : []);
  const mulConst = (v: number) => (v === 1 ? [] : [...i32(v), ...op.i32Mul]);
  /** Σ ((x / after) % size)·stride over dimensions, in elements, pushed on the stack (x: local). */
  const unravelOffset = (x: number, dims: { after: number; size: number; stride: number }[]) => {
    if (dims.length === 0) return i32(0);
    return dims.flatMap((d, i) => [
      ...get(x), ...(d.after === 1 ? [] : [...i32(d.after), ...op.i32DivU]), ...i32(d.size), ...op.i32RemU, ...mulConst(d.stride),
      ...(i ? op.i32Add : []),
    ]);
  };
  // Batch axes of the plan as dimensions of the batch index b = r / M.
  const batchDims = (which: 'a' | 'b') => {
    const dims: { after: number; size: number; stride: number }[] = [];
    let after = 1;
    for (let i = plan.batch.length - 1; i >= 0; i--) {
      const ax = plan.batch[i]!;
      if (ax[which] !== 0) dims.push({ after, size: ax.size, stride: ax[which] });
      after *= ax.size;
    }
    return dims;
  };
  const [rowsPtr, colsPtr] = [plan.rowsArg, plan.colsArg];

  /** The epilogue over the product in `acc` (v128 or f32 local) at tile row t, column (j local + col). */
  const emitEpilogue = (e: Epi, acc: number, t: number, col: number, vector: boolean): number[] => {
    switch (e.kind) {
      case 'acc':
        return get(acc);
      case 'const':
        return vector ? [...f32(e.value), ...op.f32x4Splat] : f32(e.value);
      case 'neg':
        return [...emitEpilogue(e.a, acc, t, col, vector), ...(vector ? op.f32x4Neg : op.f32Neg)];
      case 'load': {
        const l = pk.loads[e.load]!;
        const at = [...get(loadRow[e.load]![t]!), ...(l.colStride ? [...get(j), ...i32(4), ...op.i32Mul, ...op.i32Add] : [])];
        const offset = 4 * col * l.colStride;
        return [...at, ...(vector ? (l.colStride ? op.v128Load(offset) : op.v128Load32Splat()) : op.f32Load(offset))];
      }
      default: {
        const f = { add: [op.f32x4Add, op.f32Add], sub: [op.f32x4Sub, op.f32Sub], mul: [op.f32x4Mul, op.f32Mul] }[e.kind];
        return [...emitEpilogue(e.a, acc, t, col, vector), ...emitEpilogue(e.b, acc, t, col, vector), ...f[vector ? 0 : 1]!];
      }
    }
  };
  const store = (acc: number, t: number, col: number, vector: boolean) => [
    ...get(pC), ...get(j), ...i32(4), ...op.i32Mul, ...op.i32Add,
    ...emitEpilogue(pk.epilogue, acc, t, col, vector),
    ...(vector ? op.v128Store(4 * (t * N + col)) : op.f32Store(4 * (t * N + col))),
  ];
  /** A loop over `count` steps of the body with j from 0 by `step` (j ends at count·step). */
  const jLoop = (count: number, step: number, body: number[]) =>
    count === 0 ? [] : count === 1 ? [...i32(0), ...set(j), ...body] : [
      ...i32(0), ...set(j), ...op.loop, ...body,
      ...get(j), ...i32(step), ...op.i32Add, ...tee(j), ...i32(count * step), ...op.i32LtU, ...op.brIf(0), ...op.end,
    ];
  /** pa, pb at the tile's first row and column j (+ col); the k loop of `body` (K steps, or K/4 for dots). */
  const kLoop = (col: number, steps: number, body: number[], aStep: number, bStep: number) => [
    ...get(pA0), ...set(pa),
    ...get(pB0), ...get(j), ...i32(4 * sBn), ...op.i32Mul, ...op.i32Add, ...addConst(4 * col * sBn), ...set(pb),
    ...i32(steps), ...set(k),
    ...op.loop, ...body,
    ...get(pa), ...i32(aStep), ...op.i32Add, ...set(pa),
    ...get(pb), ...i32(bStep), ...op.i32Add, ...set(pb),
    ...get(k), ...i32(-1), ...op.i32Add, ...tee(k), ...op.brIf(0), ...op.end,
  ];

  /** Columns layout: R rows × (vectors·4) columns at column j + col. */
  const columnsTile = (R: number, vectors: number, col: number) => [
    ...vAcc.slice(0, R * vectors).flatMap((a) => [...op.v128Zero, ...set(a)]),
    ...kLoop(col, K, [
      ...vb.slice(0, vectors).flatMap((b, h) => [...get(pb), ...op.v128Load(16 * h), ...set(b)]),
      ...Array.from({ length: R }, (_, t) => [
        ...get(pa), ...op.v128Load32Splat(4 * t * sAm), ...set(va),
        ...vb.slice(0, vectors).flatMap((b, h) => [...madd(get(va), get(b), vAcc[t * vectors + h]!), ...set(vAcc[t * vectors + h]!)]),
      ]).flat(),
    ], 4 * sAk, 4 * sBk),
    ...Array.from({ length: R }, (_, t) => Array.from({ length: vectors }, (_, h) => store(vAcc[t * vectors + h]!, t, col + 4 * h, true)).flat()).flat(),
  ];
  /** Columns layout, one scalar column at j + col. */
  const columnsScalar = (R: number, col: number) => [
    ...fAcc.slice(0, R).flatMap((a) => [...f32(0), ...set(a)]),
    ...kLoop(col, K, Array.from({ length: R }, (_, t) => [
      ...get(fAcc[t]!), ...get(pa), ...op.f32Load(4 * t * sAm), ...get(pb), ...op.f32Load(), ...op.f32Mul, ...op.f32Add, ...set(fAcc[t]!),
    ]).flat(), 4 * sAk, 4 * sBk),
    ...Array.from({ length: R }, (_, t) => store(fAcc[t]!, t, col, false)).flat(),
  ];
  const columnsRows = (R: number) => {
    const N8 = Math.floor(N / 8);
    const rest = N - 8 * N8;
    return [
      ...jLoop(N8, 8, columnsTile(R, 2, 0)),
      ...i32(8 * N8), ...set(j),
      ...(rest >= 4 ? columnsTile(R, 1, 0) : []),
      ...Array.from({ length: rest % 4 }, (_, c) => columnsScalar(R, (rest >= 4 ? 4 : 0) + c)).flat(),
    ];
  };

  /** f32 lanes of (x, y) picked into one vector: lanes 0–3 of x, 4–7 of y. */
  const shuffle = (lanes: number[]) => [...simd(13), ...lanes.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3])];
  /** [x0 + x2, y0 + y2, x1 + x3, y1 + y3]: half of two vectors' lane sums. */
  const pairSums = (x: number, y: number) => [...get(x), ...get(y), ...shuffle([0, 4, 1, 5]), ...get(x), ...get(y), ...shuffle([2, 6, 3, 7]), ...op.f32x4Add];
  /** Dots layout: R rows × C columns at j + col; sums over k four at a time, then the k tail. */
  const dotsTile = (R: number, C: number, col: number) => {
    const K4 = Math.floor(K / 4);
    const acc = (t: number, c: number) => vAcc[t * 4 + c]!;
    return [
      ...(K4 > 0 ? [
        ...Array.from({ length: R * C }, (_, q) => [...op.v128Zero, ...set(acc(Math.floor(q / C), q % C))]).flat(),
        ...kLoop(col, K4, [
          ...Array.from({ length: R }, (_, t) => [...get(pa), ...op.v128Load(4 * t * sAm), ...set(vA[t]!)]).flat(),
          ...Array.from({ length: C }, (_, c) => [...get(pb), ...op.v128Load(4 * c * sBn), ...set(vb[c]!)]).flat(),
          ...Array.from({ length: R * C }, (_, q) => {
            const [t, c] = [Math.floor(q / C), q % C];
            return [...madd(get(vA[t]!), get(vb[c]!), acc(t, c)), ...set(acc(t, c))];
          }).flat(),
        ], 16, 16),
      ] : []),
      ...(C === 4 && K4 > 0 && K % 4 === 0 ? Array.from({ length: R }, (_, t) => [
        // The four columns' sums as one vector (lane c: Σ of acc(t, c)'s lanes), stored at once.
        ...pairSums(acc(t, 0), acc(t, 1)), ...set(vb[0]!), ...pairSums(acc(t, 2), acc(t, 3)), ...set(vb[1]!),
        ...get(vb[0]!), ...get(vb[1]!), ...shuffle([0, 1, 4, 5]), ...get(vb[0]!), ...get(vb[1]!), ...shuffle([2, 3, 6, 7]), ...op.f32x4Add, ...set(vb[2]!),
        ...store(vb[2]!, t, col, true),
      ]).flat() : Array.from({ length: R * C }, (_, q) => {
        const [t, c] = [Math.floor(q / C), q % C];
        const lanes = K4 > 0 ? [
          ...get(acc(t, c)), ...op.f32x4ExtractLane(0), ...get(acc(t, c)), ...op.f32x4ExtractLane(1), ...op.f32Add,
          ...get(acc(t, c)), ...op.f32x4ExtractLane(2), ...get(acc(t, c)), ...op.f32x4ExtractLane(3), ...op.f32Add, ...op.f32Add,
        ] : f32(0);
        // The k tail (K % 4 terms), unrolled: A(t, k)·B(k, c) at the tile's column.
        const tail = Array.from({ length: K - 4 * K4 }, (_, kk) => [
          ...get(pA0), ...op.f32Load(4 * (t * sAm + 4 * K4 + kk)),
          ...get(pB0), ...get(j), ...i32(4 * sBn), ...op.i32Mul, ...op.i32Add, ...op.f32Load(4 * ((col + c) * sBn + 4 * K4 + kk)),
          ...op.f32Mul, ...op.f32Add,
        ]).flat();
        return [...lanes, ...tail, ...set(fAcc[q]!), ...store(fAcc[q]!, t, col + c, false)];
      }).flat()),
    ];
  };
  const dotsRows = (R: number) => {
    const N4 = Math.floor(N / 4);
    return [
      ...jLoop(N4, 4, dotsTile(R, 4, 0)),
      ...[...i32(4 * N4), ...set(j)],
      ...Array.from({ length: N % 4 }, (_, c) => dotsTile(R, 1, c)).flat(),
    ];
  };
  const tileRows = (R: number) => (layout === 'columns' ? columnsRows(R) : dotsRows(R));

  const body = [
    // r = begin / N, rEnd = end / N (jax-js splits work at multiples of chunkAlignment = R·N)
    ...get(BEGIN), ...i32(N), ...op.i32DivU, ...set(r),
    ...get(END), ...i32(N), ...op.i32DivU, ...set(rEnd),
    ...op.block, ...op.loop,
    ...get(r), ...get(rEnd), ...op.i32GeU, ...op.brIf(1),
    ...get(r), ...i32(M), ...op.i32RemU, ...set(m),
    ...get(r), ...i32(M), ...op.i32DivU, ...set(bIdx),
    // Byte addresses of A(m, 0), B(0, 0) (this batch entry) and C(r, 0).
    ...get(rowsPtr), ...unravelOffset(bIdx, batchDims('a')), ...addConst(plan.rowsOffset), ...get(m), ...mulConst(sAm), ...op.i32Add,
    ...i32(4), ...op.i32Mul, ...op.i32Add, ...set(pA0),
    ...get(colsPtr), ...unravelOffset(bIdx, batchDims('b')), ...addConst(plan.colsOffset), ...i32(4), ...op.i32Mul, ...op.i32Add, ...set(pB0),
    ...get(OUT), ...get(r), ...i32(4 * N), ...op.i32Mul, ...op.i32Add, ...set(pC),
    // Each epilogue load's address at the tile's rows (the rows past a short tile are never read).
    ...pk.loads.flatMap((l, g) => Array.from({ length: TILE_ROWS }, (_, t) => [
      ...get(l.arg),
      ...(t ? [...get(r), ...i32(t), ...op.i32Add, ...set(m)] : []),
      ...unravelOffset(t ? m : r, l.rowDims), ...addConst(l.offset), ...i32(4), ...op.i32Mul, ...op.i32Add, ...set(loadRow[g]![t]!),
    ]).flat()),
    ...(pk.loads.length ? [...get(r), ...i32(M), ...op.i32RemU, ...set(m)] : []),
    // A full tile when its rows lie in one batch entry and in this chunk, else one row.
    ...get(m), ...i32(TILE_ROWS), ...op.i32Add, ...i32(M), ...op.i32LeU,
    ...get(r), ...i32(TILE_ROWS), ...op.i32Add, ...get(rEnd), ...op.i32LeU, ...op.i32And,
    ...op.if, ...tileRows(TILE_ROWS), ...get(r), ...i32(TILE_ROWS), ...op.i32Add, ...set(r),
    ...op.else, ...tileRows(1), ...get(r), ...i32(1), ...op.i32Add, ...set(r),
    ...op.end,
    ...op.br(0),
    ...op.end, ...op.end,
  ];
  return functionModule({
    params: nParams,
    locals: [[nI32, I32], [nF32, F32], [nV128, V128]],
    body,
    exportName: 'kernel',
    sharedMemory: opts.sharedMemory,
  });
}

/** Kernel source for jax-js's dispatch: the module and how to split it (whole tiles per worker). */
type Program = { kernelHash: string; module: WebAssembly.Module; workSize: number; chunkAlignment: number; minWorkPerWorker: number };

let routedProducts = 0;

/** How many distinct kernels went to the WASM SIMD products in this process (for tests and benches). */
export function wasmProductsRouted(): number {
  return routedProducts;
}

/**
 * Routes the wasm backend's matrix products to product modules. Call once, before the first kernel
 * is prepared (and after any native route: kernels it takes never reach here). Returns false when
 * the runtime lacks WASM SIMD.
 */
export function installWasmProducts(backend: PrepareFns, jax: JaxInternals): boolean {
  const sharedMemory = typeof SharedArrayBuffer !== 'undefined' && typeof Worker !== 'undefined'; // as jax-js decides
  const relaxed = hasRelaxedSimd();
  try {
    // SIMD at all: a tiny product must compile.
    if (!WebAssembly.validate(functionModule({ params: 0, locals: [], body: [...op.v128Zero, 0x1a], exportName: 'f', sharedMemory }))) return false;
  } catch {
    return false;
  }
  const { Executable, FpHash } = jax;
  const prepareSync = backend.prepareKernelSync.bind(backend);
  const prepareAsync = backend.prepareKernel.bind(backend);
  const executable = (kernel: KernelLike, sync: boolean): unknown => {
    const pk = planProductKernel(kernel, jax);
    if (!pk) return null;
    const module = new WebAssembly.Module(productModule(pk, { relaxed, sharedMemory }));
    const tile = (pk.layout === 'columns' ? 4 : 2) * pk.plan.N;
    const program: Program = {
      kernelHash: `starflow-product:${FpHash.hash(kernel)}`,
      module,
      workSize: kernel.size,
      chunkAlignment: tile,
      // A worker's share: at least ~64k multiply-adds.
      minWorkPerWorker: Math.max(tile, Math.ceil(65536 / pk.plan.K / tile) * tile),
    };
    routedProducts++;
    return new Executable(kernel, { program, sync });
  };
  backend.prepareKernelSync = (kernel: object) => executable(kernel as KernelLike, true) ?? prepareSync(kernel);
  backend.prepareKernel = async (kernel: object) => executable(kernel as KernelLike, false) ?? prepareAsync(kernel);
  return true;
}

