// jax-js's elementwise and reduction kernels as register programs for the native addon
// (native/kernels.c), which evaluates them on the wasm memory with this machine's vector width and
// every thread of the budget. jax-js's own wasm kernels are scalar wherever an expression holds
// exp, log or a reciprocal, and single-threaded beside the native GEMM.
//
// A kernel is lowered from its expression tree: one instruction per distinct node (equal nodes are
// merged, so an expression jax-js inlined several times is computed once), loads as strided views.
// A load is accepted only where jax-js reads the view at the kernel's own flat index (output index
// unravelled, then the reduced index last), which is how it writes every fused elementwise and
// reduction kernel; gathers and anything else the format cannot say return null and stay on wasm.
// The descriptor layout is documented in native/kernels.c.
import type { JaxInternals } from './jax-internals.js';

/** Runs a lowered program: `desc` as documented in native/kernels.c. */
export type KernelRunner = (memory: Uint8Array, desc: Float64Array) => void;

const MAGIC = 20261203;
const HEADER = 16;
const INSTR = 8;
const MAXDIM = 8;
const VIEW_LEN = 5 + 4 * MAXDIM;
/** Kernels with fewer lanes (outputs × reduced size) stay on wasm: a native call costs ~1 µs more. */
export const MIN_NATIVE_LANES = 2048;
/**
 * Kernels jax-js vectorises stay on wasm unless they are long elementwise expressions: its SIMD
 * kernels move memory as fast as this evaluator and faster where they only move memory (a `where`
 * over a KV cache: 6.9 ms against 9.3; row sums 0.05 against 0.35), while a long expression gains
 * from the wider vectors (GELU's: 5.9 ms against 4.3), and scalar ones gain most (exp: 8.0 against
 * 1.9). One thread, `npm run bench -- kernels`: bench/results/kernels-2026-12-03.md.
 */
export const LONG_EXPRESSION = 32;

// What jax-js 0.1.25's wasm backend vectorises (its simdSupportedOps), by dtype.
const JAX_SIMD_OPS: Record<string, Set<string>> = {
  float32: new Set(['Add', 'Sub', 'Mul', 'Floor', 'Ceil', 'Min', 'Max', 'Sqrt', 'Cast', 'Where', 'Const', 'GlobalView']),
  int32: new Set(['Add', 'Sub', 'Mul', 'Min', 'Max', 'Cast', 'Where', 'Const', 'GlobalView']),
  uint32: new Set(['Add', 'Sub', 'Mul', 'Min', 'Max', 'Cast', 'Where', 'Const', 'GlobalView']),
  bool: new Set(['Add', 'Mul', 'Min', 'Max', 'Cmplt', 'Cmpne', 'Const', 'GlobalView']),
};

/** Whether jax-js runs this kernel scalar (an op outside its SIMD set, the loads' indices aside). */
function scalarOnWasm(kernel: KernelLike): boolean {
  const seen = new Set<Exp>();
  const scalar = (e: Exp): boolean => {
    if (seen.has(e)) return false;
    seen.add(e);
    if (!JAX_SIMD_OPS[e.dtype]?.has(e.op)) return true;
    return e.op !== 'GlobalView' && e.src.some(scalar);
  };
  const red = kernel.reduction;
  if (red && !JAX_SIMD_OPS[red.dtype]?.has(red.op)) return true;
  return scalar(kernel.exp) || (red !== undefined && red.epilogue.op !== 'Variable' && scalar(red.epilogue));
}

/**
 * Which kernels go native: 'auto' those worth it (above), 'all' every one the evaluator can run
 * (STARFLOW_NATIVE_KERNELS=all, for measuring that choice: `npm run bench -- kernels`).
 */
export type KernelPolicy = 'auto' | 'all';

/** Whether a lowered kernel is worth the native evaluator rather than jax-js's wasm. */
function worthNative(kernel: KernelLike, instructions: number, policy: KernelPolicy): boolean {
  return policy === 'all' || scalarOnWasm(kernel) || (!kernel.reduction && instructions >= LONG_EXPRESSION);
}

const TYPES: Record<string, number> = { float32: 0, int32: 1, uint32: 2, bool: 3 };
const OPS = {
  Const: 0, gidx: 1, ridx: 2, acc: 3, Load: 4,
  Add: 5, Sub: 6, Mul: 7, Idiv: 8, Mod: 9, Min: 10, Max: 11,
  Cmplt: 12, Cmpne: 13, Where: 14, Cast: 15,
  Sqrt: 16, Reciprocal: 17, Exp: 18, Log: 19, Floor: 20, Ceil: 21,
  MulAdd: 22,
} as const;
const BINARY = new Set(['Add', 'Sub', 'Mul', 'Idiv', 'Mod', 'Min', 'Max', 'Cmplt', 'Cmpne']);
const FLOAT_UNARY = new Set(['Sqrt', 'Reciprocal', 'Exp', 'Log', 'Floor', 'Ceil']);
const REDUCE: Record<string, number> = { Add: 1, Mul: 2, Min: 3, Max: 4 };

