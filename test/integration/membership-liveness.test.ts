// The failure detector counts any traffic from a member as a sign of life, not only heartbeats:
// 3 in-process nodes on loopback in one shard, node 3's heartbeats are dropped on their way out
// (a member too busy to heartbeat) while it keeps multicasting to its shard: nobody suspects it.
// Once it stops multicasting too, the others remove it within a few failure timeouts (so the
// dropped heartbeats are really dropped and the first half could fail).
import test from 'ava';
import { Packr } from 'msgpackr';
import { nodeId } from '../../src/core/ids.js';
import { defaultAllocator, fixedEvenShards, oneSubgroup } from '../../src/membership/layout.js';
import { MEMBERSHIP_REQUEST_TYPE, MembershipDriver } from '../../src/runtime/membership-driver.js';
import type { Transport, TransportSession } from '../../src/transport/transport.js';
import { createEndpoint, waitFor } from '../support/membership-local.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** `transport` whose outgoing membership heartbeats vanish (the caller sees a success). */
function withoutHeartbeats(transport: Transport): Transport {
  const isHeartbeat = (type: number, bytes: Uint8Array): boolean => {
    if (type !== MEMBERSHIP_REQUEST_TYPE) return false;
    try {
      return (packr.unpack(bytes) as { t?: string }).t === 'hb';
    } catch {
      return false;
    }
  };
  const wrapSession = (session: TransportSession): TransportSession => new Proxy(session, {
    get(target, property) {
      if (property === 'call') {
        return (type: number, bytes: Uint8Array, options?: { timeoutMs?: number }) =>
          isHeartbeat(type, bytes) ? Promise.resolve(new Uint8Array(0)) : target.call(type, bytes, options);
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return new Proxy(transport, {
    get(target, property) {
      if (property === 'connect') return async (address: string) => wrapSession(await target.connect(address));
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

async function group(seedBase: number, shardNodes: number) {
  const endpoints = await Promise.all([1, 2, 3].map((i) => createEndpoint(seedBase + i)));
  const founders = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const allocator = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, shardNodes)) });
  const drivers = endpoints.map((e, i) => new MembershipDriver({
    self: nodeId(i + 1), transport: i === 2 ? withoutHeartbeats(e) : e, allocator, layoutHash: 'kv', founders,
    found: true, heartbeatMs: 20, failureTimeoutMs: 200, tickMs: 10,
    // Node 1 alone holds the log: node 3 then never leads Raft (a leader's appends reach both
    // others) and its fetches reach node 1 only.
    votersCount: 1,
  }));
  const close = async (): Promise<void> => {
    for (const d of drivers) await d.close();
    for (const e of endpoints) await e.close();
  };
  await Promise.all(drivers.map((d) => d.start()));
  return { drivers, close };
}

test('a member whose heartbeats are lost but whose multicast flows is not suspected', async (t) => {
  t.timeout(30_000);
  const { drivers, close } = await group(900, 3);
  try {
    const shard = { subgroupId: drivers[2]!.current().layout.types[0]!.subgroups[0]!.subgroupId, shardIndex: 0 as never };
    let sending = true;
    const load = (async () => {
      for (let i = 0; sending; i++) {
        await drivers[2]!.multicast(shard)!.send(new TextEncoder().encode(`m${i}`));
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    sending = false;
    await load;
    t.deepEqual(drivers.map((d) => d.current().id), [0, 0, 0], 'nobody suspected node 3 while it multicast');
    t.true(drivers[2]!.counters.heartbeatsSent > 0, 'node 3 tried to heartbeat');
  } finally {
    await close();
  }
});

test('control: the same member outside every shard (no multicast) is removed', async (t) => {
  t.timeout(30_000);
  // Layout of one shard of 2: node 3 is a spare, so only its (dropped) heartbeats and its log
  // fetches (to node 1) leave it: node 2 hears nothing from it and suspects it.
  const { drivers, close } = await group(950, 2);
  try {
    await waitFor('node 3 removed', () => drivers.slice(0, 2).every((d) => !d.current().isMember(nodeId(3))), 10_000);
    t.pass();
  } finally {
    await close();
  }
});
