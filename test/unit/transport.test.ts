// Proves the native transport's public API end to end on loopback: echo at every size boundary
// up to 8 MiB, many concurrent calls and sessions, nested calls, errors by name, batching of
// crossings, and that the addon loads in worker threads.
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { Endpoint, type NativeSession } from '../../src/transport/native-transport.js';
import { PeerFailedError, TransportError } from '../../src/transport/errors.js';
import { PayloadTooLargeError, TimeoutError } from '../../src/core/errors.js';
import { DEFERRED, type DeferredResponse, type RequestContext } from '../../src/transport/transport.js';

function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (seed + i * 31 + (i >> 9)) & 0xff;
  return out;
}

async function pair(options = {}): Promise<{ server: Endpoint; client: Endpoint; session: NativeSession }> {
  const server = await Endpoint.create(options);
  const client = await Endpoint.create(options);
  server.handle(1, (bytes) => bytes);
  const session = await client.connect(server.address);
  return { server, client, session };
}

test('echo at sizes 0, 1, one packet -1/0/+1 byte, 1 MiB and 8 MiB', async (t) => {
  const { server, client, session } = await pair();
  const dataBytesPerPacket = session.dataBytesPerPacket;
  t.true(dataBytesPerPacket > 60_000, 'loopback sessions use ~64 KB datagrams');
  const sizes = [0, 1, dataBytesPerPacket - 1, dataBytesPerPacket, dataBytesPerPacket + 1, 1 << 20, 8 << 20];
  for (const [i, size] of sizes.entries()) {
    const request = pattern(size, i);
    const response = await session.call(1, request);
    t.is(response.byteLength, size, `size ${size}`);
    t.true(Buffer.from(response).equals(request), `bytes of size ${size}`);
  }
  await client.close();
  await server.close();
});

test('1,000 concurrent calls on one session complete in order-independent batches', async (t) => {
  const { server, client, session } = await pair();
  const responses = await Promise.all(
    Array.from({ length: 1000 }, (_, i) => session.call(1, Buffer.from(`call-${i}`))),
  );
  responses.forEach((r, i) => t.is(Buffer.from(r).toString(), `call-${i}`));
  const stats = client.stats();
  t.is(stats.requestsCompleted, 1000);
  // Batching: far fewer crossings than calls, both ways.
  t.true(stats.jsSubmits! < 100, `submits ${stats.jsSubmits}`);
  t.true(stats.jsBatchesDelivered! < 1000, `batches ${stats.jsBatchesDelivered}`);
  await client.close();
  await server.close();
});

test('pending calls are matched by tag past the ring: long calls among many short ones, 5,000 at once', async (t) => {
  // The client keeps pending calls in a ring of 1,024 by tag (PendingCalls): a call still
  // waiting when its slot comes round again moves aside, and many waiting calls grow the ring.
  // Each answer must still reach its own call.
  const { server, client, session } = await pair();
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => { release = resolve; });
  server.handle(2, async (bytes) => {
    await held;
    return bytes;
  });
  const slow = [session.call(2, Buffer.from('slow-a')), session.call(2, Buffer.from('slow-b'))];
  for (let round = 0; round < 3; round++) {  // 3 x 1,000 short calls go by the slow ones' slots
    const fast = await Promise.all(Array.from({ length: 1000 }, (_, i) => session.call(1, Buffer.from(`r${round}-${i}`))));
    fast.forEach((r, i) => t.is(Buffer.from(r).toString(), `r${round}-${i}`));
  }
  const many = Array.from({ length: 5000 }, (_, i) => session.call(1, Buffer.from(`m${i}`)));
  release();
  (await Promise.all(many)).forEach((r, i) => t.is(Buffer.from(r).toString(), `m${i}`));
  t.deepEqual((await Promise.all(slow)).map((r) => Buffer.from(r).toString()), ['slow-a', 'slow-b']);
  await client.close();
  await server.close();
});

