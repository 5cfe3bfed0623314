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
import type { Entry, HardState, Snapshot } from '../../src/raft/types.js';
import { encodeMessages } from '../../src/raft/codec.js';
import { RAFT_REQUEST_TYPE, RaftDriver, type StateMachine } from '../../src/runtime/raft-driver.js';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';
import type { Transport, TransportSession } from '../../src/transport/transport.js';

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

async function startNode(net: MemoryNetwork, id: number, storage: RaftStorage, sm: Log, electionTicks = 10): Promise<RaftDriver> {
  return RaftDriver.start({
    id, peers, voters: ids, transport: net.endpoint(id), storage, stateMachine: sm,
    tickMs: 5, compactEvery: 40, core: { electionTicks, heartbeatTicks: 2 },
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

test('a commit-index-only change costs no flush of its own: it rides on the next one, or the next tick', async (t) => {
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new MemoryStorage()]));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, new Log()));
  await until('a leader', () => leaderOf(ds) !== undefined);
  await proposeSomewhere(ds, 'warm');
  const leader = leaderOf(ds)!;
  const storage = storages.get(leader.core.id)!;
  const before = storage.stats.flushes;
  const proposals = 50;
  for (let i = 0; i < proposals; i++) await leader.propose(text(`c${i}`));
  // One flush per proposal (its entry), not two (entry, then the new commit index); ticks may
  // add a few lazy ones while this runs.
  const flushes = storage.stats.flushes - before;
  t.true(flushes < proposals * 1.5, `${flushes} flushes for ${proposals} proposals`);
  // The last commit index is still written within a tick or two, without any new proposal.
  const last = leader.core.log.lastIndex();
  let onDisk = -1;
  for (let i = 0; i < 200 && onDisk !== last; i++) {
    await new Promise((r) => setTimeout(r, 5));
    onDisk = (await storage.loadHardState())?.commit ?? -1;
  }
  t.is(onDisk, last, 'the commit index reached storage without a further proposal');
  for (const d of ds.values()) await d.close();
});

test('a write of entries carries no hard state that only moves the commit index (the tick writes it alone)', async (t) => {
  /** Counts flushes that write entries together with a hard state whose term and vote are unchanged. */
  class HardStateWatch extends MemoryStorage {
    mixed = 0;
    entryFlushes = 0;
    commitOnlyFlushes = 0;
    /** The hard state last flushed. */
    stored: HardState | undefined;
    private pending: HardState | undefined;
    private appended = false;
    override append(entries: readonly Entry[]): void {
      super.append(entries);
      if (entries.length) this.appended = true;
    }
    override setHardState(hs: HardState): void {
      super.setHardState(hs);
      this.pending = hs;
    }
    override flush(): Promise<void> | undefined {
      const { pending: hs, stored } = this;
      const commitOnly = hs !== undefined && stored !== undefined && hs.term === stored.term && hs.vote === stored.vote;
      if (this.appended) this.entryFlushes++;
      if (this.appended && commitOnly) this.mixed++;
      if (!this.appended && commitOnly) this.commitOnlyFlushes++;
      if (hs) this.stored = hs;
      this.pending = undefined;
      this.appended = false;
      return super.flush();
    }
  }
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new HardStateWatch()]));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, new Log()));
  await until('a leader', () => leaderOf(ds) !== undefined);
  await proposeSomewhere(ds, 'warm');
  const leader = leaderOf(ds)!;
  for (let i = 0; i < 40; i++) await leader.propose(text(`h${i}`));
  const last = leader.core.log.lastIndex();
  // Every node still writes the latest commit index, at a tick, with no new proposal.
  await until('the commit index on every disk', () => [...storages.values()].every((s) => s.stored?.commit === last));
  for (const [id, s] of storages) {
    t.true(s.entryFlushes >= 40, `node ${id}: ${s.entryFlushes} flushes with entries`);
    t.is(s.mixed, 0, `node ${id}: ${s.mixed} flushes wrote entries and a commit-only hard state together`);
    t.true(s.commitOnlyFlushes >= 1, `node ${id}: the commit index was written on its own`);
  }
  for (const d of ds.values()) await d.close();
});

