// The group API on a raft-ordered shard (layout `mode: 'raft'`, static view, issue #12): three
// nodes in this process on loopback. Ordered calls from every member get every member's reply and
// leave equal digests; every replica applies the same calls in the same (log) order with strictly
// increasing versions in the 64-bit (term << 32 | index) form and increasing HLC times; the three
// frontier waits resolve with the frontiers past the version; an exception is each member's
// RemoteError; the default (linearizable) p2p read on a follower sees a call as soon as its
// version is known, a 'local' read answers at once. Then one node's endpoint is closed abruptly
// (the shard's Raft leader) and calls from the survivors still commit, are delivered and
// durable locally, while persisted() waits for the dead member (the documented choice).
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  RemoteError,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
  type NodeId,
  type ReplicaContext,
  type Version,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { waitFor } from '../support/membership-local.js';
import { compareHlc, type Hlc } from '../../src/core/hlc.js';
import { versionPosition, versionViewId } from '../../src/core/ids.js';

@replicated({ name: 'GroupRaftCounter', transient: ['context', 'applied'], factory: (c) => new RaftCounter(c as ReplicaContext) })
class RaftCounter {
  declare readonly [ORDERED_METHODS]: 'add' | 'fail';
  declare readonly [P2P_METHODS]: 'read';
  @persistent() total = new Persistent(() => 0);
  /** What this replica applied, in its order: [version, time, n]. */
  applied: [Version, Hlc, number][] = [];
  constructor(private readonly context: ReplicaContext) {}

  @ordered() add(n: number): number {
    this.applied.push([this.context.version!, this.context.timestamp!, n]);
    this.total.value += n;
    return this.total.value;
  }
  @ordered() fail(): number {
    throw new Error(`no, says ${this.context.nodeId}`);
  }
  @p2p() read(): number {
    return this.total.value;
  }
}

const layout = { GroupRaftCounter: oneSubgroup(fixedEvenShards(1, 3, { mode: 'raft' })) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-raft-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));
const timeouts = '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300';

/** The replica object of `group` (for checking its applied order). */
const objectOf = (group: Group): RaftCounter =>
  (group as unknown as { replicas: Map<string, { object: RaftCounter }> }).replicas.get('GroupRaftCounter/0')!.object;

test.serial('a raft shard serves the group API: replies, one order, versions, frontiers, errors, linearizable p2p', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(3, { dataRoot: join(dataRoot, 'api'), extraToml: timeouts });
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [RaftCounter], layout })));
  try {
    const handles = groups.map((g) => g.subgroup(RaftCounter));
    t.is(groups[0]!.view.subgroup('GroupRaftCounter', 0)!.shards[0]!.mode, 'raft');
    // 30 concurrent calls from all three members.
    const calls = Array.from({ length: 30 }, (_, i) => handles[i % 3]!.ordered.add(i + 1));
    for (const results of calls) {
      const replies = await results;
      t.deepEqual([...replies.keys()].map(Number).sort(), [0, 1, 2], 'a reply from every member');
      const values = [...replies.values()];
      t.true(values.every((v) => v === values[0]), 'every replica computed the same reply');
    }
    const expected = (30 * 31) / 2;
    await waitFor('all applied', () => groups.every((g) => objectOf(g).total.value === expected));
    const digests = handles.map((h) => h.digest());
    t.is(new Set(digests).size, 1, 'equal digests');
    // One order everywhere; versions strictly increase in the group's 64-bit form, times too.
    const orders = groups.map((g) => objectOf(g).applied);
    for (const order of orders.slice(1)) t.deepEqual(order.map(([v, , n]) => [v, n]), orders[0]!.map(([v, , n]) => [v, n]));
    for (let i = 1; i < orders[0]!.length; i++) {
      const [v0, time0] = orders[0]![i - 1]!;
      const [v1, time1] = orders[0]![i]!;
      t.true(v1 > v0, `version ${v1} after ${v0}`);
      t.true(compareHlc(time1, time0) > 0, 'times increase along the log');
      t.true(versionPosition(v1) > versionPosition(v0) && versionViewId(v1) >= versionViewId(v0), 'term high, index low');
    }
    // The version a caller sees is the one every replica applied the call under.
    const results = handles[1]!.ordered.add(1000);
    const version = await results.version;
    const stamp = await results.timestamp;
    const delivered = await results.delivered();
    t.is(delivered, version);
    t.true(handles[1]!.frontier().delivered >= version);
    await results.localPersisted();
    t.true(handles[1]!.frontier().localPersisted >= version);
    await results.persisted();
    for (const h of handles) t.true(h.frontier().localPersisted >= version, 'persisted() means durable on every member');
    t.true(handles[1]!.frontier().persisted >= version);
    await waitFor('applied everywhere', () => groups.every((g) => objectOf(g).applied.some(([v]) => v === version)));
    for (const g of groups) {
      const [, time] = objectOf(g).applied.find(([v]) => v === version)!;
      t.deepEqual(time, stamp, 'the same HLC time on every replica');
    }
    t.is(handles[2]!.versions('total').latestVersion(), version, 'the history is versioned by the call');
    // An exception is each member's RemoteError.
    const failed = handles[0]!.ordered.fail();
    for (const [node, reply] of failed.replies) {
      const error = await t.throwsAsync(reply, { instanceOf: RemoteError });
      t.regex(error!.message, new RegExp(`no, says ${node}`));
    }
    // Linearizable p2p (default): once a call's version is known (applied at the leader), a read
    // on any member sees it, however far that member's own apply lags.
    for (let i = 0; i < 20; i++) {
      await handles[i % 3]!.ordered.add(1).version;
      const reader = ((i + 1) % 3) as NodeId;
      const seen = await handles[0]!.p2p(reader).read();
      t.true(seen >= expected + 1000 + i + 1, `read ${i} at node ${reader}: ${seen}`);
    }
    const local = await groups[2]!.nonmember(RaftCounter).p2p(1, { read: 'local' }).read();
    t.true(local > 0 && local <= expected + 1000 + 20);
  } finally {
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});

