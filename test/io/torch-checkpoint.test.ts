import { starflow } from '../cli.js';
// torch.save checkpoints: the restricted reader (zip + pickle), architecture inference, the
// convert / nll --input / sample --noise / denoise commands against the shared ml-tarflow fixture,
// and hostile files. The committed test/fixtures/tiny_model_2_64_2_1_0.1.pth was written by
// test/fixtures/make_torch_fixture.py with real torch.save; when /usr/bin/python3 has torch, the
// generator is also run here (for both fixture models).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import '../setup.js';
import {
  readStateDict, unpickle, crc32, TorchCheckpointError, type StateDict,
} from '../../src/io/torch-checkpoint.js';
import {
  inferConfig, convertStateDict, convertCheckpoint, readStateDictFile, parseReferenceFileName, ConvertError,
} from '../../src/io/convert.js';
import { readSafetensorsFile, writeSafetensorsFile } from '../../src/io/files.js';
import { fromFloat32, fromInt32, serializeSafetensors, toFloat32 } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/io/model.js';
import { fromReferenceStateDict } from '../../src/io/reference-names.js';
import { Rng } from '../../src/engine/index.js';
import { loadFixture, fixtureStateDict, fixtureConfig, detTensor, maxAbsDiff, maxRelDiff, scaledMaxDiff, type FixtureCase } from '../fixture.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const FIXTURE_PTH = path.resolve(here, '../fixtures/tiny_model_2_64_2_1_0.1.pth');
const GENERATOR = path.resolve(here, '../fixtures/make_torch_fixture.py');
const PYTHON = '/usr/bin/python3';
const fx = loadFixture();

// ---- small writers for hand-made archives ----

const enc = new TextEncoder();
const u16 = (n: number) => [n & 0xff, (n >>> 8) & 0xff];
const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];

/** A pickle byte-string builder (protocol 2 opcodes). */
class Pickle {
  private b: number[] = [];
  op(...xs: number[]): this {
    this.b.push(...xs);
    return this;
  }
  proto(): this { return this.op(0x80, 2); }
  global(module: string, name: string): this { return this.op(0x63, ...enc.encode(`${module}\n${name}\n`)); }
  stackGlobal(module: string, name: string): this { return this.str(module).str(name).op(0x93); }
  str(s: string): this {
    const e = enc.encode(s);
    return this.op(0x58, ...u32(e.length), ...e);
  }
  int(n: number): this { return n >= 0 && n < 256 ? this.op(0x4b, n) : this.op(0x4a, ...u32(n)); }
  mark(): this { return this.op(0x28); }
  tuple(): this { return this.op(0x74); }
  emptyTuple(): this { return this.op(0x29); }
  reduce(): this { return this.op(0x52); }
  ints(xs: number[]): this {
    this.mark();
    for (const x of xs) this.int(x);
    return this.tuple();
  }
  stop(): this { return this.op(0x2e); }
  bytes(): Uint8Array { return Uint8Array.from(this.b); }
}

type TSpec = { name: string; key: string; storage?: string; numel: number; offset?: number; size: number[]; stride?: number[]; param?: boolean };

function cOrder(size: number[]): number[] {
  const s = new Array<number>(size.length);
  for (let i = size.length - 1, acc = 1; i >= 0; i--) {
    s[i] = acc;
    acc *= size[i]!;
  }
  return s;
}

/** A state dict pickle laid out as torch.save writes it. */
function stateDictPickle(specs: TSpec[]): Uint8Array {
  const p = new Pickle().proto().global('collections', 'OrderedDict').emptyTuple().reduce().mark();
  for (const t of specs) {
    p.str(t.name);
    if (t.param) p.global('torch._utils', '_rebuild_parameter').mark();
    p.global('torch._utils', '_rebuild_tensor_v2').mark();
    p.mark().str('storage').global('torch', t.storage ?? 'FloatStorage').str(t.key).str('cpu').int(t.numel).tuple().op(0x51);
    p.int(t.offset ?? 0).ints(t.size).ints(t.stride ?? cOrder(t.size)).op(0x89);
    p.global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce();
    if (t.param) p.op(0x88).global('collections', 'OrderedDict').emptyTuple().reduce().tuple().reduce();
  }
  return p.op(0x75).stop().bytes();
}

type ZEntry = { name: string; data: Uint8Array; deflate?: boolean; declaredSize?: number };

