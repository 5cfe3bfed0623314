// Endpoint.release(): a received large message handed back by the application. Its ArrayBuffer
// is detached (no old view can read the memory again, whatever is assembled in it next), its
// memory is reused by the next large message at once, a second or foreign release changes
// nothing and is counted, and memory a lent call still sends from is not reused until the call
// settles.
import test from 'ava';
import { Endpoint } from '../../src/transport/native-transport.js';

const ECHO = 1;
const RELAY = 2;
const SIZE = 200 * 1024;

function pattern(bytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (seed + i * 31 + (i >> 9)) & 0xff;
  return out;
}

const options = { host: '127.0.0.1', port: 0, encryption: false };

test.serial('release detaches the received buffer, reuses its memory at once, and ignores a second or foreign release', async (t) => {
  t.timeout(60_000);
  const server = await Endpoint.create(options);
  const client = await Endpoint.create(options);
  const received: Uint8Array[] = [];
  server.handle(ECHO, (bytes) => {
    received.push(bytes);
    return new Uint8Array(0);
  });
  try {
    const session = await client.connect(server.address);
    await session.call(ECHO, pattern(SIZE, 1));
    const first = received[0]!;
    const view = first.subarray(1000, 2000);
    const arrayBuffer = first.buffer;
    t.is(first.byteLength, SIZE);
    t.true(Buffer.from(first).equals(pattern(SIZE, 1)));
    const before = server.stats();
    t.is(before.receiveBuffersOnLoan, 1);

    t.true(server.release(first));
    // Detached: every handle on the memory is now empty.
    t.is(first.byteLength, 0);
    t.is(view.byteLength, 0);
    t.is(arrayBuffer.byteLength, 0);
    t.is(first[0] as number | undefined, undefined);
    t.is(server.stats().receiveBuffersReleased, 1);
    t.is(server.stats().receiveBuffersOnLoan, 0);

    // The next large request is assembled in that memory (reused, not fresh), and the old
    // handles still see nothing of it.
    await session.call(ECHO, pattern(SIZE, 2));
    const after = server.stats();
    t.is(after.receiveBuffersReused! - before.receiveBuffersReused!, 1);
    t.is(after.receiveBuffersFresh, before.receiveBuffersFresh);
    t.true(Buffer.from(received[1]!).equals(pattern(SIZE, 2)));
    t.is(first.byteLength, 0);
    t.is(view.byteLength, 0);
    t.is(arrayBuffer.byteLength, 0);

    // A second release through the old handle, a JS buffer, a small (slab) message: false,
    // untouched, counted.
    t.false(server.release(first));
    const foreign = pattern(SIZE, 3);
    t.false(server.release(foreign));
    t.is(foreign.byteLength, SIZE);
    await session.call(ECHO, pattern(100, 4));
    const small = received[2]!;
    t.false(server.release(small));
    t.is(small.byteLength, 100);
    // Another endpoint's buffer: not this one's to take.
    t.false(client.release(received[1]!));
    t.is(received[1]!.byteLength, SIZE);
    t.is(server.stats().receiveReleasesIgnored, 3);
    t.is(client.stats().receiveReleasesIgnored, 1);
    t.throws(() => server.release('nope' as unknown as Uint8Array), { instanceOf: TypeError });
    await session.call(ECHO, pattern(SIZE, 5));
    t.true(Buffer.from(received[1]!).equals(pattern(SIZE, 2)), 'a held buffer is never reused');
    t.is(server.stats().receiveBuffersReleased, 1);

    // After close, release still detaches (the memory is freed, not pooled).
    await server.close();
    t.true(server.release(received[1]!));
    t.is(received[1]!.byteLength, 0);
  } finally {
    await client.close();
    await server.close();
  }
});

test.serial('a released buffer that a lent call still sends from is reused only once that call settled', async (t) => {
  t.timeout(60_000);
  const relay = await Endpoint.create(options);
  const origin = await Endpoint.create(options);
  const target = await Endpoint.create(options);
  const arrived: Uint8Array[] = [];
  let answerTarget: (() => void) | null = null;
  target.handle(RELAY, (bytes) => {
    arrived.push(Buffer.from(bytes));  // a copy: checked after the relay's memory moved on
    return new Promise<Uint8Array>((resolve) => {
      answerTarget = () => resolve(new Uint8Array(0));
    });
  });
  const onward = await relay.connect(target.address);
  let forwarded: Promise<Uint8Array> | null = null;
  relay.handle(ECHO, (bytes) => {
    if (forwarded === null) {
      // Forward the body of the first request (a view into the received buffer), lent, then
      // release the received buffer at once, as a multicast relay does.
      forwarded = onward.callLent!(RELAY, new Uint8Array([9]), bytes.subarray(16));
      t.true(relay.release(bytes));
      t.is(bytes.byteLength, 0);
    }
    return new Uint8Array(0);
  });
  try {
    const session = await origin.connect(relay.address);
    await session.call(ECHO, pattern(SIZE, 1));
    while (answerTarget === null) await new Promise((resolve) => setTimeout(resolve, 5));
    const pinned = relay.stats();
    t.is(pinned.receiveBuffersOnLoan, 1, 'released, but held for the lent call');
    // A request while the call is open gets fresh memory, not the pinned one.
    await session.call(ECHO, pattern(SIZE, 2));
    t.is(relay.stats().receiveBuffersReused, pinned.receiveBuffersReused);
    t.is(relay.stats().receiveBuffersFresh! - pinned.receiveBuffersFresh!, 1);
    (answerTarget as () => void)();
    await forwarded;
    const expected = Buffer.concat([Buffer.from([9]), pattern(SIZE, 1).subarray(16)]);
    t.true(Buffer.from(arrived[0]!).equals(expected), 'the lent bytes arrived intact');
    // Settled (and flushed): the memory is back and the next request is assembled in it.
    await new Promise((resolve) => setTimeout(resolve, 20));
    await session.call(ECHO, pattern(SIZE, 3));
    t.is(relay.stats().receiveBuffersReused! - pinned.receiveBuffersReused!, 1);
  } finally {
    await origin.close();
    await relay.close();
    await target.close();
  }
});
