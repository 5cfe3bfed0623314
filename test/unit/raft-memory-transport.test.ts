// Proves the in-process MemoryTransport (used by the Raft driver tests and benchmark) keeps the
// Transport contract: asynchronous delivery, the caller's buffer may be reused at once, handler
// errors and missing handlers reject with the native transport's codes, loss turns into
// TimeoutError, cut links are silent, and closing fails pending calls.
import test from 'ava';
import { TimeoutError } from '../../src/core/errors.js';
import { SeededRandom } from '../../src/core/random.js';
import { TransportError } from '../../src/transport/errors.js';
import { MemoryNetwork, MemoryTransportError } from '../../src/transport/memory-transport.js';

test('a call reaches the handler asynchronously with a copy, and the response comes back', async (t) => {
  const net = new MemoryNetwork();
  const a = net.endpoint();
  const b = net.endpoint();
  let seen: Uint8Array | undefined;
  b.handle(7, (req, ctx) => {
    seen = req;
    t.is(ctx.peer, a.address);
    return new Uint8Array([req[0]! + 1]);
  });
  const s = await a.connect(b.address);
  const buf = new Uint8Array([41]);
  const p = s.call(7, buf);
  buf[0] = 0; // reuse at once
  t.is(seen, undefined, 'not delivered synchronously');
  t.deepEqual([...(await p)], [42]);
  t.deepEqual([...seen!], [41]);
  await a.close();
  await b.close();
});

test('missing handlers and handler errors reject; double registration is refused', async (t) => {
  const net = new MemoryNetwork();
  const a = net.endpoint();
  const b = net.endpoint();
  b.handle(1, () => {
    throw new Error('boom');
  });
  t.throws(() => b.handle(1, () => new Uint8Array()), { instanceOf: MemoryTransportError });
  const s = await a.connect(b.address);
  // The native transport's codes: the multicast driver retries NO_HANDLER, not HANDLER_FAILED.
  const threw = await t.throwsAsync(s.call(1, new Uint8Array()), { instanceOf: TransportError, message: /handler threw: boom/ });
  t.is(threw?.code, 'HANDLER_FAILED');
  const missing = await t.throwsAsync(s.call(2, new Uint8Array()), { instanceOf: MemoryTransportError });
  t.is(missing?.code, 'NO_HANDLER');
  await t.throwsAsync(a.connect('mem:999'), { instanceOf: MemoryTransportError });
});

test('lost or cut calls time out; close fails pending calls', async (t) => {
  const net = new MemoryNetwork({ lossRate: 1, random: new SeededRandom(1) });
  const a = net.endpoint();
  const b = net.endpoint();
  b.handle(1, () => new Uint8Array());
  const s = await a.connect(b.address);
  await t.throwsAsync(s.call(1, new Uint8Array(), { timeoutMs: 20 }), { instanceOf: TimeoutError });

  const net2 = new MemoryNetwork();
  const c = net2.endpoint();
  const d = net2.endpoint();
  d.handle(1, () => new Uint8Array());
  net2.cut(c.address, d.address);
  const s2 = await c.connect(d.address);
  const pending = s2.call(1, new Uint8Array());
  await s2.close();
  await t.throwsAsync(pending, { instanceOf: MemoryTransportError });
  net2.heal();
  const s3 = await c.connect(d.address);
  t.deepEqual([...(await s3.call(1, new Uint8Array()))], []);
});
