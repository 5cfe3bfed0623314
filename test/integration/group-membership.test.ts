// The group API over the membership driver (Group.start(..., { membership: true })): 3 nodes in
// this process on loopback, each with its own native endpoint. Ordered calls succeed on view 0;
// node 3's endpoint is closed abruptly (no leave); the two survivors install a view without it
// within a few seconds; a call whose reply node 3 still owed fails at that reply with
// NodeRemovedError while the survivors' replies arrive; ordered calls issued after the view
// change complete with exactly the survivors' replies, and their replica digests are equal.
// Then node 4 (not in group.members) joins: it receives the state by transfer and serves calls;
// then it leaves cleanly and the others go on without it. And a spare member that the allocator
// moves into a shard whose member failed: it gets a replica with the shard's state by transfer.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  NodeRemovedError,
  ORDERED_METHODS,
  Persistent,
  ConfigError,
  fixedEvenShards,
  flexibleEvenShards,
  NotMemberError,
  PayloadTooLargeError,
  oneSubgroup,
  ordered,
  persistent,
  replicated,
  type NodeId,
  type ReplicaContext,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { waitFor } from '../support/membership-local.js';

/** Per node: the release of a parked call (the test decides which nodes answer). */
const parked = new Map<number, () => void>();

@replicated({ name: 'GroupMembershipCell', transient: ['context'], factory: (c) => new Cell(c as ReplicaContext) })
class Cell {
  declare readonly [ORDERED_METHODS]: 'add' | 'park';
  @persistent() total = new Persistent(() => 0);
  constructor(private readonly context: ReplicaContext) {}

  @ordered() add(n: number): number {
    this.total.value = this.total.value + n;
    return this.total.value;
  }

  /** Changes nothing; replies once the test releases this node. */
  @ordered() async park(): Promise<number> {
    const node = Number(this.context.nodeId);
    await new Promise<void>((resolve) => parked.set(node, resolve));
    return node;
  }
}

