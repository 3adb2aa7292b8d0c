// The shared reference fixture: closed-form weights and inputs that ml-tarflow was run on.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { parseFlowConfig as parseModelConfig, type FlowConfig } from '../src/models/flow.js';
import type { HostTensor } from '../src/nn/params.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// Numbers computed by apple/ml-tarflow itself (shared/reference/, copied here so a clone is self-contained).
export const FIXTURE_PATH = path.resolve(here, 'fixtures/tarflow-tiny-fixture.json');

export type FixtureCase = {
  config: Record<string, number | boolean>;
  params: [number, string, number[]][];
  z: number[];
  z_shape: number[];
  block_outputs_sq_mean: number[];
  logdets_per_sample: number[];
  loss: number;
  bpd_per_sample: number[];
  patchify_first_token: number[];
  [k: string]: unknown;
};

export function loadFixture(): { uncond: FixtureCase; cond3: FixtureCase } {
  const d = JSON.parse(readFileSync(FIXTURE_PATH, 'utf8'));
  return { uncond: d.fixture_uncond, cond3: d.fixture_cond3 };
}

/** scale·sin(a·i + b) over the flat index, computed in float64 then rounded to float32. */
export function detTensor(shape: number[], a: number, b: number, scale: number): HostTensor {
  const n = shape.reduce((x, y) => x * y, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = scale * Math.sin(a * i + b);
  return { shape, data };
}

/** The fixture's weights, under the reference's names. */
export function fixtureStateDict(c: FixtureCase): Map<string, HostTensor> {
  const sd = new Map<string, HostTensor>();
  for (const [k, name, shape] of c.params) {
    const n = shape.reduce((x, y) => x * y, 1);
    const data = new Float32Array(n);
    const fanIn = shape[1] ?? 1;
    for (let i = 0; i < n; i++) {
      const s = Math.sin(0.7 * i + 0.3 * k + 0.1);
      let v: number;
      if (name.endsWith('norm.weight')) v = 1 + 0.1 * s;
      else if (name.endsWith('norm.bias')) v = 0.05 * s;
      else if (name.endsWith('.bias')) v = 0.02 * s;
      else if (name.endsWith('pos_embed') || name.endsWith('class_embed')) v = 0.1 * s;
      else if (name.endsWith('proj_out.weight')) v = (0.3 / Math.sqrt(fanIn)) * s;
      else v = (Math.sqrt(3) / Math.sqrt(fanIn)) * s;
      data[i] = v;
    }
    sd.set(name, { shape, data });
  }
  return sd;
}

export function fixtureConfig(c: FixtureCase): FlowConfig {
  const r = c.config;
  return parseModelConfig({
    model: 'tarflow',
    inChannels: r.in_channels,
    imgSize: r.img_size,
    patchSize: r.patch_size,
    width: r.channels,
    numBlocks: r.num_blocks,
    layersPerBlock: r.layers_per_block,
    headDim: 64,
    numClasses: r.num_classes,
    nvp: r.nvp,
  });
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** max |a − b| relative to max |b|: the relative error of a vector whose entries pass near zero. */
export function scaledMaxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  return maxAbsDiff(a, b) / scale;
}

export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!) / Math.max(Math.abs(b[i]!), 1e-3));
  return m;
}
