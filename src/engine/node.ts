// Node entry to the engine. Importing this module installs the Web API shims first (see
// node-shims.ts), then the engine starts on the device from the argument, STARFLOW_DEVICE or auto.
import { engineThreads, native } from './node-shims.js'; // first: jax-js builds its backend on load
import { startEngine, parseDevice, type Device } from './index.js';

export { engineThreads };

/** STARFLOW_WASM_PRODUCTS=0 leaves matrix products that the native route does not take to jax-js's generated kernels. */
export async function startNodeEngine(opts: { device?: string } = {}): Promise<Device> {
  const wasmProducts = process.env.STARFLOW_WASM_PRODUCTS !== '0';
  return startEngine(parseDevice(opts.device ?? process.env.STARFLOW_DEVICE ?? 'auto'), native ? { native, wasmProducts } : { wasmProducts });
}
