// The driver's persisted report leaves in the turn the persistence layer reported the version,
// not one event-loop turn later: driver.persisted() runs the core in a microtask, so the report
// goes into the transport before the transport's own flush of that turn (with a group reply or
// a response queued in the same turn, one send instead of two; see src/runtime/README.md,
// "Per-batch costs"). Two members on the in-memory network, frames recorded as the driver hands
// them to its sessions.
import test from 'ava';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';
import { MulticastDriver, type MulticastDelivery, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { withSessions, waitFor } from '../support/multicast-driver-local.js';
import { nodeId, viewId, type Version } from '../../src/core/ids.js';
import { decodePacket } from '../../src/multicast/codec.js';
import type { Packet } from '../../src/multicast/types.js';
import type { CallOptions, RequestType } from '../../src/transport/transport.js';

/** The packets of a driver frame (`u32 shard | { u32 length | packet }*`). */
function framePackets(frame: Uint8Array): Packet[] {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const packets: Packet[] = [];
  for (let at = 4; at + 4 <= frame.byteLength;) {
    const length = view.getUint32(at, true);
    packets.push(decodePacket(frame.subarray(at + 4, at + 4 + length)));
    at += 4 + length;
  }
  return packets;
}

test('persisted(): the report carrying the version is handed to the transport before the next event-loop turn', async (t) => {
  t.timeout(20_000);
  const network = new MemoryNetwork();
  const nodes = [nodeId(1), nodeId(2)];
  const transports = nodes.map(() => network.endpoint());
  const view: MulticastView = {
    viewId: viewId(1), members: nodes, senders: nodes,
    addresses: new Map(nodes.map((n, i) => [n, transports[i]!.address])),
  };
  const persistedSent: Version[] = [];
  const recording = withSessions(transports[1]!, (session) =>
    new Proxy(session, {
      get(target, prop) {
        if (prop === 'call') {
          return (type: RequestType, request: Uint8Array, options?: CallOptions) => {
            for (const p of framePackets(request)) {
              if (p.kind === 'data' && p.report !== null) persistedSent.push(p.report.persistedVersion);
            }
            return target.call(type, request, options);
          };
        }
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    }));
  const deliveries: MulticastDelivery[][] = [[], []];
  const drivers = await Promise.all(
    [transports[0]!, recording].map((transport, i) =>
      MulticastDriver.create({ transport, self: nodes[i]!, shard: 0, view, onDeliver: (d) => deliveries[i]!.push(d) }),
    ),
  );
  try {
    await drivers[0]!.send(new Uint8Array([1, 2, 3]));
    t.true(await waitFor(() => deliveries.every((list) => list.length === 1), 10_000), 'delivered on both');
    const version = deliveries[1]![0]!.version!;
    // Let member 2's sends of the delivery settle (its reports so far say nothing persisted).
    await new Promise((resolve) => setTimeout(resolve, 20));
    t.false(persistedSent.includes(version));
    let turnEnded = false;
    setImmediate(() => {
      turnEnded = true;
    });
    drivers[1]!.persisted(version);
    for (let i = 0; i < 10 && !persistedSent.includes(version); i++) await Promise.resolve();
    t.false(turnEnded, 'still the same event-loop turn');
    t.true(persistedSent.includes(version), 'the persisted report went out within the turn');
    // And member 1 learns the global frontier once it persists too.
    drivers[0]!.persisted(version);
    t.true(await waitFor(() => drivers[0]!.frontiers().globalPersistedVersion === version, 10_000));
  } finally {
    for (const d of drivers) await d.close();
  }
});
