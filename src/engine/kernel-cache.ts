// jax-js 0.1.25 prepares every kernel of a jitted program again on each call: it hashes the
// kernel's whole expression with BigInt arithmetic to look up the compiled module. In batch-1
// sampling, where kernels are tiny, that hashing was ~20% of the time. A compiled program holds
// the same kernel objects on every call, so one prepared executable per kernel object serves all.

export type PrepareFns = { prepareKernel(k: object): Promise<unknown>; prepareKernelSync(k: object): unknown };
const patched = new WeakSet<object>();

export function installKernelCache(backend: PrepareFns & object): boolean {
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
