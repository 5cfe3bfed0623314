// Proves the transport under hostile conditions on real sockets: every call runs exactly once
// under 10% packet loss in both directions, and 100,000 malformed or foreign packets sent at a
// live endpoint are dropped and counted while it keeps serving.
import test from 'ava';
import { createSocket } from 'node:dgram';
import { Endpoint } from '../../src/transport/native-transport.js';
import { loadNativeAddon } from '../../src/transport/native-binding.js';

/** native/src/version.h kWireVersion, as the addon reports it. */
const WIRE_VERSION = loadNativeAddon().wireVersion;

test('exactly once under 10% loss: the handler count equals the call count', async (t) => {
  const options = { retransmitTimeoutMs: 5, peerFailureTimeoutMs: 5000 };
  const server = await Endpoint.create({ ...options, seed: 11 });
  const client = await Endpoint.create({ ...options, seed: 12 });
  let handled = 0;
  server.handle(1, (bytes) => {
    handled++;
    return Buffer.concat([bytes, bytes]);
  });
  const session = await client.connect(server.address);
  server.injectFault({ dropProbability: 0.1 });
  client.injectFault({ dropProbability: 0.1 });
  const calls = 1000;
  const sizes = (i: number): number => (i % 50 === 0 ? 200_000 + i : i % 300);
  const replies = await Promise.all(
    Array.from({ length: calls }, (_, i) => session.call(1, Buffer.alloc(sizes(i), i & 0xff))),
  );
  replies.forEach((r, i) => {
    t.is(r.byteLength, 2 * sizes(i));
    if (r.byteLength > 0) t.is(r[r.byteLength - 1], i & 0xff);
  });
  t.is(handled, calls);
  const stats = client.stats();
  t.true(stats.retransmissions! > 0);
  t.true(stats['drops.injected']! > 50);
  t.true(server.stats().duplicateResponses! > 0, 'some duplicates were answered from the kept response');
  await client.close();
  await server.close();
});

function header(fields: {
  magic?: number; version?: number; type?: number; flags?: number; session?: number;
  messageBytes?: number; packetNumber?: number; requestNumber?: number;
}): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt16LE(fields.magic ?? 0x5153, 0);
  b.writeUInt8(fields.version ?? WIRE_VERSION, 2);
  b.writeUInt8(fields.type ?? 0, 3);
  b.writeUInt8(fields.flags ?? 0, 4);
  b.writeUInt32LE(fields.session ?? 1, 8);
  b.writeUInt32LE(fields.messageBytes ?? 0, 12);
  b.writeUInt32LE(fields.packetNumber ?? 0, 16);
  b.writeBigUInt64LE(BigInt(fields.requestNumber ?? 8), 24);
  return b;
}

test('100,000 bad packets are dropped and counted; the endpoint still serves', async (t) => {
  const server = await Endpoint.create({});
  // The server's number for the client's session: packets aimed at it from a stranger must be
  // dropped as wrong_peer (numbers start at a random point per endpoint incarnation).
  let sessionNumber = 0;
  server.handle(1, (bytes, context) => {
    sessionNumber = context.sessionId;
    return bytes;
  });
  const client = await Endpoint.create({});
  const session = await client.connect(server.address);
  t.is(Buffer.from(await session.call(1, Buffer.from('before'))).toString(), 'before');
  const [host, portText] = [server.address.slice(0, server.address.lastIndexOf(':')), server.address.split(':').pop()];
  const port = Number(portText);
  const attacker = createSocket('udp4');
  await new Promise<void>((resolve) => attacker.bind(0, '127.0.0.1', resolve));
  const total = 100_000;
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  const make = (i: number): Buffer => {
    switch (i % 7) {
      case 0: return Buffer.from(Array.from({ length: rand() % 200 }, () => rand() & 0xff));
      case 1: return header({}).subarray(0, rand() % 32);
      case 2: return header({ magic: rand() & 0xfff0 });
      case 3: return header({ version: (WIRE_VERSION + 1 + (rand() % 200)) & 0xff });
      case 4: return header({ session: 1000 + (rand() % 100000), type: rand() % 4 });
      case 5: return Buffer.concat([header({ session: sessionNumber, messageBytes: (8 << 20) + 1 + (rand() % 1000) }), Buffer.alloc(64)]);
      default: return header({ session: sessionNumber, type: rand() % 4, requestNumber: rand(), packetNumber: rand() % 5 });
    }
  };
  const before = server.stats().dropsTotal!;
  const chunk = 500;
  for (let sent = 0; sent < total; sent += chunk) {
    await Promise.all(
      Array.from({ length: chunk }, (_, k) =>
        new Promise<void>((resolve) => attacker.send(make(sent + k), port, host, () => resolve())),
      ),
    );
    await new Promise((resolve) => setImmediate(resolve));
  }
  // Let the endpoint read what is still queued in its socket.
  for (let i = 0; i < 50 && server.stats().packetsReceived! < total; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const stats = server.stats();
  const dropped = stats.dropsTotal! - before;
  t.true(stats.packetsReceived! >= total * 0.95, `received ${stats.packetsReceived}`);
  t.true(dropped >= stats.packetsReceived! - 200 - total * 0.05, `dropped ${dropped}`);
  for (const reason of ['truncated', 'bad_magic', 'bad_version', 'unknown_session', 'wrong_peer']) {
    t.true(stats[`drops.${reason}`]! > 1000, `${reason}: ${stats[`drops.${reason}`]}`);
  }
  t.is(stats.handlersRun, 1, 'no garbage reached a handler');
  t.is(Buffer.from(await session.call(1, Buffer.from('after'))).toString(), 'after');
  attacker.close();
  await client.close();
  await server.close();
});