type View = { shape: number[]; strides: number[]; offset: number; mask: [number, number][] | null };
type Exp = { op: string; dtype: string; src: Exp[]; arg: unknown; simplify(): Exp };
export type KernelLike = { nargs: number; size: number; exp: Exp; reduction?: { op: string; dtype: string; size: number; epilogue: Exp } };

/** A lowered kernel: its descriptor, and where each call writes the pointers. */
export type NativeProgram = {
  desc: Float64Array;
  /** [descriptor slot, argument] pairs: the slot takes that argument's byte pointer. */
  bases: [number, number][];
};

class Unsupported extends Error {}

type Axis = { size: number; stride: number; lo: number; hi: number };
type ViewRecord = { axes: Axis[]; offset: number; masked: boolean; reduced: boolean };

/**
 * A load as the addon reads it: axes of size 1 dropped and axes that step together merged, except
 * that a reduction's reduced axis (the last) stays itself; 'empty' when no element is valid.
 */
function viewRecord(view: View, reduced: boolean): ViewRecord | 'empty' {
  const all: Axis[] = view.shape.map((size, i) => {
    const [lo, hi] = view.mask ? view.mask[i]! : [0, size];
    return { size, stride: view.strides[i]!, lo, hi };
  });
  if (all.some((a) => a.lo >= a.hi)) return 'empty';
  const last = reduced ? all.pop()! : null;
  const full = (a: Axis) => a.lo === 0 && a.hi === a.size;
  const axes: Axis[] = [];
  for (const ax of all) {
    if (ax.size === 1) continue;
    const prev = axes[axes.length - 1];
    if (prev && full(prev) && full(ax) && prev.stride === ax.stride * ax.size) {
      axes[axes.length - 1] = { size: prev.size * ax.size, stride: ax.stride, lo: 0, hi: prev.size * ax.size };
    } else axes.push({ ...ax });
  }
  if (last) axes.push(last);
  if (axes.length === 0) axes.push({ size: 1, stride: 0, lo: 0, hi: 1 });
  if (axes.length > MAXDIM) throw new Unsupported();
  return { axes, offset: view.offset, masked: axes.some((a) => !full(a)), reduced };
}

/**
 * Lowers `kernel` to a native program, or null when it is not one the addon can run or not one it
 * runs faster than jax-js's wasm.
 */