/** MemoryStorage whose flush takes a few ms and which records how far its log is durable. */
class SlowStorage extends MemoryStorage {
  durableLast = 0;
  private pendingLast = 0;
  override append(entries: readonly Entry[]): void {
    super.append(entries);
    if (entries.length) this.pendingLast = entries[entries.length - 1]!.index;
  }
  override async flush(): Promise<void> {
    const last = this.pendingLast;
    await new Promise((r) => setTimeout(r, 3));
    await super.flush();
    this.durableLast = Math.max(this.durableLast, last);
  }
}

test('committed entries are applied early only if already durable here (a lagging follower waits)', async (t) => {
  // A follower cut off while entries commit receives them later together with their commit
  // index: it must not apply them before its own copy is durable. The leader applies committed
  // entries while its next batch is still being written.
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new SlowStorage()]));
  const violations: string[] = [];
  const machines = new Map(ids.map((id) => {
    const sm = new Log();
    const apply = sm.apply.bind(sm);
    sm.apply = (e: Entry) => {
      const durable = storages.get(id)!.durableLast;
      if (e.index > durable) violations.push(`node ${id} applied ${e.index} with ${durable} durable`);
      apply(e);
    };
    return [id, sm];
  }));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, machines.get(id)!));
  await until('a leader', () => leaderOf(ds) !== undefined);
  const leader = leaderOf(ds)!;
  const lagging = ids.find((id) => id !== leader.core.id)!;
  for (const id of ids) if (id !== lagging) net.cut(`mem:${id}`, `mem:${lagging}`);
  await Promise.all(Array.from({ length: 30 }, (_, i) => leader.propose(text(`p${i}`))));
  net.heal();
  await until('the lagging follower caught up', () => machines.get(lagging)!.items.length === 30);
  t.deepEqual(violations, []);
  t.deepEqual(machines.get(lagging)!.items, machines.get(leader.core.id)!.items);
  for (const d of ds.values()) await d.close();
});

test('with a storage that writes synchronously, a follower writes and acks what it received before it applies', async (t) => {
  // Each append tells a follower the commit index of the entries before it: the follower's ack
  // of the new entry waits for its write only (persist before send), not for applying the
  // entries that append committed (the application's work is off the leader's commit path).
  /** MemoryStorage (flush() writes synchronously) that records how far its log is written. */
  class TrackedStorage extends MemoryStorage {
    writtenLast = 0;
    appendFlushes = 0;
    private pendingLast = 0;
    override append(entries: readonly Entry[]): void {
      super.append(entries);
      if (entries.length) this.pendingLast = entries[entries.length - 1]!.index;
    }
    override flush(): Promise<void> | undefined {
      const result = super.flush();
      if (this.pendingLast > this.writtenLast) this.appendFlushes++;
      this.writtenLast = Math.max(this.writtenLast, this.pendingLast);
      return result;
    }
  }
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new TrackedStorage()]));
  const ds = new Map<number, RaftDriver>();
  const violations: string[] = [];
  let checked = 0;
  for (const id of ids) {
    const sm = new Log();
    const apply = sm.apply.bind(sm);
    sm.apply = (e: Entry) => {
      const d = ds.get(id);
      if (d !== undefined && d.core.role === 'follower') {
        checked++;
        const s = storages.get(id)!;
        const last = d.core.log.lastIndex();
        if (s.writtenLast < last) violations.push(`follower ${id} applied ${e.index} holding ${last}, written ${s.writtenLast}`);
        if (d.counters.replies < s.appendFlushes) violations.push(`follower ${id} applied ${e.index} with ${s.appendFlushes} writes, ${d.counters.replies} answered`);
      }
      apply(e);
    };
    ds.set(id, await startNode(net, id, storages.get(id)!, sm));
  }
  await until('a leader', () => leaderOf(ds) !== undefined);
  await proposeSomewhere(ds, 'warm');
  const leader = leaderOf(ds)!;
  for (let i = 0; i < 30; i++) await leader.propose(text(`s${i}`));
  await until('followers applied all', () => [...ds.values()].every((d) => d.core.applied === leader.core.applied));
  t.true(checked >= 2 * 30, `${checked} follower applies checked`);
  t.deepEqual(violations, []);
  for (const d of ds.values()) await d.close();
});

