// Kernels on native code rather than jax-js's generated wasm, with no change above the engine
// layer (Node: the addon, src/engine/native.ts).
// - Matrix products: jax-js lowers a matmul to a reduction kernel, Σ_k A[.., k]·B[.., k], over two
//   strided views of its wasm memory. Kernels of exactly that shape go to a GEMM with the same
//   memory, offsets and strides; a fused epilogue (bias, scale, additive mask) runs after it,
//   reading the product in place.
// - Every other elementwise or reduction kernel the register-program format can say
//   (src/engine/native-kernels.ts) runs on the addon's vectorised, threaded evaluator.
// Such kernels skip jax-js's code generation altogether: their executable holds a placeholder
// module whose instance the instance cache replaces with the native call. Anything else is left
// to jax-js.
//
// jax-js's internals (its Kernel, Executable and expression classes) are reached through the
// pinned build, as the kernel cache does; they are checked when the route is installed, and a
// mismatch leaves every kernel on wasm.
import { routeModule } from './instance-cache.js';
import type { JaxInternals } from './jax-internals.js';
import type { PrepareFns } from './kernel-cache.js';
import { lowerKernel, nativeKernelFunction, type KernelPolicy, type KernelRunner } from './native-kernels.js';

/**
 * Native compute over the wasm memory: a GEMM (`desc` as documented in native/gemm.c) and, where
 * the addon has it, the evaluator of lowered kernels (native/kernels.c).
 */
export type Native = { readonly name: string; gemm(memory: Uint8Array, desc: Float64Array): void; kernel?: KernelRunner; kernelPolicy?: KernelPolicy };

/** One recognised product: a row-major C[batch.., M, N] = A·B, operands by argument index. */
export type MatmulPlan = {
  rowsArg: number;
  colsArg: number;
  M: number;
  N: number;
  K: number;
  rowsOffset: number;
  colsOffset: number;
  transA: 0 | 1;
  lda: number;
  transB: 0 | 1;
  ldb: number;
  /** Batch axes: size and strides (elements) in A, B and C. */
  batch: { size: number; a: number; b: number; c: number }[];
};

/**
 * Products with fewer multiply-adds in all stay on wasm: a call costs more than it saves. Many
 * tiny products in a batch still go to the GEMM: attention over a KV cache at batch 1024 (4,096
 * products of 1 × 16 × 64) sampled faster there than on wasm (6.5 s against 7.0 s, 3 runs each).
 */
export const MIN_ROUTED_MACS = 16 * 16 * 16;
const MAX_BATCH_AXES = 4;

// Shapes of jax-js's expression objects, as far as the recogniser reads them.
type View = { shape: number[]; strides: number[]; offset: number; mask: unknown };
type Exp = { op: string; dtype: string; src: Exp[]; arg: unknown; substitute(v: Record<string, Exp>): Exp; simplify(): Exp };
type KernelLike = { nargs: number; size: number; exp: Exp; reduction?: { op: string; dtype: string; size: number; epilogue: Exp } };

