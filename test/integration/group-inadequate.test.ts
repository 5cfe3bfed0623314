// An inadequately provisioned subgroup (issue #9): a group of two nodes hosts Wide (one shard of
// at least 3 nodes; the allocator puts both nodes in it, short of one). Its ordered calls are
// held, not sent: one that waits longer than group.inadequate_wait_ms fails with
// SubgroupInadequateError naming the shard and what it lacks, and one issued with a longer wait
// completes once a third node joins and the view lays Wide out whole, with all three replies.
// (Other subgroups keep working meanwhile: the allocator reports inadequacy per subgroup,
// test/unit/membership-layout.test.ts.)
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group, ORDERED_METHODS, Persistent, SubgroupInadequateError, flexibleEvenShards, oneSubgroup, ordered, persistent,
  replicated, type NodeId,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';

@replicated({ name: 'InadequateWide' })
class Wide {
  declare readonly [ORDERED_METHODS]: 'add';
  @persistent() total = new Persistent(() => 0);
  @ordered() add(n: number): number {
    this.total.value += n;
    return this.total.value;
  }
}

const layout = { InadequateWide: oneSubgroup(flexibleEvenShards(1, 3, 3)) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-inadequate-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

test.serial('calls to an inadequate subgroup wait for nodes to join, or fail by name after group.inadequate_wait_ms', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(3, { dataRoot, firstId: 1, listed: 2 });
  configs[0]!.group.inadequate_wait_ms = 300;
  configs[1]!.group.inadequate_wait_ms = 30_000;
  const groups: Group[] = [];
  try {
    groups.push(...await Promise.all(configs.slice(0, 2).map((config) =>
      Group.start(config, { types: [Wide], layout, membership: true }))));
    const [g1, g2] = groups as [Group, Group];
    t.false(g1.view.isAdequate, 'Wide has 2 of 3 nodes');
    t.deepEqual(g1.subgroup(Wide).members.map(Number), [1, 2]);

    // Held, then failed by name after node 1's 300 ms.
    const startedAt = performance.now();
    const error = await t.throwsAsync(g1.subgroup(Wide).ordered.add(5).version, { instanceOf: SubgroupInadequateError });
    t.true(performance.now() - startedAt >= 290, 'it waited group.inadequate_wait_ms first');
    t.regex(error!.message, /InadequateWide subgroup 0 shard 0 has 2 of at least 3 nodes \(1 more must join\)/);
    t.regex(error!.message, /Fix: start more nodes/);

    // Held on node 2 (30 s) until node 3 joins; then sent, applied by all three.
    const held = g2.subgroup(Wide).ordered.add(7);
    let settled = false;
    void held.version.then(() => (settled = true), () => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 300));
    t.false(settled, 'not sent while Wide is short of a node');
    groups.push(await Group.start(configs[2]!, { types: [Wide], layout, membership: true }));
    // Node 3 replies too: 7, or, if the state it received already held the call,
    // APPLIED_BY_TRANSFER (it ran nothing); either way the caller is not left waiting.
    const answers = new Map(await Promise.all([...held.replies].map(async ([node, reply]) =>
      [Number(node), await reply.then((v) => v, (e: { code?: string }) => e.code)] as const)));
    t.deepEqual([...answers.keys()].sort(), [1, 2, 3]);
    t.is(answers.get(1), 7, 'the failed call was never applied');
    t.is(answers.get(2), 7);
    t.true(answers.get(3) === 7 || answers.get(3) === 'APPLIED_BY_TRANSFER', String(answers.get(3)));
    t.is(await g1.subgroup(Wide).ordered.add(0).replies.get(1 as NodeId), 7);
  } finally {
    await Promise.all(groups.map((g) => g.close()));
  }
});