test('acks ride on the responses to the appends; a request with nothing to answer gets an empty response', async (t) => {
  const net = new MemoryNetwork();
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, new MemoryStorage(), new Log()));
  await until('a leader', () => leaderOf(ds) !== undefined);
  await proposeSomewhere(ds, 'warm');
  const leader = leaderOf(ds)!;
  const followers = [...ds.values()].filter((d) => d !== leader);
  const before = followers.map((d) => ({ ...d.counters }));
  for (let i = 0; i < 40; i++) await leader.propose(text(`r${i}`));
  followers.forEach((d, i) => {
    const replies = d.counters.replies - before[i]!.replies;
    const sends = d.counters.sends - before[i]!.sends;
    // Every append was acknowledged in its response; a follower starts no calls of its own.
    t.true(replies >= 40, `follower ${d.core.id}: ${replies} replies`);
    t.is(sends, 0, `follower ${d.core.id} made ${sends} calls`);
  });
  t.is(leader.counters.sendErrors, 0, 'no call of the leader went unanswered');
  // A message that needs no answer (a stale-term heartbeat response) is answered at once, empty.
  const follower = followers[0]!;
  const stranger = net.endpoint(99);
  const session = await stranger.connect(`mem:${follower.core.id}`);
  // (From a node no one else talks to, so only the idle loop can answer it, not later traffic.)
  const stale = encodeMessages([{ type: 'heartbeatResp', from: 99, to: follower.core.id, term: 0, ctx: 0 }]);
  const response = await session.call(RAFT_REQUEST_TYPE, stale, { timeoutMs: 1000 });
  t.is(response.byteLength, 0);
  for (const d of ds.values()) await d.close();
});

test('followers learn a commit at once (a held commit notice), and the notices cost no calls of their own under a stream of proposals', async (t) => {
  const net = new MemoryNetwork();
  const ds = new Map<number, RaftDriver>();
  const logs = new Map<number, Log>();
  for (const id of ids) {
    const log = new Log();
    logs.set(id, log);
    // A heartbeat every 100 ticks (500 ms): without the commit notice, idle followers would
    // learn a commit only then.
    ds.set(id, await RaftDriver.start({
      id, peers, voters: ids, transport: net.endpoint(id), storage: new MemoryStorage(), stateMachine: log,
      tickMs: 5, core: { electionTicks: 200, heartbeatTicks: 100 },
    }));
  }
  try {
    await until('a leader', () => leaderOf(ds) !== undefined, 10_000);
    const leader = leaderOf(ds)!;
    await leader.propose(text('warm'));
    await until('followers applied the warm-up', () => [...logs.values()].every((l) => l.items.includes('warm')), 2000);
    await new Promise((r) => setTimeout(r, 50));
    await leader.propose(text('idle'));
    const committedAt = Date.now();
    await until('followers applied an idle commit', () => [...logs.values()].every((l) => l.items.includes('idle')), 2000);
    const waited = Date.now() - committedAt;
    t.true(waited < 250, `followers applied ${waited} ms after the commit (a heartbeat is 500 ms)`);
    // 64 proposals in flight: the appends carry the commit index, so held notices are dropped.
    const stream = async (l: RaftDriver, tag: string): Promise<void> => {
      const before = l.counters.sends;
      await Promise.all(Array.from({ length: 64 }, (_, i) => l.propose(text(`s${i}`))));
      for (let i = 0; i < 64; i++) await l.propose(text(`q${i}`));
      const calls = l.counters.sends - before;
      t.log(`${tag} calls for 128 proposals: ${calls}`);
      t.true(calls <= 2 * 64 + 2 * 8 + 20, `the ${tag} made ${calls} calls for 128 proposals`);
    };
    await stream(leader, 'leader');
    // The same from a node that was a follower: it answered the old leader's requests, and a
    // peer it once answered must not count as one it is answering now (its notices are held).
    const next = [...ds.entries()].find(([, d]) => d !== leader)!;
    leader.transferLeadership(next[0]);
    await until('the transfer', () => next[1].core.role === 'leader', 10_000);
    await stream(next[1], 'new leader');
  } finally {
    for (const d of ds.values()) await d.close();
  }
});

