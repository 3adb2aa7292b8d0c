// A safe reader for PyTorch `torch.save` files (the zip format of torch ≥ 1.6), and for
// safetensors files holding the same state dict. Pure format logic over Uint8Array, no Node
// imports, so it runs in the browser too; DEFLATE members need an inflater passed in (Node's is
// wired up in ./convert.ts).
//
// A torch.save file is a zip archive: `<top>/data.pkl` is a pickle (protocol 2) of the state dict
// and `<top>/data/<key>` holds the raw little-endian bytes of each storage. Pickles can run any
// Python callable, so this is NOT a pickle loader: it is a small interpreter for the opcodes a state
// dict uses, whose only "callables" are an allow-list of a few names it knows the meaning of
// (collections.OrderedDict, torch._utils._rebuild_tensor_v2, …). Any other global is refused by
// name when the pickle mentions it, and nothing from the file is ever executed. Sizes, counts and
// nesting are bounded so hostile files fail with a TorchCheckpointError rather than exhausting
// memory.
import { parseSafetensors, SafetensorsError, toFloat32, type SafeDType } from './safetensors.js';

import type { HostTensor } from '../engine/index.js';
export type { HostTensor };
export type StateDict = Map<string, HostTensor>;

export class TorchCheckpointError extends Error {
  override name = 'TorchCheckpointError';
  constructor(message: string) {
    // Messages go straight to the CLI: one line whatever a hostile name contains.
    super(message.replace(/[\r\n]+/g, ' '));
  }
}

/** Inflates raw DEFLATE data that should produce exactly `size` bytes (never more). */
export type InflateRaw = (data: Uint8Array, size: number) => Uint8Array;

export interface TorchLimits {
  /** Zip members in the central directory. */
  maxEntries: number;
  /** Uncompressed size of one member. */
  maxEntryBytes: number;
  /** Declared uncompressed/compressed size ratio of a DEFLATE member (DEFLATE itself cannot exceed ~1032). */
  maxRatio: number;
  /** Size of data.pkl. */
  maxPickleBytes: number;
  /** Items on the pickle stack plus memo entries. */
  maxObjects: number;
  /** Nesting of MARKs (the only nesting the interpreter keeps). */
  maxDepth: number;
  /** Dimensions of a tensor. */
  maxDims: number;
  /** Elements of one tensor, and of all tensors together. */
  maxTensorElements: number;
  maxTotalElements: number;
}

export const DEFAULT_LIMITS: Readonly<TorchLimits> = {
  maxEntries: 1_000_000,
  maxEntryBytes: 2 ** 32,
  maxRatio: 1100,
  maxPickleBytes: 256 * 1024 * 1024,
  maxObjects: 5_000_000,
  maxDepth: 1000,
  maxDims: 32,
  maxTensorElements: 2 ** 31,
  maxTotalElements: 2 ** 31,
};

export interface TorchReadOptions {
  /** Needed only for archives whose members are DEFLATE-compressed (torch writes STORED). */
  inflateRaw?: InflateRaw;
  limits?: Partial<TorchLimits>;
}

const q = (s: string): string => JSON.stringify(s);

// =====================================================================================
// ZIP
// =====================================================================================

