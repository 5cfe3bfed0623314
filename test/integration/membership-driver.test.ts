// The membership driver over the real native transport on loopback (5 in-process nodes, each its
// own endpoint): the group forms view 0; killing a shard member and then the membership log's Raft
// leader each leads to one next view, byte-identical everywhere, with virtual synchrony (the
// survivors delivered the same messages in each shard of the old view); a new node joins, gets
// its shard's state by chunked transfer and ends with the same state digest as the shard's other
// members; a clean leave; a joiner with another layout hash, or a live member's id, is refused
// with a named error. Then the same with 5 processes and kill -9 (a member, then the leader) and a
// joiner that receives 400 KB of initial state plus what was delivered since, by transfer. And a
// partition that leaves voters 1 and 2 (the Raft majority) cut off from nodes 3–5: no view is
// installed, the minority delivers nothing, and after the heal one view with a majority of view 0
// is installed and every node knows whether it is in it. And voter replacement: the log survives
// the loss of two of its three founding voters, one after the other.
import test from 'ava';
import { encodeView } from '../../src/membership/view.js';
import {
  createEndpoint, createFounders, createNode, kill, sendSome, shardKey, waitFor, type LocalNode,
} from '../support/membership-local.js';
import { JoinRefusedError } from '../../src/runtime/membership-driver.js';
import { NodeIdInUseError } from '../../src/membership/view-change-core.js';
import {
  forkNodes, foundersOf, nowMs, startGroup, startJoiner, stopAll, type NodeProcess, type NodeStatus,
} from '../support/membership-cluster.js';

const viewBytes = (node: LocalNode): string => Buffer.from(encodeView(node.driver.current())).toString('hex');

function live(nodes: LocalNode[]): LocalNode[] {
  return nodes.filter((n) => n.alive && n.removed === undefined);
}

/** Every live node installed view `id` with the same bytes, and nothing beyond it. */
function agreeOn(t: import('ava').ExecutionContext, nodes: LocalNode[], id: number): void {
  const bytes = new Set(live(nodes).map(viewBytes));
  const seen = live(nodes).map((n) => `n${n.id}: v${n.driver.current().id} [${n.driver.current().memberIds}]`);
  t.is(bytes.size, 1, `one view ${id} everywhere (${seen.join('; ')})`);
  for (const n of live(nodes)) t.is(Number(n.driver.current().id), id);
}

/** Members of consecutive views delivered identical sequences in each shard of the older one. */
function checkVirtualSynchrony(t: import('ava').ExecutionContext, nodes: LocalNode[]): void {
  for (const n of live(nodes)) {
    for (let i = 0; i + 1 < n.views.length; i++) {
      const v = n.views[i]!.id;
      for (const m of live(nodes)) {
        const has = (id: number): boolean => m.views.some((x) => x.id === id);
        if (m === n || !has(v) || !has(v + 1)) continue;
        for (const [shard, list] of n.delivered.get(v) ?? new Map<string, string[]>()) {
          const other = m.delivered.get(v)?.get(shard);
          if (other === undefined) continue;
          t.deepEqual(other, list, `n${n.id} and n${m.id} delivered the same in view ${v} shard ${shard}`);
        }
      }
    }
  }
}

