// jax-js 0.1.25's wasm allocator grows its memory by exactly what each new buffer needs: a
// training step of the notebook config (16 layers, batch 64) grew it 2,230 times on its first
// call. Each grow of a shared memory makes V8 account the whole memory again as external memory
// and run a full garbage collection: on the calling thread, most of a ~100 s first call. Grown by
// at least half its size instead, the memory grew 26 times and the first call took 25 s. The
// allocator reads the memory's size after each grow, so extra pages are simply used later;
// untouched pages cost no physical memory.
//
// jax-js creates its memory while its module is evaluated, so this module is imported before it
// (first in src/engine/index.ts): it wraps the WebAssembly.Memory constructor until the first
// memory shaped like jax-js's (initial size 0) is made, patches that memory's grow, and unwraps.
const MAX_PAGES = 65536; // 4 GiB, the memory32 limit jax-js declares
const PAGE = 65536;

export function growGeometrically(memory: WebAssembly.Memory): void {
  const grow = memory.grow.bind(memory);
  memory.grow = (delta: number): number => {
    const pages = memory.buffer.byteLength / PAGE;
    const step = Math.max(delta, Math.min(Math.ceil(pages / 2), MAX_PAGES - pages));
    try {
      return grow(step);
    } catch {
      return grow(delta); // the larger step did not fit: exactly what was asked
    }
  };
}

function patchNextEngineMemory(): void {
  const wasm = globalThis.WebAssembly as (typeof WebAssembly & { __starflowGrowth?: true }) | undefined;
  if (!wasm || wasm.__starflowGrowth) return;
  wasm.__starflowGrowth = true;
  const Original = wasm.Memory;
  const Wrapped = function (descriptor: WebAssembly.MemoryDescriptor) {
    const memory = new Original(descriptor);
    if (descriptor.initial === 0) {
      growGeometrically(memory);
      wasm.Memory = Original;
    }
    return memory;
  } as unknown as typeof WebAssembly.Memory;
  Wrapped.prototype = Original.prototype;
  wasm.Memory = Wrapped;
}

patchNextEngineMemory();
