import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CheckpointError, checkWeightsAgainst, jsonErrorLocation, loadCheckpoint,
  saveCheckpoint, type FlatTensors,
} from '../../src/io/checkpoint.js';
import { fromFloat32, fromInt32, SafetensorsError, serializeSafetensors } from '../../src/io/safetensors.js';
import { flattenTree, unflattenTree } from '../../src/nn/params.js';

async function withTempDir(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'st-ckpt-'));
  try {
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

function flat(entries: [string, number[], number[]][]): FlatTensors {
  return new Map(entries.map(([name, shape, data]) => [name, { shape, data: Float32Array.from(data) }]));
}

const model = flat([
  ['blocks.0.proj_in.weight', [2, 2], [1, 2, 3, 0.1]],
  ['blocks.0.proj_in.bias', [2], [-1, 1e-30]],
  ['scale', [], [7]],
]);

async function rejectsWith(p: Promise<unknown>, cls: new (message: string) => Error, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    assert.match((e as Error).message, pattern);
    assert.ok(!(e as Error).message.includes('\n'), 'message must be one line');
    return true;
  });
}

test('save/load round trip with optimizer and trainer state', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'run', 'ckpt');
    const config = { model: { dim: 8, blocks: 2 }, name: 'tiny' };
    const optimizer = flat([['m.scale', [], [0.5]], ['v.scale', [], [0.25]]]);
    await saveCheckpoint(dir, { config, model, optimizer, trainer: { step: 12, seed: 3 } });
    assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer.json']);
    assert.deepEqual(await readdir(join(root, 'run')), ['ckpt']);
    const back = await loadCheckpoint(dir);
    assert.deepEqual(back.config, config);
    assert.deepEqual(back.model, model);
    assert.deepEqual(back.optimizer, optimizer);
    assert.deepEqual(back.trainer, { step: 12, seed: 3 });

    const inference = join(root, 'inf');
    await saveCheckpoint(inference, { config, model });
    const small = await loadCheckpoint(inference);
    assert.equal(small.optimizer, undefined);
    assert.equal(small.trainer, undefined);
    assert.deepEqual(small.model, model);
  });
});

test('non-F32 tensors are converted to float32 on load', async () => {
  await withTempDir(async (dir) => {
    await writeFile(join(dir, 'config.json'), '{}');
    await writeFile(
      join(dir, 'model.safetensors'),
      serializeSafetensors({
        h: fromFloat32(new Float32Array([1, -0.5]), [2], 'F16'),
        b: fromFloat32(new Float32Array([2]), [1], 'BF16'),
        i: fromInt32(new Int32Array([3, -4]), [1, 2], 'I64'),
      }),
    );
    const { model: m } = await loadCheckpoint(dir);
    assert.deepEqual(m.get('h'), { shape: [2], data: Float32Array.from([1, -0.5]) });
    assert.deepEqual(m.get('b'), { shape: [1], data: Float32Array.from([2]) });
    assert.deepEqual(m.get('i'), { shape: [1, 2], data: Float32Array.from([3, -4]) });
  });
});

test('saving replaces the previous checkpoint and cleans up leftovers', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'ckpt');
    await saveCheckpoint(dir, { config: { v: 1 }, model, trainer: { step: 1 } });
    // Leftovers of saves killed at different instants.
    await mkdir(`${dir}.tmp-999-dead`);
    await writeFile(join(`${dir}.tmp-999-dead`, 'config.json'), '{"v": 0');
    await mkdir(`${dir}.old-1-999-dead`);
    await saveCheckpoint(dir, { config: { v: 2 }, model: flat([['scale', [], [8]]]) });
    assert.deepEqual(await readdir(root), ['ckpt']);
    const back = await loadCheckpoint(dir);
    assert.deepEqual(back.config, { v: 2 });
    assert.deepEqual([...back.model.keys()], ['scale']);
    assert.equal(back.trainer, undefined, 'nothing of the old checkpoint survives');
  });
});

test('a kill while writing the temp dir leaves the old checkpoint loadable', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'ckpt');
    await saveCheckpoint(dir, { config: { v: 1 }, model });
    await mkdir(`${dir}.tmp-4242-abcd`);
    await writeFile(join(`${dir}.tmp-4242-abcd`, 'model.safetensors'), new Uint8Array([1, 2]));
    assert.deepEqual((await loadCheckpoint(dir)).config, { v: 1 });
  });
});

