// Parameter trees ↔ flat dotted names ("blocks.0.layers.1.attn.qkv.w"), the form checkpoints use.
import { np, fromF32, toF32, type Arr } from '../engine/index.js';

export type HostTensor = { shape: number[]; data: Float32Array };
type Tree<T> = T | { [k: string]: Tree<T> } | Tree<T>[];

function isArr(x: unknown): x is Arr {
  return x instanceof np.Array;
}

/** Leaves of a parameter tree under their dotted names, in a stable order. */
export function namedLeaves(t: Tree<Arr>, prefix = ''): [string, Arr][] {
  if (isArr(t)) return [[prefix, t]];
  const entries: [string, Tree<Arr>][] = Array.isArray(t) ? t.map((v, i) => [String(i), v]) : Object.entries(t);
  return entries.flatMap(([k, v]) => namedLeaves(v, prefix ? `${prefix}.${k}` : k));
}

/** Builds a tree from dotted names; numeric name parts become array indices. */
export function treeFromNamed<T>(named: Iterable<[string, T]>): Tree<T> {
  const root: Record<string, unknown> = {};
  for (const [name, value] of named) {
    const parts = name.split('.');
    let node = root;
    parts.slice(0, -1).forEach((p, i) => {
      if (!(p in node)) node[p] = /^\d+$/.test(parts[i + 1]!) ? [] : {};
      node = node[p] as Record<string, unknown>;
    });
    node[parts.at(-1)!] = value;
  }
  return root as Tree<T>;
}

/** Copies parameters to the host (the tree stays usable). */
export async function paramsToHost(t: Tree<Arr>): Promise<Map<string, HostTensor>> {
  const out = new Map<string, HostTensor>();
  for (const [name, a] of namedLeaves(t)) out.set(name, { shape: [...a.shape], data: await toF32(a.ref) });
  return out;
}

/** Parameters on the device from host tensors. */
export function paramsFromHost<P>(named: Map<string, HostTensor>): P {
  return treeFromNamed([...named].map(([k, t]) => [k, fromF32(t.data, t.shape)] as [string, Arr])) as P;
}

/** Shapes by name, for validating a checkpoint against a config before loading it. */
export function paramShapes(t: Tree<Arr>): Map<string, number[]> {
  return new Map(namedLeaves(t).map(([k, a]) => [k, [...a.shape]]));
}
