// jax-js 0.1.25 prepares every kernel of a jitted program again on each call: it hashes the
// kernel's whole expression with BigInt arithmetic to look up the compiled module. In batch-1
// sampling, where kernels are tiny, that hashing was ~20% of the time. A compiled program holds
// the same kernel objects on every call, so one prepared executable per kernel object serves all.
//
// The backend is reached through the pinned build's internal chunk (its `getBackend` export).
// Anything unexpected (another build, a bundler that cannot resolve the chunk) leaves jax-js as
// it is: this is a speed-up, never a requirement.
const CHUNK = './backend-CnjgxpXq.js';
const GET_BACKEND_EXPORT = 's';

type PrepareFns = { prepareKernel(k: object): Promise<unknown>; prepareKernelSync(k: object): unknown };
const patched = new WeakSet<object>();

export async function installKernelCache(device: string): Promise<boolean> {
  let backend: (PrepareFns & object) | undefined;
  try {
    const chunk = (await import(/* @vite-ignore */ new URL(CHUNK, import.meta.resolve('@jax-js/jax')).href)) as Record<string, unknown>;
    const getBackend = chunk[GET_BACKEND_EXPORT];
    if (typeof getBackend !== 'function') return false;
    backend = getBackend(device) as PrepareFns & object;
  } catch {
    return false;
  }
  if (!backend || typeof backend.prepareKernel !== 'function' || typeof backend.prepareKernelSync !== 'function') return false;
  if (patched.has(backend)) return true;
  const asyncCache = new WeakMap<object, Promise<unknown>>();
  const syncCache = new WeakMap<object, unknown>();
  const prepareKernel = backend.prepareKernel.bind(backend);
  const prepareKernelSync = backend.prepareKernelSync.bind(backend);
  backend.prepareKernel = (kernel: object) => {
    let p = asyncCache.get(kernel);
    if (!p) asyncCache.set(kernel, (p = prepareKernel(kernel)));
    return p;
  };
  backend.prepareKernelSync = (kernel: object) => {
    let e = syncCache.get(kernel);
    if (e === undefined) syncCache.set(kernel, (e = prepareKernelSync(kernel)));
    return e;
  };
  patched.add(backend);
  return true;
}