test.serial('5 nodes on loopback: failures of a member and of the leader, a join with state, a leave', async (t) => {
  t.timeout(60_000);
  const { nodes, founders } = await createFounders(700);
  const t0 = performance.now();
  const extra: LocalNode[] = [];
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    agreeOn(t, nodes, 0);
    t.deepEqual(nodes[0]!.driver.current().memberIds, [1, 2, 3, 4, 5]);

    const sent0 = (await Promise.all(nodes.map((n) => sendSome(n, 30, 'v0')))).flat();
    await waitFor('view 0 deliveries', () => nodes.every((n) => n.driver.current().shardsOf(n.id).every((s) =>
      (n.delivered.get(0)?.get(shardKey(s))?.length ?? 0) === 30 * n.driver.current().shard(s.subgroupId, s.shardIndex)!.senders.length)));
    t.true(sent0.length > 0, 'every node sent');

    // Kill a shard member that is not a voter: node 5.
    const v0 = nodes[0]!.driver.current();
    t.true(v0.shardsOf(nodes[4]!.id).length > 0, 'node 5 serves a shard');
    const killedAt = performance.now();
    if (process.env['MEMBERSHIP_LOG']) console.log(`${(killedAt - t0).toFixed(1)} kill n5`);
    // Messages in flight while it dies: cut at the ragged edge, re-sent in the next view.
    await Promise.all(live(nodes).map((n) => sendSome(n, 10, 'mid')));
    await kill(nodes[4]!);
    await waitFor('view 1 without node 5', () => live(nodes).every((n) => n.driver.current().id >= 1));
    const failoverMs = performance.now() - killedAt;
    agreeOn(t, nodes, 1);
    t.deepEqual(nodes[0]!.driver.current().failed, [5]);
    t.log(`member kill → view 1 on every survivor: ${failoverMs.toFixed(0)} ms (heartbeat 20 ms, timeout 300 ms)`);

    // Kill the membership log's Raft leader.
    const leader = live(nodes).find((n) => (n.driver as unknown as { raft?: { core: { role: string } } }).raft?.core.role === 'leader');
    t.truthy(leader, 'one voter leads the membership log');
    await Promise.all(live(nodes).map((n) => sendSome(n, 10, 'v1')));
    await kill(leader!);
    await waitFor('view 2 without the leader', () => live(nodes).every((n) => n.driver.current().id >= 2), 15_000);
    agreeOn(t, nodes, 2);
    t.deepEqual(nodes.find((n) => n.alive)!.driver.current().failed, [leader!.id]);

    // A new node joins: it enters a shard (the shards are below their maximum) and gets its state.
    const e6 = await createEndpoint(706);
    const n6 = createNode(6, e6, { founders, found: false, seeds: live(nodes).map((n) => n.endpoint.address) });
    extra.push(n6);
    await n6.driver.start();
    const all = [...nodes, n6];
    await waitFor('view 3 with node 6', () => live(all).every((n) => n.driver.current().id >= 3));
    agreeOn(t, all, 3);
    const mine = n6.driver.current().shardsOf(n6.id);
    t.is(mine.length, 1, 'node 6 fills a shard');
    await waitFor('state transfer', () => !n6.driver.awaitingState(mine[0]!));
    t.true(n6.driver.counters.stateChunks > 1, 'the state came in several chunks');
    await Promise.all(live(all).map((n) => sendSome(n, 10, 'v3')));
    const shard = shardKey(mine[0]!);
    const peers = () => live(all).filter((n) => n.driver.current().shardsOf(n.id).some((s) => shardKey(s) === shard));
    await waitFor('same state in the joined shard', () => new Set(peers().map((n) => n.state.digest(shard))).size === 1);
    t.true(peers().length >= 2, `the shard has other members (${peers().map((n) => n.id)})`);
    t.is(n6.state.digest(shard), peers()[0]!.state.digest(shard), "the joiner's state equals the others'");

    // A clean leave.
    const leaver = live(all).find((n) => n.id !== n6.id && n.driver.current().memberIds.length > 3)!;
    leaver.driver.leave();
    await waitFor('removed after leaving', () => leaver.removed !== undefined);
    t.regex(leaver.removed!.message, /removed in view 3 \(left\)/);
    await waitFor('view 4 without the leaver', () => live(all).every((n) => n.driver.current().id >= 4));
    agreeOn(t, all, 4);
    t.deepEqual(n6.driver.current().departed, [leaver.id]);
    checkVirtualSynchrony(t, all);

    // Refusals: another layout hash; the id of a live member.
    const e7 = await createEndpoint(707);
    const wrong = createNode(7, e7, { founders, found: false, seeds: [n6.endpoint.address], layoutHash: 'other' });
    extra.push(wrong);
    await t.throwsAsync(wrong.driver.start(), { instanceOf: JoinRefusedError, message: /layout hash other.*Fix: run the same build/ });
    const e8 = await createEndpoint(708);
    const dup = createNode(Number(n6.id), e8, { founders, found: false, seeds: [live(all)[0]!.endpoint.address], joinTimeoutMs: 800 });
    extra.push(dup);
    await t.throwsAsync(dup.driver.start(), { instanceOf: NodeIdInUseError, message: /node id 6 is already a member/ });
  } finally {
    for (const n of [...nodes, ...extra]) {
      t.log(`n${n.id}: ${n.views.map((v) => `v${v.id}[${v.memberIds}]-${v.failed}`).join(' ')}${n.removed ? ` REMOVED ${n.removed.message.slice(0, 60)}` : ''}`);
    }
    for (const n of [...nodes, ...extra]) if (n.alive) await kill(n);
  }
});

