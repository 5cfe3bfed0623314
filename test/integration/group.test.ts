// Proves the group API end to end on a real 3-node group (three native endpoints on loopback in
// this process, LMDB per node, static view from group.members): ordered calls get a reply from
// every member and leave identical state digests; version/timestamp agree across replicas;
// delivered()/localPersisted()/persisted() resolve in order and only once the frontiers reached
// the version; p2p reads from each member; an application exception is each member's
// RemoteError; an ordered call from inside an ordered call is refused with a clear error while a
// p2p call there works; temporal queries give identical answers on every replica; payload limits.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  NoSuchShardError,
  NotMemberError,
  ORDERED_METHODS,
  P2P_METHODS,
  PayloadTooLargeError,
  Persistent,
  RemoteError,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
  nodeId,
  type NodeId,
  type ReplicaContext,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { KvStore } from '../../examples/kv-store/app.js';

@replicated({ name: 'GroupTestCounter' })
class Counter {
  declare readonly [ORDERED_METHODS]: 'add' | 'addTwice' | 'addAfterPeek' | 'addLater';
  declare readonly [P2P_METHODS]: 'read';
  @persistent() total = new Persistent(() => 0);
  peer: Counter | null = null;

  @ordered() add(n: number): number {
    this.total.value += n;
    return this.total.value;
  }
  /** Wrong on purpose: an ordered call from inside an ordered call. */
  @ordered() addTwice(n: number): number {
    this.total.value += n;
    (context as Context).group.subgroup(Counter).ordered.add(n);
    return this.total.value;
  }
  /** Allowed: a p2p read from inside an ordered call. */
  @ordered() async addAfterPeek(n: number, node: number): Promise<number> {
    this.total.value += n;
    const seen = await (context as Context).group.subgroup(Counter).p2p(node).read();
    return seen;
  }
  /** Wrong on purpose too: the inner ordered call comes after an await (async method). */
  @ordered() async addLater(n: number): Promise<number> {
    await new Promise((resolve) => setTimeout(resolve, 1));
    await (context as Context).group.subgroup(Counter).ordered.add(n);
    return this.total.value;
  }
  @p2p() read(): number {
    return this.total.value;
  }
}
interface Context { group: Group }

/** Receives its ReplicaContext through the factory and reports the ordered call's version. */
@replicated({ name: 'GroupTestStamped', factory: (c) => new Stamped(c as ReplicaContext) })
class Stamped {
  declare readonly [ORDERED_METHODS]: 'stamp';
  declare readonly [P2P_METHODS]: 'where';
  constructor(private readonly replica: ReplicaContext) {}
  @ordered() stamp(): string {
    return `${this.replica.version}@${this.replica.timestamp?.micros}.${this.replica.timestamp?.logical}`;
  }
  @p2p() where(): string {
    return `${this.replica.nodeId}/${this.replica.typeName}/${this.replica.subgroupIndex}/${this.replica.shardIndex}/view${this.replica.view.id}/${String(this.replica.version)}`;
  }
}
let context: Context | undefined;

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-'));
let groups: Group[] = [];

test.before(async () => {
  const configs = await localGroupConfigs(3, {
    dataRoot,
    extraToml: '[p2p]\nmax_p2p_request_payload_size = 2048\nmax_p2p_reply_payload_size = 4096\n[multicast]\nmax_payload_size = 65536\n',
  });
  // Both types on all three nodes: overlapping subgroups through reserved ids.
  const everyone = { reservedNodeIdsByShard: [[0, 1, 2].map(nodeId)] };
  const layout = {
    KvStore: oneSubgroup(fixedEvenShards(1, 3, everyone)),
    GroupTestCounter: oneSubgroup(fixedEvenShards(1, 3, everyone)),
    GroupTestStamped: oneSubgroup(fixedEvenShards(1, 3, everyone)),
  };
  groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore, Counter, Stamped], layout })));
  context = { group: groups[0]! };
});

test.after.always(async () => {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
});

const ids = (): NodeId[] => groups.map((g) => g.nodeId);