test.serial('a raft shard keeps committing with one of three members dead (its leader, endpoint closed abruptly)', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(3, { dataRoot: join(dataRoot, 'kill'), extraToml: timeouts });
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [RaftCounter], layout })));
  try {
    const handles = groups.map((g) => g.subgroup(RaftCounter));
    await handles[1]!.ordered.add(1);
    const raftOf = (g: Group) => (g as unknown as { replicas: Map<string, { driver: { raft: { core: { role: string } } } }> })
      .replicas.get('GroupRaftCounter/0')!.driver.raft.core;
    const leader = groups.findIndex((g) => raftOf(g).role === 'leader');
    t.true(leader >= 0, 'a leader');
    const killedAt = Date.now();
    await groups[leader]!.transport.close(); // abruptly: no goodbye, its Raft goes silent
    const survivors = [0, 1, 2].filter((i) => i !== leader);
    let total = 1;
    for (let i = 0; i < 10; i++) {
      const from = survivors[i % 2]!;
      const results = handles[from]!.ordered.add(2);
      total += 2;
      await results.delivered();
      for (const s of survivors) t.is(await results.replies.get(s as NodeId)!, total, `survivor ${s}'s reply`);
      await results.localPersisted();
      if (i === 0) t.log(`first call after the leader's death delivered ${Date.now() - killedAt} ms after the kill`);
    }
    const last = handles[survivors[0]!]!.ordered.add(0);
    await last.delivered();
    const persisted = await Promise.race([last.persisted().then(() => 'persisted'), new Promise((r) => setTimeout(() => r('waiting'), 300))]);
    t.is(persisted, 'waiting', 'persisted() waits for the dead member');
    await waitFor('survivors equal', () => objectOf(groups[survivors[0]!]!).total.value === total && objectOf(groups[survivors[1]!]!).total.value === total);
    t.is(handles[survivors[0]!]!.digest(), handles[survivors[1]!]!.digest());
  } finally {
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});

test.serial('a member cut off while the log was compacted catches up by snapshot (the replica\'s persistent state), then applies again', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(3, { dataRoot: join(dataRoot, 'snap'), extraToml: `${timeouts}\n[raft]\ncompact_every = 20` });
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [RaftCounter], layout })));
  try {
    const handles = groups.map((g) => g.subgroup(RaftCounter));
    await handles[0]!.ordered.add(1);
    const engineOf = (g: Group) => (g as unknown as { replicas: Map<string, { driver: { raft: { core: { role: string; log: { snapIndex: number } } }; counters: { snapshotsRestored: number } } }> })
      .replicas.get('GroupRaftCounter/0')!.driver;
    const lagger = groups.findIndex((g) => engineOf(g).raft.core.role !== 'leader');
    const others = [0, 1, 2].filter((i) => i !== lagger);
    const address = (i: number): string => groups[i]!.transport.address;
    const fault = (op: 'failPeer' | 'restorePeer'): void => {
      for (const i of others) {
        (groups[i]!.transport as unknown as { injectFault(f: object): void }).injectFault({ [op]: address(lagger) });
        (groups[lagger]!.transport as unknown as { injectFault(f: object): void }).injectFault({ [op]: address(i) });
      }
    };
    fault('failPeer');
    let total = 1;
    for (let i = 0; i < 60; i++) {
      const results = handles[others[i % 2]!]!.ordered.add(1);
      total += 1;
      await results.delivered();
    }
    t.true(engineOf(groups[others[0]!]!).raft.core.log.snapIndex > 1, 'the others compacted their logs');
    t.true(objectOf(groups[lagger]!).total.value < total, 'the cut-off member is behind');
    fault('restorePeer');
    await waitFor('the lagging member caught up', () => objectOf(groups[lagger]!).total.value === total, 20_000);
    t.true(engineOf(groups[lagger]!).counters.snapshotsRestored > 0, 'by snapshot');
    t.is(handles[lagger]!.digest(), handles[others[0]!]!.digest(), 'equal replicas');
    // And it applies (and replies to) new calls like the others.
    const results = handles[others[0]!]!.ordered.add(5);
    t.is(await results.replies.get(lagger as NodeId)!, total + 5);
    t.is(await handles[lagger]!.p2p(lagger).read(), total + 5, 'linearizable read on the member that was behind');
  } finally {
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});
