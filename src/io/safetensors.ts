// Safetensors reader and writer: pure format logic over Uint8Array, no Node imports, so it runs in
// the browser too. File-system helpers live in ./files.ts.
//
// Layout: u64 little-endian header length N, N bytes of UTF-8 JSON header
// `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`,
// then the little-endian data buffer; offsets are relative to the start of that buffer.

export type SafeDType =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL';

export type FloatDType = 'F64' | 'F32' | 'F16' | 'BF16';
export type IntDType = 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';

/** One tensor: raw little-endian bytes. Parsed entries own a fresh copy with byteOffset 0. */
export interface TensorEntry {
  dtype: SafeDType;
  shape: number[];
  data: Uint8Array;
}

export interface SafetensorsFile {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

export const DTYPE_SIZE: Readonly<Record<SafeDType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1,
  BOOL: 1,
};

/** Header lengths above this are rejected before anything is allocated. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
  constructor(message: string) {
    // Messages go straight to the CLI: keep them on one line whatever a hostile name contains.
    super(message.replace(/[\r\n]+/g, ' '));
  }
}

function fail(source: string, problem: string): never {
  throw new SafetensorsError(`${source}: ${problem}`);
}

/** Tensor names come from untrusted files: quote them so they cannot break the message. */
const q = (name: string): string => JSON.stringify(name);

export function isSafeDType(s: unknown): s is SafeDType {
  return typeof s === 'string' && Object.hasOwn(DTYPE_SIZE, s);
}

/** Number of elements, or an error string for a shape that is not a list of non-negative ints. */
function checkShape(shape: unknown): number | string {
  if (!Array.isArray(shape)) return 'shape is not an array';
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      return `shape ${JSON.stringify(shape)} has a dimension that is not a non-negative integer`;
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) return `shape ${JSON.stringify(shape)} has too many elements`;
  return n;
}

// ---- parsing ----

export function parseSafetensors(bytes: Uint8Array, source = 'file'): SafetensorsFile {
  if (bytes.length < 8) {
    fail(source, `truncated: ${bytes.length} bytes, a safetensors file starts with an 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    fail(source, `header length ${headerLen} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`);
  }
  const n = Number(headerLen);
  if (8 + n > bytes.length) {
    fail(source, `truncated: header length ${n} goes beyond the end of the file (${bytes.length} bytes)`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n));
  } catch {
    fail(source, 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    fail(source, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    fail(source, 'header is not a JSON object');
  }

  const dataStart = 8 + n;
  const dataLen = bytes.length - dataStart;
  let metadata: Record<string, string> = {};
  const spans: { name: string; dtype: SafeDType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(raw, source);
      continue;
    }
    const where = `tensor ${q(name)}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(source, `${where} is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (dtype === undefined) fail(source, `${where} has no dtype`);
    if (!isSafeDType(dtype)) fail(source, `${where} has unknown dtype ${JSON.stringify(dtype)}`);
    if (shape === undefined) fail(source, `${where} has no shape`);
    const count = checkShape(shape);
    if (typeof count === 'string') fail(source, `${where}: ${count}`);
    if (offsets === undefined) fail(source, `${where} has no data_offsets`);
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(source, `${where}: data_offsets must be two non-negative integers, got ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) fail(source, `${where}: data_offsets [${begin},${end}] end before they begin`);
    if (end > dataLen) {
      fail(source, `${where}: data_offsets [${begin},${end}] go beyond the data buffer (${dataLen} bytes; file truncated?)`);
    }
    const expected = DTYPE_SIZE[dtype] * count;
    if (end - begin !== expected) {
      fail(source, `${where}: ${end - begin} bytes of data but ${dtype} ${JSON.stringify(shape)} needs ${expected}`);
    }
    spans.push({ name, dtype, shape: shape as number[], begin, end });
  }

  // Like the reference implementation, require the tensors to tile the data buffer exactly:
  // overlaps would alias tensors, and holes or trailing bytes mean a damaged or foreign file.
  // The spec only recommends "no holes", but no conforming writer produces them.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: string | undefined;
  for (const s of spans) {
    if (s.begin < cursor) fail(source, `tensor ${q(s.name)} overlaps tensor ${q(prev ?? '')} in the data buffer`);
    if (s.begin > cursor) fail(source, `data buffer has a gap of ${s.begin - cursor} bytes before tensor ${q(s.name)}`);
    cursor = s.end;
    prev = s.name;
  }
  if (cursor !== dataLen) {
    fail(source, `data buffer has ${dataLen - cursor} bytes after the last tensor (offsets do not cover it)`);
  }

  const tensors = new Map<string, TensorEntry>();
  for (const s of spans.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    tensors.set(s.name, {
      dtype: s.dtype,
      shape: s.shape,
      // A copy, not a view (Node Buffers' slice is a view): own, aligned, byteOffset 0.
      data: new Uint8Array(bytes.subarray(dataStart + s.begin, dataStart + s.end)),
    });
  }
  return { tensors, metadata };
}

function parseMetadata(raw: unknown, source: string): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(source, '__metadata__ is not an object');
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') fail(source, `__metadata__ value for ${q(k)} is not a string`);
  }
  // fromEntries, not assignment, so a "__proto__" key stays an ordinary key.
  return Object.fromEntries(Object.entries(raw));
}