/** A zip archive (no data descriptors, no ZIP64). */
function zip(entries: ZEntry[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  let at = 0;
  const put = (b: ArrayLike<number>) => {
    chunks.push(Uint8Array.from(b));
    at += b.length;
  };
  const central: number[] = [];
  for (const e of entries) {
    const name = enc.encode(e.name);
    const body = e.deflate ? deflateRawSync(e.data) : e.data;
    const method = e.deflate ? 8 : 0;
    const size = e.declaredSize ?? e.data.length;
    const crc = crc32(e.data);
    const offset = at;
    put([...u32(0x04034b50), ...u16(20), ...u16(0), ...u16(method), ...u16(0), ...u16(0), ...u32(crc), ...u32(body.length), ...u32(size), ...u16(name.length), ...u16(0), ...name]);
    put(body);
    central.push(...u32(0x02014b50), ...u16(20), ...u16(20), ...u16(0), ...u16(method), ...u16(0), ...u16(0), ...u32(crc), ...u32(body.length), ...u32(size), ...u16(name.length), ...u16(0), ...u16(0), ...u16(0), ...u16(0), ...u32(0), ...u32(offset), ...name);
  }
  const cdOffset = at;
  put([...central, ...u32(0x06054b50), ...u16(0), ...u16(0), ...u16(entries.length), ...u16(entries.length), ...u32(central.length), ...u32(cdOffset), ...u16(0)]);
  const out = new Uint8Array(at);
  let p = 0;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  return out;
}

const f32bytes = (xs: number[]) => new Uint8Array(Float32Array.from(xs).buffer);

function torchZip(pickle: Uint8Array, storages: Record<string, Uint8Array>, extra: ZEntry[] = []): Uint8Array {
  return zip([
    { name: 'archive/data.pkl', data: pickle },
    ...Object.entries(storages).map(([k, data]) => ({ name: `archive/data/${k}`, data })),
    { name: 'archive/version', data: enc.encode('3\n') },
    ...extra,
  ]);
}

/** A small valid archive: a 2×3 parameter, a transposed view, a half tensor and an offset view. */
function smallArchive(): Uint8Array {
  const pk = stateDictPickle([
    { name: 'w', key: '0', numel: 6, size: [2, 3], param: true },
    { name: 'wt', key: '0', numel: 6, size: [3, 2], stride: [1, 3] },
    { name: 'h', key: '1', storage: 'HalfStorage', numel: 2, size: [2] },
    { name: 'tail', key: '2', numel: 5, offset: 2, size: [3] },
  ]);
  return torchZip(pk, {
    '0': f32bytes([1, 2, 3, 4, 5, 6]),
    '1': Uint8Array.from([0x00, 0x3c, 0x00, 0xc0]), // 1.0, −2.0 as float16
    '2': f32bytes([9, 9, 7, 8, 9.5]),
  });
}

function expectRefused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof TorchCheckpointError, `expected a TorchCheckpointError, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    assert.match((e as Error).message, pattern);
    assert.ok(!(e as Error).message.includes('\n'), 'one-line message');
    return true;
  });
}

// ---- capturing command output ----

/** Runs a starflow command in a child process; fails on a non-zero exit; returns stdout. */
async function cli(args: string[]): Promise<string> {
  const r = await starflow(args);
  assert.equal(r.code, 0, `starflow ${args.join(' ')}\nexit ${r.code}\nstderr:\n${r.stderr}`);
  return r.stdout;
}

function torchAvailable(): boolean {
  if (!existsSync(PYTHON)) return false;
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore', timeout: 60_000 });
  return r.status === 0;
}


// =====================================================================================

describe('reading torch.save archives', () => {
  test('a hand-made archive: parameters, strided and offset views, float16', () => {
    const sd = readStateDict(smallArchive(), 'small');
    assert.deepEqual([...sd.keys()], ['w', 'wt', 'h', 'tail']);
    assert.deepEqual(sd.get('w'), { shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) });
    assert.deepEqual(sd.get('wt'), { shape: [3, 2], data: Float32Array.from([1, 4, 2, 5, 3, 6]) });
    assert.deepEqual(sd.get('h'), { shape: [2], data: Float32Array.from([1, -2]) });
    assert.deepEqual(sd.get('tail'), { shape: [3], data: Float32Array.from([7, 8, 9.5]) });
  });

  test('other dtypes, 3-d strides, scalars and STACK_GLOBAL convert to float32', () => {
    const pk = stateDictPickle([
      { name: 'd', key: 'a', storage: 'DoubleStorage', numel: 2, size: [2] },
      { name: 'bf', key: 'b', storage: 'BFloat16Storage', numel: 1, size: [] },
      { name: 'l', key: 'c', storage: 'LongStorage', numel: 2, size: [2] },
      { name: 'p', key: 'e', numel: 24, size: [2, 3, 4], stride: [1, 8, 2] },
    ]);
    const perm = Float32Array.from({ length: 24 }, (_, i) => i);
    const sd = readStateDict(
      torchZip(pk, {
        a: new Uint8Array(Float64Array.from([0.1, -3]).buffer),
        b: Uint8Array.from([0x80, 0x3f]), // bfloat16 1.0
        c: new Uint8Array(BigInt64Array.from([5n, -7n]).buffer),
        e: new Uint8Array(perm.buffer),
      }),
    );
    assert.deepEqual([...sd.get('d')!.data], [Math.fround(0.1), -3]);
    assert.deepEqual(sd.get('bf'), { shape: [], data: Float32Array.from([1]) });
    assert.deepEqual([...sd.get('l')!.data], [5, -7]);
    const p = sd.get('p')!.data;
    for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) assert.equal(p[i * 12 + j * 4 + k], i + 8 * j + 2 * k);
    // STACK_GLOBAL resolves through the same allow-list.
    const sg = new Pickle().proto().stackGlobal('collections', 'OrderedDict').emptyTuple().reduce().stop().bytes();
    assert.ok(unpickle(sg) !== null);
  });

  test('DEFLATE members go through the given decompressor; without one, a clear error', () => {
    const pk = stateDictPickle([{ name: 'w', key: '0', numel: 3, size: [3] }]);
    const bytes = zip([
      { name: 'a/data.pkl', data: pk, deflate: true },
      { name: 'a/data/0', data: f32bytes([1, 2, 3]), deflate: true },
    ]);
    expectRefused(() => readStateDict(bytes, 'x'), /DEFLATE-compressed and no decompressor/);
    const sd = readStateDict(bytes, 'x', { inflateRaw: (d, n) => inflateRawSync(d, { maxOutputLength: n }) });
    assert.deepEqual([...sd.get('w')!.data], [1, 2, 3]);
  });

  test('a safetensors file with the same state dict reads the same', () => {
    const sd = fixtureStateDict(fx.uncond);
    const bytes = serializeSafetensors(new Map([...sd].map(([k, t]) => [k, fromFloat32(t.data, t.shape, k.endsWith('bias') ? 'F64' : 'F32')])));
    const back = readStateDict(bytes, 'st');
    for (const [k, t] of sd) assert.deepEqual(back.get(k), t);
    expectRefused(() => readStateDict(bytes.subarray(0, 100), 'st'), /^st: truncated|header length/);
  });
});

// =====================================================================================

describe('architecture inference', () => {
  const sd = fixtureStateDict(fx.uncond);

  test('the reference file-name convention', () => {
    assert.deepEqual(parseReferenceFileName('/x/afhq_model_8_768_8_8_0.07.pth'), { dataset: 'afhq', patchSize: 8, width: 768, numBlocks: 8, layersPerBlock: 8, noise: 0.07 });
    assert.deepEqual(parseReferenceFileName('imagenet64_model_4_1024_8_8_uniform.pth')?.noise, 'uniform');
    assert.equal(parseReferenceFileName('model.pth'), undefined);
  });

  test('shapes give blocks, layers, width, classes, tokens, MLP ratio; C·p² ambiguity names the flags', () => {
    assert.throws(() => inferConfig(sd), (e: Error) => e instanceof ConvertError && /--patch-size/.test(e.message) && /--in-channels/.test(e.message));
    const want = { ...fixtureConfig(fx.uncond), noiseStd: 0 };
    assert.deepEqual(inferConfig(sd, { overrides: { patchSize: 2 } }).cfg, want);
    assert.deepEqual(inferConfig(sd, { overrides: { inChannels: 1 } }).cfg, want);
    assert.deepEqual(inferConfig(sd, { overrides: { imgSize: 8 } }).cfg, want);
    assert.deepEqual(inferConfig(sd, { fileName: 'tiny_model_2_64_2_1_0.1.pth' }).cfg, { ...want, noiseStd: 0.1 });
    assert.throws(() => inferConfig(sd, { fileName: 'tiny_model_2_128_2_1_0.1.pth' }), /file name says channels 128/);
    assert.throws(() => inferConfig(sd, { overrides: { patchSize: 3 } }), /not a multiple of 3²/);
    const cond = inferConfig(fixtureStateDict(fx.cond3), { overrides: { patchSize: 2, noiseStd: 0.05 } }).cfg;
    assert.deepEqual(cond, { ...fixtureConfig(fx.cond3), noiseStd: 0.05 });
    // DDP prefixes are removed.
    const wrapped = new Map([...sd].map(([k, v]) => [`module.${k}`, v]));
    const r = inferConfig(wrapped, { overrides: { patchSize: 2 } });
    assert.equal(r.prefix, 'module.');
    assert.equal(convertStateDict(wrapped, r.cfg, r.prefix).size, 34);
    assert.throws(() => inferConfig(new Map([['x', { shape: [1], data: new Float32Array(1) }]])), /not an ml-tarflow state dict/);
  });

  test('a volume-preserving reference (proj_out to D) maps to the shift half', () => {
    const vp = new Map(sd);
    for (const b of [0, 1]) {
      const w = sd.get(`blocks.${b}.proj_out.weight`)!;
      vp.set(`blocks.${b}.proj_out.weight`, { shape: [4, 64], data: w.data.slice(0, 256) });
      vp.set(`blocks.${b}.proj_out.bias`, { shape: [4], data: sd.get(`blocks.${b}.proj_out.bias`)!.data.slice(0, 4) });
    }
    const { cfg } = inferConfig(vp, { overrides: { patchSize: 2 } });
    assert.equal(cfg.nvp, false);
    const ours = convertStateDict(vp, cfg);
    assert.deepEqual(ours.get('blocks.0.projOut.b')!.data, Float32Array.from([0, 0, 0, 0, ...sd.get('blocks.0.proj_out.bias')!.data.slice(0, 4)]));
    assert.deepEqual(ours.get('blocks.0.projOut.w')!.shape, [64, 8]);
  });

  test('wrong shapes and stray tensors are reported by name', () => {
    const bad = new Map(sd);
    bad.set('blocks.1.attn_blocks.0.mlp.main.2.bias', { shape: [3], data: new Float32Array(3) });
    bad.set('blocks.1.attn_blocks.1.attention.qkv.weight', { shape: [1], data: new Float32Array(1) });
    const { cfg } = inferConfig(bad, { overrides: { patchSize: 2 } });
    assert.throws(() => convertStateDict(bad, cfg), (e: Error) => /mlp\.main\.2\.bias: expected \[64\]/.test(e.message) && /attn_blocks\.1\.attention\.qkv\.weight: unexpected/.test(e.message));
  });
});

// =====================================================================================

describe('round trip against the ml-tarflow fixture', () => {
  let tmp = '';
  before(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'st-torch-'));
  });
  after(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  const x = detTensor([2, 1, 8, 8], 1.3, 0.2, 0.9);
  const noise = detTensor([2, 16, 4], 0.9, 0.4, 1.0);
  const xd = detTensor([2, 1, 8, 8], 0.5, 0.3, 0.8);

  function checkWeights(sd: StateDict, c: FixtureCase): number {
    const want = fixtureStateDict(c);
    let worst = 0;
    for (const [k, t] of want) {
      const got = sd.get(k);
      assert.ok(got, `missing ${k}`);
      assert.deepEqual(got.shape, t.shape, k);
      worst = Math.max(worst, maxAbsDiff(got.data, t.data));
    }
    return worst;
  }

  /** nll --input, sample --noise and denoise on a converted model directory, against the fixture. */
  async function checkCommands(dir: string, c: FixtureCase, labels: number[] | undefined, tag: string): Promise<void> {
    const input = path.join(tmp, `${tag}-in.safetensors`);
    const tensors: Record<string, ReturnType<typeof fromFloat32>> = {
      x: fromFloat32(x.data, x.shape),
      xd: fromFloat32(xd.data, xd.shape),
      noise: fromFloat32(noise.data, noise.shape),
    };
    if (labels) tensors.y = fromInt32(Int32Array.from(labels), [labels.length], 'I64'); // as torch saves labels
    await writeSafetensorsFile(input, tensors);
    const yArgs = labels ? ['--y-key', 'y'] : [];

    const zOut = path.join(tmp, `${tag}-z.safetensors`);
    const out = JSON.parse(await cli(['nll', '--model', dir, '--input', input, '--x-key', 'x', ...yArgs, '--json', '--z-out', zOut]));
    const z = toFloat32((await readSafetensorsFile(zOut)).tensors.get('z')!);
    const d = {
      z: maxAbsDiff(z, c.z),
      zScaled: scaledMaxDiff(z, c.z),
      logdet: maxAbsDiff(out.logdet, c.logdets_per_sample),
      loss: Math.abs(out.loss - c.loss),
      bpd: maxAbsDiff(out.bpd, c.bpd_per_sample),
      bpdRel: maxRelDiff(out.bpd, c.bpd_per_sample),
    };
    assert.ok(d.zScaled < 1e-5, `z ${d.z} (${d.zScaled} of max |z|)`);
    assert.ok(d.logdet < 1e-5, `logdet ${d.logdet}`);
    assert.ok(d.loss < 1e-5, `loss ${d.loss}`);
    assert.ok(d.bpdRel < 1e-5, `bpd ${d.bpd}`);

    const samples = path.join(tmp, `${tag}-x.safetensors`);
    // The reference's samples are the flow's raw draw: no denoising (the default for this noise-trained model).
    await cli(['sample', '--model', dir, '--noise', input, '--noise-key', 'noise', ...(labels ? ['--labels-key', 'y'] : []), '--no-denoise', '--out', samples]);
    const sf = await readSafetensorsFile(samples);
    assert.deepEqual([...sf.tensors.keys()], ['samples']);
    const key = labels ? 'sample_cfg0' : 'sample_uncond';
    const ds = maxAbsDiff(toFloat32(sf.tensors.get('samples')!), c[key] as number[]);
    assert.ok(ds < 1e-3, `samples ${ds}`);

    const den = c.denoise as { sigma: number; x_denoised: number[] };
    const dOut = path.join(tmp, `${tag}-den.safetensors`);
    await cli(['denoise', '--model', dir, '--input', input, '--x-key', 'xd', ...yArgs, '--sigma', String(den.sigma), '--out', dOut]);
    const dd = maxAbsDiff(toFloat32((await readSafetensorsFile(dOut)).tensors.get('x')!), den.x_denoised);
    assert.ok(dd < 1e-5, `denoised ${dd}`);
    console.error(`# ${tag}: max |Δ| z ${d.z.toExponential(2)}, logdet ${d.logdet.toExponential(2)}, loss ${d.loss.toExponential(2)}, bpd ${d.bpd.toExponential(2)}, samples ${ds.toExponential(2)}, denoised ${dd.toExponential(2)}`);
  }

  test('the committed .pth (real torch.save output): weights exact, buffers present, strided views', async () => {
    const sd = await readStateDictFile(FIXTURE_PTH);
    assert.equal(checkWeights(sd, fx.uncond), 0);
    assert.deepEqual(sd.get('var')!.shape, [16, 4]);
    assert.deepEqual(sd.get('blocks.1.attn_mask')!.shape, [16, 16]);
  });

  test('convert (library) → nll --input, sample --noise, denoise match ml-tarflow', async () => {
    const dir = path.join(tmp, 'uncond');
    const r = await convertCheckpoint(FIXTURE_PTH, dir);
    assert.deepEqual(r.cfg, { ...fixtureConfig(fx.uncond), noiseStd: 0.1 });
    const { cfg } = await loadModel(dir);
    assert.deepEqual(cfg, r.cfg);
    await checkCommands(dir, fx.uncond, undefined, 'uncond');
  });

  test('starflow convert (the CLI) writes the same model directory', async () => {
    const lib = path.join(tmp, 'lib');
    await convertCheckpoint(FIXTURE_PTH, lib);
    const dir = path.join(tmp, 'cli');
    const r = await starflow(['convert', '--from', FIXTURE_PTH, '--out', dir, '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).config.imgSize, 8);
    assert.deepEqual(await readFile(path.join(dir, 'model.safetensors')), await readFile(path.join(lib, 'model.safetensors')));
    assert.equal(await readFile(path.join(dir, 'config.json'), 'utf8'), await readFile(path.join(lib, 'config.json'), 'utf8'));
    const bad = await starflow(['convert', '--from', path.join(tmp, 'uncond-in.safetensors'), '--out', path.join(tmp, 'no')]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^starflow convert: error: not an ml-tarflow state dict/);
  });

  test('freshly generated with torch.save (both fixture models, contiguous and strided)', async (t) => {
    if (!torchAvailable()) {
      t.skip(`${PYTHON} cannot import torch: the committed .pth covers the round trip`);
      return;
    }
    for (const [tag, c, labels, extra] of [
      ['cond3', fx.cond3, [0, 2], []],
      ['uncond-contiguous', fx.uncond, undefined, ['--contiguous']],
    ] as const) {
      const file = path.join(tmp, `gen_model_2_64_2_1_0.1.pth`);
      const r = spawnSync(PYTHON, [GENERATOR, file, '--case', tag.startsWith('cond3') ? 'cond3' : 'uncond', ...extra], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 0, r.stderr);
      const sd = await readStateDictFile(file);
      assert.equal(checkWeights(sd, c), 0);
      const dir = path.join(tmp, tag);
      const conv = await convertCheckpoint(file, dir);
      assert.equal(conv.cfg.numClasses, c === fx.cond3 ? 3 : 0);
      if (tag === 'cond3') await checkCommands(dir, c, labels ? [...labels] : undefined, tag);
      else {
        const ref = fromReferenceStateDict(fixtureStateDict(c), conv.cfg);
        const { cfg } = await loadModel(dir);
        assert.deepEqual(cfg, conv.cfg);
        assert.equal(ref.size, 34);
      }
    }
  });
});

