// Proves the Raft driver runs the core over a real asynchronous Transport with real timers: a
// 3-node group on the in-memory transport (with seeded loss and delay) elects a leader, commits
// and applies proposals identically everywhere, survives the leader's failure, brings a restarted
// node back from its storage, serves linearizable reads on a follower, and reloads from LMDB.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SeededRandom } from '../../src/core/random.js';
import { LmdbStorage } from '../../src/raft/lmdb-storage.js';
import { MemoryStorage, type RaftStorage } from '../../src/raft/storage.js';
import type { Entry, Snapshot } from '../../src/raft/types.js';
import { RaftDriver, type StateMachine } from '../../src/runtime/raft-driver.js';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';

class Log implements StateMachine {
  items: string[] = [];
  apply(e: Entry): void {
    this.items.push(new TextDecoder().decode(e.data));
  }
  restore(s: Snapshot): void {
    this.items = JSON.parse(new TextDecoder().decode(s.data)) as string[];
  }
  snapshot(): Uint8Array {
    return new TextEncoder().encode(JSON.stringify(this.items));
  }
}

const ids = [1, 2, 3];
const peers = new Map(ids.map((id) => [id, `mem:${id}`]));

async function startNode(net: MemoryNetwork, id: number, storage: RaftStorage, sm: Log): Promise<RaftDriver> {
  return RaftDriver.start({
    id, peers, voters: ids, transport: net.endpoint(id), storage, stateMachine: sm,
    tickMs: 5, compactEvery: 40, core: { electionTicks: 10, heartbeatTicks: 2 },
  });
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const leaderOf = (ds: Map<number, RaftDriver>): RaftDriver | undefined =>
  [...ds.values()].find((d) => d.core.role === 'leader');

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Proposes at whoever is leader now, retrying on NOT_LEADER / superseded. */
async function proposeSomewhere(ds: Map<number, RaftDriver>, value: string): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const l = leaderOf(ds);
    if (l) {
      try {
        await l.propose(text(value));
        return;
      } catch {
        /* retry */
      }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`could not commit ${value}`);
}

test('3 nodes over a lossy memory transport: commit, leader failure, restart from storage, follower reads', async (t) => {
  const net = new MemoryNetwork({ lossRate: 0.03, delayMsMax: 2, random: new SeededRandom(3) });
  const storages = new Map(ids.map((id) => [id, new MemoryStorage()]));
  const sms = new Map(ids.map((id) => [id, new Log()]));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, sms.get(id)!));
  await until('a leader', () => leaderOf(ds) !== undefined);
  for (let i = 0; i < 60; i++) await proposeSomewhere(ds, `a${i}`);

  const old = leaderOf(ds)!;
  const oldId = old.core.id;
  await old.close();
  ds.delete(oldId);
  await net.lookup(`mem:${oldId}`)!.close();
  await until('a new leader', () => leaderOf(ds) !== undefined);
  for (let i = 0; i < 30; i++) await proposeSomewhere(ds, `b${i}`);

  // The old leader restarts from its storage (its state machine is rebuilt from scratch).
  const fresh = new Log();
  sms.set(oldId, fresh);
  ds.set(oldId, await startNode(net, oldId, storages.get(oldId)!, fresh));
  await proposeSomewhere(ds, 'c');
  await until('all caught up', () => ids.every((id) => sms.get(id)!.items.includes('c')));
  const expected = [...Array.from({ length: 60 }, (_, i) => `a${i}`), ...Array.from({ length: 30 }, (_, i) => `b${i}`), 'c'];
  for (const id of ids) t.deepEqual(sms.get(id)!.items, expected, `node ${id}`);

  const follower = [...ds.values()].find((d) => d.core.role === 'follower')!;
  await proposeSomewhere(ds, 'd');
  await follower.readBarrier();
  t.true(sms.get(follower.core.id)!.items.includes('d'), 'a read barrier on a follower sees the latest write');
  t.true(old.counters.flushes > 0);
  for (const d of ds.values()) await d.close();
});

