// jax-js 0.1.25's internal chunk, reached for the engine's speed-ups (kernel cache, native route).
// The chunk name and its minified export names belong to the pinned build: each is checked here,
// and anything unexpected (another build, a bundler that cannot resolve the chunk) returns null so
// that jax-js runs as it is. These are speed-ups, never requirements.
const CHUNK = './backend-CnjgxpXq.js';
const EXPORTS = { getBackend: 's', Kernel: 'O', AluExp: 'w', AluVar: 'E', unravelAlu: 'b', deepEqual: 'U', FpHash: 'R', Executable: 't' } as const;

/* eslint-disable @typescript-eslint/no-explicit-any -- minified internals, shapes checked below */
export type JaxInternals = {
  getBackend(device: string): any;
  Kernel: new (nargs: number, size: number, exp: any, reduction?: any) => any;
  AluExp: { globalIndex(dtype: string, gid: number, len: number, bufidx: any): any };
  AluVar: { gidx: any; ridx: any };
  unravelAlu(shape: number[], offset: any): any[];
  deepEqual(a: unknown, b: unknown): boolean;
  FpHash: { prototype: { value: bigint; update(x: unknown): unknown }; hash(...values: unknown[]): bigint };
  Executable: new (source: unknown, data: unknown) => any;
};
/* eslint-enable @typescript-eslint/no-explicit-any */

let loaded: Promise<JaxInternals | null> | undefined;

export function jaxInternals(): Promise<JaxInternals | null> {
  loaded ??= (async () => {
    try {
      const chunk = (await import(/* @vite-ignore */ new URL(CHUNK, import.meta.resolve('@jax-js/jax')).href)) as Record<string, unknown>;
      const found = Object.fromEntries(Object.entries(EXPORTS).map(([name, key]) => [name, chunk[key]]));
      const ok =
        typeof found.getBackend === 'function' &&
        typeof found.Kernel === 'function' && found.Kernel.name === 'Kernel' &&
        typeof found.AluExp === 'function' && found.AluExp.name === 'AluExp' &&
        typeof (found.AluExp as { globalIndex?: unknown }).globalIndex === 'function' &&
        typeof found.AluVar === 'object' && found.AluVar !== null && 'gidx' in found.AluVar && 'ridx' in found.AluVar &&
        typeof found.unravelAlu === 'function' && typeof found.deepEqual === 'function' &&
        typeof found.FpHash === 'function' && found.FpHash.name === 'FpHash' && typeof (found.FpHash as { hash?: unknown }).hash === 'function' &&
        typeof found.Executable === 'function' && found.Executable.name === 'Executable';
      return ok ? (found as unknown as JaxInternals) : null;
    } catch {
      return null;
    }
  })();
  return loaded;
}
