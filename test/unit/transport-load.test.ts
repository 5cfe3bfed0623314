// The transport under load over real UDP: a 50-way incast from worker threads (every request
// completes exactly once, retransmissions and kernel drops bounded), endpoints serving in
// parallel in worker threads, per-session rate/RTT and memory in the stats, and the [transport]
// config section reaching the endpoint.
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { Endpoint } from '../../src/transport/native-transport.js';
import type { TransportError } from '../../src/transport/errors.js';
import { endpointOptionsFromConfig } from '../../src/transport/config-options.js';
import { TransportSection } from '../../src/config/schema.js';
import { stopWorker, workerMessage } from '../support/worker-messages.js';

const workerUrl = new URL('../support/transport-load-worker.js', import.meta.url);

interface SendersDone {
  completed: number;
  failed: number;
  retransmissions: number;
  packetsSent: number;
  kernelDrops: number;
}

test.serial('50-way incast of 1 MiB requests from worker threads completes every request exactly once', async (t) => {
  const server = await Endpoint.create({ sessionsMax: 256 });
  let handled = 0;
  const ack = Buffer.alloc(8, 1);
  server.handle(2, (bytes) => {
    handled++;
    t.is(bytes.byteLength, 1 << 20);
    return ack;
  });
  const workers = Array.from(
    { length: 5 },
    () =>
      new Worker(workerUrl, {
        workerData: { mode: 'senders', target: server.address, endpoints: 10, requests: 2, bytes: 1 << 20 },
      }),
  );
  try {
    await Promise.all(workers.map((w) => workerMessage(w, 'ready')));
    const done = workers.map((w) => workerMessage<SendersDone>(w, 'done'));
    for (const w of workers) w.postMessage({ kind: 'start' });
    const results = await Promise.all(done);
    const total = (key: keyof SendersDone): number => results.reduce((a, r) => a + r[key], 0);
    t.is(total('completed'), 100);
    t.is(total('failed'), 0);
    t.is(handled, 100, 'every request ran exactly once');
    t.is(server.stats().sessionsServer, 50);
    // Bounded: the first windows (50 MiB at once) queue at the server for longer than the
    // initial RTO, so some sessions roll back once or twice before their first RTT sample;
    // measured 140-175 rollbacks for these 100 requests on an idle machine.
    t.true(total('retransmissions') <= 500, `retransmissions ${total('retransmissions')}`);
    const drops = server.stats().udpKernelDrops!;
    t.true(drops <= total('packetsSent') / 100, `kernel drops ${drops} of ${total('packetsSent')} packets`);
  } finally {
    await Promise.all(workers.map((w) => stopWorker(w)));
    await server.close();
  }
});

test.serial('endpoints in two worker threads serve in parallel, each on its own socket', async (t) => {
  const servers = Array.from({ length: 2 }, () => new Worker(workerUrl, { workerData: { mode: 'server' } }));
  const addresses = await Promise.all(servers.map((w) => workerMessage<{ address: string }>(w, 'ready')));
  t.not(addresses[0]!.address, addresses[1]!.address);
  const clients = addresses.map(
    (a) => new Worker(workerUrl, { workerData: { mode: 'rate', target: a.address, seconds: 0.3 } }),
  );
  try {
    await Promise.all(clients.map((w) => workerMessage(w, 'ready')));
    const done = clients.map((w) => workerMessage<{ calls: number }>(w, 'done'));
    for (const w of clients) w.postMessage({ kind: 'start' });
    const results = await Promise.all(done);
    for (const r of results) t.true(r.calls > 100, `calls ${r.calls}`);
  } finally {
    await Promise.all(clients.map((w) => stopWorker(w)));
    const closed = await Promise.all(servers.map((w) => stopWorker<{ stats: Record<string, number>[] }>(w)));
    for (const c of closed) t.true(c.stats[0]!.handlersRun! > 100);
  }
});

test.serial('sessions publish rate, RTT and RTO; the endpoint publishes bytes per session and socket buffers', async (t) => {
  const options = endpointOptionsFromConfig(new TransportSection(), { host: '127.0.0.1', port: 0 });
  const server = await Endpoint.create(options);
  const client = await Endpoint.create({ ...options, socketReceiveBufferBytes: 1 << 20 });
  try {
    server.handle(1, (bytes) => bytes);
    const session = await client.connect(server.address);
    for (let i = 0; i < 20; i++) await session.call(1, Buffer.alloc(200_000, i));
    const info = session.congestion();
    t.true(info.rateBytesPerSecond > 0 && info.rateBytesPerSecond <= 5e9, JSON.stringify(info));
    t.true(info.srttUs > 0 && info.minRttUs > 0 && info.lastRttUs > 0, JSON.stringify(info));
    t.true(info.rtoUs >= 5000 && info.rtoUs <= 500_000, `rto ${info.rtoUs}`);
    // Derived thresholds: base RTT = the larger of the path's (handshake, at most 250 µs) and the
    // session's own window drain time (32 credits x 65,000-byte packets at 1 ns/byte = 2,080 µs);
    // t_low = 4 x base, t_high = 10 x t_low.
    t.is(info.tLowUs, 8320);
    t.is(info.tHighUs, 83_200);
    const stats = client.stats();
    t.true(stats.rttSamples! > 20, `rtt samples ${stats.rttSamples}`);
    t.true(stats['cc.bypassedSends']! > 0, `bypassed sends ${stats['cc.bypassedSends']}`);
    t.true(stats.bytesPerSession! > 100 && stats.bytesPerSession! < 8192, `bytes/session ${stats.bytesPerSession}`);
    // Linux reports twice the size asked for (bookkeeping overhead included).
    t.is(stats.udpReceiveBufferBytes, 2 << 20);
    t.is(server.stats().udpReceiveBufferBytes, 2 * 128 * 1024 * 1024);
    t.is(stats.udpKernelDrops, 0);
  } finally {
    await client.close();
    await server.close();
  }
});

test.serial('congestion settings are checked at open', async (t) => {
  const both = await t.throwsAsync(() => Endpoint.create({ ccTLowUs: 100 }), { message: /set both congestion thresholds/ });
  t.is((both as TransportError).code, 'BAD_OPTIONS');
  t.regex(both!.message, /Fix: correct that endpoint option/);
  await t.throwsAsync(() => Endpoint.create({ retransmitTimeoutMinMs: 20 }), { message: /retransmit_timeout_min_us/ });
});