test('a group on LMDB storage comes back with its log after all nodes stop', async (t) => {
  const dirs = ids.map(() => mkdtempSync(join(tmpdir(), 'squall-raft-driver-')));
  try {
    const run = async (values: string[]): Promise<Map<number, Log>> => {
      const net = new MemoryNetwork();
      const storages = ids.map((_, i) => new LmdbStorage({ path: dirs[i]! }));
      const sms = new Map(ids.map((id) => [id, new Log()]));
      const ds = new Map<number, RaftDriver>();
      for (const id of ids) ds.set(id, await startNode(net, id, storages[id - 1]!, sms.get(id)!));
      await until('a leader', () => leaderOf(ds) !== undefined);
      for (const v of values) await proposeSomewhere(ds, v);
      await until('applied everywhere', () => ids.every((id) => sms.get(id)!.items.at(-1) === values.at(-1)));
      for (const d of ds.values()) await d.close();
      for (const s of storages) await s.close();
      return sms;
    };
    await run(Array.from({ length: 50 }, (_, i) => `x${i}`));
    const after = await run(['y']);
    const expected = [...Array.from({ length: 50 }, (_, i) => `x${i}`), 'y'];
    for (const id of ids) t.deepEqual(after.get(id)!.items, expected, `node ${id} replayed snapshot + log`);
  } finally {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
});

test('a failed flush stops the node: it never sends what it could not persist, and calls fail', async (t) => {
  class FailingStorage extends MemoryStorage {
    fail = false;
    override async flush(): Promise<void> {
      if (this.fail) throw new Error('disk full');
      return super.flush();
    }
  }
  const net = new MemoryNetwork();
  const storage = new FailingStorage();
  const d = await RaftDriver.start({
    id: 1, peers: new Map([[1, 'mem:1']]), voters: [1], transport: net.endpoint(1), storage,
    stateMachine: new Log(), tickMs: 5, core: { electionTicks: 4, heartbeatTicks: 1 },
  });
  await until('single-node leader', () => d.core.role === 'leader');
  await d.propose(text('ok'));
  storage.fail = true;
  await t.throwsAsync(d.propose(text('lost')), { instanceOf: Error });
  t.throws(() => d.propose(text('after')), { message: 'disk full' });
});

test('a node added later as a learner is caught up by snapshot through the driver, then promoted', async (t) => {
  const net = new MemoryNetwork();
  const all = new Map([...peers, [4, 'mem:4']]);
  const sms = new Map([1, 2, 3, 4].map((id) => [id, new Log()]));
  const ds = new Map<number, RaftDriver>();
  const start = (id: number, voters: number[]) => RaftDriver.start({
    id, peers: all, voters, transport: net.endpoint(id), storage: new MemoryStorage(), stateMachine: sms.get(id)!,
    tickMs: 5, compactEvery: 20, core: { electionTicks: 10, heartbeatTicks: 2, snapshotChunkBytes: 64 },
  });
  for (const id of ids) ds.set(id, await start(id, ids));
  await until('a leader', () => leaderOf(ds) !== undefined);
  for (let i = 0; i < 60; i++) await proposeSomewhere(ds, `v${i}`);
  ds.set(4, await start(4, []));
  await leaderOf(ds)!.proposeConfChange({ op: 'addLearner', node: 4 });
  await until('learner caught up', () => sms.get(4)!.items.length === 60);
  t.true(ds.get(4)!.core.log.snapIndex > 0, 'it started from a snapshot, not from entry 1');
  await leaderOf(ds)!.proposeConfChange({ op: 'addVoter', node: 4 });
  await proposeSomewhere(ds, 'w');
  await until('new voter applied', () => sms.get(4)!.items.at(-1) === 'w');
  t.deepEqual(ds.get(4)!.core.conf.voters, [1, 2, 3, 4]);
  t.deepEqual(sms.get(4)!.items, sms.get(1)!.items);
  for (const d of ds.values()) await d.close();
});
