import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import '../setup.js';
import { starflow } from '../cli.js';

test('starflow --version prints the package version', async () => {
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  const r = await starflow(['--version']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), `starflow-ts ${version}`);
});

test('starflow --help lists every command with its summary in one column', async () => {
  const r = await starflow(['--help']);
  assert.equal(r.code, 0);
  const lines = r.stdout.split('\n').filter((l) => /^ {2}[a-z-]+ {2,}\S/.test(l));
  assert.ok(lines.length >= 10, r.stdout);
  const columns = new Set(lines.map((l) => l.indexOf(l.trim().split(/ {2,}/)[1]!)));
  assert.equal(columns.size, 1, `summaries start at columns ${[...columns]}`);
});