test('200 sessions on one endpoint', async (t) => {
  const server = await Endpoint.create({});
  server.handle(1, (bytes, context) => Buffer.from(`${context.sessionId}:${Buffer.from(bytes).toString()}`));
  const client = await Endpoint.create({});
  const sessions = await Promise.all(Array.from({ length: 200 }, () => client.connect(server.address)));
  t.is(server.stats().sessionsServer, 200);
  const replies = await Promise.all(sessions.map((s, i) => s.call(1, Buffer.from(String(i)))));
  const serverSessions = new Set<string>();
  replies.forEach((r, i) => {
    const [sessionId, body] = Buffer.from(r).toString().split(':');
    t.is(body, String(i));
    serverSessions.add(sessionId!);
  });
  t.is(serverSessions.size, 200, 'each call arrived on its own server session');
  await Promise.all(sessions.slice(0, 100).map((s) => s.close()));
  t.is(client.stats().sessionsClient, 100);
  await client.close();
  await server.close();
});

test('a handler can make its own call before it responds (nested RPC)', async (t) => {
  const backend = await Endpoint.create({});
  backend.handle(5, (bytes) => Buffer.from(Buffer.from(bytes).toString().toUpperCase()));
  const middle = await Endpoint.create({});
  const toBackend = await middle.connect(backend.address);
  middle.handle(4, async (bytes, context) => {
    const upper = await toBackend.call(5, bytes);
    return Buffer.from(`${Buffer.from(upper).toString()} via ${context.peer}`);
  });
  const client = await Endpoint.create({});
  const session = await client.connect(middle.address);
  const reply = Buffer.from(await session.call(4, Buffer.from('hello'))).toString();
  t.is(reply, `HELLO via ${client.address}`);
  await Promise.all([client.close(), middle.close(), backend.close()]);
});

