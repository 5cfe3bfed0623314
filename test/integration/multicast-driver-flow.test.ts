// The driver's byte bound on a member's own undelivered messages (ownBytesUndeliveredMax): a
// burst of large sends enters the shard a few MiB at a time instead of all at once (the send
// queue and window count messages, not bytes), and every message still arrives intact, once,
// in the same order on both members.
import test from 'ava';
import { Endpoint } from '../../src/transport/native-transport.js';
import { MulticastDriver, type MulticastDelivery, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { MIXED_LIMITS, payloadIntact, tagOf, taggedPayload, waitFor } from '../support/multicast-driver-local.js';
import { nodeId, viewId } from '../../src/core/ids.js';

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
