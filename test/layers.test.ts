// The direction data flows in (data → model → train / sampling → eval → cli), checked on every
// import in src/: models know only the engine and the layers; io, eval and sampling never reach
// into training; nothing outside the CLI imports it; the browser core imports nothing Node-only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = path.join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Modules a file imports or re-exports, as paths relative to src/ or bare names: static ones, or also dynamic `import('…')`s. */
function importsOf(file: string, dynamic: boolean): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'|(?:^|\n)import\s+'([^']+)'/g)].map((m) => m[1] ?? m[2]!);
  if (dynamic) specs.push(...[...text.matchAll(/import\(\s*'([^']+)'\s*\)/g)].map((m) => m[1]!));
  return specs.map((s) => (s.startsWith('.') ? path.relative(SRC, path.resolve(path.dirname(file), s)).replace(/\.js$/, '.ts') : s));
}

const all = files(SRC).map((f) => ({ file: path.relative(SRC, f), imports: importsOf(f, true), staticImports: importsOf(f, false) }));
const layer = (p: string) => p.split(path.sep)[0]!;

test('the import scan sees the imports (it would catch a violation)', () => {
  const trainer = all.find((f) => f.file === path.join('train', 'trainer.ts'))!;
  assert.ok(trainer.imports.includes(path.join('eval', 'likelihood.ts')), JSON.stringify(trainer.imports));
  assert.ok(all.length > 40);
});

test('src/models imports only engine/, nn/ and models/', () => {
  for (const f of all.filter((f) => layer(f.file) === 'models')) {
    for (const i of f.imports) assert.ok(['engine', 'nn', 'models'].includes(layer(i)), `${f.file} imports ${i}`);
  }
});

test('nothing under src/io, src/eval or src/sampling imports src/train', () => {
  for (const f of all.filter((f) => ['io', 'eval', 'sampling'].includes(layer(f.file)))) {
    for (const i of f.imports) assert.notEqual(layer(i), 'train', `${f.file} imports ${i}`);
  }
});

test('nothing outside src/cli imports src/cli', () => {
  for (const f of all.filter((f) => layer(f.file) !== 'cli')) {
    for (const i of f.imports) assert.notEqual(layer(i), 'cli', `${f.file} imports ${i}`);
  }
});

// Dynamic imports are allowed: Node-only helpers (e.g. writing a PNG file) load them when called.
test('the browser core (src/core.ts and what it statically reaches) imports nothing from node:', () => {
  const byFile = new Map(all.map((f) => [f.file, f.staticImports]));
  const seen = new Set<string>();
  const visit = (file: string, via: string[]) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const i of byFile.get(file) ?? []) {
      assert.ok(!i.startsWith('node:'), `${[...via, file].join(' → ')} imports ${i}`);
      if (byFile.has(i)) visit(i, [...via, file]);
    }
  };
  visit('core.ts', []);
  assert.ok(seen.size > 10);
});