test('a leader hands its appends to the transport (Transport.flush) before its own log write, in the same turn', async (t) => {
  // The memory transport has no flush(): each node's is wrapped with one that, like the native
  // endpoint's, would send what was queued; here it only notes when the driver calls it, with
  // the calls made and the storage's writes, per node.
  const net = new MemoryNetwork();
  const events: string[] = [];
  let recording = false;
  const note = (id: number, what: string): void => {
    if (recording) events.push(`${id} ${what}`);
  };
  const forward = (target: object, property: string | symbol): unknown => {
    const value = Reflect.get(target, property, target) as unknown;
    return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
  };
  const wrap = (id: number, inner: Transport): Transport => new Proxy(inner, {
    get(target, property) {
      if (property === 'flush') return () => note(id, 'flush');
      if (property !== 'connect') return forward(target, property);
      return async (address: string) => {
        const session = await target.connect(address);
        return new Proxy(session, {
          get(s, q) {
            if (q !== 'call') return forward(s, q);
            return (...args: Parameters<TransportSession['call']>) => {
              note(id, 'call');
              return s.call(...args);
            };
          },
        });
      };
    },
  });
  class NotedStorage extends MemoryStorage {
    constructor(private readonly id: number) {
      super();
    }
    override flush(): Promise<void> | undefined {
      note(this.id, 'write');
      return super.flush();
    }
  }
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) {
    ds.set(id, await RaftDriver.start({
      id, peers, voters: ids, transport: wrap(id, net.endpoint(id)), storage: new NotedStorage(id), stateMachine: new Log(),
      tickMs: 5, core: { electionTicks: 200, heartbeatTicks: 100 },
    }));
  }
  try {
    await until('a leader', () => leaderOf(ds) !== undefined, 10_000);
    const leader = leaderOf(ds)!;
    await leader.propose(text('warm'));
    recording = true;
    const proposed = leader.propose(text('one'));
    await Promise.resolve(); // the leader's loop runs in the microtask its proposal scheduled
    const id = leader.core.id;
    t.deepEqual(events.filter((e) => e.startsWith(`${id} `)), [`${id} call`, `${id} call`, `${id} flush`, `${id} write`]);
    await proposed;
  } finally {
    recording = false;
    for (const d of ds.values()) await d.close();
  }
});

/** A storage whose flushes wait, while `held`, until released (in order): a stalled fsync. */
class StalledStorage extends MemoryStorage {
  readonly slowFlush = true;
  held = false;
  private waiting: Array<() => void> = [];
  override async flush(): Promise<void> {
    if (this.held) await new Promise<void>((resolve) => this.waiting.push(resolve));
    return super.flush();
  }
  release(): void {
    this.held = false;
    for (const w of this.waiting.splice(0)) w();
  }
}

test('on a slow disk the leader replicates and commits while its own log write is still in flight (thesis §10.2.1)', async (t) => {
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new StalledStorage()]));
  const sms = new Map(ids.map((id) => [id, new Log()]));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, sms.get(id)!));
  try {
    await until('a leader', () => leaderOf(ds) !== undefined);
    await proposeSomewhere(ds, 'first');
    const leader = leaderOf(ds)!;
    const stalled = storages.get(leader.core.id)!;
    stalled.held = true; // the leader's disk stalls; its followers' disks do not
    const before = leader.counters.backgroundFlushes;
    // Both resolve (applied at the leader) though the leader's own writes have not completed:
    // the two followers are the majority. With the leader awaiting its flush, neither would.
    const both = Promise.all([leader.propose(text('a')), leader.propose(text('b'))]);
    const stuck = new Promise((_, reject) => setTimeout(() => reject(new Error('proposals waited for the leader\'s stalled disk')), 5000));
    await Promise.race([both, stuck]);
    t.deepEqual(sms.get(leader.core.id)!.items.slice(-2), ['a', 'b']);
    t.true(leader.counters.backgroundFlushes > before);
    t.true(leader.core.stableIndex < leader.core.commit, `the leader has not counted itself for them (stable ${leader.core.stableIndex}, commit ${leader.core.commit}, last ${leader.core.log.lastIndex()})`);
    stalled.release();
    await until('the leader counts its own log again', () => leader.core.stableIndex >= leader.core.commit);
  } finally {
    for (const s of storages.values()) s.release(); // else close() waits for a loop stuck on it
    for (const d of ds.values()) await d.close();
  }
});