export interface ZipEntry {
  name: string;
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

export interface ZipArchive {
  entries: Map<string, ZipEntry>;
  /** The member's uncompressed bytes (a view for STORED members), CRC-checked. */
  read(name: string): Uint8Array;
}

let CRC_TABLE: Uint32Array | undefined;

export function crc32(bytes: Uint8Array): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  const t = CRC_TABLE;
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = t[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;

/** Parses a zip archive's central directory. Members are read (and checked) on demand. */
export function parseZip(bytes: Uint8Array, source = 'file', opts: TorchReadOptions = {}): ZipArchive {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const fail = (problem: string): never => {
    throw new TorchCheckpointError(`${source}: ${problem}`);
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (o: number) => view.getUint16(o, true);
  const u32 = (o: number) => view.getUint32(o, true);
  const u64 = (o: number): number => {
    const v = view.getBigUint64(o, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`zip: 64-bit field ${v} at offset ${o} is absurdly large`);
    return Number(v);
  };
  const len = bytes.length;
  if (len < 22) fail(`truncated: ${len} bytes is too short for a zip archive`);

  // End of central directory: the last signature within the final 22 + 65535 bytes.
  let eocd = -1;
  for (let o = len - 22; o >= Math.max(0, len - 22 - 0xffff); o--) {
    if (u32(o) === SIG_EOCD && o + 22 + u16(o + 20) <= len) {
      eocd = o;
      break;
    }
  }
  if (eocd < 0) fail('zip: no end-of-central-directory record (truncated or not a zip archive)');
  let count = u16(eocd + 10);
  let cdSize = u32(eocd + 12);
  let cdOffset = u32(eocd + 16);
  if (u16(eocd + 4) !== 0 || u16(eocd + 6) !== 0 || u16(eocd + 8) !== count) fail('zip: multi-disk archives are not supported');
  let cdEnd = eocd;
  if (eocd >= 20 && u32(eocd - 20) === SIG_ZIP64_LOCATOR) {
    const at = u64(eocd - 20 + 8);
    if (at + 56 > eocd - 20 || u32(at) !== SIG_ZIP64_EOCD) fail('zip: bad ZIP64 end-of-central-directory record (truncated or damaged)');
    count = u64(at + 32);
    cdSize = u64(at + 40);
    cdOffset = u64(at + 48);
    cdEnd = at;
  } else if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    fail('zip: ZIP64 sizes without a ZIP64 record (truncated or damaged)');
  }
  if (count > limits.maxEntries) fail(`zip: ${count} entries exceed the limit of ${limits.maxEntries}`);
  if (cdOffset + cdSize > cdEnd) fail(`zip: central directory [${cdOffset}, +${cdSize}) goes beyond its end record at ${cdEnd} (truncated or damaged)`);

  const entries = new Map<string, ZipEntry>();
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdOffset + cdSize || u32(p) !== SIG_CENTRAL) fail(`zip: central directory entry ${i} is damaged`);
    const flags = u16(p + 8);
    const method = u16(p + 10);
    const crc = u32(p + 16);
    let csize = u32(p + 20);
    let size = u32(p + 24);
    const nameLen = u16(p + 28);
    const extraLen = u16(p + 30);
    const commentLen = u16(p + 32);
    let local = u32(p + 42);
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > cdOffset + cdSize) fail(`zip: central directory entry ${i} runs past the directory`);
    let name: string;
    try {
      name = utf8.decode(bytes.subarray(p + 46, p + 46 + nameLen));
    } catch {
      name = fail(`zip: entry ${i} has a name that is not UTF-8`);
    }
    // ZIP64 extended information: the saturated fields, in this order.
    for (let e = p + 46 + nameLen; e + 4 <= p + 46 + nameLen + extraLen; ) {
      const id = u16(e);
      const sz = u16(e + 2);
      if (e + 4 + sz > p + 46 + nameLen + extraLen) fail(`zip: entry ${q(name)} has a damaged extra field`);
      if (id === 0x0001) {
        let f = e + 4;
        const take = (): number => {
          if (f + 8 > e + 4 + sz) fail(`zip: entry ${q(name)} has a short ZIP64 extra field`);
          const v = u64(f);
          f += 8;
          return v;
        };
        if (size === 0xffffffff) size = take();
        if (csize === 0xffffffff) csize = take();
        if (local === 0xffffffff) local = take();
      }
      e += 4 + sz;
    }
    if (flags & 0x1) fail(`zip: entry ${q(name)} is encrypted`);
    if (entries.has(name)) fail(`zip: duplicate entry ${q(name)}`);
    if (size > limits.maxEntryBytes) fail(`zip: entry ${q(name)} declares ${size} bytes, above the limit of ${limits.maxEntryBytes}`);
    entries.set(name, { name, method, flags, crc32: crc, compressedSize: csize, size, localHeaderOffset: local });
    p = next;
  }

  const read = (name: string): Uint8Array => {
    const e = entries.get(name);
    if (!e) fail(`zip: no entry ${q(name)}`);
    const { localHeaderOffset: lo, compressedSize: csize, size } = e!;
    if (lo + 30 > cdOffset || u32(lo) !== SIG_LOCAL) fail(`zip: entry ${q(name)} has no local header at offset ${lo} (damaged)`);
    const nameLen = u16(lo + 26);
    const start = lo + 30 + nameLen + u16(lo + 28);
    const localName = bytes.subarray(lo + 30, lo + 30 + nameLen);
    const cdName = new TextEncoder().encode(name);
    if (localName.length !== cdName.length || localName.some((b, i) => b !== cdName[i])) {
      fail(`zip: entry ${q(name)}: local header names a different file (damaged)`);
    }
    if (start + csize > cdOffset) fail(`zip: entry ${q(name)}: ${csize} bytes of data at ${start} run past the member area (truncated?)`);
    const raw = bytes.subarray(start, start + csize);
    let data: Uint8Array;
    if (e!.method === 0) {
      if (csize !== size) fail(`zip: stored entry ${q(name)} declares ${size} bytes but holds ${csize}`);
      data = raw;
    } else if (e!.method === 8) {
      if (size > Math.max(1024, csize * limits.maxRatio)) {
        fail(`zip: entry ${q(name)} declares ${size} bytes from ${csize} compressed bytes (ratio above ${limits.maxRatio}: a zip bomb or a damaged file)`);
      }
      if (!opts.inflateRaw) fail(`zip: entry ${q(name)} is DEFLATE-compressed and no decompressor was given`);
      try {
        data = opts.inflateRaw!(raw, size);
      } catch (err) {
        data = fail(`zip: entry ${q(name)} does not inflate: ${(err as Error).message}`);
      }
      if (data.length !== size) fail(`zip: entry ${q(name)} inflates to ${data.length} bytes, not the declared ${size}`);
    } else {
      data = fail(`zip: entry ${q(name)} uses compression method ${e!.method} (only stored and DEFLATE are supported)`);
    }
    if (crc32(data) !== e!.crc32) fail(`zip: entry ${q(name)} fails its CRC-32 check (damaged)`);
    return data;
  };
  return { entries, read };
}

