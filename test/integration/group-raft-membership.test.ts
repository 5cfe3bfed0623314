// Raft-ordered shards under the membership service (issue #12): view changes drive the shard's
// Raft configuration. Three founders (1, 2, 3) form one raft shard; node 3's endpoint closes
// abruptly: calls keep committing before any view change (majority), the survivors install a view
// without it and the Raft leader removes it from the configuration; `persisted()` resolves again
// (it covers the current members only). Node 4 joins: it receives the state by transfer, starts as
// a Raft learner, is promoted to voter, replies to calls, and ends with the same digest.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  Persistent,
  flexibleEvenShards,
  oneSubgroup,
  ordered,
  persistent,
  replicated,
  type NodeId,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { waitFor } from '../support/membership-local.js';

@replicated({ name: 'GroupRaftMembershipCell' })
class Cell {
  declare readonly [ORDERED_METHODS]: 'add';
  @persistent() total = new Persistent(() => 0);
  @ordered() add(n: number): number {
    this.total.value = this.total.value + n;
    return this.total.value;
  }
}

const layout = { GroupRaftMembershipCell: oneSubgroup(flexibleEvenShards(1, 2, 3, { mode: 'raft' })) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-raft-membership-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

const sortedKeys = (replies: ReadonlyMap<NodeId, unknown>): number[] => [...replies.keys()].map(Number).sort();
type Conf = { role: string; conf: { voters: number[]; learners: number[] } };
const raftOf = (g: Group): Conf | undefined =>
  (g as unknown as { replicas: Map<string, { driverOrUndefined?: { raft?: { core: { status(): Conf } } } }> })
    .replicas.get('GroupRaftMembershipCell/0')?.driverOrUndefined?.raft?.core.status();

test.serial('view changes remove a dead member from the shard\'s Raft and add a joiner as learner, then voter', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(4, {
    dataRoot, firstId: 1, listed: 3, extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const groups = await Promise.all(configs.slice(0, 3).map((config) =>
    Group.start(config, { types: [Cell], layout, membership: true })));
  const [g1, g2, g3] = groups as [Group, Group, Group];
  try {
    for (let i = 1; i <= 5; i++) {
      t.deepEqual(sortedKeys(await groups[i % 3]!.subgroup(Cell).ordered.add(i)), [1, 2, 3]);
    }
    // Raft ids are node id + 1.
    t.deepEqual([...raftOf(g1)!.conf.voters].sort(), [2, 3, 4]);

    await g3.transport.close();
    // Before any view change: a majority commits.
    const during = g1.subgroup(Cell).ordered.add(0);
    await during.delivered();
    t.is(await during.replies.get(2 as NodeId), 15);
    const survivors = [g1, g2];
    await waitFor('a view without node 3', () => survivors.every((g) => g.view.memberIds.map(Number).join() === '1,2'));
    await waitFor('the Raft configuration without node 3', () =>
      survivors.some((g) => raftOf(g)?.role === 'leader' && [...raftOf(g)!.conf.voters].sort().join() === '2,3'));
    for (let i = 0; i < 4; i++) {
      const results = survivors[i % 2]!.subgroup(Cell).ordered.add(1);
      t.deepEqual(sortedKeys(await results), [1, 2]);
      await results.persisted(); // the current members only
    }

    const g4 = await Group.start(configs[3]!, { types: [Cell], layout, membership: true });
    groups.push(g4);
    t.deepEqual(g4.view.memberIds.map(Number), [1, 2, 4]);
    // Group.start resolved after the state transfer; Raft then brings any call the transfer did
    // not cover (one run in ~6 under load 12 started below 19: not yet explained, see the note).
    const atStart = g4.subgroup(Cell).versions('total').value;
    if (atStart !== 19) t.log(`the joiner started with total ${atStart}`);
    await waitFor('the joiner holds the state', () => g4.subgroup(Cell).versions('total').value === 19);
    await waitFor('the survivors installed the join view', () => survivors.every((g) => g.view.id === g4.view.id));
    await waitFor('node 4 promoted to voter', () =>
      [g1, g2].some((g) => raftOf(g)?.role === 'leader' && [...raftOf(g)!.conf.voters].sort().join() === '2,3,5'), 15_000);
    let total = 19;
    for (const g of [g4, g1, g2, g4]) {
      const results = g.subgroup(Cell).ordered.add(2);
      total += 2;
      const replies = await results;
      t.deepEqual(sortedKeys(replies), [1, 2, 4]);
      t.deepEqual([...replies.values()], [total, total, total]);
      await results.persisted();
    }
    t.is(new Set([g1, g2, g4].map((g) => g.subgroup(Cell).digest())).size, 1, 'equal replicas after the join');
  } finally {
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});
