/**
 * A worker thread that owns its own transport endpoint (one endpoint per thread is how a
 * process uses more cores). Modes, chosen by workerData.mode:
 *   "server": echo on type 1, never answers type 2 (for failure tests), counts handler runs;
 *   "client": connects to workerData.target and calls type 1 `workerData.calls` times;
 *   "flood": connects to workerData.target and keeps 64 calls in flight until terminated.
 * It posts {address} once ready, then {done, ...} results; "close" closes the endpoint.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Endpoint } from '../../src/transport/native-transport.js';

const port = parentPort!;
const endpoint = await Endpoint.create({
  peerFailureTimeoutMs: workerData.peerFailureTimeoutMs ?? 2000,
});
let handled = 0;
endpoint.handle(1, (bytes) => {
  handled++;
  return Buffer.concat([Buffer.from('w:'), bytes]);
});
endpoint.handle(2, () => new Promise<Uint8Array>(() => {}));
port.on('message', async (message: { kind: string }) => {
  if (message.kind === 'close') {
    await endpoint.close();
    port.postMessage({ kind: 'closed', handled });
    port.close();
  }
});
port.postMessage({ kind: 'address', address: endpoint.address });

if (workerData.mode === 'client') {
  const session = await endpoint.connect(workerData.target);
  const replies: string[] = [];
  const calls = workerData.calls as number;
  const results = await Promise.all(
    Array.from({ length: calls }, (_, i) => session.call(1, Buffer.from(`from-worker-${i}`))),
  );
  for (const r of results) replies.push(Buffer.from(r).toString());
  port.postMessage({ kind: 'done', replies });
}

if (workerData.mode === 'flood') {
  const session = await endpoint.connect(workerData.target);
  port.postMessage({ kind: 'flooding' });
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      for (;;) await session.call(1, Buffer.alloc(100));
    }),
  );
}