test('proposeWith: told once with the index when applied here, at once with the refusal on a follower, and with an error at close', async (t) => {
  const net = new MemoryNetwork();
  const sms = new Map(ids.map((id) => [id, new Log()]));
  const ds = new Map<number, RaftDriver>();
  for (const id of ids) ds.set(id, await startNode(net, id, new MemoryStorage(), sms.get(id)!));
  await until('a leader', () => leaderOf(ds) !== undefined);
  const leader = leaderOf(ds)!;
  await proposeSomewhere(ds, 'first'); // the leader's no-op is committed
  const outcomes: Array<[Error | undefined, number]> = [];
  const done = new Promise<void>((resolve) => {
    leader.proposeWith(text('x'), (error, index) => {
      outcomes.push([error, index]);
      // Called after the apply: the entry is in this node's state machine.
      t.true(sms.get(leader.core.id)!.items.includes('x'));
      resolve();
    });
  });
  await done;
  t.is(outcomes.length, 1);
  t.is(outcomes[0]![0], undefined);
  t.is(outcomes[0]![1], leader.core.log.lastIndex());

  const follower = [...ds.values()].find((d) => d !== leader)!;
  let refused: Error | undefined;
  follower.proposeWith(text('y'), (error) => {
    refused = error;
  });
  t.is((refused as { reason?: string } | undefined)?.reason, 'not-leader', 'refused before proposeWith returned');

  // Pending at close: told with an error, once.
  for (const d of ds.values()) if (d !== leader) await d.close();
  const atClose: Array<Error | undefined> = [];
  leader.proposeWith(text('z'), (error) => atClose.push(error));
  await leader.close();
  t.is(atClose.length, 1);
  t.truthy(atClose[0]);
  t.false(sms.get(leader.core.id)!.items.includes('z'));
});

test('durable followers ack an append only once it is on their disk: with both followers\' writes stalled nothing commits', async (t) => {
  const net = new MemoryNetwork();
  const storages = new Map(ids.map((id) => [id, new StalledStorage()]));
  const sms = new Map(ids.map((id) => [id, new Log()]));
  const ds = new Map<number, RaftDriver>();
  // A stalled follower answers nothing, heartbeats included, until its write completes: an
  // election timeout (2 s) well past the stall keeps the leader from stepping down (check-quorum).
  for (const id of ids) ds.set(id, await startNode(net, id, storages.get(id)!, sms.get(id)!, 400));
  try {
    ds.get(1)!.core.campaign();
    await until('a leader', () => leaderOf(ds) !== undefined);
    await proposeSomewhere(ds, 'first');
    const leader = leaderOf(ds)!;
    const followers = ids.filter((id) => id !== leader.core.id);
    for (const id of followers) storages.get(id)!.held = true; // the followers' fsyncs stall
    let committed = false;
    const proposal = leader.propose(text('x')).then(() => void (committed = true));
    const index = leader.core.log.lastIndex();
    // Appends reach the followers at once (memory transport) and heartbeats go on every 10 ms:
    // an ack sent before the write is durable would show in the leader's progress well within this.
    await until('both followers received the entry', () => followers.every((id) => ds.get(id)!.core.log.lastIndex() >= index));
    await new Promise((r) => setTimeout(r, 150));
    const { progress, role } = leader.core.status();
    t.is(role, 'leader');
    for (const id of followers) t.true(progress[id]!.match < index, `follower ${id} acked ${progress[id]!.match} ≥ ${index} before its write was durable`);
    t.false(committed, 'committed with no follower\'s copy durable');
    for (const id of followers) storages.get(id)!.release();
    await proposal;
    t.deepEqual(sms.get(leader.core.id)!.items.slice(-1), ['x']);
  } finally {
    for (const s of storages.values()) s.release();
    for (const d of ds.values()) await d.close();
  }
});