/** The plan for a kernel that is a plain float32 (batched) matrix product, or null. */
export function planMatmul(kernel: KernelLike, jax: JaxInternals): MatmulPlan | null {
  const red = kernel.reduction;
  if (!red || red.op !== 'Add' || red.dtype !== 'float32' || epilogueDtype(kernel) !== 'float32') return null;
  const exp = kernel.exp;
  if (exp.op !== 'Mul' || exp.dtype !== 'float32' || exp.src.length !== 2) return null;
  const views = exp.src.map((gv) => globalView(gv));
  if (!views[0] || !views[1]) return null;
  const shape = views[0].view.shape;
  const n = shape.length - 1;
  if (n < 0 || shape[n] !== red.size || !sameShape(shape, views[1].view.shape)) return null;
  if (shape.slice(0, n).reduce((p, d) => p * d, 1) !== kernel.size) return null;
  // The views must be read at (output index unravelled, reduction index), as jax-js writes them.
  const expected = [...jax.unravelAlu(shape.slice(0, n), jax.AluVar.gidx), jax.AluVar.ridx].map((e) => (e as { simplify(): Exp }).simplify());
  for (const v of views) if (!jax.deepEqual(v!.indices, expected)) return null;

  const [a, b] = views as [GlobalView, GlobalView];
  const K = red.size;
  // Output axes (size > 1), each with its strides in A, B and the contiguous output.
  type Axis = { size: number; a: number; b: number; c: number };
  let axes: Axis[] = [];
  let cStride = 1;
  for (let i = n - 1; i >= 0; i--) {
    if (shape[i]! > 1) axes.unshift({ size: shape[i]!, a: a.view.strides[i]!, b: b.view.strides[i]!, c: cStride });
    cStride *= shape[i]!;
  }
  // Adjacent axes that step together in A, B and C are one axis.
  axes = axes.reduceRight<Axis[]>((acc, ax) => {
    const next = acc[0];
    if (next && ax.a === next.a * next.size && ax.b === next.b * next.size && ax.c === next.c * next.size && kindOf(ax) === kindOf(next)) {
      acc[0] = { size: ax.size * next.size, a: next.a, b: next.b, c: next.c };
    } else acc.unshift(ax);
    return acc;
  }, []);
  // The last axis is the output's columns; the one before it its rows, read from the other operand.
  const last = axes[axes.length - 1];
  if (!last || kindOf(last) === 'batch') return null;
  const colsFromA = kindOf(last) === 'a';
  const [rowsOp, colsOp] = colsFromA ? [b, a] : [a, b];
  const rowsKind = colsFromA ? 'b' : 'a';
  const beforeLast = axes[axes.length - 2];
  const rowsAxis = beforeLast && kindOf(beforeLast) === rowsKind ? beforeLast : null;
  const batchAxes = axes.slice(0, axes.length - 1 - (rowsAxis ? 1 : 0));
  if (batchAxes.some((ax) => kindOf(ax) !== 'batch' && kindOf(ax) !== 'none') || batchAxes.length > MAX_BATCH_AXES) return null;
  const M = rowsAxis?.size ?? 1;
  const N = last.size;
  const macs = M * N * K * batchAxes.reduce((p, ax) => p * ax.size, 1);
  if (macs < MIN_ROUTED_MACS || (M === 1 && N === 1)) return null;
  const strideOf = (ax: Axis | null, op: GlobalView) => (ax ? (op === a ? ax.a : ax.b) : 0);
  const rowsLayout = layout(strideOf(rowsAxis, rowsOp), rowsOp.view.strides[n]!, M, K);
  const colsLayout = layout(colsOp.view.strides[n]!, colsFromA ? last.a : last.b, K, N);
  if (!rowsLayout || !colsLayout) return null;
  return {
    rowsArg: rowsOp.arg,
    colsArg: colsOp.arg,
    M,
    N,
    K,
    rowsOffset: rowsOp.view.offset,
    colsOffset: colsOp.view.offset,
    transA: rowsLayout.trans,
    lda: rowsLayout.ld,
    transB: colsLayout.trans,
    ldb: colsLayout.ld,
    batch: batchAxes.map((ax) => (colsFromA ? { size: ax.size, a: ax.b, b: ax.a, c: ax.c } : { ...ax })),
  };
}

type GlobalView = { arg: number; view: View; indices: Exp[] };

/** A float32 load through one unmasked strided view, or null. */
function globalView(e: Exp): GlobalView | null {
  if (e.op !== 'GlobalView' || e.dtype !== 'float32') return null;
  const [arg, st] = e.arg as [number, { views: View[] }];
  if (st.views.length !== 1) return null;
  const view = st.views[0]!;
  if (view.mask !== null || view.strides.some((s) => s < 0)) return null;
  return { arg, view, indices: e.src };
}

function kindOf(ax: { a: number; b: number }): 'batch' | 'a' | 'b' | 'none' {
  return ax.a !== 0 && ax.b !== 0 ? 'batch' : ax.a !== 0 ? 'a' : ax.b !== 0 ? 'b' : 'none';
}

function sameShape(x: number[], y: number[]): boolean {
  return x.length === y.length && x.every((d, i) => d === y[i]);
}

/**
 * How a rows × cols operand with these strides is stored for a row-major GEMM: as it is (columns
 * contiguous) or transposed (rows contiguous), and its leading dimension; null if neither.
 */
function layout(rowStride: number, colStride: number, rows: number, cols: number): { trans: 0 | 1; ld: number } | null {
  if (cols === 1 || colStride === 1) {
    const ld = rows === 1 ? Math.max(cols, 1) : rowStride;
    if (ld >= Math.max(cols, 1)) return { trans: 0, ld };
  }
  if (rows === 1 || rowStride === 1) {
    const ld = cols === 1 ? Math.max(rows, 1) : colStride;
    if (ld >= Math.max(rows, 1)) return { trans: 1, ld };
  }
  return null;
}

function epilogueDtype(kernel: KernelLike): string {
  return kernel.reduction ? kernel.reduction.epilogue.dtype : kernel.exp.dtype;
}

/**
 * The descriptor native/gemm.c reads, made once per plan: a call only writes its three pointers
 * (bytes) into it. The GEMM is synchronous, so one array serves every call.
 */
function gemmDescriptor(plan: MatmulPlan): (ptrs: number[], out: number) => Float64Array {
  const d = new Float64Array(12 + 4 * plan.batch.length);
  d.set([
    0,
    0,
    0,
    plan.M,
    plan.N,
    plan.K,
    plan.transA,
    plan.lda,
    plan.transB,
    plan.ldb,
    plan.N,
    plan.batch.length,
  ]);
  plan.batch.forEach((ax, i) => d.set([ax.size, ax.a, ax.b, ax.c], 12 + 4 * i));
  return (ptrs, out) => {
    d[0] = ptrs[plan.rowsArg]! + 4 * plan.rowsOffset;
    d[1] = ptrs[plan.colsArg]! + 4 * plan.colsOffset;
    d[2] = out;
    return d;
  };
}

