// jax-js 0.1.25 creates a new WebAssembly.Instance for every kernel it runs on the calling thread
// (its worker threads cache them). At batch 1 that is most of a sampling step: ~50 kernels per
// token, each a fresh instance. Kernels are pure functions of their pointer arguments, so one
// instance per (module, memory) serves every call. Only modules shaped like jax-js kernels (one
// export, `kernel`, and a sole `env.memory` import) are cached; everything else is untouched.
//
// The same constructor is where routed modules (src/engine/native-route.ts) are swapped for a
// JavaScript function over the same memory.
type Imports = Record<string, Record<string, unknown>> | undefined;
type KernelFn = (...args: number[]) => void;
type RouteFactory = (memory: WebAssembly.Memory, instantiate: (m: WebAssembly.Module) => WebAssembly.Instance) => KernelFn;

const routes = new WeakMap<WebAssembly.Module, RouteFactory>();

/** Runs `module`'s kernel as the function `factory` makes for a memory, instead of its own code. */
export function routeModule(module: WebAssembly.Module, factory: RouteFactory): void {
  if (!routes.has(module)) routes.set(module, factory);
}

export function installInstanceCache(): void {
  const wasm = globalThis.WebAssembly as typeof WebAssembly & { __starflowCache?: true };
  if (!wasm || wasm.__starflowCache) return;
  const Original = wasm.Instance;
  const kernelModules = new WeakMap<WebAssembly.Module, boolean>();
  const cache = new WeakMap<WebAssembly.Module, WeakMap<object, WebAssembly.Instance>>();

  const isKernel = (module: WebAssembly.Module): boolean => {
    let known = kernelModules.get(module);
    if (known === undefined) {
      const exports = WebAssembly.Module.exports(module);
      const imports = WebAssembly.Module.imports(module);
      known =
        exports.length === 1 && exports[0]!.name === 'kernel' && imports.length === 1 &&
        imports[0]!.module === 'env' && imports[0]!.name === 'memory';
      kernelModules.set(module, known);
    }
    return known;
  };

  const Cached = function (this: unknown, module: WebAssembly.Module, imports?: Imports): WebAssembly.Instance {
    const memory = imports?.env?.memory;
    if (!(memory instanceof WebAssembly.Memory) || !isKernel(module)) return new Original(module, imports as WebAssembly.Imports);
    let byMemory = cache.get(module);
    if (!byMemory) cache.set(module, (byMemory = new WeakMap()));
    let instance = byMemory.get(memory);
    if (!instance) {
      const route = routes.get(module);
      instance = route
        ? ({ exports: { kernel: route(memory, (m) => new Cached(m, imports as WebAssembly.Imports)) } } as unknown as WebAssembly.Instance)
        : new Original(module, imports as WebAssembly.Imports);
      byMemory.set(memory, instance);
    }
    return instance;
  } as unknown as typeof WebAssembly.Instance;
  Cached.prototype = Original.prototype;
  wasm.Instance = Cached;
  wasm.__starflowCache = true;
}
