// Starts the engine once per test file, on the wasm backend with one thread unless the
// environment says otherwise (tests are small: thread hand-offs would cost more than they save).
import { startNodeEngine } from '../src/engine/node.js';

export const device = await startNodeEngine({ threads: Number(process.env.STARFLOW_THREADS ?? 1) });
