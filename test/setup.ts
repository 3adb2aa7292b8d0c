// Starts the engine once per test file. STARFLOW_THREADS (set to 1 by `npm test`: tests are small
// and thread hand-offs would cost more than they save) is read when the shims load, first.
import '../src/engine/node-shims.js';
import { startNodeEngine } from '../src/engine/node.js';

export const device = await startNodeEngine();
