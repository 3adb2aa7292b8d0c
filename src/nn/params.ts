// Parameter trees ↔ flat dotted names ("blocks.0.layers.1.attn.qkv.w"), the form checkpoints use.
import { np, fromF32, toF32, release, type Arr, type HostTensor } from '../engine/index.js';

export type { HostTensor };

function isArr(x: unknown): x is Arr {
  return x instanceof np.Array;
}


export type Tree<T> = T | Tree<T>[] | { [key: string]: Tree<T> };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Flattens a tree of plain objects and arrays to dotted names (`blocks.0.attn.qkv.weight`);
 * array indices become numeric parts. Empty objects and arrays contribute no names.
 */
export function flattenTree<T>(tree: unknown, isLeaf: (v: unknown) => v is T): Map<string, T> {
  const out = new Map<string, T>();
  const walk = (node: unknown, path: string): void => {
    if (isLeaf(node)) {
      if (path === '') throw new TypeError('flattenTree: the root is a leaf, so it has no name');
      out.set(path, node);
    } else if (Array.isArray(node) || isPlainObject(node)) {
      for (const [k, v] of Object.entries(node)) {
        if (k === '' || k.includes('.')) throw new TypeError(`flattenTree: key ${JSON.stringify(k)} at '${path}' cannot be a dotted name part`);
        walk(v, path ? `${path}.${k}` : k);
      }
    } else {
      throw new TypeError(`flattenTree: '${path}' is neither a leaf nor an object or array`);
    }
  };
  walk(tree, '');
  return out;
}

/**
 * Inverse of flattenTree: a node whose keys are exactly 0..n-1 becomes an array.
 * Throws if a name is both a leaf and a prefix of another name.
 */
export function unflattenTree<T>(flat: Map<string, T>): { [key: string]: Tree<T> } | Tree<T>[] {
  const LEAF = Symbol('leaf');
  type Node = { [LEAF]?: T; children: Map<string, Node> };
  const root: Node = { children: new Map() };
  for (const [name, value] of flat) {
    let node = root;
    for (const part of name.split('.')) {
      if (LEAF in node) throw new TypeError(`unflattenTree: '${name}' extends a name that is already a leaf`);
      let child = node.children.get(part);
      if (!child) node.children.set(part, (child = { children: new Map() }));
      node = child;
    }
    if (LEAF in node || node.children.size > 0) throw new TypeError(`unflattenTree: '${name}' is both a leaf and a prefix`);
    node[LEAF] = value;
  }
  const build = (node: Node): Tree<T> => {
    if (LEAF in node) return node[LEAF] as T;
    const keys = [...node.children.keys()];
    if (keys.length > 0 && keys.every((k) => /^(0|[1-9]\d*)$/.test(k)) && keys.every((_, i) => node.children.has(String(i)))) {
      return keys.map((_, i) => build(node.children.get(String(i))!));
    }
    return Object.fromEntries(keys.map((k) => [k, build(node.children.get(k)!)]));
  };
  return build(root) as { [key: string]: Tree<T> } | Tree<T>[];
}

/** Leaves of a parameter tree under their dotted names, in a stable order. */
export function namedLeaves(t: Tree<Arr>): [string, Arr][] {
  return [...flattenTree(t, isArr)];
}

/** Copies parameters to the host (the tree stays usable). */
export async function paramsToHost(t: Tree<Arr>): Promise<Map<string, HostTensor>> {
  const out = new Map<string, HostTensor>();
  for (const [name, a] of namedLeaves(t)) out.set(name, { shape: [...a.shape], data: await toF32(a.ref) });
  return out;
}

/** Parameters on the device from host tensors. */
export function paramsFromHost<P>(named: Map<string, HostTensor>): P {
  return unflattenTree(new Map([...named].map(([k, t]) => [k, fromF32(t.data, t.shape)] as [string, Arr]))) as P;
}

/** Shapes by name, for validating a checkpoint against a config before loading it. */
export function paramShapes(t: Tree<Arr>): Map<string, number[]> {
  return new Map(namedLeaves(t).map(([k, a]) => [k, [...a.shape]]));
}

/** Shapes by name of the tree `make` builds (built once and released). */
export function shapesOf(make: () => Tree<Arr>): Map<string, number[]> {
  const t = make();
  const shapes = paramShapes(t);
  release(t as never);
  return shapes;
}