export function lowerKernel(kernel: KernelLike, jax: JaxInternals, policy: KernelPolicy = 'auto'): NativeProgram | null {
  if (kernel.size * (kernel.reduction?.size ?? 1) < MIN_NATIVE_LANES) return null;
  const red = kernel.reduction;
  const R = red ? red.size : 1;
  if (red && (!(red.op in REDUCE) || !(red.dtype in TYPES))) return null;
  const outType = red ? red.epilogue.dtype : kernel.exp.dtype;
  if (!(outType in TYPES)) return null;

  const instrs: number[][] = [];
  const views: number[][] = [];
  const viewIndex = new Map<string, number>();
  const bases: [number, number][] = [];
  const expectedIndices = new Map<string, Exp[]>();
  const expected = (shape: number[], reduced: boolean): Exp[] => {
    const key = `${reduced}:${shape}`;
    let e = expectedIndices.get(key);
    if (!e) {
      const outer = reduced ? shape.slice(0, -1) : shape;
      e = [...jax.unravelAlu(outer, jax.AluVar.gidx), ...(reduced ? [jax.AluVar.ridx] : [])].map((x) => (x as Exp).simplify());
      expectedIndices.set(key, e);
    }
    return e;
  };

  /** Lowers one program (main: lanes are flat indices; epilogue: lanes are outputs). */
  const lower = (root: Exp, epilogue: boolean, castTo?: string): void => {
    const first = instrs.length;
    // How many parents each node has: a product read once and added to folds into MulAdd.
    const uses = new Map<Exp, number>();
    const count = (e: Exp) => {
      for (const c of e.src) {
        const n = (uses.get(c) ?? 0) + 1;
        uses.set(c, n);
        if (n === 1) count(c);
      }
    };
    count(root);
    const byNode = new Map<Exp, number>();
    const byKey = new Map<string, number>();
    // `varies`: whether the result changes with the reduced index (the main program of a
    // reduction); operands pass it on.
    const emit = (op: number, type: number, a = -1, b = -1, c = -1, imm = 0, varies = false): number => {
      const key = `${op},${type},${a},${b},${c},${imm}`;
      const known = byKey.get(key);
      if (known !== undefined) return known;
      const v = varies || [a, b, c].some((x) => x >= 0 && instrs[x]![6] === 1);
      instrs.push([op, type, a, b, c, imm, v ? 1 : 0]);
      byKey.set(key, instrs.length - 1);
      return instrs.length - 1;
    };
    const typeOf = (dtype: string): number => {
      const t = TYPES[dtype];
      if (t === undefined) throw new Unsupported();
      return t;
    };
    const load = (e: Exp): number => {
      const [gid, st] = e.arg as [number, { views: View[] }];
      if (st.views.length !== 1 || !Number.isInteger(gid) || gid < 0 || gid >= kernel.nargs) throw new Unsupported();
      const view = st.views[0]!;
      const reduced = !epilogue && R > 1;
      const shape = view.shape;
      const outer = reduced ? shape.slice(0, -1) : shape;
      if (reduced && shape[shape.length - 1] !== R) throw new Unsupported();
      if (outer.reduce((p, d) => p * d, 1) !== kernel.size) throw new Unsupported();
      if (!jax.deepEqual(e.src, expected(shape, reduced))) throw new Unsupported();
      const rec = viewRecord(view, reduced);
      if (rec === 'empty') return emit(OPS.Const, typeOf(e.dtype), -1, -1, -1, 0);
      const v = new Array<number>(VIEW_LEN).fill(0);
      v[1] = rec.axes.length;
      v[2] = rec.offset;
      v[3] = rec.masked ? 1 : 0;
      v[4] = rec.reduced ? 1 : 0;
      rec.axes.forEach((ax, i) => {
        v[5 + i] = ax.size;
        v[5 + MAXDIM + i] = ax.stride;
        v[5 + 2 * MAXDIM + i] = ax.lo;
        v[5 + 3 * MAXDIM + i] = ax.hi;
      });
      const r = rec.axes[rec.axes.length - 1]!;
      const varies = rec.reduced && (r.stride !== 0 || r.lo !== 0 || r.hi !== r.size);
      const key = `${gid}:${v.join(',')}`;
      let index = viewIndex.get(key);
      if (index === undefined) {
        views.push(v);
        index = views.length - 1;
        viewIndex.set(key, index);
        bases.push([index, gid]);
      }
      return emit(OPS.Load, typeOf(e.dtype), -1, -1, -1, index, varies);
    };
    const visit = (e: Exp): number => {
      const seen = byNode.get(e);
      if (seen !== undefined) return seen;
      let r: number;
      const s = (i: number) => visit(e.src[i]!);
      if (e.op === 'Const') {
        const value = Number(e.arg);
        if (!Number.isFinite(value) && e.dtype !== 'float32') throw new Unsupported();
        r = emit(OPS.Const, typeOf(e.dtype), -1, -1, -1, value);
      } else if (e.op === 'Variable') {
        const name = e.arg as string;
        if (name === 'gidx') r = emit(OPS.gidx, TYPES.int32!);
        else if (name === 'ridx' && !epilogue && R > 1) r = emit(OPS.ridx, TYPES.int32!, -1, -1, -1, 0, true);
        else if (name === 'acc' && epilogue) r = emit(OPS.acc, typeOf(e.dtype));
        else throw new Unsupported();
      } else if (e.op === 'GlobalView') {
        r = load(e);
      } else if (e.op === 'Add' && e.dtype === 'float32' && e.src.some((x) => x.op === 'Mul' && uses.get(x) === 1)) {
        const m = e.src.findIndex((x) => x.op === 'Mul' && uses.get(x) === 1);
        const product = e.src[m]!;
        r = emit(OPS.MulAdd, TYPES.float32!, visit(product.src[0]!), visit(product.src[1]!), s(1 - m));
      } else if (BINARY.has(e.op)) {
        const compare = e.op === 'Cmplt' || e.op === 'Cmpne';
        r = emit(OPS[e.op as keyof typeof OPS], typeOf(compare ? e.src[0]!.dtype : e.dtype), s(0), s(1));
      } else if (e.op === 'Where') {
        r = emit(OPS.Where, typeOf(e.dtype), s(0), s(1), s(2));
      } else if (e.op === 'Cast') {
        r = emit(OPS.Cast, typeOf(e.dtype), s(0), -1, -1, typeOf(e.src[0]!.dtype));
      } else if (e.op === 'Bitcast') {
        typeOf(e.dtype);
        typeOf(e.src[0]!.dtype);
        r = s(0); // lanes are bit patterns: the same register
      } else if (FLOAT_UNARY.has(e.op) && e.dtype === 'float32') {
        r = emit(OPS[e.op as keyof typeof OPS], TYPES.float32!, s(0));
      } else throw new Unsupported();
      byNode.set(e, r);
      return r;
    };
    let out = visit(root);
    if (castTo && castTo !== root.dtype) out = emit(OPS.Cast, typeOf(castTo), out, -1, -1, typeOf(root.dtype));
    // The program's result is its last instruction.
    if (out !== instrs.length - 1 || out < first) instrs.push([OPS.Cast, instrs[out]![1]!, out, -1, -1, instrs[out]![1]!, instrs[out]![6]!]);
  };

  try {
    lower(kernel.exp, false, red?.dtype);
    const nmain = instrs.length;
    const epilogue = red && !(red.epilogue.op === 'Variable' && red.epilogue.arg === 'acc') ? red.epilogue : null;
    if (epilogue) lower(epilogue, true);
    const nepi = instrs.length - nmain;
    if (!worthNative(kernel, instrs.length, policy)) return null;
    const { slot, slots } = allocateSlots(instrs, nmain);
    const desc = new Float64Array(HEADER + instrs.length * INSTR + views.length * VIEW_LEN);
    desc.set([MAGIC, nmain, nepi, R, red ? REDUCE[red.op]! : 0, red ? TYPES[red.dtype]! : 0, 0, kernel.size, views.length, 0, kernel.size, slots, slot[nmain - 1]!, nepi ? slot[instrs.length - 1]! : 0]);
    instrs.forEach(([op, type, a, b, c, imm, varies], i) => {
      const at = (x: number) => (x >= 0 ? slot[x]! : -1);
      desc.set([op!, type!, slot[i]!, at(a!), at(b!), at(c!), imm!, varies!], HEADER + i * INSTR);
    });
    const viewStart = HEADER + instrs.length * INSTR;
    views.forEach((v, i) => desc.set(v, viewStart + i * VIEW_LEN));
    return { desc, bases: bases.map(([i, gid]) => [viewStart + i * VIEW_LEN, gid]) };
  } catch (err) {
    if (err instanceof Unsupported) return null;
    throw err;
  }
}

