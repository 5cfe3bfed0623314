// The native transport's large-message buffers, both ways.
// callLent: a request's body is lent to native, not copied. Native holds a strong reference to
// the lent buffer until the call ends (so garbage collection cannot free bytes it still sends
// from) and drops it then (so a lent buffer is not kept alive forever); the peer receives
// head ++ body exactly, with encryption on and off.
// Received large messages reach JS in native's buffer (an external ArrayBuffer) and go back to
// native's buffer pool only when JS has collected that ArrayBuffer: a buffer the application
// still holds is never reused, and collected ones are.
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Endpoint } from '../../src/transport/native-transport.js';
import { PayloadTooLargeError } from '../../src/core/errors.js';

setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

const KEY = Buffer.alloc(32, 7);
const SLOW = 2;
const ECHO = 1;

function pattern(bytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (seed + i * 31 + (i >> 9)) & 0xff;
  return out;
}

/** Collects garbage until `ref` is cleared or `rounds` passed; true if it was cleared. */
async function collected(ref: WeakRef<object>, rounds = 20): Promise<boolean> {
  for (let i = 0; i < rounds; i++) {
    await new Promise((resolve) => setImmediate(resolve));
    collectGarbage();
    await new Promise((resolve) => setImmediate(resolve));
    if (ref.deref() === undefined) return true;
  }
  return false;
}

for (const encryption of [false, true]) {
  test.serial(`a lent body is held by native while its call waits, sent intact, then released (encryption ${encryption ? 'on' : 'off'})`, async (t) => {
    t.timeout(60_000);
    const options = { host: '127.0.0.1', port: 0, slotsPerSession: 2, ...(encryption ? { key: KEY } : { encryption: false }) };
    const server = await Endpoint.create(options);
    const client = await Endpoint.create(options);
    const release: (() => void)[] = [];
    server.handle(SLOW, () => new Promise<Uint8Array>((resolve) => release.push(() => resolve(new Uint8Array(0)))));
    server.handle(ECHO, (bytes) => bytes);
    try {
      const session = await client.connect(server.address);
      // Both slots busy with calls the server holds: the lent call waits in native's backlog.
      const slow = [session.call(SLOW, new Uint8Array(1)), session.call(SLOW, new Uint8Array(1))];
      const head = pattern(48, 1);
      const size = 300 * 1024; // several packets: the first joins head and body
      const expected = Buffer.concat([head, pattern(size, 2)]);
      // The only JS reference to the body is the weak one: it is handed over and forgotten.
      const { ref, answer } = ((): { ref: WeakRef<Uint8Array>; answer: Promise<Uint8Array> } => {
        const body = pattern(size, 2);
        return { ref: new WeakRef(body), answer: session.callLent!(ECHO, head, body) };
      })();
      t.false(await collected(ref, 5), 'native holds the lent body while the call waits');
      while (release.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
      for (const r of release) r();
      await Promise.all(slow);
      const response = await answer;
      t.true(Buffer.from(response).equals(expected), 'the server got head ++ body');
      t.true(await collected(ref), 'released once the call ended');
      t.true((client.stats().requestsLent ?? 0) >= 1);
      // Plaintext: the lent body's packets left from the lent bytes (no copy into the socket's
      // batch); encrypted: sealing is the copy, straight into the batch.
      const pinned = client.stats().udpDatagramsPinned ?? 0;
      if (encryption) t.is(pinned, 0);
      else t.true(pinned >= 4, `pinned ${pinned}`);
    } finally {
      await client.close();
      await server.close();
    }
  });
}

test.serial('a lent body beyond messageBytesMax is refused at once and not kept', async (t) => {
  const server = await Endpoint.create({ host: '127.0.0.1', port: 0, encryption: false, messageBytesMax: 64 * 1024 });
  const client = await Endpoint.create({ host: '127.0.0.1', port: 0, encryption: false, messageBytesMax: 64 * 1024 });
  server.handle(ECHO, (bytes) => bytes);
  try {
    const session = await client.connect(server.address);
    await t.throwsAsync(session.callLent!(ECHO, new Uint8Array(8), new Uint8Array(64 * 1024)), { instanceOf: PayloadTooLargeError });
    // Within the limit it goes, and a call after it still works.
    const echoed = await session.callLent!(ECHO, new Uint8Array([1, 2]), new Uint8Array(64 * 1024 - 2).fill(9));
    t.is(echoed.byteLength, 64 * 1024);
    t.deepEqual([...echoed.subarray(0, 3)], [1, 2, 9]);
    t.is(Buffer.from(await session.call(ECHO, Buffer.from('after'))).toString(), 'after');
  } finally {
    await client.close();
    await server.close();
  }
});

for (const encryption of [false, true]) {
  test.serial(`received buffers the application keeps are never reused; collected ones are (encryption ${encryption ? 'on' : 'off'})`, async (t) => {
    t.timeout(60_000);
    const options = { host: '127.0.0.1', port: 0, ...(encryption ? { key: KEY } : { encryption: false }) };
    const server = await Endpoint.create(options);
    const client = await Endpoint.create(options);
    const kept: { index: number; bytes: Uint8Array }[] = [];
    // Keeps every 10th request (as the application's own data); drops the rest.
    server.handle(ECHO, (bytes) => {
      if (kept.length < 6 && bytes[0]! % 10 === 0) kept.push({ index: bytes[0]!, bytes });
      return new Uint8Array(0);
    });
    try {
      const session = await client.connect(server.address);
      const size = 200 * 1024;
      const message = (i: number): Uint8Array => {
        const out = pattern(size, i);
        out[0] = i;
        return out;
      };
      for (let i = 0; i < 60; i++) {
        await session.call(ECHO, message(i));
        if (i % 5 === 4) {
          // Dropped requests' ArrayBuffers are collected: their buffers go back to the pool.
          collectGarbage();
          await new Promise((resolve) => setImmediate(resolve));
        }
      }
      const stats = server.stats();
      t.true((stats.receiveBuffersReused ?? 0) > 20, `reused ${stats.receiveBuffersReused}, fresh ${stats.receiveBuffersFresh}`);
      t.is(kept.length, 6);
      for (const { index, bytes } of kept) {
        t.true(Buffer.from(bytes).equals(message(index)), `request ${index} unchanged while held`);
      }
    } finally {
      await client.close();
      await server.close();
    }
  });
}