// ---- serializing ----

/**
 * Deterministic: tensors sorted by name (in the header and in the data buffer), metadata keys
 * sorted, header padded with spaces so the data buffer starts 8-byte aligned.
 */
export function serializeSafetensors(
  tensors: Record<string, TensorEntry> | Map<string, TensorEntry>,
  metadata?: Record<string, string>,
): Uint8Array {
  const entries = [...(tensors instanceof Map ? tensors.entries() : Object.entries(tensors))];
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  // Built with fromEntries so names like "__proto__" stay ordinary keys.
  const header: [string, unknown][] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    const meta = Object.entries(metadata).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [k, v] of meta) {
      if (typeof v !== 'string') fail('serialize', `metadata value for ${q(k)} is not a string`);
    }
    header.push(['__metadata__', Object.fromEntries(meta)]);
  }
  let offset = 0;
  for (const [name, t] of entries) {
    const where = `tensor ${q(name)}`;
    if (name === '__metadata__') fail('serialize', 'a tensor cannot be named "__metadata__"');
    if (!isSafeDType(t.dtype)) fail('serialize', `${where} has unknown dtype ${JSON.stringify(t.dtype)}`);
    const count = checkShape(t.shape);
    if (typeof count === 'string') fail('serialize', `${where}: ${count}`);
    const expected = DTYPE_SIZE[t.dtype] * count;
    if (t.data.length !== expected) {
      fail('serialize', `${where}: ${t.data.length} bytes of data but ${t.dtype} ${JSON.stringify(t.shape)} needs ${expected}`);
    }
    header.push([name, { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + expected] }]);
    offset += expected;
  }
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const headerLen = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const [, t] of entries) {
    out.set(t.data, pos);
    pos += t.data.length;
  }
  return out;
}

// ---- conversions ----

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Little-endian bytes as an aligned buffer in host byte order, ready for a typed-array view. */
function hostBytes(data: Uint8Array, size: number): ArrayBuffer {
  const copy = new Uint8Array(data);
  if (!HOST_LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i < copy.length; i += size) copy.subarray(i, i + size).reverse();
  }
  return copy.buffer;
}

/** Host-order typed array to little-endian bytes. */
function leBytes(view: ArrayBufferView, size: number): Uint8Array {
  const bytes = new Uint8Array(new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
  if (!HOST_LITTLE_ENDIAN && size > 1) {
    for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
  }
  return bytes;
}

/** The entry's values as numbers, in a typed array of its own kind (BigInt64 for 64-bit ints). */
function typedView(e: TensorEntry): ArrayLike<number> | BigInt64Array | BigUint64Array {
  const size = DTYPE_SIZE[e.dtype];
  const buf = hostBytes(e.data, size);
  switch (e.dtype) {
    case 'F64': return new Float64Array(buf);
    case 'F32': return new Float32Array(buf);
    case 'F16': return Float32Array.from(new Uint16Array(buf), halfToFloat);
    case 'BF16': return new Float32Array(new Uint32Array(new Uint16Array(buf)).map((b) => b << 16).buffer);
    case 'I64': return new BigInt64Array(buf);
    case 'U64': return new BigUint64Array(buf);
    case 'I32': return new Int32Array(buf);
    case 'I16': return new Int16Array(buf);
    case 'I8': return new Int8Array(buf);
    case 'U32': return new Uint32Array(buf);
    case 'U16': return new Uint16Array(buf);
    case 'U8': case 'BOOL': return new Uint8Array(buf);
  }
}

function bigToNumber(v: bigint, source: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    fail(source, `64-bit integer ${v} is outside the exactly representable range`);
  }
  return Number(v);
}