test.serial('5 processes on loopback: kill -9 a member and the leader, a joiner gets the state', async (t) => {
  t.timeout(90_000);
  const timeouts = { heartbeatMs: 20, failureTimeoutMs: 300 };
  const all = await forkNodes([1, 2, 3, 4, 5, 6]);
  const founders = all.slice(0, 5);
  try {
    await startGroup(founders, timeouts, { records: 200, recordBytes: 2000 });
    for (const n of founders) await n.request({ cmd: 'load', everyMs: 10 });
    const live = (): NodeProcess[] => all.filter((n) => n.alive && n.address !== '' && n !== all[5]);
    const sameView = async (id: number): Promise<NodeStatus[]> => {
      const views = await Promise.all(live().map((n) => n.request<NodeStatus>({ cmd: 'waitView', atLeast: id, timeoutMs: 15_000 })));
      const statuses = await Promise.all(live().map((n) => n.status()));
      t.true(statuses.every((s) => s.viewId === id), `every survivor is in view ${id}: ${statuses.map((s) => s.viewId)}`);
      t.is(new Set(statuses.map((s) => `${s.members}`)).size, 1, 'with the same members');
      return views;
    };
    const killMember = founders[4]!.kill();
    const v1 = await sameView(1);
    t.deepEqual((await live()[0]!.status()).failed, [5]);
    t.log(`kill -9 of node 5 → view 1 everywhere: ${(Math.max(...v1.map((v) => v.atMs)) - killMember).toFixed(0)} ms`);
    const statuses = await Promise.all(live().map(async (n) => ({ n, s: await n.status() })));
    const leader = statuses.find((x) => x.s.leader)?.n;
    t.truthy(leader, 'a voter leads the membership log');
    const killLeader = leader!.kill();
    const v2 = await sameView(2);
    t.log(`kill -9 of the leader (node ${leader!.id}) → view 2 everywhere: ${(Math.max(...v2.map((v) => v.atMs)) - killLeader).toFixed(0)} ms`);
    const joiner = all[5]!;
    await startJoiner(joiner, foundersOf(founders), live().map((n) => n.address), timeouts);
    const everyone = (): NodeProcess[] => [...live(), joiner];
    await Promise.all(everyone().map((n) => n.request({ cmd: 'waitView', atLeast: 3, timeoutMs: 15_000 })));
    for (const n of everyone()) await n.request({ cmd: 'stopLoad' });
    // Once the load stops and the joiner has its state, each shard's members agree on it.
    const deadline = nowMs() + 15_000;
    let agreed = false;
    let last: NodeStatus[] = [];
    while (!agreed && nowMs() < deadline) {
      last = await Promise.all(everyone().map((n) => n.status()));
      const byShard = new Map<string, Set<string>>();
      for (const s of last) for (const [k, d] of Object.entries(s.digests)) byShard.set(k, (byShard.get(k) ?? new Set()).add(d));
      agreed = last.every((s) => !s.awaiting && s.viewId === last[0]!.viewId) && [...byShard.values()].every((d) => d.size === 1);
      if (!agreed) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.true(agreed, `every shard's members hold one state: ${JSON.stringify(last.map((s) => [s.viewId, s.members, s.failed, s.removed, s.awaiting, s.digests]))}`);
    const j = last[last.length - 1]!;
    t.true(Object.keys(j.digests).length === 1 && j.stateChunks >= 1, 'the joiner entered a shard and received state');
    t.true(Number(Object.values(j.digests)[0]!.split(':')[0]) >= 200, 'including the founders\' initial records');
  } finally {
    await stopAll(all);
  }
});

test.serial('a partition that leaves two voters with the minority: no view is installed, the minority delivers nothing, the group resumes after the heal', async (t) => {
  t.timeout(60_000);
  const { nodes } = await createFounders(720);
  const t0 = performance.now();
  const delivered = (n: LocalNode): number => [...n.delivered.values()].reduce((a, m) => a + [...m.values()].reduce((b, l) => b + l.length, 0), 0);
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    await waitFor('a membership log leader', () => nodes.some((n) => n.driver.isLeader));
    const minority = nodes.slice(0, 2); // voters 1 and 2: the Raft majority is on this side
    const majority = nodes.slice(2);
    const cut = (fault: 'failPeer' | 'restorePeer'): void => {
      for (const a of minority) for (const b of majority) {
        a.endpoint.injectFault({ [fault]: b.endpoint.address });
        b.endpoint.injectFault({ [fault]: a.endpoint.address });
      }
    };
    cut('failPeer');
    if (process.env['MEMBERSHIP_LOG']) console.log(`${(performance.now() - t0).toFixed(1)} cut`);
    // Within the failure timeout (300 ms) a shard that lies wholly on one side still delivers,
    // as in Derecho; once the minority suspects half the view it wedges (effect partitioned).
    await new Promise((resolve) => setTimeout(resolve, 700));
    const before = nodes.map(delivered);
    // Both sides keep sending.
    // (A wedged shard accepts a send only in the next view: do not wait for the receipts.)
    for (const n of nodes) sendSome(n, 5, 'cut').catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    t.deepEqual(nodes.map((n) => Number(n.driver.current().id)), [0, 0, 0, 0, 0], 'no side installed a view');
    // The majority side may go on delivering in a shard that lies wholly on it (it is not cut
    // off from a majority of the view); the minority side must not deliver at all.
    t.deepEqual(minority.map(delivered), before.slice(0, 2), 'the minority side delivered nothing');
    cut('restorePeer');
    const survivors = (): LocalNode[] => nodes.filter((n) => n.removed === undefined);
    await waitFor('a next view after the heal', () => survivors().length > 0 && survivors().every((n) => n.driver.current().id >= 1), 15_000);
    agreeOn(t, survivors(), Number(survivors()[0]!.driver.current().id));
    const view = survivors()[0]!.driver.current();
    t.true(2 * view.memberIds.length > 5, `view ${view.id} keeps a majority of view 0: [${view.memberIds}]`);
    for (const n of nodes) t.is(n.removed !== undefined, !view.isMember(n.id), `node ${n.id} knows whether it is in`);
    checkVirtualSynchrony(t, survivors());
  } finally {
    for (const n of nodes) if (n.alive) await kill(n);
  }
});

