// The driver's byte bound on a member's own undelivered messages (ownBytesUndeliveredMax): a
// burst of large sends enters the shard a few MiB at a time instead of all at once (the send
// queue and window count messages, not bytes), and every message still arrives intact, once,
// in the same order on both members.
import test, { type ExecutionContext } from 'ava';
import type { Transport } from '../../src/transport/transport.js';
import { Endpoint } from '../../src/transport/native-transport.js';
import { MulticastDriver, type MulticastDelivery, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { MIXED_LIMITS, checkSameOrderIntact, nativeEndpoints, payloadIntact, tagOf, taggedPayload, waitFor, withSessions } from '../support/multicast-driver-local.js';
import { nodeId, viewId } from '../../src/core/ids.js';
import { multicastLimits } from '../../src/multicast/config.js';
import { decodePacket } from '../../src/multicast/codec.js';

const KIB = 1024;

test.serial('own undelivered bytes: sends beyond the bound wait for deliveries, then all arrive in order', async (t) => {
  t.timeout(60_000);
  const endpoints = await Promise.all(
    [0, 1].map((i) => Endpoint.create({ host: '127.0.0.1', port: 0, seed: 300 + i, peerFailureTimeoutMs: 15_000 })),
  );
  const nodes = [nodeId(1), nodeId(2)];
  const view: MulticastView = {
    viewId: viewId(1), members: nodes, senders: nodes,
    addresses: new Map(nodes.map((n, i) => [n, endpoints[i]!.address])),
  };
  const deliveries: MulticastDelivery[][] = [[], []];
  const drivers = await Promise.all(
    endpoints.map((endpoint, i) =>
      MulticastDriver.create({
        transport: endpoint, self: nodes[i]!, shard: 1, view, limits: MIXED_LIMITS,
        ownBytesUndeliveredMax: 250 * KIB,
        onDeliver: (d) => deliveries[i]!.push({ ...d, payload: d.payload.slice() }),
      }),
    ),
  );
  try {
    // 12 RDMC messages of 100 KiB (blocks of 32 KiB), sent without waiting: the window (32) and
    // send queue (128) would take them all at once.
    const count = 12;
    let accepted = 0;
    const sends = Array.from({ length: count }, (_, i) =>
      drivers[0]!.send(taggedPayload(1, i, 100 * KIB)).then((receipt) => {
        accepted++;
        return receipt;
      }),
    );
    await Promise.resolve();
    await Promise.resolve();
    // Accepted while below 250 KiB: 0, 100, 200 KiB -> three; the fourth waits.
    t.is(accepted, 3, 'only the sends below the byte bound were accepted at once');
    const receipts = await Promise.all(sends);
    t.deepEqual(receipts.map((r) => r.index), Array.from({ length: count }, (_, i) => i), 'numbered in send order');
    const done = await waitFor(() => deliveries.every((list) => list.length >= count), 30_000);
    t.true(done, `delivered ${deliveries.map((list) => list.length).join(', ')} of ${count}`);
    for (const list of deliveries) {
      t.deepEqual(list.map((d) => tagOf(d.payload)), Array.from({ length: count }, (_, i) => `1:${i}`));
      t.true(list.every((d) => d.large && payloadIntact(d.payload)));
    }
  } finally {
    for (const d of drivers) await d.close();
    for (const e of endpoints) await e.close();
  }
});

/** `transport` whose sessions lack callLent (a transport that copies every request). */
function withoutLending(transport: Transport): Transport {
  return withSessions(transport, (session) =>
    new Proxy(session, {
      get: (s, p) => {
        if (p === 'callLent') return undefined;
        const value = Reflect.get(s, p) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(s) : value;
      },
    }));
}

test.serial('relays forward a one-block message in the frame it arrived in; every member gets it intact, in one order', async (t) => {
  await relayCase(t, false);
});

test.serial('large blocks are lent to the transport, own and relayed: only headers are built; every member gets them intact, in one order', async (t) => {
  await relayCase(t, true);
});

async function relayCase(t: ExecutionContext, lend: boolean): Promise<void> {
  t.timeout(60_000);
  const { endpoints: native, nodes, view } = await nativeEndpoints(3, 310);
  const endpoints = lend ? native : native.map(withoutLending);
  // One block per message, above the transport's 64 KiB slab limit (so frames arrive owning
  // their buffer); binomial over 3 members: the origin sends rank 1, which relays to rank 2.
  // No RDMC repair within the test (a loaded machine could make a relay look silent for the
  // default 250 ms, and the origin would then send member 3 blocks itself).
  const limits = multicastLimits({ ...MIXED_LIMITS, payloadBytesMax: 1 << 20, blockBytes: 256 * KIB, rdmcRepairMicros: 600_000_000 });
  const deliveries: MulticastDelivery[][] = [[], [], []];
  // Member 3 sees every frame it receives: the relayed blocks must carry the relay's rank.
  const seenAt3: { fromRank: number; senderIndex: number }[] = [];
  const spied = new Proxy(endpoints[2]!, {
    get(target, prop) {
      if (prop === 'handle') {
        return (type: number, handler: (frame: Uint8Array, context: never) => Uint8Array | Promise<Uint8Array>) =>
          target.handle(type, (frame, context) => {
            const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
            for (let at = 4; at + 4 <= frame.byteLength; at += 4 + view.getUint32(at, true)) {
              const packet = decodePacket(frame.subarray(at + 4, at + 4 + view.getUint32(at, true)));
              if (packet.kind === 'block') seenAt3.push({ fromRank: packet.fromRank, senderIndex: packet.senderIndex });
            }
            return handler(frame, context as never);
          });
      }
      const value = Reflect.get(target, prop) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  const drivers = await Promise.all(
    endpoints.map((endpoint, i) =>
      MulticastDriver.create({
        transport: i === 2 ? spied : endpoint, self: nodes[i]!, shard: 1, view, limits,
        onDeliver: (d) => deliveries[i]!.push({ ...d, payload: d.payload.slice() }),
      }),
    ),
  );
  try {
    const perSender = 20;
    await Promise.all(drivers.map(async (driver, r) => {
      for (let i = 0; i < perSender; i++) await driver.send(taggedPayload(r + 1, i, 100 * KIB + r * 1000 + i));
    }));
    const total = 3 * perSender;
    const done = await waitFor(() => deliveries.every((list) => list.length >= total), 30_000);
    t.true(done, `delivered ${deliveries.map((list) => list.length).join(', ')} of ${total}`);
    t.deepEqual(drivers.map((d) => d.coreCounters()!.rdmcRepairs), [0, 0, 0], 'no repairs');
    const relayed = drivers.map((d) => d.counters.blocksRelayedInPlace);
    const lent = drivers.map((d) => d.counters.blocksLent);
    // Each member relays the messages of the sender ranked just before it (20 each): in place
    // without callLent; with it, every block it sends (its own 20 and the 20 relays) is lent.
    t.deepEqual(relayed, lend ? [0, 0, 0] : [perSender, perSender, perSender], 'relayed in place');
    t.deepEqual(lent, lend ? [2 * perSender, 2 * perSender, 2 * perSender] : [0, 0, 0], 'blocks lent');
    // The transport sent each lent block from the lent bytes (no copy into its own buffer).
    t.true(native.every((e) => (e.stats().requestsLent ?? 0) >= (lend ? 2 * perSender : 0)), 'lent calls reached native');
    if (!lend) t.true(native.every((e) => (e.stats().requestsLent ?? 0) === 0));
    // Sender 1's blocks reach member 3 through member 2, under member 2's rank (the header is
    // rewritten in the forwarded frame); sender 2's come straight from it.
    const fromRanks = (s: number): number[] => [...new Set(seenAt3.filter((b) => b.senderIndex === s).map((b) => b.fromRank))];
    t.deepEqual(fromRanks(0), [1], 'relayed under the relay\'s rank');
    t.deepEqual(fromRanks(1), [1]);
    checkSameOrderIntact(t, deliveries);
  } finally {
    for (const d of drivers) await d.close();
    for (const e of native) await e.close();
  }
}