const layout = { GroupMembershipCell: oneSubgroup(flexibleEvenShards(1, 2, 3)) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-membership-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

const sortedKeys = (replies: ReadonlyMap<NodeId, unknown>): number[] => [...replies.keys()].map(Number).sort();

test.serial('a member that dies is removed by a view change, the survivors keep serving ordered calls, a new node joins with the state and leaves', async (t) => {
  t.timeout(60_000);
  // Nodes 1-3 are the founders (group.members); node 4 lists them and joins later.
  const configs = await localGroupConfigs(4, {
    dataRoot, firstId: 1, listed: 3, extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const groups = await Promise.all(configs.slice(0, 3).map((config) =>
    Group.start(config, { types: [Cell], layout, membership: true })));
  const [g1, g2, g3] = groups as [Group, Group, Group];
  try {
    t.deepEqual(g1.view.memberIds.map(Number), [1, 2, 3]);
    const startView = g1.view.id;
    t.true(groups.every((g) => g.view.id === startView), 'every node starts in the same view');

    // Ordered calls in the first view: replies from all three members.
    for (let i = 1; i <= 5; i++) {
      const replies = await groups[i % 3]!.subgroup(Cell).ordered.add(i);
      t.deepEqual(sortedKeys(replies), [1, 2, 3]);
    }
    t.deepEqual([...(await g1.subgroup(Cell).ordered.add(0)).values()], [15, 15, 15]);

    // A call whose reply node 3 will owe: delivered everywhere, answered by 1 and 2 only.
    const pending = g1.subgroup(Cell).ordered.park();
    await waitFor('park delivered on every node', () => parked.size === 3);
    parked.get(1)!();
    parked.get(2)!();
    t.is(await pending.replies.get(1 as NodeId), 1);
    t.is(await pending.replies.get(2 as NodeId), 2);

    // Node 3 dies: its endpoint closes without a leave.
    const killedAt = performance.now();
    await g3.transport.close();
    // Sent while node 3 is dead but still in the view: it is delivered in this view up to the
    // ragged trim or re-sent in the next one; the survivors answer, node 3's reply fails.
    const during = g2.subgroup(Cell).ordered.add(0);
    const survivors = [g1, g2];
    await waitFor('a view without node 3 on both survivors', () =>
      survivors.every((g) => !g.view.memberIds.map(Number).includes(3)), 5_000);
    const viewChangeMs = performance.now() - killedAt;
    t.log(`view without node 3 installed on both survivors ${viewChangeMs.toFixed(0)} ms after the kill`);
    t.deepEqual(g1.view.memberIds.map(Number), [1, 2]);
    t.is(g1.view.id, g2.view.id, 'the survivors installed the same view');
    t.true(g1.view.id > startView);

    const error = await t.throwsAsync(pending.replies.get(3 as NodeId)!, { instanceOf: NodeRemovedError });
    t.regex(error?.message ?? '', /node 3/);
    t.is(await during.replies.get(1 as NodeId), 15);
    t.is(await during.replies.get(2 as NodeId), 15);
    await t.throwsAsync(during.replies.get(3 as NodeId)!, { instanceOf: NodeRemovedError });

    // Ordered calls after the view change: both survivors reply, node 3 is not asked.
    for (let i = 0; i < 10; i++) {
      const replies = await survivors[i % 2]!.subgroup(Cell).ordered.add(1);
      t.deepEqual(sortedKeys(replies), [1, 2]);
    }
    const last = await g2.subgroup(Cell).ordered.add(0);
    t.deepEqual([...last.values()], [25, 25]);
    t.deepEqual(g1.subgroup(Cell).members.map(Number), [1, 2]);
    await waitFor('node 1 delivered what node 2 did', () =>
      g1.subgroup(Cell).frontier().delivered === g2.subgroup(Cell).frontier().delivered);
    t.is(g1.subgroup(Cell).digest(), g2.subgroup(Cell).digest(), 'survivors hold equal replicas');

    // Node 4 joins the running group: welcomed into a view [1, 2, 4], it receives the shard's
    // state by chunked transfer before Group.start resolves, then serves ordered calls.
    const beforeJoin = g1.view.id;
    const g4 = await Group.start(configs[3]!, { types: [Cell], layout, membership: true });
    groups.push(g4);
    t.deepEqual(g4.view.memberIds.map(Number), [1, 2, 4]);
    t.true(g4.view.id > beforeJoin);
    t.is(g4.subgroup(Cell).versions('total').value, 25, 'the joiner holds the transferred state');
    t.is(g4.subgroup(Cell).digest(), g1.subgroup(Cell).digest());
    await waitFor('the survivors installed the join view', () => g1.view.id === g4.view.id && g2.view.id === g4.view.id);
    for (const g of [g1, g2, g4]) {
      const replies = await g.subgroup(Cell).ordered.add(2);
      t.deepEqual(sortedKeys(replies), [1, 2, 4]);
    }
    await waitFor('every member delivered the last call', () =>
      new Set([g1, g2, g4].map((g) => g.subgroup(Cell).frontier().delivered)).size === 1);
    t.deepEqual(new Set([g1, g2, g4].map((g) => g.subgroup(Cell).digest())).size, 1, 'equal replicas after the join');
    t.is(g4.subgroup(Cell).versions('total').value, 31);

    // Node 4 leaves cleanly: a view without it commits at once (no failure timeout to wait).
    const leftAt = performance.now();
    t.true(await g4.leave(), 'the leave committed');
    await waitFor('a view without node 4 on both survivors', () =>
      [g1, g2].every((g) => g.view.memberIds.map(Number).join() === '1,2'), 5_000);
    t.log(`view without node 4 installed ${(performance.now() - leftAt).toFixed(0)} ms after leave()`);
    t.deepEqual(sortedKeys(await g1.subgroup(Cell).ordered.add(1)), [1, 2]);
  } finally {
    parked.get(3)?.();
    parked.clear();
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});

test.serial('a spare node fills the place of a failed shard member, with the shard state by transfer', async (t) => {
  t.timeout(60_000);
  // One shard of exactly 2: nodes 1 and 2 serve it, node 3 is a spare member of the group.
  const pairLayout = { GroupMembershipCell: oneSubgroup(fixedEvenShards(1, 2)) };
  const configs = await localGroupConfigs(3, {
    dataRoot: join(dataRoot, 'spare'), firstId: 1,
    extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const groups = await Promise.all(configs.map((config) =>
    Group.start(config, { types: [Cell], layout: pairLayout, membership: true })));
  const [g1, g2, g3] = groups as [Group, Group, Group];
  try {
    t.deepEqual(g1.members(Cell).map((s) => s.map(Number)), [[1, 2]]);
    t.throws(() => g3.subgroup(Cell), { instanceOf: NotMemberError });
    for (let i = 1; i <= 4; i++) t.deepEqual(sortedKeys(await g1.subgroup(Cell).ordered.add(i)), [1, 2]);

    await g2.transport.close();
    await waitFor('node 3 in the shard on nodes 1 and 3', () =>
      [g1, g3].every((g) => g.members(Cell)[0]!.map(Number).sort().join() === '1,3'), 5_000);
    // The shard's state reaches node 3 by transfer; then both serve ordered calls.
    await waitFor('the transferred state on node 3', () => g3.subgroup(Cell).versions('total').value === 10);
    for (const g of [g1, g3, g1]) t.deepEqual(sortedKeys(await g.subgroup(Cell).ordered.add(5)), [1, 3]);
    await waitFor('node 3 delivered what node 1 did', () =>
      g1.subgroup(Cell).frontier().delivered === g3.subgroup(Cell).frontier().delivered);
    t.is(g3.subgroup(Cell).versions('total').value, 25);
    t.is(g3.subgroup(Cell).digest(), g1.subgroup(Cell).digest());
  } finally {
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});

test.serial('membership mode refuses node id 0, naming the key', async (t) => {
  const configs = await localGroupConfigs(1, { dataRoot: join(dataRoot, 'zero') });
  const error = await t.throwsAsync(Group.start(configs[0]!, { types: [Cell], layout, membership: true }), {
    instanceOf: ConfigError,
  });
  t.regex(error?.message ?? '', /group\.members\[0\].*node id 0/s);
});

test.serial('membership mode applies the layout profile\'s [subgroup.<profile>] limits (a missing section is named)', async (t) => {
  const profiled = { GroupMembershipCell: oneSubgroup(flexibleEvenShards(1, 1, 1, { profile: 'bulk' })) };
  const missing = await localGroupConfigs(1, { dataRoot: join(dataRoot, 'profile-missing'), firstId: 1 });
  const error = await t.throwsAsync(Group.start(missing[0]!, { types: [Cell], layout: profiled, membership: true }), {
    instanceOf: ConfigError,
  });
  t.regex(error?.message ?? '', /subgroup\.bulk/);
  // A profile whose max_payload_size no call fits: the shard's driver was built with it.
  const present = await localGroupConfigs(1, {
    dataRoot: join(dataRoot, 'profile-present'), firstId: 1, extraToml: '[subgroup.bulk]\nmax_payload_size = 4\nmax_smc_payload_size = 4',
  });
  const group = await Group.start(present[0]!, { types: [Cell], layout: profiled, membership: true });
  try {
    await t.throwsAsync(group.subgroup(Cell).ordered.add(3).version, { instanceOf: PayloadTooLargeError });
  } finally {
    await group.close();
  }
});