// =====================================================================================
// The restricted pickle interpreter
// =====================================================================================

type DTypeName = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Storage classes by name in the `torch` module, and dtype objects (`torch.float32`). */
const STORAGE_TYPES: Record<string, DTypeName> = {
  FloatStorage: 'F32', HalfStorage: 'F16', BFloat16Storage: 'BF16', DoubleStorage: 'F64',
  LongStorage: 'I64', IntStorage: 'I32', ShortStorage: 'I16', CharStorage: 'I8', ByteStorage: 'U8', BoolStorage: 'BOOL',
};
const DTYPES: Record<string, DTypeName> = {
  float32: 'F32', float: 'F32', float16: 'F16', half: 'F16', bfloat16: 'BF16', float64: 'F64', double: 'F64',
  int64: 'I64', long: 'I64', int32: 'I32', int: 'I32', int16: 'I16', short: 'I16', int8: 'I8', uint8: 'U8', bool: 'BOOL',
};

type GlobalKind =
  | { kind: 'OrderedDict' }
  | { kind: 'rebuild_tensor_v2' }
  | { kind: 'rebuild_tensor_v3' }
  | { kind: 'rebuild_parameter' }
  | { kind: 'rebuild_parameter_with_state' }
  | { kind: 'storage'; dtype: DTypeName | 'untyped' }
  | { kind: 'dtype'; dtype: DTypeName };

export const ALLOWED_GLOBALS: readonly string[] = [
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor_v3',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  ...Object.keys(STORAGE_TYPES).map((s) => `torch.${s}`),
  'torch.UntypedStorage',
  'torch.storage.UntypedStorage',
  ...Object.keys(DTYPES).map((d) => `torch.${d}`),
];

function resolveGlobal(module: string, name: string): GlobalKind | undefined {
  const full = `${module}.${name}`;
  switch (full) {
    case 'collections.OrderedDict': return { kind: 'OrderedDict' };
    case 'torch._utils._rebuild_tensor_v2': return { kind: 'rebuild_tensor_v2' };
    case 'torch._utils._rebuild_tensor_v3': return { kind: 'rebuild_tensor_v3' };
    case 'torch._utils._rebuild_parameter': return { kind: 'rebuild_parameter' };
    case 'torch._utils._rebuild_parameter_with_state': return { kind: 'rebuild_parameter_with_state' };
    case 'torch.UntypedStorage': case 'torch.storage.UntypedStorage': return { kind: 'storage', dtype: 'untyped' };
  }
  if (module === 'torch' && Object.hasOwn(STORAGE_TYPES, name)) return { kind: 'storage', dtype: STORAGE_TYPES[name]! };
  if (module === 'torch' && Object.hasOwn(DTYPES, name)) return { kind: 'dtype', dtype: DTYPES[name]! };
  return undefined;
}