test.serial('ordered calls: a reply from every member, identical digests, versions in order', async (t) => {
  const kv = groups.map((g) => g.subgroup(KvStore));
  t.deepEqual([...kv[0]!.members], ids());
  const first = await kv[0]!.ordered.put('alpha', '1');
  t.deepEqual([...first.keys()].sort(), ids().sort());
  t.deepEqual([...first.values()], ['', '', '']);
  // Concurrent senders: every replica applies the same order.
  const calls: ReturnType<typeof kv[0]['ordered']['put']>[] = [];
  for (let i = 0; i < 30; i++) calls.push(kv[i % 3]!.ordered.put(`k${i % 7}`, `v${i}`));
  const replies = await Promise.all(calls);
  for (const reply of replies) t.is(new Set(reply.values()).size, 1, 'all replicas returned the same previous value');
  const versions = await Promise.all(calls.map((c) => c.version));
  t.is(new Set(versions.map(String)).size, versions.length, 'versions are unique');
  await Promise.all(calls.map((c) => c.delivered()));
  const last = await kv[0]!.ordered.put('omega', 'z').delivered();
  await Promise.all(groups.map((g) => waitFor(() => g.frontier(KvStore).delivered >= last)));
  const digests = kv.map((k) => k.digest());
  t.is(new Set(digests).size, 1, `digests differ: ${digests.join(' ')}`);
});

test.serial('delivered, localPersisted and persisted resolve once the frontiers pass the version', async (t) => {
  const kv = groups[1]!.subgroup(KvStore);
  const results = kv.ordered.put('durable', 'yes');
  const version = await results.version;
  t.is(await results.delivered(), version);
  t.true(kv.frontier().delivered >= version);
  t.is(await results.localPersisted(), version);
  t.true(kv.frontier().localPersisted >= version);
  t.is(await results.persisted(), version);
  t.true(kv.frontier().persisted >= version, 'persisted() resolved only when the shard-wide frontier passed the version');
  // Every member holds the version in its history once persisted() resolved.
  for (const g of groups) {
    const entries = g.subgroup(KvStore).versions('entries');
    t.true(entries.latestVersion() >= version);
    t.is(entries.get(version).get('durable'), 'yes');
  }
  const stamp = await results.timestamp;
  t.true(stamp.micros > 0);
});

test.serial('persisted() waits until every replica committed the version: one replica\'s commits held back', async (t) => {
  // Node 2's store commits each turn's writes in commitTurn (one LMDB transaction, synced with
  // sync = "durable"); holding those commits is a replica whose disk has not answered yet.
  const store = (groups[2] as unknown as { store: { commitTurn(): void } }).store;
  const held: (() => void)[] = [];
  const commit = store.commitTurn;
  store.commitTurn = function (this: typeof store) {
    held.push(() => commit.call(this));
  };
  try {
    const kv = groups[0]!.subgroup(KvStore);
    const results = kv.ordered.put('held', 'back');
    const version = await results.version;
    let persisted = false;
    void results.persisted().then(() => (persisted = true));
    await Promise.all(groups.map((g) => waitFor(() => g.frontier(KvStore).delivered >= version)));
    await results.localPersisted();
    await waitFor(() => groups[1]!.frontier(KvStore).localPersisted >= version);
    await new Promise((resolve) => setTimeout(resolve, 200));
    t.true(held.length > 0, 'node 2 tried to commit');
    t.true(groups[2]!.frontier(KvStore).localPersisted < version, 'node 2 has not made it durable');
    t.false(persisted, 'persisted() resolved while a replica had not committed the version');
    t.true(kv.frontier().persisted < version);
    store.commitTurn = commit;
    for (const release of held.splice(0)) release();
    t.is(await results.persisted(), version);
    t.true(groups[2]!.frontier(KvStore).localPersisted >= version);
  } finally {
    store.commitTurn = commit;
    for (const release of held.splice(0)) release();
  }
});

test.serial('p2p reads from every member; p2p to a non-member node is refused', async (t) => {
  const kv = groups[2]!.subgroup(KvStore);
  await groups[2]!.subgroup(KvStore).ordered.put('p2p-key', 'seen').persisted();
  for (const node of ids()) {
    await waitFor(() => groups[node]!.frontier(KvStore).delivered >= groups[2]!.frontier(KvStore).delivered);
    t.is(await kv.p2p(node).get('p2p-key'), 'seen');
  }
  const external = groups[0]!.nonmember(KvStore);
  t.is(await external.p2p(1).get('p2p-key'), 'seen');
  t.throws(() => kv.p2p(99).get('x'), { instanceOf: NotMemberError });
});

