// The raft ordering engine (src/runtime/raft-ordering-engine.ts) on the in-memory transport:
// calls sent from every member are delivered in one order everywhere with the caller as sender
// and the receipt's numbering equal to the delivered version; a retried call whose answer was lost
// still gets the first run's numbering (from the shard's reply cache); the global persisted
// frontier is the minimum over the current members' reports (a silent member holds it back until
// setMembers drops it), and the stability frontier follows the applied calls' times.
import test from 'ava';
import { makeVersion, nodeId, VERSION_NONE, viewId, type NodeId, type Version } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import type { EngineFrontiers, OrderedDelivery } from '../../src/runtime/ordering-engine.js';
import { RaftOrderingEngine, raftIdOf } from '../../src/runtime/raft-ordering-engine.js';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';

const nodes = [0, 1, 2].map(nodeId);
const addressOf = (n: NodeId): string => `mem:${100 + n}`;
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const untext = (b: Uint8Array): string => new TextDecoder().decode(b);

async function until(what: string, cond: () => boolean, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface Member {
  engine: RaftOrderingEngine;
  delivered: { sender: NodeId; version: Version; payload: string; micros: number }[];
  frontiers: EngineFrontiers[];
}

async function startEngines(net: MemoryNetwork): Promise<Map<NodeId, Member>> {
  const members = new Map<NodeId, Member>();
  await Promise.all(nodes.map(async (self) => {
    const delivered: Member['delivered'] = [];
    const frontiers: EngineFrontiers[] = [];
    const engine = await RaftOrderingEngine.start({
      self, members: nodes, addresses: new Map(nodes.map((n) => [n, addressOf(n)])), groupId: 3,
      transport: net.endpoint(100 + self), storage: new MemoryStorage(),
      onDeliver: (d: OrderedDelivery) => delivered.push({ sender: d.sender, version: d.version!, payload: untext(d.payload), micros: d.timestamp.micros }),
      state: { snapshot: () => new Uint8Array(0), restore: () => undefined },
      tickMs: 5, heartbeatTicks: 2, electionTicks: 10, attemptTimeoutMs: 100, reportRetryMs: 20,
    });
    engine.onFrontiers((f) => frontiers.push(f));
    members.set(self, { engine, delivered, frontiers });
  }));
  return members;
}

const lastFrontier = (m: Member): EngineFrontiers | undefined => m.frontiers.at(-1);

test('one order with callers as senders; receipts match deliveries, also for a retried call', async (t) => {
  const net = new MemoryNetwork({ delayMsMax: 1, random: new SeededRandom(5) });
  const members = await startEngines(net);
  try {
    const receipts = await Promise.all(Array.from({ length: 12 }, (_, i) =>
      members.get(nodes[i % 3]!)!.engine.send(text(`call-${i}`)).then((r) => ({ i, r }))));
    await until('all delivered everywhere', () => [...members.values()].every((m) => m.delivered.length === 12));
    const order = members.get(nodes[0]!)!.delivered;
    for (const m of members.values()) t.deepEqual(m.delivered, order, 'the same order, versions, times everywhere');
    for (const { i, r } of receipts) {
      const d = order.find((x) => x.payload === `call-${i}`)!;
      t.is(d.sender, nodes[i % 3], 'the caller is the sender');
      t.is(makeVersion(r.viewId, r.position), d.version, 'the receipt numbers the call as delivered');
    }
    for (let i = 1; i < order.length; i++) t.true(order[i]!.version > order[i - 1]!.version);
    // The leader's answers to a follower vanish: the follower retries, the shard answers from its
    // reply cache, and the receipt still carries the first (only) run's numbering.
    const leader = nodes.find((n) => members.get(n)!.engine.raft.core.role === 'leader')!;
    const caller = nodes.find((n) => n !== leader)!;
    net.cutOneWay(addressOf(leader), addressOf(caller));
    const pending = members.get(caller)!.engine.send(text('retried'));
    await until('ran at the leader', () => members.get(leader)!.delivered.some((d) => d.payload === 'retried'));
    await new Promise((r) => setTimeout(r, 250));
    net.heal();
    const receipt = await pending;
    const ran = members.get(leader)!.delivered.filter((d) => d.payload === 'retried');
    t.is(ran.length, 1, 'ran once');
    t.true(members.get(caller)!.engine.shardCounters.retries > 0, 'the caller retried');
    t.is(makeVersion(receipt.viewId, receipt.position), ran[0]!.version);
    t.true(receipt.viewId === viewId(Number(ran[0]!.version >> 32n)));
  } finally {
    for (const m of members.values()) await m.engine.close();
  }
});

test('persisted frontier: the minimum of the current members\' reports; stability follows applied times', async (t) => {
  const net = new MemoryNetwork();
  const members = await startEngines(net);
  try {
    const r = await members.get(nodes[1]!)!.engine.send(text('x'));
    const v = makeVersion(r.viewId, r.position);
    await until('delivered everywhere', () => [...members.values()].every((m) => m.delivered.length === 1));
    for (const m of members.values()) {
      await until('stability frontier', () => (lastFrontier(m)?.stabilityFrontierMicros ?? 0) === r.timestamp.micros);
    }
    members.get(nodes[0]!)!.engine.persisted(v);
    members.get(nodes[1]!)!.engine.persisted(v);
    await new Promise((resolve) => setTimeout(resolve, 100));
    for (const m of members.values()) {
      t.is(lastFrontier(m)?.globalPersistedVersion ?? VERSION_NONE, VERSION_NONE, 'one member has not reported');
    }
    members.get(nodes[2]!)!.engine.persisted(v);
    for (const m of members.values()) await until('global persisted', () => lastFrontier(m)?.globalPersistedVersion === v);
    // Node 2 goes silent: a later version is held back until it leaves the member list.
    const r2 = await members.get(nodes[0]!)!.engine.send(text('y'));
    const v2 = makeVersion(r2.viewId, r2.position);
    for (const n of [nodes[0]!, nodes[1]!]) {
      net.cut(addressOf(n), addressOf(nodes[2]!));
      await until('delivered', () => members.get(n)!.delivered.length === 2);
      members.get(n)!.engine.persisted(v2);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    t.is(lastFrontier(members.get(nodes[0]!)!)!.globalPersistedVersion, v, 'held by the silent member');
    for (const n of [nodes[0]!, nodes[1]!]) members.get(n)!.engine.setMembers([nodes[0]!, nodes[1]!]);
    for (const n of [nodes[0]!, nodes[1]!]) await until('advanced without it', () => lastFrontier(members.get(n)!)!.globalPersistedVersion === v2);
    t.is(raftIdOf(nodes[0]!), 1, 'raft ids start at 1 (0 is "none")');
  } finally {
    for (const m of members.values()) await m.engine.close();
  }
});