class PGlobal {
  constructor(readonly module: string, readonly name: string, readonly what: GlobalKind) {}
}
class PTuple {
  constructor(readonly items: PValue[]) {}
}
class PDict {
  readonly map = new Map<PKey, PValue>();
}
class PStorage {
  constructor(readonly dtype: DTypeName | 'untyped', readonly key: string, readonly numel: number) {}
}
export class PTensor {
  constructor(
    readonly storage: PStorage,
    readonly dtype: DTypeName,
    readonly offset: number,
    readonly size: number[],
    readonly stride: number[],
  ) {}
}
type PKey = string | number | boolean | null;
type PValue = PKey | PTuple | PValue[] | PDict | PGlobal | PStorage | PTensor;

function describe(v: PValue): string {
  if (v === null) return 'None';
  if (typeof v === 'string') return `string ${q(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  if (typeof v === 'number' || typeof v === 'boolean') return `${typeof v} ${v}`;
  if (Array.isArray(v)) return `list of ${v.length}`;
  if (v instanceof PTuple) return `tuple of ${v.items.length}`;
  if (v instanceof PDict) return `dict of ${v.map.size}`;
  if (v instanceof PGlobal) return `global ${v.module}.${v.name}`;
  if (v instanceof PStorage) return 'storage';
  return 'tensor';
}

export interface UnpickleOptions {
  source?: string;
  limits?: Partial<TorchLimits>;
}

/**
 * Interprets a pickle restricted to what a torch state dict needs. Returns the top object:
 * PDict for dicts, PTensor for tensors, arrays for lists, PTuple for tuples, and primitives.
 */
export function unpickle(bytes: Uint8Array, opts: UnpickleOptions = {}): PValue {
  const source = opts.source ?? 'pickle';
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  let pos = 0;
  let op = 0;
  let opAt = 0;
  const fail = (problem: string): never => {
    throw new TorchCheckpointError(`${source}: pickle ${problem} (opcode 0x${op.toString(16).padStart(2, '0')} at byte ${opAt})`);
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (n: number) => {
    if (n < 0 || pos + n > bytes.length) fail(`is truncated: needs ${n} more bytes at ${pos}, has ${bytes.length - pos}`);
  };
  const u8 = () => (need(1), bytes[pos++]!);
  const u16 = () => (need(2), (pos += 2), view.getUint16(pos - 2, true));
  const u32 = () => (need(4), (pos += 4), view.getUint32(pos - 4, true));
  const i32 = () => (need(4), (pos += 4), view.getInt32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(bytes.length)) fail(`declares ${v} bytes, more than the pickle holds`);
    return Number(v);
  };
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const str = (n: number): string => {
    need(n);
    try {
      return utf8.decode(bytes.subarray(pos, (pos += n)));
    } catch {
      return fail('has a string that is not valid UTF-8');
    }
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 256) fail('has an unterminated or overlong GLOBAL line');
    let s = '';
    for (let i = pos; i < end; i++) {
      const c = bytes[i]!;
      if (c < 0x20 || c > 0x7e) fail('has a GLOBAL line with non-ASCII bytes');
      s += String.fromCharCode(c);
    }
    pos = end + 1;
    return s;
  };

  let stack: PValue[] = [];
  const metastack: PValue[][] = [];
  const memo = new Map<number, PValue>();
  let objects = 0;
  const count = () => {
    if (++objects > limits.maxObjects) fail(`creates more than ${limits.maxObjects} objects`);
  };
  const push = (v: PValue) => {
    count();
    stack.push(v);
  };
  const pop = (): PValue => {
    if (stack.length === 0) fail('pops an empty stack (damaged)');
    return stack.pop()!;
  };
  const top = (): PValue => {
    if (stack.length === 0) fail('reads an empty stack (damaged)');
    return stack[stack.length - 1]!;
  };
  const popMark = (): PValue[] => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) fail('closes a MARK that was never opened (damaged)');
    stack = prev!;
    return items;
  };
  const memoPut = (i: number, v: PValue) => {
    if (!memo.has(i)) count();
    memo.set(i, v);
  };
  const memoGet = (i: number): PValue => {
    if (!memo.has(i)) fail(`reads memo entry ${i}, which was never stored (damaged)`);
    return memo.get(i)!;
  };
  const asKey = (v: PValue): PKey => {
    if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
    return fail(`uses a ${describe(v)} as a dict key (only strings, numbers, booleans and None are supported)`);
  };
  const setItems = (d: PValue, items: PValue[]) => {
    if (!(d instanceof PDict)) fail(`sets items on a ${describe(d)}, not a dict`);
    if (items.length % 2 !== 0) fail('has an odd number of items for SETITEMS');
    for (let i = 0; i < items.length; i += 2) (d as PDict).map.set(asKey(items[i]!), items[i + 1]!);
  };
  const global = (module: string, name: string): PGlobal => {
    const what = resolveGlobal(module, name);
    if (!what) {
      const full = `${module}.${name}`;
      throw new TorchCheckpointError(
        `${source}: refused: the pickle asks for the Python global ${q(full)}, which is not on the allow-list of a plain ` +
          `tensor state dict (${ALLOWED_GLOBALS.slice(0, 5).join(', ')}, torch storage types and dtypes); nothing was executed. ` +
          'A whole pickled model or other objects cannot be loaded: save model.state_dict() instead.',
      );
    }
    return new PGlobal(module, name, what);
  };
  const int = (v: PValue, what: string, min = 0): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) fail(`has ${what} ${describe(v)}, expected an integer ≥ ${min}`);
    return v as number;
  };
  const intTuple = (v: PValue, what: string): number[] => {
    if (!(v instanceof PTuple)) return fail(`has ${what} ${describe(v)}, expected a tuple of integers`);
    if (v.items.length > limits.maxDims) fail(`has ${what} with ${v.items.length} dimensions (limit ${limits.maxDims})`);
    return v.items.map((x) => int(x, `an entry of ${what}`));
  };
  const rebuildTensor = (args: PValue[], v3: boolean): PTensor => {
    if (args.length < (v3 ? 7 : 6) || args.length > (v3 ? 8 : 7)) fail(`calls _rebuild_tensor_${v3 ? 'v3' : 'v2'} with ${args.length} arguments`);
    const storage = args[0]!;
    if (!(storage instanceof PStorage)) return fail(`rebuilds a tensor from a ${describe(storage)}, not a storage`);
    const offset = int(args[1]!, 'a storage offset');
    const size = intTuple(args[2]!, 'a tensor size');
    const stride = intTuple(args[3]!, 'a tensor stride');
    if (size.length !== stride.length) fail(`has a tensor with ${size.length} sizes but ${stride.length} strides`);
    let dtype: DTypeName;
    if (v3) {
      const d = args[6]!;
      if (!(d instanceof PGlobal) || d.what.kind !== 'dtype') return fail(`gives _rebuild_tensor_v3 a dtype that is a ${describe(d)}`);
      dtype = d.what.dtype;
      if (storage.dtype !== 'untyped' && storage.dtype !== dtype) fail(`rebuilds a ${dtype} tensor from a ${storage.dtype} storage`);
    } else {
      if (storage.dtype === 'untyped') return fail('rebuilds a tensor from an untyped storage without a dtype');
      dtype = storage.dtype;
    }
    return new PTensor(storage, dtype, offset, size, stride);
  };
  const call = (f: PValue, argsV: PValue): PValue => {
    if (!(f instanceof PGlobal)) return fail(`calls a ${describe(f)}, which is not callable`);
    if (!(argsV instanceof PTuple)) return fail(`calls ${f.module}.${f.name} with a ${describe(argsV)} instead of an argument tuple`);
    const args = argsV.items;
    switch (f.what.kind) {
      case 'OrderedDict': {
        const d = new PDict();
        if (args.length === 0) return d;
        const items = args[0];
        if (args.length === 1 && Array.isArray(items)) {
          for (const it of items) {
            if (!(it instanceof PTuple) || it.items.length !== 2) fail('builds an OrderedDict from something other than pairs');
            d.map.set(asKey((it as PTuple).items[0]!), (it as PTuple).items[1]!);
          }
          return d;
        }
        return fail(`calls collections.OrderedDict with unsupported arguments`);
      }
      case 'rebuild_tensor_v2': return rebuildTensor(args, false);
      case 'rebuild_tensor_v3': return rebuildTensor(args, true);
      case 'rebuild_parameter':
      case 'rebuild_parameter_with_state': {
        const t = args[0];
        if (!(t instanceof PTensor)) return fail(`makes a parameter from a ${describe(t ?? null)}, not a tensor`);
        return t;
      }
      default:
        return fail(`calls ${f.module}.${f.name}, which may only appear as a type or dtype tag, not be called`);
    }
  };
  const persistent = (pid: PValue): PStorage => {
    if (!(pid instanceof PTuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') {
      return fail(`has a persistent id ${describe(pid)}, expected ('storage', type, key, location, numel)`);
    }
    const [, type, key, location, numel] = pid.items;
    if (!(type instanceof PGlobal) || type.what.kind !== 'storage') return fail(`has a storage whose type is a ${describe(type!)}`);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(key)) return fail(`has a storage key ${describe(key!)}`);
    if (typeof location !== 'string') return fail(`has a storage location ${describe(location!)}`);
    return new PStorage(type.what.dtype, key, int(numel!, 'a storage size'));
  };

  if (bytes.length > limits.maxPickleBytes) {
    throw new TorchCheckpointError(`${source}: pickle of ${bytes.length} bytes exceeds the limit of ${limits.maxPickleBytes}`);
  }
  for (;;) {
    opAt = pos;
    if (pos >= bytes.length) {
      op = 0;
      fail('ends without a STOP opcode (truncated)');
    }
    op = bytes[pos++]!;
    switch (op) {
      case 0x80: { // PROTO
        const v = u8();
        if (v < 2 || v > 5) fail(`has protocol ${v} (2 to 5 are supported)`);
        break;
      }
      case 0x95: // FRAME: a length hint; the frame's opcodes follow inline
        u64();
        break;
      case 0x2e: { // STOP
        const v = pop();
        if (metastack.length) fail('stops inside an open MARK (damaged)');
        return v;
      }
      case 0x28: // MARK
        if (metastack.length >= limits.maxDepth) fail(`nests deeper than ${limits.maxDepth} levels`);
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: push(top()); break; // DUP
      case 0x7d: push(new PDict()); break; // EMPTY_DICT
      case 0x5d: push([]); break; // EMPTY_LIST
      case 0x29: push(new PTuple([])); break; // EMPTY_TUPLE
      case 0x74: push(new PTuple(popMark())); break; // TUPLE
      case 0x85: push(new PTuple([pop()])); break; // TUPLE1
      case 0x86: { // TUPLE2
        const b = pop();
        push(new PTuple([pop(), b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        push(new PTuple([pop(), b, c]));
        break;
      }
      case 0x6c: push(popMark()); break; // LIST
      case 0x64: { // DICT
        const d = new PDict();
        setItems(d, popMark());
        push(d);
        break;
      }
      case 0x58: push(str(u32())); break; // BINUNICODE
      case 0x8c: push(str(u8())); break; // SHORT_BINUNICODE
      case 0x8d: push(str(u64())); break; // BINUNICODE8
      case 0x4a: push(i32()); break; // BININT
      case 0x4b: push(u8()); break; // BININT1
      case 0x4d: push(u16()); break; // BININT2
      case 0x8a: case 0x8b: { // LONG1, LONG4
        const n = op === 0x8a ? u8() : u32();
        if (n > 8) fail(`has a ${n}-byte integer (at most 8 are supported)`);
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[pos + i]!);
        if (n > 0 && bytes[pos + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
        pos += n;
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) fail(`has an integer ${v} beyond 2^53`);
        push(Number(v));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x4e: push(null); break; // NONE
      case 0x88: push(true); break; // NEWTRUE
      case 0x89: push(false); break; // NEWFALSE
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        const l = top();
        if (!Array.isArray(l)) fail(`appends to a ${describe(l)}, not a list`);
        (l as PValue[]).push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        const l = top();
        if (!Array.isArray(l)) fail(`appends to a ${describe(l)}, not a list`);
        for (const v of items) (l as PValue[]).push(v);
        break;
      }
      case 0x71: memoPut(u8(), top()); break; // BINPUT
      case 0x72: memoPut(u32(), top()); break; // LONG_BINPUT
      case 0x94: memoPut(memo.size, top()); break; // MEMOIZE
      case 0x68: push(memoGet(u8())); break; // BINGET
      case 0x6a: push(memoGet(u32())); break; // LONG_BINGET
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        push(global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('has a STACK_GLOBAL whose module or name is not a string');
        push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const f = pop();
        push(call(f, args));
        break;
      }
      case 0x62: { // BUILD: only the OrderedDict's `_metadata` attribute (and parameter state) is accepted, and ignored
        const state = pop();
        const obj = top();
        if (!(obj instanceof PDict || obj instanceof PTensor)) fail(`sets the state of a ${describe(obj)}`);
        if (!(state instanceof PDict || state === null || (state instanceof PTuple && state.items.length === 2))) {
          fail(`sets object state from a ${describe(state)}`);
        }
        break;
      }
      case 0x51: push(persistent(pop())); break; // BINPERSID
      default:
        fail(`uses an opcode this reader does not support (only those of a plain tensor state dict are; nothing was executed)`);
    }
  }
}

// =====================================================================================
// torch.save archives → state dicts
// =====================================================================================

const BYTE_SIZE: Record<DTypeName, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/** The tensors of a torch.save zip archive holding a state dict (or {state_dict|model: state dict}). */
export function readTorchCheckpoint(bytes: Uint8Array, source = 'file', opts: TorchReadOptions = {}): StateDict {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const fail = (problem: string): never => {
    throw new TorchCheckpointError(`${source}: ${problem}`);
  };
  const zip = parseZip(bytes, source, opts);
  const pkls = [...zip.entries.keys()].filter((n) => n === 'data.pkl' || (n.endsWith('/data.pkl') && n.split('/').length === 2));
  if (pkls.length === 0) fail('no data.pkl in the archive (not a torch.save file)');
  if (pkls.length > 1) fail(`several data.pkl entries (${pkls.slice(0, 3).map(q).join(', ')})`);
  const prefix = pkls[0]!.slice(0, -'data.pkl'.length);
  let bigEndian = false;
  if (zip.entries.has(`${prefix}byteorder`)) {
    const order = new TextDecoder().decode(zip.read(`${prefix}byteorder`));
    if (order !== 'little' && order !== 'big') fail(`byteorder is ${q(order.slice(0, 20))}`);
    bigEndian = order === 'big';
  }
  const pickleBytes = zip.read(pkls[0]!);
  const root = unpickle(pickleBytes, { source: `${source}: ${pkls[0]}`, limits });

  let dict: PDict | undefined;
  if (root instanceof PDict) {
    const values = [...root.map.values()];
    if (values.some((v) => v instanceof PTensor)) dict = root;
    else {
      for (const k of ['state_dict', 'model']) {
        const inner = root.map.get(k);
        if (inner instanceof PDict) {
          dict = inner;
          break;
        }
      }
    }
  }
  if (!dict) return fail(`the pickle holds a ${describe(root)} with no tensors, not a state dict`);

  const storages = new Map<string, Float32Array>();
  const storage = (s: PStorage, dtype: DTypeName): Float32Array => {
    const id = `${s.key}:${dtype}`;
    const hit = storages.get(id);
    if (hit) return hit;
    const member = `${prefix}data/${s.key}`;
    if (!zip.entries.has(member)) fail(`storage ${q(s.key)} is missing from the archive (no ${q(member)})`);
    const raw = zip.read(member);
    const size = BYTE_SIZE[dtype];
    const numel = s.dtype === 'untyped' ? Math.floor(s.numel / size) : s.numel;
    if (raw.length < numel * size) {
      fail(`storage ${q(s.key)} holds ${raw.length} bytes but is declared as ${numel} ${dtype} elements (${numel * size} bytes)`);
    }
    const data = new Uint8Array(raw.subarray(0, numel * size));
    if (bigEndian && size > 1) for (let i = 0; i < data.length; i += size) data.subarray(i, i + size).reverse();
    let f: Float32Array;
    try {
      f = toFloat32({ dtype: dtype as SafeDType, shape: [numel], data }, `storage ${q(s.key)}`);
    } catch (e) {
      f = fail((e as Error).message);
    }
    storages.set(id, f);
    return f;
  };

  const out: StateDict = new Map();
  let total = 0;
  for (const [k, v] of dict.map) {
    if (!(v instanceof PTensor)) continue; // non-tensor entries (counters, extra state) carry no weights
    if (typeof k !== 'string') fail(`state dict key ${describe(k)} is not a string`);
    const name = k as string;
    let n = 1;
    for (const d of v.size) n *= d;
    if (n > limits.maxTensorElements) fail(`tensor ${q(name)} has ${n} elements, above the limit of ${limits.maxTensorElements}`);
    total += n;
    if (total > limits.maxTotalElements) fail(`the tensors hold more than ${limits.maxTotalElements} elements in all`);
    const src = storage(v.storage, v.dtype);
    // Views may overlap (tied weights, zero strides), but a file must not expand into far more
    // floats than it stores: at most twice the distinct storages' elements, plus a little.
    let stored = 0;
    for (const st of storages.values()) stored += st.length;
    if (total > 2 * stored + 2 ** 20) {
      fail(`tensor ${q(name)} brings the state dict to ${total} elements from ${stored} stored ones (overlapping or zero-stride views are limited)`);
    }
    const data = new Float32Array(n);
    if (n > 0) {
      let last = v.offset;
      for (let i = 0; i < v.size.length; i++) last += (v.size[i]! - 1) * v.stride[i]!;
      if (last >= src.length) {
        fail(`tensor ${q(name)} (size [${v.size}], stride [${v.stride}], offset ${v.offset}) reaches element ${last} of storage ${q(v.storage.key)}, which has ${src.length}`);
      }
      gather(src, v.offset, v.size, v.stride, data);
    }
    out.set(name, { shape: [...v.size], data });
  }
  return out;
}

/** Copies a strided view (non-negative strides, bounds already checked) into a C-order array. */
function gather(src: Float32Array, offset: number, size: number[], stride: number[], out: Float32Array): void {
  const nd = size.length;
  let contiguous = true;
  for (let i = nd - 1, expect = 1; i >= 0; i--) {
    if (size[i] !== 1 && stride[i] !== expect) contiguous = false;
    expect *= size[i]!;
  }
  if (contiguous) {
    out.set(src.subarray(offset, offset + out.length));
    return;
  }
  // Odometer over all but the last dimension; the innermost loop strides through the storage.
  const inner = size[nd - 1]!;
  const innerStride = stride[nd - 1]!;
  const idx = new Array<number>(nd).fill(0);
  let base = offset;
  for (let o = 0; o < out.length; o += inner) {
    for (let j = 0, s = base; j < inner; j++, s += innerStride) out[o + j] = src[s]!;
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]!++;
      base += stride[d]!;
      if (idx[d]! < size[d]!) break;
      base -= stride[d]! * size[d]!;
      idx[d] = 0;
    }
  }
}

/**
 * A state dict from file bytes: a torch.save zip archive or a safetensors file (any float or
 * integer dtype, converted to float32). Every failure is a TorchCheckpointError.
 */
export function readStateDict(bytes: Uint8Array, source = 'file', opts: TorchReadOptions = {}): StateDict {
  try {
    return readAny(bytes, source, opts);
  } catch (e) {
    // A hostile size that slipped past the limits must still surface as this module's error.
    if (e instanceof RangeError) throw new TorchCheckpointError(`${source}: too large to load (${e.message})`);
    throw e;
  }
}

function readAny(bytes: Uint8Array, source: string, opts: TorchReadOptions): StateDict {
  const sig = bytes.length >= 4 ? new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true) : 0;
  if (sig === SIG_LOCAL || sig === SIG_EOCD) return readTorchCheckpoint(bytes, source, opts);
  if (bytes.length >= 9 && bytes[8] === 0x7b /* '{' */) {
    try {
      const f = parseSafetensors(bytes, source);
      const out: StateDict = new Map();
      for (const [name, e] of f.tensors) out.set(name, { shape: e.shape, data: toFloat32(e, `${source}: tensor ${q(name)}`) });
      return out;
    } catch (e) {
      if (e instanceof SafetensorsError) throw new TorchCheckpointError(e.message);
      throw e;
    }
  }
  if (bytes[0] === 0x80 || (bytes.length > 262 && new TextDecoder().decode(bytes.subarray(257, 262)) === 'ustar')) {
    throw new TorchCheckpointError(`${source}: a legacy (pre-1.6) torch.save file, which is not supported: re-save it with torch.save in PyTorch ≥ 1.6 or as safetensors`);
  }
  throw new TorchCheckpointError(`${source}: neither a torch.save zip archive nor a safetensors file`);
}

