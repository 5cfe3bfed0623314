// ICMP "port unreachable" through the addon (src/transport/README.md, "Failure"): a peer whose
// endpoint vanished (its thread killed: the socket closes, the host stays up) fails the session
// with signal 'port-unreachable' while the silence timeout is still far away; an endpoint
// whose datagrams bounce keeps receiving (the libuv poll must not stop on the socket's error),
// and a session connecting to a port bound only later still connects.
import test from 'ava';
import { createSocket } from 'node:dgram';
import { Worker } from 'node:worker_threads';
import { Endpoint } from '../../src/transport/native-transport.js';
import { PeerFailedError } from '../../src/transport/errors.js';
import type { SessionEvent } from '../../src/transport/transport.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A UDP port on 127.0.0.1 that was free a moment ago (bound, then released). */
async function freePort(): Promise<number> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const { port } = socket.address();
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return port;
}

test.serial('a vanished peer fails its session by port unreachable, not by the 30 s silence timeout', async (t) => {
  const peerFailureTimeoutMs = 30_000;
  const worker = new Worker(new URL('../support/transport-worker.js', import.meta.url), {
    workerData: { mode: 'server' },
  });
  const address = await new Promise<string>((resolve) => worker.once('message', (m) => resolve(m.address)));
  const client = await Endpoint.create({ peerFailureTimeoutMs });
  try {
    const session = await client.connect(address);
    t.is(Buffer.from(await session.call(1, Buffer.from('x'))).toString(), 'w:x');
    const ended = new Promise<SessionEvent>((resolve) => session.onEvent(resolve));
    // Type 2 never answers: the call stays in flight, and its retransmission probes are what
    // bounce off the closed port once the peer is gone.
    const pending = session.call(2, Buffer.from('never answered'));
    const killedAt = performance.now();
    await worker.terminate(); // the endpoint dies with its thread, without a word
    const [result] = await Promise.allSettled([pending]);
    const event = await ended;
    const elapsedMs = performance.now() - killedAt;
    t.deepEqual(event.kind === 'peer-failed' ? event.signal : event.kind, 'port-unreachable');
    t.true(result.status === 'rejected' && result.reason instanceof PeerFailedError && result.reason.signal === 'port-unreachable',
      result.status === 'rejected' ? String(result.reason) : 'resolved');
    // Generous for a loaded machine; the timeout path could not be this fast.
    t.true(elapsedMs < peerFailureTimeoutMs / 2, `failed after ${elapsedMs.toFixed(0)} ms`);
    const stats = client.stats();
    t.true(stats['udpPortUnreachable']! >= 2, JSON.stringify(stats['udpPortUnreachable']));
    t.is(stats['peerFailuresUnreachable'], 1);
    t.is(stats['peerFailures'], 1);
    t.log(`kill → peer-failed: ${elapsedMs.toFixed(1)} ms (timeout ${peerFailureTimeoutMs} ms)`);
  } finally {
    await client.close();
  }
});

test.serial('bouncing datagrams do not stop the endpoint; a connect to a port bound later succeeds', async (t) => {
  const port = await freePort();
  const a = await Endpoint.create({ connectRetryMs: 5, connectTimeoutMs: 30_000 });
  const b = await Endpoint.create({});
  b.handle(1, (bytes) => bytes);
  let c: Endpoint | undefined;
  try {
    const toB = await a.connect(b.address);
    // A session to nobody: its connect requests bounce every 5 ms.
    const toC = a.connect(`127.0.0.1:${port}`);
    let settled = false;
    void toC.finally(() => { settled = true; });
    // Calls to B keep being answered while the reports arrive.
    for (let i = 0; i < 50; i++) {
      t.is(Buffer.from(await toB.call(1, Buffer.from(`n${i}`))).toString(), `n${i}`);
      await sleep(2);
    }
    const before = a.stats();
    t.true(before['udpPortUnreachable']! >= 5, `${before['udpPortUnreachable']} reports`);
    t.true(before['unreachableUnmatched']! >= 5, 'reports about a connecting session are not acted on');
    t.is(before['udpPollRestarts'], 0, 'the libuv poll never stopped on the socket error');
    t.false(settled, 'the connect is still pending, not failed');
    // The peer starts and binds the port: the pending connect completes.
    c = await Endpoint.create({ port });
    c.handle(1, (bytes) => Buffer.concat([Buffer.from('c:'), bytes]));
    const session = await toC;
    t.is(Buffer.from(await session.call(1, Buffer.from('late'))).toString(), 'c:late');
    t.is(a.stats()['peerFailures'], 0);
  } finally {
    await a.close();
    await b.close();
    await c?.close();
  }
});