function entryNumbers(e: TensorEntry, source: string): ArrayLike<number> {
  const v = typedView(e);
  if (v instanceof BigInt64Array || v instanceof BigUint64Array) {
    const out = new Float64Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = bigToNumber(v[i]!, source);
    return out;
  }
  return v;
}

/** Any dtype to float32 (F64 and large ints round to nearest float32). */
export function toFloat32(e: TensorEntry, source = 'tensor'): Float32Array {
  if (e.dtype === 'F32') return new Float32Array(hostBytes(e.data, 4));
  return Float32Array.from(entryNumbers(e, source));
}

/** Integer and BOOL dtypes to int32, throwing if a value does not fit. */
export function toInt32(e: TensorEntry, source = 'tensor'): Int32Array {
  if (!isIntDType(e.dtype)) fail(source, `cannot read ${e.dtype} as int32 (not an integer dtype)`);
  const v = entryNumbers(e, source);
  const out = new Int32Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i]!;
    if (x !== (x | 0)) fail(source, `value ${x} at index ${i} does not fit in int32`);
    out[i] = x;
  }
  return out;
}

function isIntDType(d: SafeDType): d is IntDType {
  return !(d === 'F64' || d === 'F32' || d === 'F16' || d === 'BF16');
}

function checkLength(len: number, shape: number[], what: string): void {
  const count = checkShape(shape);
  if (typeof count === 'string') fail(what, count);
  if (count !== len) fail(what, `${len} values do not fill shape ${JSON.stringify(shape)}`);
}

/** Float32 values to a float tensor entry; F16/BF16 round to nearest even. */
export function fromFloat32(arr: Float32Array, shape: number[], dtype: FloatDType = 'F32'): TensorEntry {
  checkLength(arr.length, shape, 'fromFloat32');
  let data: Uint8Array;
  switch (dtype) {
    case 'F32': data = leBytes(arr, 4); break;
    case 'F64': data = leBytes(Float64Array.from(arr), 8); break;
    case 'F16': data = leBytes(Uint16Array.from(arr, floatToHalf), 2); break;
    case 'BF16': data = leBytes(Uint16Array.from(new Uint32Array(arr.buffer, arr.byteOffset, arr.length), bitsToBf16), 2); break;
  }
  return { dtype, shape: [...shape], data };
}

const INT_RANGE: Record<Exclude<IntDType, 'I64' | 'U64'>, [number, number]> = {
  I32: [-0x80000000, 0x7fffffff], I16: [-0x8000, 0x7fff], I8: [-0x80, 0x7f],
  U32: [0, 0xffffffff], U16: [0, 0xffff], U8: [0, 0xff], BOOL: [0, 1],
};

/** Int32 values to an integer tensor entry, throwing if a value does not fit the dtype. */
export function fromInt32(arr: Int32Array, shape: number[], dtype: IntDType = 'I32'): TensorEntry {
  checkLength(arr.length, shape, 'fromInt32');
  let data: Uint8Array;
  if (dtype === 'I64' || dtype === 'U64') {
    if (dtype === 'U64') checkRange(arr, 0, 0x7fffffff, dtype);
    data = leBytes(BigInt64Array.from(arr, (x) => BigInt(x)), 8);
  } else {
    const [lo, hi] = INT_RANGE[dtype];
    checkRange(arr, lo, hi, dtype);
    const size = DTYPE_SIZE[dtype];
    // Once the range is checked, wrapping to a signed type of the same width gives the right bytes
    // for the unsigned dtypes too.
    const Ctor = size === 4 ? Int32Array : size === 2 ? Int16Array : Int8Array;
    data = leBytes(Ctor.from(arr), size);
  }
  return { dtype, shape: [...shape], data };
}

function checkRange(arr: Int32Array, lo: number, hi: number, dtype: IntDType): void {
  for (let i = 0; i < arr.length; i++) {
    const x = arr[i]!;
    if (x < lo || x > hi) fail('fromInt32', `value ${x} at index ${i} does not fit in ${dtype}`);
  }
}

// ---- half-precision bit twiddling ----

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Float to IEEE half bits, round to nearest even, overflow to infinity, NaN kept quiet. */
export function floatToHalf(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    // Subnormal half: shift the mantissa (with its implicit 1) into place, rounding to even.
    const m = mant | 0x800000;
    const shift = 14 - e;
    const half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rem > mid || (rem === mid && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent, up to infinity.
  return sign | (half + (rem > 0x1000 || (rem === 0x1000 && half & 1) ? 1 : 0));
}

/** Float32 bits to bfloat16 bits, round to nearest even, NaN kept quiet. */
export function bitsToBf16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return (bits >>> 16) | 0x40;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}
