/**
 * A worker thread for the transport load tests and benchmarks (test/unit/transport-load.test.ts,
 * bench/transport.ts). workerData.mode:
 *   "senders": opens `endpoints` endpoints (each its own socket), each connects to `target` and
 *     makes `requests` sequential calls of type 2 with `bytes`-byte requests (lent with
 *     `lent: true`, as the multicast driver sends large blocks); posts
 *     {kind: 'done', completed, failed, bytes, elapsedMs, retransmissions, packetsSent,
 *     kernelDrops, rateMin} once all finished;
 *   "server": one endpoint that echoes type 1 and answers type 2 with 8 bytes; posts {address};
 *   "rate": one endpoint, connects to `target`, keeps 64 32-byte calls in flight for `seconds`
 *     after a 300 ms warm-up; posts {kind: 'done', calls, elapsedMs}.
 * Every mode posts {kind: 'ready'} (with `address` for "server") first; "start" begins the
 * work (so several workers start together); "close" closes the endpoints.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Endpoint } from '../../src/transport/native-transport.js';

const port = parentPort!;
const options = (workerData.options ?? {}) as object;
const endpoints: Endpoint[] = [];
let started: () => void = () => {};
const start = new Promise<void>((resolve) => (started = resolve));

port.on('message', async (message: { kind: string }) => {
  if (message.kind === 'start') started();
  if (message.kind === 'close') {
    const stats = endpoints.map((e) => e.stats());
    await Promise.all(endpoints.map((e) => e.close()));
    port.postMessage({ kind: 'closed', stats });
    port.close();
  }
});

if (workerData.mode === 'server') {
  const endpoint = await Endpoint.create({ sessionsMax: 30_000, ...options });
  endpoints.push(endpoint);
  const ack = Buffer.alloc(8, 1);
  endpoint.handle(1, (bytes) => bytes);
  endpoint.handle(2, () => ack);
  port.postMessage({ kind: 'ready', address: endpoint.address });
}

if (workerData.mode === 'senders') {
  const count = workerData.endpoints as number;
  for (let i = 0; i < count; i++) endpoints.push(await Endpoint.create(options));
  const sessions = await Promise.all(endpoints.map((e) => e.connect(workerData.target)));
  port.postMessage({ kind: 'ready' });
  await start;
  const request = Buffer.alloc(workerData.bytes as number, 7);
  const noHead = Buffer.alloc(0);
  let completed = 0;
  let failed = 0;
  let rateMin = Infinity;
  const began = performance.now();
  await Promise.all(
    sessions.map(async (session) => {
      for (let r = 0; r < (workerData.requests as number); r++) {
        try {
          // `lent`: the request body is lent (callLent: sent from the buffer, no copies in user space).
          const answer = workerData.lent ? await session.callLent(2, noHead, request) : await session.call(2, request);
          if (answer.byteLength === 8) completed++;
          else failed++;
        } catch {
          failed++;
        }
        rateMin = Math.min(rateMin, session.congestion().rateBytesPerSecond);
      }
    }),
  );
  const elapsedMs = performance.now() - began;
  const sum = (key: string): number => endpoints.reduce((a, e) => a + (e.stats()[key] ?? 0), 0);
  port.postMessage({
    kind: 'done',
    completed,
    failed,
    bytes: completed * (workerData.bytes as number),
    elapsedMs,
    retransmissions: sum('retransmissions'),
    packetsSent: sum('packetsSent'),
    kernelDrops: sum('udpKernelDrops'),
    rateMin,
  });
}

if (workerData.mode === 'rate') {
  const endpoint = await Endpoint.create(options);
  endpoints.push(endpoint);
  const session = await endpoint.connect(workerData.target);
  port.postMessage({ kind: 'ready' });
  await start;
  const payload = Buffer.alloc(32, 1);
  const lanes = async (ms: number, count: { calls: number }): Promise<void> => {
    const end = performance.now() + ms;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (performance.now() < end) {
          await session.call(1, payload);
          count.calls++;
        }
      }),
    );
  };
  await lanes(300, { calls: 0 });
  const counted = { calls: 0 };
  const began = performance.now();
  await lanes((workerData.seconds as number) * 1000, counted);
  port.postMessage({ kind: 'done', calls: counted.calls, elapsedMs: performance.now() - began });
}