test.serial('an application exception is each member\'s RemoteError, and state stays equal', async (t) => {
  const kv = groups[0]!.subgroup(KvStore);
  const results = kv.ordered.update('no-such-key', 'x');
  for (const [node, reply] of results.replies) {
    const error = await t.throwsAsync(reply, { instanceOf: RemoteError });
    t.is(error?.remoteName, 'KeyMissingError');
    t.is(error?.nodeId, node);
  }
  await t.throwsAsync(Promise.resolve(results), { instanceOf: RemoteError });
  t.is((await kv.ordered.update('alpha', '2')).get(groups[0]!.nodeId), '1');
});

test.serial('an ordered call inside an ordered call is refused; a p2p call there works', async (t) => {
  const counter = groups[0]!.subgroup(Counter);
  const refused = counter.ordered.addTwice(5);
  const error = await t.throwsAsync(refused.replies.get(groups[0]!.nodeId)!, { instanceOf: RemoteError });
  t.is(error?.remoteName, 'OrderedCallInOrderedError');
  t.regex(error?.remoteMessage ?? '', /from inside the ordered call GroupTestCounter\.addTwice/);
  const peek = await counter.ordered.addAfterPeek(1, groups[1]!.nodeId);
  t.is(peek.size, 3);
  const later = await t.throwsAsync(counter.ordered.addLater(2).replies.get(groups[0]!.nodeId)!, { instanceOf: RemoteError });
  t.is(later?.remoteName, 'OrderedCallInOrderedError', 'refused after an await too');
  // Outside any ordered call, ordered calls work again (the tracking was reset).
  t.is((await counter.ordered.add(0)).size, 3);
});

test.serial('temporal queries give identical answers on every replica', async (t) => {
  const kv = groups[0]!.subgroup(KvStore);
  await kv.ordered.put('t', 'before').persisted();
  const middle = kv.ordered.put('t', 'middle');
  const stamp = await middle.timestamp;
  await middle.persisted();
  await kv.ordered.put('t', 'after').persisted();
  const answers = [];
  for (const g of groups) {
    const replica = g.subgroup(KvStore);
    await replica.whenStable(stamp);
    answers.push(replica.versions('entries').getByTime(stamp).get('t'));
    answers.push(await kv.p2p(g.nodeId).getAt('t', stamp.micros));
  }
  t.deepEqual(answers, Array(6).fill('middle'));
});

test.serial('payload limits: ordered above max_payload_size, p2p request and reply above theirs', async (t) => {
  const kv = groups[0]!.subgroup(KvStore);
  const big = 'x'.repeat(70_000);
  await t.throwsAsync(kv.ordered.put('big', big).version, { instanceOf: PayloadTooLargeError, message: /max_payload_size/ });
  await t.throwsAsync(kv.p2p(1).get('y'.repeat(4096)), { instanceOf: PayloadTooLargeError, message: /p2p\.max_p2p_request_payload_size/ });
  await kv.ordered.put('wide', 'w'.repeat(5000)).persisted();
  await t.throwsAsync(kv.p2p(1).get('wide'), { instanceOf: PayloadTooLargeError, message: /reply to p2p call KvStore\.get to node 1 is \d+ bytes, above the limit of 4096 bytes.*p2p\.max_p2p_reply_payload_size/ });
});

test.serial('a replica gets its context: node, shard, view, and the ordered call\'s version and time', async (t) => {
  const stamped = groups[1]!.subgroup(Stamped);
  const results = stamped.ordered.stamp();
  const expected = `${await results.version}@${(await results.timestamp).micros}.${(await results.timestamp).logical}`;
  t.deepEqual([...(await results).values()], [expected, expected, expected]);
  t.is(await stamped.p2p(2).where(), '2/GroupTestStamped/0/0/view1/undefined');
});

test.serial('members, shardOf, view, rank and shards describe the layout', (t) => {
  const g = groups[2]!;
  t.deepEqual(g.members(KvStore), [[0, 1, 2]]);
  t.is(g.shardOf(KvStore, 'any key') as number, 0);
  t.is(g.view.id as number, 1);
  t.is(g.rank, 2);
  t.deepEqual(g.shards.map((s) => s.typeName), ['GroupTestCounter', 'GroupTestStamped', 'KvStore']);
  t.throws(() => g.subgroup(Counter).versions('peer'), {
    code: 'NOT_PERSISTENT', message: /GroupTestCounter\.peer is not a @persistent field, so it keeps no versions \(the @persistent fields of GroupTestCounter: total\)\. Fix:/,
  });
  t.throws(() => g.subgroup(KvStore, 1), { instanceOf: NoSuchShardError, message: /KvStore has no subgroup 1 in the layout: it has 1 \(indexes 0 to 0\)\. Fix: pass a subgroup index below 1/ });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