// =====================================================================================

describe('hostile files', () => {
  const callGlobal = (module: string, name: string, stack = false) => {
    const p = new Pickle().proto();
    if (stack) p.stackGlobal(module, name);
    else p.global(module, name);
    return p.mark().str(`touch ${MARKER}`).tuple().reduce().stop().bytes();
  };
  const MARKER = path.join(tmpdir(), `starflow-pwned-${process.pid}`);

  test('globals outside the allow-list are refused by name; nothing runs', () => {
    for (const [m, n] of [
      ['os', 'system'], ['posix', 'system'], ['nt', 'system'], ['builtins', 'eval'], ['builtins', 'exec'],
      ['__builtin__', 'getattr'], ['subprocess', 'Popen'], ['torch', 'load'], ['torch._utils', '_rebuild_device_tensor_from_numpy'],
      ['numpy.core.multiarray', '_reconstruct'], ['collections', 'defaultdict'], ['torch.nn.modules.linear', 'Linear'],
    ]) {
      for (const stack of [false, true]) {
        const bytes = torchZip(callGlobal(m!, n!, stack), {});
        const name = `${m}.${n}`.replace(/[.]/g, '\\.');
        expectRefused(() => readStateDict(bytes, 'evil.pth'), new RegExp(`^evil\\.pth: archive/data\\.pkl: refused: the pickle asks for the Python global "${name}"`));
      }
    }
    assert.ok(!existsSync(MARKER), 'nothing was executed');
  });

  test('allowed names that are not constructors cannot be called; odd persistent ids and BUILDs are refused', () => {
    const callStorage = new Pickle().proto().global('torch', 'FloatStorage').mark().int(3).tuple().reduce().stop().bytes();
    expectRefused(() => unpickle(callStorage), /may only appear as a type or dtype tag/);
    const pid = new Pickle().proto().mark().str('module').str('os').tuple().op(0x51).stop().bytes();
    expectRefused(() => unpickle(pid), /persistent id/);
    const build = new Pickle().proto().mark().tuple().op(0x7d).op(0x62).stop().bytes();
    expectRefused(() => unpickle(build), /sets the state of a tuple/);
    const badLine = new Pickle().proto().op(0x63, ...enc.encode('os\u0001\nsystem\n')).stop().bytes();
    expectRefused(() => unpickle(badLine), /GLOBAL line/);
  });

  test('unknown or unsupported opcodes are refused', () => {
    // INST, OBJ, NEWOBJ, EXT1, PERSID (text), BINBYTES, an undefined byte
    for (const op of [0x69, 0x6f, 0x81, 0x82, 0x50, 0x42, 0xff]) {
      expectRefused(() => unpickle(Uint8Array.from([0x80, 2, op, 0, 0, 0, 0, 0x2e])), new RegExp(`does not support.*opcode 0x${op.toString(16)}`));
    }
    expectRefused(() => unpickle(Uint8Array.from([0x80, 9, 0x2e])), /protocol 9/);
  });

  test('deep nesting, huge declared lengths, empty stacks and missing STOP', () => {
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, ...new Array(5000).fill(0x28), 0x2e])), /nests deeper than 1000/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0x7f, 0x41])), /truncated/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x8d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])), /declares .* bytes|truncated/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x52, 0x2e])), /empty stack/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x4b, 1])), /without a STOP/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x68, 7, 0x2e])), /memo entry 7/);
    expectRefused(() => unpickle(Uint8Array.from([0x80, 2, 0x8a, 9, ...new Array(9).fill(1), 0x2e])), /9-byte integer/);
    expectRefused(() => unpickle(new Uint8Array(1000).fill(0x5d), { limits: { maxObjects: 100 } }), /more than 100 objects/);
  });

  test('truncated archives and a damaged central directory', () => {
    const good = smallArchive();
    for (const n of [0, 3, 21, 100, good.length - 23, good.length - 1]) {
      expectRefused(() => readStateDict(good.subarray(0, n), 't'), /truncated|end-of-central-directory|neither a torch|damaged/);
    }
    const damaged = new Uint8Array(good);
    const eocd = damaged.length - 22;
    new DataView(damaged.buffer).setUint32(eocd + 16, 5, true); // central directory offset
    expectRefused(() => readStateDict(damaged, 'd'), /central directory/);
    const big = fixtureDamage();
    for (const n of big) expectRefused(() => readStateDict(n.bytes, 'fixture'), /truncated|end-of-central-directory|damaged|CRC|past|local header/);
  });

  test('storages shorter than their tensors, and tensors beyond their storage', () => {
    const over = stateDictPickle([{ name: 'w', key: '0', numel: 6, size: [2, 4] }]);
    expectRefused(() => readStateDict(torchZip(over, { '0': f32bytes([1, 2, 3, 4, 5, 6]) }), 's'), /tensor "w" .* reaches element 7 of storage "0", which has 6/);
    const strided = stateDictPickle([{ name: 'w', key: '0', numel: 6, size: [3, 2], stride: [1, 4] }]);
    expectRefused(() => readStateDict(torchZip(strided, { '0': f32bytes([1, 2, 3, 4, 5, 6]) }), 's'), /reaches element 6/);
    const offset = stateDictPickle([{ name: 'w', key: '0', numel: 6, offset: 5, size: [2] }]);
    expectRefused(() => readStateDict(torchZip(offset, { '0': f32bytes([1, 2, 3, 4, 5, 6]) }), 's'), /reaches element 6/);
    const short = stateDictPickle([{ name: 'w', key: '0', numel: 6, size: [6] }]);
    expectRefused(() => readStateDict(torchZip(short, { '0': f32bytes([1, 2, 3]) }), 's'), /storage "0" holds 12 bytes but is declared as 6 F32 elements/);
    expectRefused(() => readStateDict(torchZip(short, {}), 's'), /storage "0" is missing/);
    const absurd = stateDictPickle([{ name: 'w', key: '0', numel: 1, size: [65536, 65536, 4], stride: [0, 0, 0] }]);
    expectRefused(() => readStateDict(torchZip(absurd, { '0': f32bytes([1]) }), 's'), /above the limit/);
    const expanded = stateDictPickle([{ name: 'w', key: '0', numel: 1, size: [1 << 22], stride: [0] }]);
    expectRefused(() => readStateDict(torchZip(expanded, { '0': f32bytes([1]) }), 's'), /from 1 stored ones/);
    const aliases = stateDictPickle(Array.from({ length: 5 }, (_, i) => ({ name: `w${i}`, key: '0', numel: 1 << 19, size: [1 << 19] })));
    expectRefused(() => readStateDict(torchZip(aliases, { '0': new Uint8Array(4 << 19) }), 's'), /tensor "w4" brings the state dict/);
  });

  test('a member declaring far more bytes than it compresses from (zip bomb) is refused before inflating', () => {
    const pk = stateDictPickle([{ name: 'w', key: '0', numel: 3, size: [3] }]);
    const bytes = zip([
      { name: 'a/data.pkl', data: pk },
      { name: 'a/data/0', data: f32bytes([1, 2, 3]), deflate: true, declaredSize: 3_000_000_000 },
    ]);
    let calls = 0;
    const inflateRaw = (d: Uint8Array, n: number) => (calls++, inflateRawSync(d, { maxOutputLength: n }));
    expectRefused(() => readStateDict(bytes, 'bomb', { inflateRaw }), /declares 3000000000 bytes from \d+ compressed bytes \(ratio above 1100/);
    assert.equal(calls, 0);
    const lying = zip([{ name: 'a/data.pkl', data: pk }, { name: 'a/data/0', data: f32bytes([1, 2, 3]), deflate: true, declaredSize: 40 }]);
    expectRefused(() => readStateDict(lying, 'lie', { inflateRaw }), /inflates to 12 bytes, not the declared 40|does not inflate/);
    const storedLie = zip([{ name: 'a/data.pkl', data: pk, declaredSize: 1 << 30 }]);
    expectRefused(() => readStateDict(storedLie, 'lie'), /declares 1073741824 bytes but holds/);
  });

  test('whole pickled modules, legacy files and other formats are refused clearly', () => {
    expectRefused(() => readStateDict(Uint8Array.from([0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc]), 'old.pth'), /legacy \(pre-1\.6\)/);
    expectRefused(() => readStateDict(enc.encode('hello world, not a checkpoint'), 'x.txt'), /neither a torch\.save zip archive nor a safetensors file/);
    const list = new Pickle().proto().op(0x5d).stop().bytes();
    expectRefused(() => readStateDict(torchZip(list, {}), 'l'), /holds a list of 0 with no tensors/);
    expectRefused(() => readStateDict(zip([{ name: 'a/x', data: new Uint8Array(1) }]), 'z'), /no data\.pkl/);
  });

  test('random mutations (200): only TorchCheckpointError escapes', () => {
    const rng = new Rng(20240611);
    const base = smallArchive();
    const pk = stateDictPickle([
      { name: 'w', key: '0', numel: 6, size: [2, 3], param: true },
      { name: 'wt', key: '0', numel: 6, size: [3, 2], stride: [1, 3] },
    ]);
    const storage = { '0': f32bytes([1, 2, 3, 4, 5, 6]) };
    const mutate = (src: Uint8Array): Uint8Array => {
      const b = Array.from(src);
      const n = 1 + Math.floor(rng.uniform() * 4);
      for (let i = 0; i < n; i++) {
        const at = Math.floor(rng.uniform() * b.length);
        const kind = Math.floor(rng.uniform() * 4);
        if (kind === 0) b[at] = Math.floor(rng.uniform() * 256);
        else if (kind === 1) b.splice(at, 1);
        else if (kind === 2) b.splice(at, 0, Math.floor(rng.uniform() * 256));
        else b.length = at;
      }
      return Uint8Array.from(b);
    };
    let ok = 0;
    let refused = 0;
    for (let i = 0; i < 200; i++) {
      // Half mutate the archive; half mutate only the pickle and re-wrap it with a valid CRC, so the
      // interpreter (not the CRC check) meets the damage.
      const bytes = i % 2 === 0 ? mutate(base) : torchZip(mutate(pk), storage);
      try {
        readStateDict(bytes, 'fuzz', { inflateRaw: (d, n) => inflateRawSync(d, { maxOutputLength: Math.max(1, n) }) });
        ok++;
      } catch (e) {
        if (!(e instanceof TorchCheckpointError)) assert.fail(`case ${i}: ${(e as Error).name}: ${(e as Error).message}`);
        refused++;
      }
    }
    assert.equal(ok + refused, 200);
    assert.ok(refused > 100, `${refused} refused`);
  });
});

/** A few truncations and a corruption of the real fixture archive. */
function fixtureDamage(): { bytes: Uint8Array }[] {
  const real = new Uint8Array(readFileSync(FIXTURE_PTH));
  const out = [200, 5000, real.length / 2, real.length - 100].map((n) => ({ bytes: real.subarray(0, Math.floor(n)) }));
  const flipped = new Uint8Array(real);
  flipped[200_000] = flipped[200_000]! ^ 0x55; // inside a storage: the CRC catches it
  out.push({ bytes: flipped });
  return out;
}