test('a deferred response (context.defer) is sent by respond() once, later calls ignored; a handler that deferred and threw answers with its error', async (t) => {
  const { server, client, session } = await pair();
  const open: DeferredResponse[] = [];
  server.handle(2, (bytes, context) => {
    const later = context.defer!()!;
    t.is(context.defer!(), undefined, 'a second defer() is refused');
    open.push(later);
    // Answered from a timer, long after the handler returned: a promise would need its own.
    setTimeout(() => {
      later.respond(Buffer.from(`${Buffer.from(bytes).toString()} later`));
      later.respond(Buffer.from('twice')); // ignored
    }, 5);
    return DEFERRED;
  });
  const replies = await Promise.all([1, 2, 3].map((i) => session.call(2, Buffer.from(`call ${i}`))));
  t.deepEqual(replies.map((r) => Buffer.from(r).toString()), ['call 1 later', 'call 2 later', 'call 3 later']);
  t.is(open.length, 3);
  // The session still answers in order: the ignored second respond() sent nothing.
  t.is(Buffer.from(await session.call(1, Buffer.from('next'))).toString(), 'next');
  server.handle(3, (_bytes, context) => {
    const later = context.defer!()!;
    setTimeout(() => later.respond(Buffer.from('too late')), 1);
    throw new Error('deferred boom');
  });
  const threw = await t.throwsAsync(session.call(3, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(threw!.code, 'HANDLER_FAILED');
  t.regex(threw!.message, /deferred boom/);
  await new Promise((r) => setTimeout(r, 20));
  t.is(Buffer.from(await session.call(1, Buffer.from('after'))).toString(), 'after');
  // A context whose handler has returned can no longer be deferred (a wrapper that held the
  // request, answered it and ran the handler later): defer() says so.
  let kept: RequestContext | undefined;
  server.handle(4, (_bytes, context) => {
    kept = context;
    return Buffer.from('now');
  });
  t.is(Buffer.from(await session.call(4, Buffer.alloc(1))).toString(), 'now');
  t.is(kept!.defer!(), undefined);
  await Promise.all([client.close(), server.close()]);
});

test('callWith: the response or the named error through the two callbacks, once each call; refused at once before it returns', async (t) => {
  const { server, client, session } = await pair({ messageBytesMax: 1 << 16 });
  server.handle(2, () => {
    throw new Error('with boom');
  });
  server.handle(3, () => new Promise<Uint8Array>(() => {}));
  // What happened to one callWith call: 'ok <response>' or '<error class> <code>', and whether
  // its callback ran before callWith returned.
  const call = (type: number, bytes: Uint8Array, timeoutMs?: number): { outcome: Promise<string> } => {
    let returned = false;
    const outcome = new Promise<string>((resolve) => {
      let calls = 0;
      const once = (what: string): void => {
        calls++;
        resolve(calls === 1 ? `${what}${returned ? '' : ' (before return)'}` : 'called twice');
      };
      session.callWith(type, bytes, timeoutMs === undefined ? undefined : { timeoutMs },
        (response) => once(`ok ${Buffer.from(response).toString()}`),
        (error) => once(`${error.constructor.name} ${(error as TransportError).code ?? ''}`.trim()));
      returned = true;
    });
    return { outcome };
  };
  t.is(await call(1, Buffer.from('echo')).outcome, 'ok echo');
  t.is(await call(2, Buffer.alloc(1)).outcome, 'TransportError HANDLER_FAILED');
  t.is(await call(9, Buffer.alloc(1)).outcome, 'TransportError NO_HANDLER');
  t.is(await call(3, Buffer.alloc(1), 30).outcome, 'TimeoutError TIMEOUT');
  t.is(await call(1, Buffer.alloc((1 << 16) + 1)).outcome, 'PayloadTooLargeError PAYLOAD_TOO_LARGE (before return)');
  // Many at once, answered in any order, each once.
  const many = await Promise.all(Array.from({ length: 100 }, (_, i) => call(1, Buffer.from(`m${i}`)).outcome));
  t.deepEqual(many, Array.from({ length: 100 }, (_, i) => `ok m${i}`));
  const pending = call(3, Buffer.alloc(1));
  await session.close();
  t.is(await pending.outcome, 'TransportError SESSION_CLOSED');
  t.is(await call(1, Buffer.alloc(1)).outcome, 'TransportError SESSION_CLOSED (before return)');
  await Promise.all([client.close(), server.close()]);
});

test('flush() hands the calls and responses queued in this turn to the network before it returns', async (t) => {
  const { server, client, session } = await pair();
  let later: DeferredResponse | undefined;
  server.handle(2, (_bytes, context: RequestContext) => {
    later = context.defer!();
    return DEFERRED;
  });
  const submits = (e: Endpoint): number => e.stats().jsSubmits!;
  // A call: queued for the end of the turn, or submitted (and its datagram sent) by flush().
  const before = submits(client);
  const answer = session.call(1, Buffer.from('now'));
  t.is(submits(client), before, 'queued, not yet submitted');
  client.flush();
  t.is(submits(client), before + 1, 'submitted by flush(), before any microtask ran');
  client.flush(); // nothing queued: nothing submitted
  t.is(submits(client), before + 1);
  t.is(Buffer.from(await answer).toString(), 'now');
  // A deferred response given in a turn of its own leaves at flush() too.
  const deferred = session.call(2, Buffer.alloc(1));
  while (later === undefined) await new Promise((r) => setTimeout(r, 1));
  const serverBefore = submits(server);
  later.respond(Buffer.from('later'));
  t.is(submits(server), serverBefore);
  server.flush();
  t.is(submits(server), serverBefore + 1);
  t.is(Buffer.from(await deferred).toString(), 'later');
  await Promise.all([client.close(), server.close()]);
});

test('errors are named: no handler, handler threw, too large, deadline, closed session', async (t) => {
  const { server, client, session } = await pair({ messageBytesMax: 1 << 20 });
  server.handle(2, () => {
    throw new Error('boom');
  });
  server.handle(3, () => new Promise<Uint8Array>(() => {}));
  const noHandler = await t.throwsAsync(session.call(9, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(noHandler!.code, 'NO_HANDLER');
  t.regex(noHandler!.message, /Fix:/);
  const threw = await t.throwsAsync(session.call(2, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(threw!.code, 'HANDLER_FAILED');
  t.regex(threw!.message, /boom/);
  // A handler whose promise rejects is answered the same way (the asynchronous path).
  server.handle(4, async () => {
    await Promise.resolve();
    throw new RangeError('later boom');
  });
  const rejected = await t.throwsAsync(session.call(4, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(rejected!.code, 'HANDLER_FAILED');
  t.regex(rejected!.message, /RangeError: later boom/);
  await t.throwsAsync(session.call(1, Buffer.alloc((1 << 20) + 1)), { instanceOf: PayloadTooLargeError });
  const started = performance.now();
  const timeout = await t.throwsAsync(session.call(3, Buffer.alloc(1), { timeoutMs: 50 }), {
    instanceOf: TimeoutError,
  });
  const elapsedMs = performance.now() - started;
  t.true(elapsedMs >= 45 && elapsedMs < 1000, `deadline after ${elapsedMs} ms`);
  t.is(timeout!.timeoutMs, 50);
  // The slot moved on: the session keeps working.
  t.is(Buffer.from(await session.call(1, Buffer.from('still'))).toString(), 'still');
  const pending = session.call(3, Buffer.alloc(1));
  const events: string[] = [];
  session.onEvent((e) => events.push(e.kind));
  await session.close();
  const closed = await t.throwsAsync(pending, { instanceOf: TransportError });
  t.is(closed!.code, 'SESSION_CLOSED');
  t.deepEqual(events, ['disconnected']);
  await t.throwsAsync(session.call(1, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(client.stats().timeouts, 1);
  await client.close();
  await server.close();
});

test('connect to a silent address fails with a reason; bad addresses are rejected', async (t) => {
  const client = await Endpoint.create({ connectTimeoutMs: 200, connectRetryMs: 50 });
  const silent = await Endpoint.create({});
  const address = silent.address;
  await silent.close();
  const error = await t.throwsAsync(client.connect(address), { instanceOf: TransportError });
  t.is(error!.code, 'CONNECT_FAILED');
  t.regex(error!.message, /connectTimeoutMs/);
  const bad = await t.throwsAsync(client.connect('not-an-address'), { instanceOf: TransportError });
  t.is(bad!.code, 'BAD_ADDRESS');
  await client.close();
});

test('IPv6 and dual-stack endpoints talk to each other', async (t) => {
  const server = await Endpoint.create({ host: '::' });
  server.handle(1, (bytes) => bytes);
  const port = server.address.split(':').pop();
  const v6 = await Endpoint.create({ host: '::1' });
  const v4 = await Endpoint.create({ host: '127.0.0.1' });
  const s6 = await v6.connect(`[::1]:${port}`);
  const s4 = await v4.connect(`127.0.0.1:${port}`);
  t.is(Buffer.from(await s6.call(1, Buffer.from('six'))).toString(), 'six');
  t.is(Buffer.from(await s4.call(1, Buffer.from('four'))).toString(), 'four');
  await Promise.all([v6.close(), v4.close(), server.close()]);
});

// Serial: it measures timing, which other tests sharing this thread's loop would skew.
test.serial('a killed peer fails every pending call with PeerFailedError within the configured time', async (t) => {
  const peerFailureTimeoutMs = 400;
  const worker = new Worker(new URL('../support/transport-worker.js', import.meta.url), {
    workerData: { mode: 'server' },
  });
  const address = await new Promise<string>((resolve) => worker.once('message', (m) => resolve(m.address)));
  const client = await Endpoint.create({ peerFailureTimeoutMs, retransmitTimeoutMs: 20 });
  const session = await client.connect(address);
  t.is(Buffer.from(await session.call(1, Buffer.from('x'))).toString(), 'w:x');
  const events: string[] = [];
  session.onEvent((e) => events.push(e.kind));
  const pending = Array.from({ length: 20 }, (_, i) => session.call(i % 2 === 0 ? 2 : 1, Buffer.alloc(i * 5000)));
  await new Promise((resolve) => setTimeout(resolve, 20));
  const killedAt = performance.now();
  await worker.terminate(); // the endpoint dies with its thread, without telling anyone
  const results = await Promise.allSettled(pending);
  const elapsedMs = performance.now() - killedAt;
  const failed = results.filter((r) => r.status === 'rejected' && r.reason instanceof PeerFailedError);
  t.true(failed.length >= 10, `${failed.length} calls failed with PeerFailedError`);
  for (const r of results) {
    if (r.status === 'rejected') t.true(r.reason instanceof PeerFailedError, String(r.reason));
  }
  t.true(elapsedMs < peerFailureTimeoutMs + 500, `failed after ${elapsedMs} ms`);
  t.deepEqual(events, ['peer-failed']);
  t.is(client.stats().peerFailures, 1);
  await client.close();
});

// Serial: it measures timing, which other tests sharing this thread's loop would skew.
test.serial('fault injection: a failed peer is detected; dropNext is recovered by retransmission', async (t) => {
  const { server, client, session } = await pair({ peerFailureTimeoutMs: 1000, retransmitTimeoutMs: 10 });
  client.injectFault({ dropNext: 3 });
  t.is(Buffer.from(await session.call(1, Buffer.from('after drops'))).toString(), 'after drops');
  t.true(client.stats().retransmissions! >= 1);
  t.is(client.stats()['drops.injected'], 3);
  server.injectFault({ failPeer: client.address });
  await t.throwsAsync(session.call(1, Buffer.from('lost')), { instanceOf: PeerFailedError });
  await client.close();
  await server.close();
});

test('endpoints run in worker threads and talk to each other and to the main thread', async (t) => {
  const server = new Worker(new URL('../support/transport-worker.js', import.meta.url), {
    workerData: { mode: 'server' },
  });
  const serverAddress = await new Promise<string>((resolve) => server.once('message', (m) => resolve(m.address)));
  const client = new Worker(new URL('../support/transport-worker.js', import.meta.url), {
    workerData: { mode: 'client', target: serverAddress, calls: 50 },
  });
  const done = await new Promise<{ replies: string[] }>((resolve) => {
    client.on('message', (m) => {
      if (m.kind === 'done') resolve(m);
    });
  });
  t.is(done.replies.length, 50);
  done.replies.forEach((r, i) => t.is(r, `w:from-worker-${i}`));
  const main = await Endpoint.create({});
  const session = await main.connect(serverAddress);
  t.is(Buffer.from(await session.call(1, Buffer.from('main'))).toString(), 'w:main');
  await main.close();
  for (const worker of [client, server]) {
    const closed = new Promise((resolve) => worker.on('message', (m) => m.kind === 'closed' && resolve(m)));
    worker.postMessage({ kind: 'close' });
    await closed;
    await worker.terminate();
  }
});

test('terminating a worker whose endpoint is busy does not disturb the process or its peer', async (t) => {
  const server = await Endpoint.create({});
  let handled = 0;
  server.handle(1, (bytes) => {
    handled++;
    return bytes;
  });
  for (let round = 0; round < 4; round++) {
    const worker = new Worker(new URL('../support/transport-worker.js', import.meta.url), {
      workerData: { mode: 'flood', target: server.address },
    });
    await new Promise<void>((resolve) => worker.on('message', (m) => m.kind === 'flooding' && resolve()));
    await new Promise((resolve) => setTimeout(resolve, 30 + round * 20));
    await worker.terminate();
  }
  t.true(handled > 100, `handled ${handled}`);
  const client = await Endpoint.create({});
  const session = await client.connect(server.address);
  t.is(Buffer.from(await session.call(1, Buffer.from('alive'))).toString(), 'alive');
  await client.close();
  await server.close();
});

test('calls beyond the queue limit are refused with BACKLOG_FULL', async (t) => {
  const options = { slotsPerSession: 1, queuedRequestsPerSessionMax: 1 };
  const server = await Endpoint.create(options);
  server.handle(1, () => new Promise<Uint8Array>(() => {}));
  const client = await Endpoint.create(options);
  const session = await client.connect(server.address);
  const first = session.call(1, Buffer.alloc(1), { timeoutMs: 100 });
  const second = session.call(1, Buffer.alloc(1), { timeoutMs: 100 });
  const third = await t.throwsAsync(session.call(1, Buffer.alloc(1)), { instanceOf: TransportError });
  t.is(third!.code, 'BACKLOG_FULL');
  await t.throwsAsync(first, { instanceOf: TimeoutError });
  await t.throwsAsync(second, { instanceOf: TimeoutError });
  await client.close();
  await server.close();
});

// Serial: it measures timing, which other tests sharing this thread's loop would skew.
test.serial('an idle session wakes the loop only for its keepalives (no polling)', async (t) => {
  const { server, client, session } = await pair({ peerFailureTimeoutMs: 400 });
  t.is(Buffer.from(await session.call(1, Buffer.from('x'))).toString(), 'x');
  const before = { client: client.stats(), server: server.stats() };
  await new Promise((resolve) => setTimeout(resolve, 600));
  const after = { client: client.stats(), server: server.stats() };
  const wakeups = (side: 'client' | 'server'): number =>
    after[side].udpReceiveCalls! - before[side].udpReceiveCalls! +
    (after[side].jsBatchesDelivered! - before[side].jsBatchesDelivered!);
  // Keepalives every peerFailureTimeoutMs / 4 = 100 ms: about 6 pings and 6 pongs in 600 ms.
  t.true(wakeups('client') <= 30, `client woke ${wakeups('client')} times`);
  t.true(wakeups('server') <= 30, `server woke ${wakeups('server')} times`);
  const pings = after.client['sent.PING']! - before.client['sent.PING']!;
  t.true(pings >= 3, `${pings} keepalives were sent`);
  t.is(after.client.sessionsClient, 1, 'the idle session is still alive');
  await client.close();
  await server.close();
});