let routed = { products: 0, kernels: 0 };

/** How many distinct kernels went to native code in this process: products, and the others (for tests and benches). */
export function routedKernels(): { products: number; kernels: number } {
  return { ...routed };
}

type Program = { module: WebAssembly.Module; workSize: number };
type Executable = { data: { program?: Program } };

// The smallest module shaped like a jax-js kernel (imports env.memory, exports `kernel`): the
// placeholder a routed executable holds; it is never instantiated.
const PLACEHOLDER = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () → ()
  0x02, 0x0f, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x00, // import env.memory
  0x03, 0x02, 0x01, 0x00, // function 0 of type 0
  0x07, 0x0a, 0x01, 0x06, 0x6b, 0x65, 0x72, 0x6e, 0x65, 0x6c, 0x00, 0x00, // export "kernel"
  0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // its empty body
]);

/**
 * Routes the wasm backend's kernels to `native`: products to its GEMM, others to its kernel
 * evaluator. Call once, before the first kernel is prepared; returns false (and routes nothing)
 * when jax-js is not the build this was written for, or when jax-js runs a worker pool: its
 * workers would run the placeholder module, and a routed kernel must see its inputs written.
 */
export function installNativeRoute(backend: PrepareFns, jax: JaxInternals, native: Native): boolean {
  if (typeof Worker !== 'undefined' && typeof SharedArrayBuffer !== 'undefined') return false;
  const { Kernel, AluExp, AluVar, Executable } = jax;
  const prepareSync = backend.prepareKernelSync.bind(backend);
  const prepareAsync = backend.prepareKernel.bind(backend);
  const runKernel = native.kernel;

  /** An executable whose kernel is `make(memory)` instead of compiled code. */
  const routedExecutable = (kernel: KernelLike, sync: boolean, make: (memory: WebAssembly.Memory, instantiate: (m: WebAssembly.Module) => WebAssembly.Instance) => (...a: number[]) => void) => {
    const module = new WebAssembly.Module(PLACEHOLDER);
    routeModule(module, make);
    return new Executable(kernel, { program: { module, workSize: kernel.size }, sync });
  };

  type Finish = (ptrs: number[], out: number) => void;
  /** The fused epilogue of a product, applied to the product already in the output, or null. */
  const epilogueFunction = (kernel: KernelLike): ((memory: WebAssembly.Memory, instantiate: (m: WebAssembly.Module) => WebAssembly.Instance) => Finish) | null => {
    const epilogue = kernel.reduction!.epilogue;
    if (epilogue.op === 'Variable' && epilogue.arg === 'acc') return null;
    const product = AluExp.globalIndex('float32', kernel.nargs, kernel.size, AluVar.gidx);
    const elementwise = new Kernel(kernel.nargs + 1, kernel.size, epilogue.substitute({ acc: product as Exp }));
    const lowered = runKernel ? lowerKernel(elementwise, jax, native.kernelPolicy) : null;
    if (lowered && runKernel) {
      return (memory) => {
        const run = nativeKernelFunction(lowered, elementwise.nargs, memory, runKernel);
        return (ptrs, out) => run(...ptrs, out, out, 0, kernel.size);
      };
    }
    const program = (prepareSync(elementwise) as Executable).data.program!;
    return (_memory, instantiate) => {
      const run = instantiate(program.module).exports.kernel as (...a: number[]) => void;
      return (ptrs, out) => run(...ptrs, out, out, 0, program.workSize);
    };
  };

  const nativeExecutable = (kernel: KernelLike, sync: boolean): unknown => {
    const plan = planMatmul(kernel, jax);
    if (plan) {
      const epilogue = epilogueFunction(kernel);
      routed.products++;
      return routedExecutable(kernel, sync, (memory, instantiate) => {
        const finish = epilogue?.(memory, instantiate) ?? null;
        const describe = gemmDescriptor(plan);
        let view = new Uint8Array(memory.buffer); // a new one only after the memory grows
        return (...args: number[]) => {
          const ptrs = args.slice(0, kernel.nargs);
          const out = args[kernel.nargs]!;
          if (view.buffer !== memory.buffer) view = new Uint8Array(memory.buffer);
          native.gemm(view, describe(ptrs, out));
          if (finish) finish(ptrs, out);
        };
      });
    }
    const lowered = runKernel ? lowerKernel(kernel, jax, native.kernelPolicy) : null;
    if (!lowered || !runKernel) return null;
    routed.kernels++;
    return routedExecutable(kernel, sync, (memory) => nativeKernelFunction(lowered, kernel.nargs, memory, runKernel));
  };

  backend.prepareKernelSync = (kernel: object) => nativeExecutable(kernel as KernelLike, true) ?? prepareSync(kernel);
  backend.prepareKernel = async (kernel: object) => nativeExecutable(kernel as KernelLike, false) ?? prepareAsync(kernel);
  return true;
}