/**
 * Registers for the instructions (main program: [0, nmain), then the epilogue), reused once a value
 * is dead, so that a long expression works in a few registers that stay in the L1 cache. The addon
 * runs a program's invariant instructions first, then (per reduced index) the varying ones, each
 * in order; values live in that order. Constants keep their registers (filled once per call); so
 * do the main result and, in a reduction, invariant values read by varying instructions.
 */
function allocateSlots(instrs: number[][], nmain: number): { slot: number[]; slots: number } {
  const slot = new Array<number>(instrs.length).fill(-1);
  let slots = 0;
  const constant = (i: number) => instrs[i]![0] === OPS.Const;
  for (let i = 0; i < instrs.length; i++) if (constant(i)) slot[i] = slots++;
  const pass = (order: number[], keep: (i: number) => boolean) => {
    const position = new Map(order.map((i, p) => [i, p]));
    const lastUse = new Map<number, number>();
    for (const i of order) for (const x of instrs[i]!.slice(2, 5)) if (x! >= 0) lastUse.set(x!, position.get(i)!);
    const free: number[] = [];
    const fresh = [...Array(slots).keys()].filter((k) => !slot.some((s, i) => s === k && (constant(i) || keep(i))));
    free.push(...fresh.reverse());
    order.forEach((i, p) => {
      if (constant(i)) return;
      slot[i] = free.pop() ?? slots++;
      for (const x of new Set(instrs[i]!.slice(2, 5))) {
        if (x! < 0 || constant(x!) || keep(x!) || lastUse.get(x!) !== p) continue;
        free.push(slot[x!]!);
      }
    });
  };
  const main = [...Array(nmain).keys()];
  const varies = (i: number) => instrs[i]![6] === 1;
  const readByVarying = new Set(main.filter(varies).flatMap((i) => instrs[i]!.slice(2, 5).filter((x) => x! >= 0 && !varies(x!))));
  pass([...main.filter((i) => !varies(i)), ...main.filter(varies)], (i) => i === nmain - 1 || readByVarying.has(i));
  // The epilogue runs after the main program's values are dead (its result is in the accumulator).
  const epi = [...Array(instrs.length - nmain).keys()].map((k) => nmain + k);
  pass(epi, (i) => i === instrs.length - 1);
  return { slot, slots };
}

/** The kernel function jax-js calls, `(...pointers, output, begin, end)`, running `program`. */
export function nativeKernelFunction(program: NativeProgram, nargs: number, memory: WebAssembly.Memory, run: KernelRunner): (...args: number[]) => void {
  const { desc, bases } = program;
  let view = new Uint8Array(memory.buffer); // a new one only after the memory grows
  return (...args: number[]) => {
    for (const [slot, gid] of bases) desc[slot] = args[gid]!;
    desc[6] = args[nargs]!;
    desc[9] = args[nargs + 1]!;
    desc[10] = args[nargs + 2]!;
    if (view.buffer !== memory.buffer) view = new Uint8Array(memory.buffer);
    run(view, desc);
  };
}
