// Several Raft groups share one native endpoint pair and one request type (issue #12): the
// membership log's Raft (group 0) and two raft-ordered shards (groups 5 and 9) on the same two
// endpoints each elect, commit and apply only their own entries; a group closed on one node makes
// its peers' batches count as `unknownGroup` there while the other groups go on committing.
import test from 'ava';
import type { Entry, Snapshot } from '../../src/raft/types.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { batchGroup } from '../../src/raft/codec.js';
import { RAFT_REQUEST_TYPE, RaftDriver, type StateMachine } from '../../src/runtime/raft-driver.js';
import { RaftShardDriver, SHARD_FORWARD_TYPE, type ShardApplication } from '../../src/runtime/raft-shard-driver.js';
import { prefixedGroup, RequestMux } from '../../src/runtime/request-mux.js';
import { Endpoint } from '../../src/transport/native-transport.js';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const untext = (b: Uint8Array): string => new TextDecoder().decode(b);

class Log implements StateMachine, ShardApplication {
  items: string[] = [];
  apply(e: Entry): void {
    this.items.push(untext(e.data));
  }
  execute(payload: Uint8Array): Uint8Array {
    this.items.push(untext(payload));
    return payload;
  }
  restore(s: Snapshot | Uint8Array): void {
    this.items = JSON.parse(untext('data' in s ? s.data : s)) as string[];
  }
  snapshot(): Uint8Array {
    return text(JSON.stringify(this.items));
  }
}

async function until(what: string, cond: () => boolean, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('a membership Raft and two shard Rafts on one endpoint pair keep their logs apart', async (t) => {
  const endpoints = [await Endpoint.create({ host: '127.0.0.1', port: 0 }), await Endpoint.create({ host: '127.0.0.1', port: 0 })];
  const ids = [1, 2];
  const peers = new Map(ids.map((id, i) => [id, endpoints[i]!.address]));
  const timing = { tickMs: 10, core: { electionTicks: 20, heartbeatTicks: 2 } };
  const membership = new Map<number, { driver: RaftDriver; log: Log }>();
  const shards = new Map<number, Map<number, { driver: RaftShardDriver; log: Log }>>([[5, new Map()], [9, new Map()]]);
  for (const [i, id] of ids.entries()) {
    const transport = endpoints[i]!;
    const log = new Log();
    membership.set(id, { log, driver: await RaftDriver.start({ id, peers, voters: ids, transport, storage: new MemoryStorage(), stateMachine: log, ...timing }) });
    for (const [groupId, members] of shards) {
      const shardLog = new Log();
      const driver = await RaftShardDriver.start({
        id, peers, voters: ids, transport, storage: new MemoryStorage(), application: shardLog, groupId,
        callTimeoutMs: 8000, attemptTimeoutMs: 500, ...timing,
      });
      members.set(id, { driver, log: shardLog });
    }
  }
  await until('a membership leader', () => [...membership.values()].some((m) => m.driver.core.role === 'leader'));
  const membershipLeader = [...membership.values()].find((m) => m.driver.core.role === 'leader')!;
  await membershipLeader.driver.propose(text('view-1'));
  // Calls from node 2 into both shards, interleaved: each is forwarded to its own shard's leader.
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 10; i++) {
    calls.push(shards.get(5)!.get(2)!.driver.call(text(`a${i}`)));
    calls.push(shards.get(9)!.get(2)!.driver.call(text(`b${i}`)));
  }
  await Promise.all(calls);
  const expectA = Array.from({ length: 10 }, (_, i) => `a${i}`);
  const expectB = Array.from({ length: 10 }, (_, i) => `b${i}`);
  for (const id of ids) {
    await until(`node ${id} applied everything`, () =>
      shards.get(5)!.get(id)!.log.items.length === 10 && shards.get(9)!.get(id)!.log.items.length === 10 &&
      membership.get(id)!.log.items.length === 1);
    t.deepEqual([...shards.get(5)!.get(id)!.log.items].sort(), expectA, `node ${id}, group 5`);
    t.deepEqual([...shards.get(9)!.get(id)!.log.items].sort(), expectB, `node ${id}, group 9`);
    t.deepEqual(membership.get(id)!.log.items, ['view-1'], `node ${id}, membership log`);
  }
  t.deepEqual(shards.get(5)!.get(1)!.log.items, shards.get(5)!.get(2)!.log.items, 'one order per shard');

  // Close shard 5 on node 1: node 2's batches for group 5 now hit no handler there (counted),
  // and the other two groups still commit.
  const mux = RequestMux.on(endpoints[0]!, RAFT_REQUEST_TYPE, batchGroup);
  const unknownBefore = mux.counters.unknownGroup;
  await shards.get(5)!.get(1)!.driver.close();
  await until('group 5 batches refused on node 1', () => mux.counters.unknownGroup > unknownBefore);
  await shards.get(9)!.get(1)!.driver.call(text('b-after'));
  await membershipLeader.driver.propose(text('view-2'));
  await until('group 9 and the membership log went on', () =>
    shards.get(9)!.get(2)!.log.items.at(-1) === 'b-after' && membership.get(2)!.log.items.at(-1) === 'view-2');
  t.is(RequestMux.on(endpoints[0]!, SHARD_FORWARD_TYPE, prefixedGroup).type, SHARD_FORWARD_TYPE);
  // One handler per type on the endpoint: a second mux with another framing is refused.
  t.throws(() => RequestMux.on(endpoints[0]!, RAFT_REQUEST_TYPE, prefixedGroup), { message: /frame group ids differently/ });

  for (const m of membership.values()) await m.driver.close();
  for (const members of shards.values()) for (const m of members.values()) await m.driver.close();
  for (const e of endpoints) await e.close();
});
