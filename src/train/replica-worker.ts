// A gradient replica (see replicas.ts): its own engine on one thread, answering one request at a
// time with the loss and gradient on its slice of the batch.
import { startNodeEngine } from '../engine/node.js'; // first: jax-js builds its backend when it loads
import { parentPort, workerData } from 'node:worker_threads';
import { fromF32, toNumber } from '../engine/index.js';
import { makeGradStep } from './step.js';
import { conditionArray, flattenParams, unflattenParams, type ReplicaInit, type ReplicaReply, type ReplicaRequest } from './replicas.js';

const port = parentPort!;
const init = workerData as ReplicaInit;
const send = (m: ReplicaReply, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

try {
  await startNodeEngine({ device: init.device }); // native kernels and products as in the main thread
  await import(init.familySource); // registers the family in this thread (built-ins are registered anyway)
  const gradStep = makeGradStep(init.model);
  port.on('message', (r: ReplicaRequest) => {
    void (async () => {
      const params = unflattenParams(r.params, init.names, init.shapes);
      const { loss, grads } = gradStep(params, fromF32(r.x, r.xShape), conditionArray(r.y, r.xShape[0]!), r.eps && fromF32(r.eps.data, r.eps.shape));
      const flat = await flattenParams(grads, init.names);
      send({ loss: await toNumber(loss), grads: flat }, [flat.buffer as ArrayBuffer]);
    })().catch((e: Error) => send({ error: e.message }));
  });
  send({ ready: true });
} catch (e) {
  send({ error: (e as Error).message });
}