test('a kill between the two renames: load recovers the newest .old directory', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'ckpt');
    await saveCheckpoint(join(root, 'other'), { config: { v: 'older' }, model });
    await rename(join(root, 'other'), `${dir}.old-1000-1-aaaa`);
    await saveCheckpoint(join(root, 'other'), { config: { v: 'newer' }, model });
    await rename(join(root, 'other'), `${dir}.old-2000-1-bbbb`);
    await mkdir(`${dir}.tmp-1-cccc`);
    const back = await loadCheckpoint(dir);
    assert.deepEqual(back.config, { v: 'newer' });
    assert.deepEqual(back.model, model);
    // The rollback is finished on disk.
    assert.deepEqual((await readdir(root)).sort(), ['ckpt', 'ckpt.old-1000-1-aaaa', 'ckpt.tmp-1-cccc']);
    await saveCheckpoint(dir, { config: { v: 'newest' }, model });
    assert.deepEqual(await readdir(root), ['ckpt']);
  });
});

test('load errors name the file and the problem', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'ckpt');
    await rejectsWith(loadCheckpoint(dir), CheckpointError, new RegExp(`^no such checkpoint directory: ${dir}$`));
    await writeFile(join(root, 'file'), 'x');
    await rejectsWith(loadCheckpoint(join(root, 'file')), CheckpointError, /not a checkpoint directory/);
    await rejectsWith(saveCheckpoint(join(root, 'file'), { config: {}, model }), CheckpointError, /file: exists and is not a checkpoint directory/);
    assert.equal(await readFile(join(root, 'file'), 'utf8'), 'x');

    await mkdir(dir);
    await rejectsWith(loadCheckpoint(dir), CheckpointError, /ckpt\/config\.json: missing \(a checkpoint directory needs config\.json and model\.safetensors\)/);
    await writeFile(join(dir, 'config.json'), '{\n  "dim": 8,\n  "blocks": }\n');
    await rejectsWith(loadCheckpoint(dir), CheckpointError, /config\.json: invalid JSON at line 3, column 13: unexpected "}"$/);
    await writeFile(join(dir, 'config.json'), '{"dim": 8}');
    await rejectsWith(loadCheckpoint(dir), SafetensorsError, new RegExp(`^no such file: ${join(dir, 'model.safetensors')}$`));
    const good = serializeSafetensors({ w: fromFloat32(new Float32Array(4), [4]) });
    await writeFile(join(dir, 'model.safetensors'), good.subarray(0, good.length - 3));
    await rejectsWith(loadCheckpoint(dir), SafetensorsError, /model\.safetensors: data buffer has|model\.safetensors: .*go beyond the data buffer/);
    await writeFile(join(dir, 'model.safetensors'), good);
    await writeFile(join(dir, 'trainer.json'), '{"step": 1,}');
    await rejectsWith(loadCheckpoint(dir), CheckpointError, /trainer\.json: invalid JSON at line 1, column 12: unexpected "}"/);
    await rm(join(dir, 'trainer.json'));
    assert.deepEqual((await loadCheckpoint(dir)).config, { dim: 8 });
  });
});

test('jsonErrorLocation points at the first error', () => {
  const at = (s: string) => {
    assert.throws(() => JSON.parse(s));
    return jsonErrorLocation(s);
  };
  assert.equal(at(''), 'at line 1, column 1: unexpected end of input');
  assert.equal(at('{"a": [1, 2,]}'), 'at line 1, column 13: unexpected "]"');
  assert.equal(at('{"a": 1}\n x'), 'at line 2, column 2: unexpected "x" after the JSON value');
  assert.equal(at('{"a": "b\n"}'), 'at line 1, column 9: control character in string');
  assert.equal(at('{"a": "\\q"}'), 'at line 1, column 9: bad escape in string');
  assert.equal(at('{"a": tru}'), 'at line 1, column 7: unexpected "t"');
  assert.equal(at('{a: 1}'), 'at line 1, column 2: unexpected "a"');
  assert.equal(at('{"a": "x'), 'at line 1, column 9: unterminated string');
  assert.equal(at('[01]'), 'at line 1, column 3: unexpected "1"');
});