test.serial('voters are replaced as they fail: the log survives two of its three founding voters', async (t) => {
  t.timeout(60_000);
  const { nodes } = await createFounders(740);
  type Raft = { core: { role: string; status(): { conf: { voters: number[] } } } } | undefined;
  const raftOf = (n: LocalNode): Raft => (n.driver as unknown as { raft: Raft }).raft;
  const confOfLeader = (): number[] | undefined =>
    nodes.filter((n) => n.alive).map(raftOf).find((r) => r?.core.role === 'leader')?.core.status().conf.voters;
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    await waitFor('a membership log leader', () => confOfLeader() !== undefined);
    t.deepEqual(confOfLeader(), [1, 2, 3]);
    await kill(nodes[2]!); // voter 3
    await waitFor('view 1', () => live(nodes).every((n) => n.driver.current().id >= 1));
    await waitFor('voter 4 replaces voter 3', () => `${confOfLeader()}` === '1,2,4', 10_000);
    await kill(nodes[0]!); // voter 1: with fixed voters, 2 of {1, 2, 3} would be gone
    await waitFor('view 2 without nodes 1 and 3', () => live(nodes).every((n) => n.driver.current().id >= 2), 15_000);
    agreeOn(t, nodes, 2);
    t.deepEqual(live(nodes)[0]!.driver.current().memberIds, [2, 4, 5]);
    await waitFor('voters 2, 4, 5', () => `${confOfLeader()}` === '2,4,5', 10_000);
    await Promise.all(live(nodes).map((n) => sendSome(n, 5, 'after')));
    checkVirtualSynchrony(t, nodes);
  } finally {
    for (const n of nodes) if (n.alive) await kill(n);
  }
});
