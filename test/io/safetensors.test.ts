import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  bitsToBf16, DTYPE_SIZE, floatToHalf, fromFloat32, fromInt32, halfToFloat, MAX_HEADER_BYTES,
  parseSafetensors, SafetensorsError, serializeSafetensors, toFloat32, toInt32,
  type SafeDType, type TensorEntry,
} from '../../src/io/safetensors.js';
import { readSafetensorsFile, writeFileAtomic, writeSafetensorsFile } from '../../src/io/files.js';

const enc = new TextEncoder();

/** A file with a hand-written header (padded only if asked) and the given data bytes. */
function rawFile(header: string | object, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = enc.encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function throwsSafe(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${String(e)}`);
    assert.equal(e.name, 'SafetensorsError');
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes('\n'), 'message must be one line');
    return true;
  });
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

test('round trip of every dtype is byte exact, with values read back', () => {
  const cases: [SafeDType, ArrayBufferView, number[]][] = [
    ['F64', new Float64Array([1.5, -2, 1e300]), [1.5, -2, Infinity]],
    ['F32', new Float32Array([0.25, -3, 7]), [0.25, -3, 7]],
    ['F16', new Uint16Array([0x3c00, 0xc000, 0x7bff]), [1, -2, 65504]],
    ['BF16', new Uint16Array([0x3f80, 0xc040, 0x7f80]), [1, -3, Infinity]],
    ['I64', new BigInt64Array([-1n, 2n ** 53n - 1n, 0n]), [-1, 2 ** 53 - 1, 0]],
    ['I32', new Int32Array([-2147483648, 5, 2147483647]), [-2147483648, 5, 2147483647]],
    ['I16', new Int16Array([-32768, 1, 32767]), [-32768, 1, 32767]],
    ['I8', new Int8Array([-128, 0, 127]), [-128, 0, 127]],
    ['U64', new BigUint64Array([0n, 7n, 2n ** 40n]), [0, 7, 2 ** 40]],
    ['U32', new Uint32Array([0, 1, 4294967295]), [0, 1, 4294967295]],
    ['U16', new Uint16Array([0, 1, 65535]), [0, 1, 65535]],
    ['U8', new Uint8Array([0, 128, 255]), [0, 128, 255]],
    ['BOOL', new Uint8Array([0, 1, 1]), [0, 1, 1]],
  ];
  const tensors: Record<string, TensorEntry> = {};
  for (const [dtype, view] of cases) {
    assert.equal(view.byteLength, 3 * DTYPE_SIZE[dtype]);
    tensors[`t_${dtype}`] = { dtype, shape: [3, 1], data: bytesOf(view).slice() };
  }
  const file = serializeSafetensors(tensors);
  const back = parseSafetensors(file);
  assert.equal(back.tensors.size, cases.length);
  for (const [dtype, , values] of cases) {
    const e = back.tensors.get(`t_${dtype}`)!;
    assert.equal(e.dtype, dtype);
    assert.deepEqual(e.shape, [3, 1]);
    assert.deepEqual(e.data, tensors[`t_${dtype}`]!.data);
    assert.equal(e.data.byteOffset, 0);
    assert.deepEqual([...toFloat32(e)], values.map(Math.fround));
  }
  assert.deepEqual([...toInt32(back.tensors.get('t_I8')!)], [-128, 0, 127]);
  assert.deepEqual(serializeSafetensors(back.tensors), file);
});

test('scalars and empty tensors', () => {
  const file = serializeSafetensors({
    scalar: fromFloat32(new Float32Array([3]), []),
    empty: fromFloat32(new Float32Array(0), [0, 5]),
  });
  const { tensors } = parseSafetensors(file);
  assert.deepEqual([...toFloat32(tensors.get('scalar')!)], [3]);
  assert.deepEqual(tensors.get('empty')!.shape, [0, 5]);
  assert.equal(toFloat32(tensors.get('empty')!).length, 0);
});

test('F16 conversion: exact values, rounding to nearest even, overflow, subnormals, NaN', () => {
  const cases: [number, number][] = [
    [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [1e10, 0x7c00], [-Infinity, 0xfc00],
    [0.1, 0x2e66], [-0, 0x8000], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [1.5 * 2 ** -25, 0x0001],
    [2 ** -14, 0x0400], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [65519, 0x7bff],
  ];
  for (const [x, bits] of cases) assert.equal(floatToHalf(x), bits, `floatToHalf(${x})`);
  assert.equal(floatToHalf(NaN) & 0x7c00, 0x7c00);
  assert.ok(Number.isNaN(halfToFloat(floatToHalf(NaN))));
  for (const [h, x] of [[0x3c00, 1], [0x0001, 2 ** -24], [0x7bff, 65504], [0x8000, -0], [0xfc00, -Infinity]] as const) {
    assert.equal(Object.is(halfToFloat(h), x), true, `halfToFloat(${h})`);
  }
  // Every finite half survives half -> float -> half.
  for (let h = 0; h < 0x10000; h++) if ((h & 0x7c00) !== 0x7c00) assert.equal(floatToHalf(halfToFloat(h)), h);
  const e = fromFloat32(new Float32Array([1, 0.1, -65504]), [3], 'F16');
  assert.deepEqual([...toFloat32(parseSafetensors(serializeSafetensors({ e })).tensors.get('e')!)], [1, halfToFloat(0x2e66), -65504]);
});

test('BF16 conversion: truncation with round to nearest even, NaN kept', () => {
  const bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0]!;
  assert.equal(bitsToBf16(bits(1)), 0x3f80);
  assert.equal(bitsToBf16(bits(1 + 2 ** -8)), 0x3f80);
  assert.equal(bitsToBf16(bits(1 + 3 * 2 ** -8)), 0x3f82);
  assert.equal(bitsToBf16(bits(-Infinity)), 0xff80);
  assert.equal(bitsToBf16(bits(3.4028234663852886e38)), 0x7f80);
  const e = fromFloat32(new Float32Array([1, -3.140625, NaN, 1 + 2 ** -9]), [4], 'BF16');
  const back = toFloat32(e);
  assert.deepEqual([...back.subarray(0, 2)], [1, -3.140625]);
  assert.ok(Number.isNaN(back[2]));
  assert.equal(back[3], 1);
});

test('F64 and int encoders check their inputs', () => {
  assert.deepEqual([...toFloat32(fromFloat32(new Float32Array([0.5, -1]), [2], 'F64'))], [0.5, -1]);
  for (const dtype of ['I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL'] as const) {
    const e = fromInt32(new Int32Array([0, 1]), [1, 2], dtype);
    assert.equal(e.data.length, 2 * DTYPE_SIZE[dtype]);
    assert.deepEqual([...toInt32(e)], [0, 1]);
  }
  assert.deepEqual([...toInt32(fromInt32(new Int32Array([-5, 2 ** 31 - 1]), [2], 'I64'))], [-5, 2 ** 31 - 1]);
  assert.deepEqual([...toInt32(fromInt32(new Int32Array([-128, 127]), [2], 'I8'))], [-128, 127]);
  assert.deepEqual([...toInt32(fromInt32(new Int32Array([65535]), [1], 'U16'))], [65535]);
  throwsSafe(() => fromInt32(new Int32Array([128]), [1], 'I8'), /128 at index 0 does not fit in I8/);
  throwsSafe(() => fromInt32(new Int32Array([2]), [1], 'BOOL'), /does not fit in BOOL/);
  throwsSafe(() => fromInt32(new Int32Array([-1]), [1], 'U64'), /does not fit in U64/);
  throwsSafe(() => fromFloat32(new Float32Array(3), [2, 2]), /3 values do not fill shape \[2,2\]/);
  throwsSafe(() => toInt32(fromFloat32(new Float32Array(1), [1])), /cannot read F32 as int32/);
  throwsSafe(() => toInt32({ dtype: 'U32', shape: [1], data: new Uint8Array([255, 255, 255, 255]) }), /value 4294967295 at index 0 does not fit in int32/);
});

test('I64 values beyond 2^53 are rejected, not silently rounded', () => {
  const e: TensorEntry = { dtype: 'I64', shape: [1], data: bytesOf(new BigInt64Array([2n ** 60n])).slice() };
  throwsSafe(() => toFloat32(e, 'w.safetensors'), /^w\.safetensors: 64-bit integer 1152921504606846976 is outside/);
  const neg: TensorEntry = { dtype: 'I64', shape: [1], data: bytesOf(new BigInt64Array([-(2n ** 53n)])).slice() };
  throwsSafe(() => toFloat32(neg), /outside the exactly representable range/);
});

test('metadata round trips; the layout is deterministic and 8-byte aligned', () => {
  const a = fromFloat32(new Float32Array([1, 2]), [2]);
  const b = fromFloat32(new Float32Array([3]), [1], 'F16');
  const meta = { z: 'last', a: 'first', __proto__x: 'odd' };
  const one = serializeSafetensors({ b, a }, meta);
  const two = serializeSafetensors(new Map([['a', a], ['b', b]]), { __proto__x: 'odd', a: 'first', z: 'last' });
  assert.deepEqual(one, two);
  const back = parseSafetensors(one);
  assert.deepEqual(back.metadata, meta);
  assert.deepEqual([...back.tensors.keys()], ['a', 'b']);
  const n = Number(new DataView(one.buffer).getBigUint64(0, true));
  assert.equal(n % 8, 0);
  const header = new TextDecoder().decode(one.subarray(8, 8 + n));
  assert.match(header, /^\{"__metadata__":\{"__proto__x":"odd","a":"first","z":"last"\},"a":/);
  assert.match(header, /\} *$/);
  assert.deepEqual(parseSafetensors(serializeSafetensors({ a })).metadata, {});
  const proto = parseSafetensors(serializeSafetensors({ ['__proto__']: a } as Record<string, TensorEntry>));
  assert.deepEqual([...proto.tensors.keys()], ['__proto__']);
});

test('serialize rejects entries it could not write correctly', () => {
  const a = fromFloat32(new Float32Array([1, 2]), [2]);
  throwsSafe(() => serializeSafetensors({ __metadata__: a }), /cannot be named "__metadata__"/);
  throwsSafe(() => serializeSafetensors({ a: { ...a, shape: [3] } }), /8 bytes of data but F32 \[3\] needs 12/);
  throwsSafe(() => serializeSafetensors({ a: { ...a, dtype: 'F8' as SafeDType } }), /unknown dtype "F8"/);
  throwsSafe(() => serializeSafetensors({ a: { ...a, shape: [-2] } }), /not a non-negative integer/);
  throwsSafe(() => serializeSafetensors({ a }, { k: 1 as unknown as string }), /metadata value for "k" is not a string/);
});

// ---- hostile input ----

const f32x2 = new Uint8Array(8);
const ok = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

test('hostile: file shorter than 8 bytes', () => {
  throwsSafe(() => parseSafetensors(new Uint8Array(5), 'm.safetensors'), /^m\.safetensors: truncated: 5 bytes/);
  throwsSafe(() => parseSafetensors(new Uint8Array(0)), /^file: truncated/);
});

test('hostile: header length beyond the end of the file', () => {
  const f = rawFile(ok, f32x2);
  throwsSafe(() => parseSafetensors(f.subarray(0, 20), 'x'), /^x: truncated: header length \d+ goes beyond the end of the file \(20 bytes\)/);
});

test('hostile: huge header length is refused before allocating', () => {
  const f = new Uint8Array(16);
  new DataView(f.buffer).setBigUint64(0, 2n ** 64n - 1n, true);
  throwsSafe(() => parseSafetensors(f), /header length 18446744073709551615 exceeds the 104857600-byte limit/);
  new DataView(f.buffer).setBigUint64(0, BigInt(MAX_HEADER_BYTES + 1), true);
  throwsSafe(() => parseSafetensors(f), /exceeds the .*limit/);
});

test('hostile: header not UTF-8, not JSON, not an object', () => {
  const bad = rawFile('{"a":1}');
  bad[10] = 0xff;
  throwsSafe(() => parseSafetensors(bad), /header is not valid UTF-8/);
  throwsSafe(() => parseSafetensors(rawFile('{"w": ')), /header is not valid JSON \(/);
  throwsSafe(() => parseSafetensors(rawFile('{\n"a":\n}')), /header is not valid JSON/);
  for (const h of ['[1,2]', 'null', '42', '"s"']) throwsSafe(() => parseSafetensors(rawFile(h)), /header is not a JSON object/);
});

test('hostile: entries with missing or mistyped fields', () => {
  const p = (h: object, data = f32x2) => () => parseSafetensors(rawFile(h, data), 'f');
  throwsSafe(p({ w: 5 }), /^f: tensor "w" is not an object/);
  throwsSafe(p({ w: [1] }), /tensor "w" is not an object/);
  throwsSafe(p({ w: { shape: [2], data_offsets: [0, 8] } }), /tensor "w" has no dtype/);
  throwsSafe(p({ w: { dtype: 'F32', data_offsets: [0, 8] } }), /tensor "w" has no shape/);
  throwsSafe(p({ w: { dtype: 'F32', shape: [2] } }), /tensor "w" has no data_offsets/);
  throwsSafe(p({ w: { dtype: 'F32', shape: 2, data_offsets: [0, 8] } }), /shape is not an array/);
  throwsSafe(p({ w: { dtype: 'F32', shape: [2], data_offsets: '0-8' } }), /data_offsets must be two non-negative integers, got "0-8"/);
  throwsSafe(p({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8, 9] } }), /data_offsets must be two/);
  throwsSafe(p({ w: { dtype: 'F32', shape: [2], data_offsets: [-1, 8] } }), /data_offsets must be two/);
  throwsSafe(p({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 1e300] } }), /data_offsets must be two/);
});

test('hostile: unknown dtype', () => {
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'F8_E4M3', shape: [8], data_offsets: [0, 8] } }, f32x2)), /tensor "w" has unknown dtype "F8_E4M3"/);
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 4, shape: [2], data_offsets: [0, 8] } }, f32x2)), /unknown dtype 4/);
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'toString', shape: [2], data_offsets: [0, 8] } }, f32x2)), /unknown dtype "toString"/);
});

test('hostile: negative, fractional or absurd shapes', () => {
  for (const shape of [[-2], [2.5], ['2'], [null], [2 ** 60, 2 ** 60]]) {
    throwsSafe(
      () => parseSafetensors(rawFile({ w: { dtype: 'F32', shape, data_offsets: [0, 8] } }, f32x2)),
      /tensor "w": shape .*(not a non-negative integer|too many elements)/,
    );
  }
});

test('hostile: data_offsets out of range or reversed', () => {
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4))), /data_offsets \[0,8\] go beyond the data buffer \(4 bytes/);
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, f32x2)), /data_offsets \[8,0\] end before they begin/);
});

test('hostile: byte length does not match dtype and shape', () => {
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32x2)), /tensor "w": 8 bytes of data but F32 \[3\] needs 12/);
  throwsSafe(() => parseSafetensors(rawFile({ w: { dtype: 'F16', shape: [2], data_offsets: [0, 8] } }, f32x2)), /needs 4/);
});

test('hostile: overlapping tensors, gaps and trailing bytes', () => {
  const two = (a: number[], b: number[]) =>
    rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: a }, b: { dtype: 'F32', shape: [1], data_offsets: b } }, f32x2);
  throwsSafe(() => parseSafetensors(two([0, 4], [0, 4])), /tensor "(a|b)" overlaps tensor "(a|b)"/);
  throwsSafe(() => parseSafetensors(rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, f32x2)), /tensor "b" overlaps tensor "a"/);
  throwsSafe(() => parseSafetensors(rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, f32x2)), /gap of 4 bytes before tensor "a"/);
  throwsSafe(() => parseSafetensors(rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, f32x2)), /4 bytes after the last tensor/);
  // Out-of-order but contiguous offsets are fine.
  const swapped = parseSafetensors(two([4, 8], [0, 4]));
  assert.deepEqual([...swapped.tensors.keys()], ['a', 'b']);
});

test('hostile: metadata that is not a map of strings', () => {
  throwsSafe(() => parseSafetensors(rawFile({ __metadata__: { n: 3 } })), /__metadata__ value for "n" is not a string/);
  throwsSafe(() => parseSafetensors(rawFile({ __metadata__: ['x'] })), /__metadata__ is not an object/);
  throwsSafe(() => parseSafetensors(rawFile({ __metadata__: null })), /__metadata__ is not an object/);
  // "__metadata__" is never a tensor, even when shaped like one.
  throwsSafe(() => parseSafetensors(rawFile({ __metadata__: ok.w }, f32x2)), /__metadata__ value for "shape" is not a string/);
});

test('hostile: names with newlines cannot break the one-line message', () => {
  throwsSafe(() => parseSafetensors(rawFile({ 'evil\nname': { dtype: 'X', shape: [], data_offsets: [0, 0] } }), 'a\nb'), /^a b: tensor "evil\\nname" has unknown dtype/);
});

test('fuzz: mutated and truncated files only ever throw SafetensorsError', () => {
  let seed = 12345;
  const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const good = serializeSafetensors(
    {
      'blocks.0.w': fromFloat32(new Float32Array([1, 2, 3, 4]), [2, 2]),
      'blocks.0.b': fromFloat32(new Float32Array([1, 2]), [2], 'BF16'),
      idx: fromInt32(new Int32Array([7, -7]), [2], 'I64'),
    },
    { note: 'x' },
  );
  const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
  let parsed = 0;
  for (let i = 0; i < 300; i++) {
    let f = good.slice();
    const mode = i % 3;
    if (mode === 0) {
      // Flip a few bytes, mostly in the header where the structure lives.
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) f[Math.floor(rand() * (rand() < 0.8 ? headerEnd : f.length))] = Math.floor(rand() * 256);
    } else if (mode === 1) {
      f = f.subarray(0, Math.floor(rand() * f.length));
    } else {
      // Replace a header character with JSON-significant punctuation.
      const chars = '{}[]",:0123456789-.e ';
      f[8 + Math.floor(rand() * (headerEnd - 8))] = chars.charCodeAt(Math.floor(rand() * chars.length));
    }
    try {
      const r = parseSafetensors(f, 'fuzz');
      for (const e of r.tensors.values()) toFloat32(e);
      parsed++;
    } catch (e) {
      assert.ok(e instanceof SafetensorsError, `non-SafetensorsError escaped on case ${i}: ${String(e)}`);
      assert.ok(!e.message.includes('\n'));
      assert.match(e.message, /^fuzz: /);
    }
  }
  assert.ok(parsed < 300);
});

test('files: atomic write, safetensors on disk, clear missing-file error', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'st-io-'));
  try {
    const path = join(dir, 'w.safetensors');
    const t = { w: fromFloat32(new Float32Array([1, 2, 3]), [3]) };
    await writeSafetensorsFile(path, t, { k: 'v' });
    await writeSafetensorsFile(path, { w: fromFloat32(new Float32Array([4, 5, 6]), [3]) }, { k: 'v2' });
    const back = await readSafetensorsFile(path);
    assert.deepEqual([...toFloat32(back.tensors.get('w')!)], [4, 5, 6]);
    assert.deepEqual(back.metadata, { k: 'v2' });
    await writeFileAtomic(join(dir, 'note.txt'), 'hello');
    assert.deepEqual((await readdir(dir)).sort(), ['note.txt', 'w.safetensors']);
    await assert.rejects(readSafetensorsFile(join(dir, 'nope.safetensors')), (e: unknown) => {
      assert.ok(e instanceof SafetensorsError);
      assert.equal(e.message, `no such file: ${join(dir, 'nope.safetensors')}`);
      return true;
    });
    await assert.rejects(readSafetensorsFile(dir), /is a directory/);
    await writeFileAtomic(join(dir, 'junk.safetensors'), new Uint8Array([1, 2, 3]));
    await assert.rejects(readSafetensorsFile(join(dir, 'junk.safetensors')), new RegExp(`^SafetensorsError: ${join(dir, 'junk.safetensors')}: truncated`));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
