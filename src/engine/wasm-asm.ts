// The little of the WebAssembly binary format that hand-written kernels need: LEB128 numbers,
// sections, and a one-function module shaped like a jax-js kernel (imports env.memory, exports one
// function). Opcodes are named where they are used.

/** Unsigned LEB128. */
export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** Signed LEB128 (32-bit). */
export function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) return [...out, b];
    out.push(b | 0x80);
  }
}

export const I32 = 0x7f;
export const V128 = 0x7b;
export const F32 = 0x7d;

const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const name = (s: string) => [...uleb(s.length), ...[...s].map((c) => c.charCodeAt(0))];

export type FunctionModule = {
  /** Number of i32 parameters. */
  params: number;
  /** Extra locals, in runs of one type: [count, type]. */
  locals: [number, number][];
  body: number[];
  exportName: string;
  /** Import a shared memory (what jax-js creates when it runs a worker pool). */
  sharedMemory: boolean;
};

/** A module with one function `(i32 × params) → ()` over an imported env.memory. */
export function functionModule(f: FunctionModule): Uint8Array<ArrayBuffer> {
  // Memory limits: shared memories must declare a maximum (jax-js's: 65,536 pages).
  const limits = f.sharedMemory ? [0x03, 0x00, ...uleb(65536)] : [0x00, 0x00];
  const code = [...vec(f.locals.map(([n, t]) => [...uleb(n), t])), ...f.body, 0x0b];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec([[0x60, ...vec(new Array(f.params).fill([I32])), 0x00]])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, ...limits]])),
    ...section(3, vec([[0x00]])),
    ...section(7, vec([[...name(f.exportName), 0x00, 0x00]])),
    ...section(10, vec([[...uleb(code.length), ...code]])),
  ]);
}

// Instructions, as byte lists.
export const get = (l: number) => [0x20, ...uleb(l)];
export const set = (l: number) => [0x21, ...uleb(l)];
export const tee = (l: number) => [0x22, ...uleb(l)];
export const i32 = (v: number) => [0x41, ...sleb(v | 0)];
export const f32 = (v: number) => [0x43, ...new Uint8Array(new Float32Array([v]).buffer)];
export const simd = (op: number) => [0xfd, ...uleb(op)];
/** memarg: log2 of the alignment, and a constant byte offset. */
export const memarg = (align: number, offset: number) => [align, ...uleb(offset)];
export const op = {
  i32Add: [0x6a], i32Sub: [0x6b], i32Mul: [0x6c], i32DivU: [0x6e], i32RemU: [0x70],
  i32LtU: [0x49], i32LeU: [0x4d], i32GeU: [0x4f], i32Eqz: [0x45], i32And: [0x71],
  f32Add: [0x92], f32Sub: [0x93], f32Mul: [0x94], f32Neg: [0x8c],
  f32Load: (offset = 0) => [0x2a, ...memarg(2, offset)],
  f32Store: (offset = 0) => [0x38, ...memarg(2, offset)],
  v128Load: (offset = 0) => [...simd(0), ...memarg(4, offset)],
  v128Load32Splat: (offset = 0) => [...simd(9), ...memarg(2, offset)],
  v128Store: (offset = 0) => [...simd(11), ...memarg(4, offset)],
  v128Zero: [...simd(12), ...new Array(16).fill(0)],
  f32x4Splat: simd(19),
  f32x4ExtractLane: (lane: number) => [...simd(31), lane],
  f32x4Neg: simd(225), f32x4Add: simd(228), f32x4Sub: simd(229), f32x4Mul: simd(230),
  /** a·b + c, fused where the machine has it (relaxed SIMD). */
  f32x4RelaxedMadd: simd(261),
  block: [0x02, 0x40], loop: [0x03, 0x40], if: [0x04, 0x40], else: [0x05], end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
};

/** Whether this runtime has relaxed SIMD (f32x4.relaxed_madd), tested on a tiny module. */
export function hasRelaxedSimd(): boolean {
  try {
    const body = [...op.v128Zero, ...op.v128Zero, ...op.v128Zero, ...op.f32x4RelaxedMadd, 0x1a]; // drop
    return WebAssembly.validate(functionModule({ params: 0, locals: [], body, exportName: 'f', sharedMemory: false }));
  } catch {
    return false;
  }
}
