// The package as a user gets it: `npm pack`, the tarball installed into an empty project, then the
// README's library example run from plain JavaScript (.mjs) and compiled by strict TypeScript, and
// the CLI run from the built files (tsx is a development dependency, absent there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, mkdir, readFile, writeFile, rm, readdir, access } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TSC = path.join(ROOT, 'node_modules/typescript/bin/tsc');

/** The first ```js block of the README's "The library" section. */
async function readmeLibraryExample(): Promise<string> {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## The library'));
  const m = /```js\n([\s\S]*?)```/.exec(section);
  assert.ok(m, 'README has a ```js library example');
  return m[1]!;
}

const exists = (p: string) => access(p).then(() => true, () => false);

test('npm pack → install into an empty project → README example in .mjs and strict TypeScript; CLI from dist', { timeout: 600_000 }, async () => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'starflow-pack-'));
  try {
    const env = { ...process.env, STARFLOW_THREADS: '2', STARFLOW_DEBUG: '1', npm_config_loglevel: 'error' };
    const packed = await run('npm', ['pack', '--pack-destination', tmp, '--silent'], { cwd: ROOT, env, maxBuffer: 1 << 24 });
    const tarball = path.join(tmp, packed.stdout.trim().split('\n').pop()!);
    const listing = (await run('tar', ['tzf', tarball])).stdout;
    assert.match(listing, /package\/dist\/index\.js/);
    assert.match(listing, /package\/dist\/index\.d\.ts/);
    assert.doesNotMatch(listing, /package\/src\//, 'sources stay out of the package');

    const project = path.join(tmp, 'consumer');
    await mkdir(project);
    await writeFile(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: project, env, maxBuffer: 1 << 24 });
    assert.equal(await exists(path.join(project, 'node_modules/tsx')), false, 'tsx is not installed for users');

    const example = await readmeLibraryExample();
    const check = async (cwd: string, out: { stdout: string }) => {
      assert.match(out.stdout, /20×1×28×28 samples; \d+\.\d{3} bits\/dim/);
      const png = await readFile(path.join(cwd, 'digits.png'));
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
      const cfg = JSON.parse(await readFile(path.join(cwd, 'runs/tiny/checkpoint/config.json'), 'utf8')) as { provenance: { steps: number; workers: number } };
      assert.equal(cfg.provenance.steps, 20);
      assert.equal(cfg.provenance.workers, 2, 'data-parallel workers run from the built files');
    };

    // Plain JavaScript.
    const js = path.join(project, 'js');
    await mkdir(js);
    await writeFile(path.join(js, 'example.mjs'), example);
    await check(js, await run(process.execPath, ['example.mjs'], { cwd: js, env, maxBuffer: 1 << 24 }));

    // Strict TypeScript as `tsc --init` sets a project up (strict, skipLibCheck), without
    // @types/node: the package's declarations must stand alone (the example's own node:fs import
    // is declared here, as a consumer would get it from @types/node).
    const ts = path.join(project, 'ts');
    await mkdir(ts);
    await writeFile(path.join(ts, 'example.mts'), example);
    await writeFile(path.join(ts, 'node-fs.d.ts'), "declare module 'node:fs/promises' { export function writeFile(file: string, data: Uint8Array): Promise<void>; }\n");
    const options = { strict: true, noUncheckedIndexedAccess: true, target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', outDir: 'out', types: [] };
    const tsc = async (extra: object) => {
      await writeFile(path.join(ts, 'tsconfig.json'), JSON.stringify({ compilerOptions: { ...options, ...extra }, include: ['example.mts', 'node-fs.d.ts'] }));
      return run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: ts, env }).then(
        (r) => r.stdout,
        (e: { stdout: string }) => e.stdout,
      );
    };
    // With every declaration file checked, the only errors may come from the engine's own
    // declarations (@jax-js/jax 0.1.25 names WebGPU and Float16Array types a plain project lacks).
    const everything = await tsc({ skipLibCheck: false });
    const ours = everything.split('\n').filter((l) => /error TS/.test(l) && !l.includes('node_modules/@jax-js/'));
    assert.deepEqual(ours, [], `errors outside @jax-js/jax's declarations:\n${everything}`);
    assert.equal(await tsc({ skipLibCheck: true }), '', 'strict compile');
    assert.deepEqual(await readdir(path.join(ts, 'out')), ['example.mjs']);
    await check(ts, await run(process.execPath, ['out/example.mjs'], { cwd: ts, env, maxBuffer: 1 << 24 }));

    // The CLI from the built files.
    const bin = path.join(project, 'node_modules/.bin/starflow');
    const version = await run(bin, ['--version'], { cwd: project, env });
    assert.equal(version.stdout.trim(), `starflow-ts ${JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')).version}`);
    const sample = await run(bin, ['sample', '--n', '2', '--out', 'two.png', '--threads', '1'], { cwd: project, env });
    assert.match(sample.stdout + sample.stderr, /wrote 2 samples to two\.png/);
    assert.ok(await exists(path.join(project, 'two.png')));
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