test('checkWeightsAgainst lists missing, unexpected and mis-shaped tensors', () => {
  const expected = new Map<string, number[]>([
    ['blocks.0.proj_in.weight', [64, 4]],
    ['blocks.0.proj_in.bias', [64]],
    ['head.weight', [4, 64]],
  ]);
  const got = flat([
    ['blocks.0.proj_in.weight', [64, 8], []],
    ['blocks.0.proj_in.bias', [64], []],
    ['extra', [3], []],
  ]);
  checkWeightsAgainst(expected, flat([['blocks.0.proj_in.weight', [64, 4], []], ['blocks.0.proj_in.bias', [64], []], ['head.weight', [4, 64], []]]), 'x');
  assert.throws(
    () => checkWeightsAgainst(expected, got, 'ckpt/model.safetensors'),
    (e: unknown) => {
      assert.ok(e instanceof CheckpointError);
      assert.equal(
        e.message,
        [
          'ckpt/model.safetensors: weights do not match the model (3 problems):',
          '  blocks.0.proj_in.weight: expected [64,4], file has [64,8]',
          '  head.weight: missing (expected [4,64])',
          '  extra: unexpected tensor [3] (not in the model)',
        ].join('\n'),
      );
      return true;
    },
  );
  const many = new Map<string, number[]>(Array.from({ length: 14 }, (_, i) => [`p${i}`, [i]]));
  assert.throws(() => checkWeightsAgainst(many, new Map(), 'm'), (e: unknown) => {
    const lines = (e as Error).message.split('\n');
    assert.equal(lines[0], 'm: weights do not match the model (14 problems):');
    assert.equal(lines.length, 12);
    assert.equal(lines[10], '  p9: missing (expected [9])');
    assert.equal(lines[11], '  and 4 more');
    return true;
  });
});

test('flatten/unflatten trees with dotted names and array indices', () => {
  const leaf = (n: number) => ({ shape: [1], data: Float32Array.from([n]) });
  const tree = {
    embed: { weight: leaf(1) },
    blocks: [{ attn: { qkv: { weight: leaf(2) } } }, { attn: { qkv: { weight: leaf(3) } } }],
    norm: leaf(4),
  };
  const isLeaf = (v: unknown): v is { shape: number[]; data: Float32Array } => typeof v === 'object' && v !== null && (v as { data?: unknown }).data instanceof Float32Array;
  const f = flattenTree(tree, isLeaf);
  assert.deepEqual([...f.keys()], ['embed.weight', 'blocks.0.attn.qkv.weight', 'blocks.1.attn.qkv.weight', 'norm']);
  assert.equal(f.get('norm'), tree.norm, 'leaves are not copied');
  assert.deepEqual(unflattenTree(f), tree);

  const isNum = (v: unknown): v is number => typeof v === 'number';
  assert.deepEqual(unflattenTree(flattenTree({ a: [1, [2, 3]], b: { '10': 4, '2': 5 } }, isNum)), { a: [1, [2, 3]], b: { '10': 4, '2': 5 } });
  assert.deepEqual(unflattenTree(new Map([['1', 'x'], ['0', 'y']])), ['y', 'x']);
  assert.throws(() => flattenTree({ 'a.b': 1 }, isNum), /key "a\.b"/);
  assert.throws(() => flattenTree({ a: 'str' }, isNum), /'a' is neither a leaf/);
  assert.throws(() => unflattenTree(new Map([['a', 1], ['a.b', 2]])), /'a\.b' extends a name that is already a leaf/);
  assert.throws(() => unflattenTree(new Map([['a.b', 1], ['a', 2]])), /'a' is both a leaf and a prefix/);
});

test('saved checkpoint files are plain, readable formats', async () => {
  await withTempDir(async (root) => {
    const dir = join(root, 'c');
    await saveCheckpoint(dir, { config: { a: 1 }, model });
    assert.equal(await readFile(join(dir, 'config.json'), 'utf8'), '{\n  "a": 1\n}\n');
    const bytes = await readFile(join(dir, 'model.safetensors'));
    const n = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
    assert.deepEqual(header.scale, { dtype: 'F32', shape: [], data_offsets: [24, 28] });
  });
});
