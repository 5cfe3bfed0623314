// Proves the view-change core's contract. Unit tests drive one core by hand through a round
// (wedge, reports, trim, seal, deliver, install), batching, queued entries, leader failure in the
// middle, retries and refusals. A small cluster simulation then runs many seeds of crashes, joins
// and clean leaves with real failure detectors and a fake membership log, and checks after every
// step: members that install a view id install the same view; views are installed in order;
// every member that delivers a view's last messages uses the same trim per shard, one it can
// deliver; removed nodes install nothing more; no view drops a majority of the previous one; and,
// once faults stop, all live members converge on one view holding exactly the live nodes.
import test from 'ava';
import {
  nodeId,
  shardIndex,
  subgroupId,
  viewId,
  type NodeId,
  type ViewId,
} from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { FailureDetectorCore } from '../../src/membership/failure-detector-core.js';
import {
  compilePolicies,
  defaultAllocator,
  fixedEvenShards,
  flexibleEvenShards,
  oneSubgroup,
  allocateLayout,
  type Allocator,
  type LayoutPolicies,
} from '../../src/membership/layout.js';
import {
  decodeEntry,
  encodeEntry,
  EntryDecodeError,
  initialView,
  leavesMajority,
  NodeIdInUseError,
  ViewChangeBacklogError,
  stateTransfers,
  ViewChangeCore,
  type MembershipChange,
  type MembershipEntry,
  type ReceiveReportMessage,
  type ViewChangeEffect,
} from '../../src/membership/view-change-core.js';
import { encodeView, View } from '../../src/membership/view.js';

const ids = (...values: number[]): NodeId[] => values.map(nodeId);
const address = (n: number): string => `10.0.0.${n}:7000`;

/** Per sender, the minimum received over the survivors (the multicast layer's rule). */
const minTrim = (survivorReceivedCounts: readonly (readonly number[])[]): number[] =>
  survivorReceivedCounts[0]!.map((_, i) => Math.min(...survivorReceivedCounts.map((r) => r[i]!)));

const POLICIES: LayoutPolicies = {
  Kv: oneSubgroup(flexibleEvenShards(2, 1, 3)),
  Log: oneSubgroup(fixedEvenShards(1, 2, { mode: 'raft' })),
};

function firstView(members: number[], policies: LayoutPolicies = POLICIES): View {
  const list = ids(...members);
  return new View({
    id: viewId(0),
    members: list.map((n) => ({ id: n, address: address(n) })),
    joined: list,
    departed: [],
    failed: [],
    layout: allocateLayout(compilePolicies(policies), undefined, list),
  });
}

function core(
  self: number,
  view: View,
  allocator: Allocator = defaultAllocator(POLICIES),
): ViewChangeCore {
  return new ViewChangeCore({
    self: nodeId(self),
    view,
    allocator,
    computeTrim: minTrim,
    votersCount: 3,
    proposalRetryTicks: 5,
  });
}

const remove = (n: number, v = 0): MembershipChange => ({
  kind: 'remove',
  node: nodeId(n),
  viewId: viewId(v),
});
const leave = (n: number, v = 0): MembershipChange => ({
  kind: 'leave',
  node: nodeId(n),
  viewId: viewId(v),
});
const kinds = (effects: readonly ViewChangeEffect[]): string[] => effects.map((e) => e.kind);
/** Proposals other than the node's own `wedged` acknowledgement. */
const withoutAcks = (proposals: readonly MembershipEntry[]): MembershipEntry[] =>
  proposals.filter((p) => p.kind !== 'wedged');
/** Commits the `wedged` acknowledgements of `nodes` for the core's view; returns the last index. */
function ack(c: ViewChangeCore, index: number, nodes: readonly number[]): number {
  let i = index;
  for (const n of nodes) c.committed(++i, { kind: 'wedged', viewId: c.view.id, node: nodeId(n) });
  return i;
}

/** Reports for every shard of `node` in `view`, with `received` per sender. */
function reportsFor(view: View, node: NodeId, received: (sender: number) => number) {
  return view.shardsOf(node).map((s) => ({
    subgroupId: s.subgroupId,
    shardIndex: s.shardIndex,
    received: view.shard(s.subgroupId, s.shardIndex)!.senders.map((_, i) => received(i)),
  }));
}

// ---- One core by hand -----------------------------------------------------------------------

test('a committed removal wedges, trims, seals, delivers and installs the next view', (t) => {
  // Kv (2 flexible shards of 1..3) is laid out before Log (raft, 2 nodes): Kv gets 1 and 2, Log
  // gets 3 and 4, and the spare node 5 grows Kv shard 0.
  const v0 = firstView([1, 2, 3, 4, 5]);
  t.deepEqual(
    v0.subgroup('Kv', 0)!.shards.map((s) => s.members),
    [ids(1, 5), ids(2)],
  );
  t.deepEqual(v0.subgroup('Log', 0)!.shards[0]!.members, ids(3, 4));
  const c = core(1, v0);
  c.committed(1, { kind: 'change', changes: [remove(4)] });
  t.deepEqual(kinds(c.ready().effects), ['wedge']);
  t.is(c.phase, 'wedging');
  // Node 1 is in Kv shard 0 only; its report goes to the other survivor of that shard.
  c.wedged(
    viewId(0),
    reportsFor(v0, nodeId(1), () => 10),
  );
  const afterWedge = c.ready();
  t.deepEqual(
    afterWedge.messages.map((m) => m.to),
    ids(5),
  );
  t.deepEqual(
    afterWedge.proposals,
    [{ kind: 'wedged', viewId: viewId(0), node: nodeId(1) }],
    'its own acknowledgement only: the shard leader waits for every survivor',
  );
  c.receive(nodeId(5), {
    kind: 'receive-report',
    report: {
      viewId: viewId(0),
      subgroupId: subgroupId(0),
      shardIndex: shardIndex(0),
      reporter: nodeId(5),
      received: [10, 8],
    },
  });
  const trim: MembershipEntry = {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(0),
    trim: [10, 8],
  };
  t.deepEqual(c.ready().proposals, [trim]);
  c.committed(2, trim);
  // The raft-mode Log shard needs no trim, but Kv shard 1 (node 2) does.
  t.deepEqual(c.ready().effects, []);
  c.committed(3, {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(1),
    trim: [4],
  });
  t.deepEqual(c.ready().effects, [], "the seal waits for every survivor's acknowledgement");
  ack(c, 3, [1, 2, 3]);
  t.deepEqual(c.ready().effects, [], 'node 5 has not acknowledged yet; node 4 need not');
  ack(c, 6, [5]);
  const sealed = c.ready().effects;
  t.deepEqual(sealed, [
    {
      kind: 'deliver',
      viewId: viewId(0),
      trims: [{ subgroupId: subgroupId(0), shardIndex: shardIndex(0), trim: [10, 8] }],
    },
  ]);
  t.is(c.phase, 'delivering');
  t.deepEqual(c.view, v0, 'the next view is installed only after delivery');
  c.delivered(viewId(0));
  const [install] = c.ready().effects;
  assertKind(install, 'install');
  t.is(install.view.id, viewId(1));
  t.deepEqual(install.view.memberIds, ids(1, 2, 3, 5));
  t.deepEqual(install.view.failed, ids(4));
  t.is(install.sealedAtIndex, 7);
  t.deepEqual(install.voters, ids(1, 2, 3));
  t.deepEqual(
    install.view.subgroup('Kv', 0)!.shards.map((s) => s.members),
    [ids(1, 5), ids(2)],
  );
  t.deepEqual(
    install.view.layout.inadequate.map((i) => [i.typeName, i.nodesHave]),
    [['Log', 1]],
  );
  t.deepEqual(c.view, install.view);
  t.is(c.phase, 'idle');
});

function assertKind<K extends ViewChangeEffect['kind']>(
  effect: ViewChangeEffect | undefined,
  kind: K,
): asserts effect is Extract<ViewChangeEffect, { kind: K }> {
  if (effect?.kind !== kind)
    throw new Error(`expected a ${kind} effect, got ${JSON.stringify(effect)}`);
}

/** Runs a whole round on one core with every other survivor's report equal to `received`. */
function finishRound(
  c: ViewChangeCore,
  startIndex: number,
  received = 5,
  self = nodeId(1),
): { index: number; effects: ViewChangeEffect[]; proposals: MembershipEntry[] } {
  const view = c.view;
  let index = startIndex;
  const effects: ViewChangeEffect[] = [];
  const proposals: MembershipEntry[] = [];
  const drain = (): void => {
    const r = c.ready();
    effects.push(...r.effects);
    for (const p of r.proposals) {
      if (p.kind !== 'change') c.committed(++index, p);
      else proposals.push(p);
    }
  };
  c.wedged(
    view.id,
    reportsFor(view, self, () => received),
  );
  drain();
  // Commit trims for shards node 1 does not lead, as their leaders would.
  for (const type of view.layout.types) {
    for (const sg of type.subgroups) {
      sg.shards.forEach((sh, i) => {
        if (sh.mode === 'raft' || sh.members.includes(self)) return;
        c.committed(++index, {
          kind: 'trim',
          viewId: view.id,
          subgroupId: sg.subgroupId,
          shardIndex: shardIndex(i),
          trim: sh.senders.map(() => received),
        });
      });
    }
  }
  // The other members' acknowledgements (those of removed nodes are not needed, and harmless).
  index = ack(c, index, view.memberIds.filter((n) => n !== self));
  // Reports of the other members of node 1's shards.
  for (const s of view.shardsOf(self)) {
    for (const n of view.shard(s.subgroupId, s.shardIndex)!.members) {
      if (n === self) continue;
      const counts = view.shard(s.subgroupId, s.shardIndex)!.senders.map(() => received);
      c.receive(n, {
        kind: 'receive-report',
        report: {
          viewId: view.id,
          subgroupId: s.subgroupId,
          shardIndex: s.shardIndex,
          reporter: n,
          received: counts,
        },
      });
    }
  }
  drain();
  drain();
  c.delivered(view.id);
  drain();
  return { index, effects, proposals };
}

test('changes committed during a view change are batched into the same next view', (t) => {
  const c = core(1, firstView([1, 2, 3, 4, 5, 6, 7]));
  c.committed(1, { kind: 'change', changes: [remove(7)] });
  c.committed(2, {
    kind: 'change',
    changes: [{ kind: 'join', node: nodeId(8), address: address(8) }, leave(6)],
  });
  const { effects } = finishRound(c, 2);
  const install = effects.find((e) => e.kind === 'install');
  assertKind(install, 'install');
  t.deepEqual(install.view.memberIds, ids(1, 2, 3, 4, 5, 8));
  t.deepEqual(
    [install.view.joined, install.view.departed, install.view.failed],
    [ids(8), ids(6), ids(7)],
  );
  t.is(install.view.id, viewId(1), 'one view for three changes');
  t.deepEqual(
    kinds(effects).filter((k) => k === 'wedge'),
    ['wedge'],
    'one wedge for both entries',
  );
});

test('entries committed after the seal start the next round right after the install', (t) => {
  const c = core(1, firstView([1, 2, 3, 4, 5]));
  c.committed(1, { kind: 'change', changes: [remove(5)] });
  c.ready();
  c.wedged(
    viewId(0),
    reportsFor(c.view, nodeId(1), () => 1),
  );
  for (const n of ids(3))
    c.receive(n, {
      kind: 'receive-report',
      report: {
        viewId: viewId(0),
        subgroupId: subgroupId(0),
        shardIndex: shardIndex(0),
        reporter: n,
        received: [1, 1, 1],
      },
    });
  c.committed(2, withoutAcks(c.ready().proposals)[0]!);
  c.committed(3, {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(1),
    trim: [1, 1],
  });
  ack(c, 3, [1, 2, 3, 4]);
  t.is(c.phase, 'delivering');
  // Index 8 is a Raft entry of its own (say, a new leader's empty entry): indexes may skip.
  c.committed(9, {
    kind: 'change',
    changes: [{ kind: 'join', node: nodeId(9), address: address(9) }],
  });
  c.committed(9, { kind: 'change', changes: [leave(1)] }); // a replay of index 9: ignored
  t.deepEqual(kinds(c.ready().effects), ['deliver']);
  c.delivered(viewId(0));
  const effects = c.ready().effects;
  t.deepEqual(kinds(effects), ['install', 'wedge']);
  assertKind(effects[0], 'install');
  t.deepEqual(effects[0].view.memberIds, ids(1, 2, 3, 4), 'the join is not in view 1');
  t.deepEqual(effects[1], { kind: 'wedge', viewId: viewId(1) });
  t.is(c.lastAppliedIndex, 9);
});

test('the first committed trim of a shard is final; a new shard leader takes over after a failure', (t) => {
  // Node 5 is the second member of Kv shard 0 ([1,5]); node 1, its leader, fails mid-change.
  const v0 = firstView([1, 2, 3, 4, 5]);
  const c = core(5, v0);
  c.committed(1, { kind: 'change', changes: [remove(4)] });
  c.wedged(
    viewId(0),
    reportsFor(v0, nodeId(5), () => 7),
  );
  t.deepEqual(withoutAcks(c.ready().proposals), [], 'node 5 is not the shard leader yet');
  c.committed(2, { kind: 'change', changes: [remove(1)] });
  const proposals = c.ready().proposals;
  t.deepEqual(proposals, [
    {
      kind: 'trim',
      viewId: viewId(0),
      subgroupId: subgroupId(0),
      shardIndex: shardIndex(0),
      trim: [7, 7],
    },
  ]);
  // A trim from the old leader that committed first wins; the new leader's is ignored.
  c.committed(3, {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(0),
    trim: [5, 6],
  });
  c.committed(4, proposals[0]!);
  c.committed(5, {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(1),
    trim: [3],
  });
  ack(c, 5, [2, 3, 5]);
  const [deliver] = c.ready().effects;
  assertKind(deliver, 'deliver');
  t.deepEqual(
    deliver.trims.map((x) => x.trim),
    [[5, 6]],
  );
  c.delivered(viewId(0));
  const [install] = c.ready().effects;
  assertKind(install, 'install');
  t.deepEqual(install.view.memberIds, ids(2, 3, 5));
  t.deepEqual(install.view.failed, ids(4, 1));
});

test('suspicions that arrive together become one proposal, retried until committed', (t) => {
  const c = core(1, firstView([1, 2, 3, 4, 5]));
  c.suspect(nodeId(4));
  c.suspect(nodeId(5));
  c.suspect(nodeId(5));
  c.suspect(nodeId(99)); // not a member
  const first = c.ready().proposals;
  t.deepEqual(first, [
    {
      kind: 'change',
      changes: [remove(4), remove(5)],
    },
  ]);
  c.suspect(nodeId(4));
  t.deepEqual(c.ready().proposals, [], 'already in flight');
  for (let i = 0; i < 4; i++) c.tick();
  t.deepEqual(c.ready().proposals, []);
  c.tick();
  t.deepEqual(c.ready().proposals, first, 'lost proposals are re-sent after proposalRetryTicks');
  c.committed(1, first[0]!);
  for (let i = 0; i < 10; i++) c.tick();
  t.deepEqual(c.ready().proposals, [], 'nothing is re-sent once committed');
});

test('joins: an id in use is refused with a named error; duplicates commit once', (t) => {
  const c = core(1, firstView([1, 2, 3]));
  t.throws(() => c.requestJoin(nodeId(2), address(2)), {
    instanceOf: NodeIdInUseError,
    message: /node id 2 is already a member of view 0.*Fix: give the new node an unused node id/,
  });
  c.requestJoin(nodeId(7), address(7));
  t.throws(() => c.requestJoin(nodeId(7), address(7)), { instanceOf: NodeIdInUseError });
  const [proposal] = c.ready().proposals;
  c.committed(1, proposal!);
  c.committed(2, proposal!); // proposed twice by a retry: the second is a no-op
  const { effects } = finishRound(c, 2);
  const install = effects.find((e) => e.kind === 'install');
  assertKind(install, 'install');
  t.deepEqual(install.view.memberIds, ids(1, 2, 3, 7));
  // Node 7 fills the Log shard that node 3 held alone; node 3 sends it the state.
  t.deepEqual(install.stateTransfers, [
    { subgroupId: subgroupId(1), shardIndex: shardIndex(0), from: nodeId(3), to: ids(7) },
  ]);
  t.deepEqual(install.view.layout.inadequate, []);
});

test('backlogs are bounded: too many waiting changes or entries behind a seal are refused', (t) => {
  const v0 = firstView([1, 2, 3, 4, 5]);
  const c = new ViewChangeCore({
    self: nodeId(1),
    view: v0,
    allocator: defaultAllocator(POLICIES),
    computeTrim: minTrim,
    votersCount: 3,
    proposalRetryTicks: 5,
    pendingMax: 2,
  });
  c.requestJoin(nodeId(10), address(10));
  c.requestJoin(nodeId(11), address(11));
  t.throws(() => c.requestJoin(nodeId(12), address(12)), {
    instanceOf: ViewChangeBacklogError,
    message:
      /membership changes: more than 2 are waiting\. Fix: retry after the current view change/,
  });
  c.ready(); // proposed, not yet committed: still waiting
  t.throws(() => c.requestJoin(nodeId(12), address(12)), { instanceOf: ViewChangeBacklogError });
  // Seal view 0, then queue entries behind the seal.
  c.committed(1, { kind: 'change', changes: [remove(5)] });
  c.wedged(
    viewId(0),
    reportsFor(v0, nodeId(1), () => 1),
  );
  c.receive(nodeId(5), {
    kind: 'receive-report',
    report: {
      viewId: viewId(0),
      subgroupId: subgroupId(0),
      shardIndex: shardIndex(0),
      reporter: nodeId(5),
      received: [1, 1],
    },
  });
  const trims = c.ready().proposals.filter((p) => p.kind === 'trim');
  t.is(trims.length, 1);
  c.committed(2, trims[0]!);
  c.committed(3, {
    kind: 'trim',
    viewId: viewId(0),
    subgroupId: subgroupId(0),
    shardIndex: shardIndex(1),
    trim: [1],
  });
  ack(c, 3, [1, 2, 3, 4]);
  t.is(c.phase, 'delivering');
  c.committed(8, { kind: 'change', changes: [] });
  c.committed(9, { kind: 'change', changes: [] });
  t.throws(() => c.committed(10, { kind: 'change', changes: [] }), {
    instanceOf: ViewChangeBacklogError,
    message: /entries behind a sealed view: more than 2 are waiting/,
  });
  t.is(c.lastAppliedIndex, 9, 'the refused entry was not consumed');
  c.delivered(viewId(0));
  c.committed(10, { kind: 'change', changes: [] });
  t.is(c.lastAppliedIndex, 10);
  t.is(c.view.id, viewId(1));
});

test('a joiner removed before its view is installed never joins', (t) => {
  const c = core(1, firstView([1, 2, 3]));
  c.committed(1, {
    kind: 'change',
    changes: [{ kind: 'join', node: nodeId(9), address: address(9) }],
  });
  c.committed(2, {
    kind: 'change',
    changes: [{ kind: 'join', node: nodeId(8), address: address(8) }, remove(9)],
  });
  const install = finishRound(c, 2).effects.find((e) => e.kind === 'install');
  assertKind(install, 'install');
  t.deepEqual(install.view.memberIds, ids(1, 2, 3, 8));
  t.deepEqual(install.view.joined, ids(8));
  t.deepEqual(install.view.failed, []);
});

test('a node that learns it was removed stops, and a clean leave says so', (t) => {
  const failed = core(2, firstView([1, 2, 3]));
  failed.committed(1, { kind: 'change', changes: [remove(2)] });
  t.deepEqual(failed.ready().effects, [{ kind: 'removed', viewId: viewId(0), reason: 'failed' }]);
  failed.suspect(nodeId(3));
  failed.committed(2, { kind: 'change', changes: [remove(3)] });
  t.deepEqual(failed.ready(), { proposals: [], messages: [], effects: [] });
  const leaver = core(3, firstView([1, 2, 3]));
  leaver.leave();
  const [proposal] = leaver.ready().proposals;
  t.deepEqual(proposal, { kind: 'change', changes: [leave(3)] });
  leaver.committed(1, proposal!);
  t.deepEqual(leaver.ready().effects, [{ kind: 'removed', viewId: viewId(0), reason: 'left' }]);
});

test('a removal raised in an earlier view is stale; a leave is asked again in the next view', (t) => {
  const c = core(2, firstView([1, 2, 3, 4, 5]));
  c.leave();
  const [asked] = c.ready().proposals;
  t.deepEqual(asked, { kind: 'change', changes: [leave(2)] });
  // Another change wins the race; the leave (raised in view 0) would commit too late.
  c.committed(1, { kind: 'change', changes: [remove(5)] });
  const { index, effects, proposals } = finishRound(c, 1, 5, nodeId(2));
  t.deepEqual(kinds(effects), ['wedge', 'deliver', 'install']);
  t.is(c.view.id, viewId(1));
  t.deepEqual(proposals, [{ kind: 'change', changes: [leave(2, 1)] }], 'asked again in view 1');
  c.committed(index + 1, { kind: 'change', changes: [leave(2, 0), remove(4, 0)] });
  t.deepEqual(c.ready().effects, [], 'stale: raised in view 0');
  t.is(c.phase, 'idle');
  c.committed(index + 2, { kind: 'change', changes: [leave(2, 1)] });
  t.deepEqual(c.ready().effects, [{ kind: 'removed', viewId: viewId(1), reason: 'left' }]);
});

test('partition safety: a change that leaves a minority is refused by all; a minority knows it', (t) => {
  t.true(leavesMajority(firstView([1, 2, 3, 4, 5]), [], ids(4, 5)));
  t.false(leavesMajority(firstView([1, 2, 3, 4, 5]), [], ids(3, 4, 5)));
  t.true(
    leavesMajority(firstView([1, 2, 3, 4, 5]), ids(4, 5), ids(3)),
    'clean leavers do not count',
  );
  t.false(leavesMajority(firstView([1, 2]), [], ids(2)), 'two nodes cannot survive a failure');
  const c = core(1, firstView([1, 2, 3, 4, 5]));
  c.suspect(nodeId(4));
  c.suspect(nodeId(5));
  c.suspect(nodeId(3));
  const r = c.ready();
  t.deepEqual(r.effects, [{ kind: 'partitioned', viewId: viewId(0), suspects: ids(3, 4, 5) }]);
  c.committed(1, r.proposals[0]!);
  const refused = c.ready().effects;
  t.deepEqual(kinds(refused), ['refused']);
  t.is(c.phase, 'idle', 'a refused change does not wedge');
  // Joins in a refused entry still apply: they do not weaken the quorum.
  c.committed(2, {
    kind: 'change',
    changes: [
      remove(3),
      remove(4),
      remove(5),
      { kind: 'join', node: nodeId(9), address: address(9) },
    ],
  });
  const mixed = c.ready().effects;
  t.deepEqual(
    mixed.map((e) => (e.kind === 'refused' ? e.changes.length : e.kind)),
    [3, 'wedge'],
  );
  // Removals one at a time: the one that would cross the line is refused, the others apply.
  const d = core(1, firstView([1, 2, 3, 4, 5]));
  d.committed(1, { kind: 'change', changes: [remove(5)] });
  d.committed(2, { kind: 'change', changes: [remove(4)] });
  d.committed(3, { kind: 'change', changes: [remove(3)] });
  t.deepEqual(kinds(d.ready().effects), ['wedge', 'refused']);
  const { effects } = finishRound(d, 3);
  const install = effects.find((e) => e.kind === 'install');
  assertKind(install, 'install');
  t.deepEqual(install.view.memberIds, ids(1, 2, 3));
});

test('partition safety: a minority side that removes the far side piece by piece never seals', (t) => {
  // Seed 96 of the membership simulation: nodes 1, 2, 7 of seven are cut off from 3, 4, 5, 6,
  // hold the Raft majority, and commit remove 4, then remove 3 and 6 (still four of seven
  // survive: 1, 2, 5, 7), then remove 5 (refused). Every shard's trim can commit from their own
  // reports (5 is in no shard), but 5 never acknowledges, so the side never seals a view.
  const c = core(1, firstView([1, 2, 3, 4, 5, 6, 7], { Kv: oneSubgroup(flexibleEvenShards(2, 1, 1)) }));
  c.committed(1, { kind: 'change', changes: [remove(4)] });
  c.committed(2, { kind: 'change', changes: [remove(3), remove(6)] });
  c.committed(3, { kind: 'change', changes: [remove(5)] });
  t.deepEqual(kinds(c.ready().effects), ['wedge', 'refused']);
  c.wedged(viewId(0), reportsFor(c.view, nodeId(1), () => 2));
  let index = 3;
  for (const p of withoutAcks(c.ready().proposals)) c.committed(++index, p);
  for (const s of c.view.layout.types[0]!.subgroups[0]!.shards.keys()) {
    c.committed(++index, { kind: 'trim', viewId: viewId(0), subgroupId: subgroupId(0), shardIndex: shardIndex(s), trim: [2] });
  }
  index = ack(c, index, [1, 2, 7]);
  for (let i = 0; i < 50; i++) c.tick();
  t.deepEqual(kinds(c.ready().effects), [], 'no deliver, no install without node 5');
  t.is(c.phase, 'wedging');
  ack(c, index, [5]);
  t.deepEqual(kinds(c.ready().effects), ['deliver'], 'once the far survivor acknowledges, the round ends');
});

test('state transfers name the surviving shard member with the lowest shard rank', (t) => {
  const policies = { Kv: oneSubgroup(fixedEvenShards(1, 3)) };
  const v0 = firstView([1, 2, 3, 4], policies);
  const members = ids(2, 3, 4, 5);
  const v1 = new View({
    id: viewId(1),
    members: members.map((n) => ({ id: n, address: address(n) })),
    joined: ids(5),
    departed: [],
    failed: ids(1),
    layout: allocateLayout(compilePolicies(policies), v0.layout, members),
  });
  t.deepEqual(stateTransfers(v0, v1), [
    { subgroupId: subgroupId(0), shardIndex: shardIndex(0), from: nodeId(2), to: ids(4) },
  ]);
});

test('membership log entries encode deterministically and round-trip; bad bytes are refused', (t) => {
  const entries: MembershipEntry[] = [
    {
      kind: 'change',
      changes: [{ kind: 'join', node: nodeId(9), address: address(9) }, leave(3, 4), remove(2, 4)],
    },
    {
      kind: 'trim',
      viewId: viewId(4),
      subgroupId: subgroupId(2),
      shardIndex: shardIndex(1),
      trim: [0, 17, 3],
    },
    { kind: 'change', changes: [] },
    { kind: 'wedged', viewId: viewId(4), node: nodeId(7) },
  ];
  for (const entry of entries) {
    const bytes = encodeEntry(entry);
    t.deepEqual(decodeEntry(bytes), entry);
    t.deepEqual(encodeEntry(decodeEntry(bytes)), bytes);
  }
  // Key order of the input objects does not matter.
  const scrambled = {
    trim: [1],
    shardIndex: shardIndex(0),
    subgroupId: subgroupId(0),
    viewId: viewId(1),
    kind: 'trim',
  } as const;
  t.deepEqual(
    encodeEntry(scrambled),
    encodeEntry({
      kind: 'trim',
      viewId: viewId(1),
      subgroupId: subgroupId(0),
      shardIndex: shardIndex(0),
      trim: [1],
    }),
  );
  t.throws(() => decodeEntry(Uint8Array.from([0x92, 0x01])), {
    instanceOf: EntryDecodeError,
    message: /not msgpack.*Fix: decode only bytes made by encodeEntry/,
  });
  const future = encodeEntry(entries[1]!);
  future[1] = 2; // the format version is the array's first element
  t.throws(() => decodeEntry(future), {
    instanceOf: EntryDecodeError,
    message: /format version 2, this build reads 1/,
  });
});

test('the first view holds the initial members, all joined, laid out by the allocator', (t) => {
  const view = initialView(
    ids(3, 1, 2).map((n) => ({ id: n, address: address(n) })),
    defaultAllocator(POLICIES),
  );
  t.is(view.id, viewId(0));
  t.deepEqual(view.memberIds, ids(3, 1, 2));
  t.deepEqual(view.joined, ids(3, 1, 2));
  t.deepEqual(
    view.subgroup('Kv', 0)!.shards.map((s) => s.members),
    [ids(3), ids(1)],
  );
  t.false(view.isAdequate, 'Log needs two nodes and has one');
});

test('receive reports from nodes outside the shard are ignored', (t) => {
  const v0 = firstView([1, 2, 3, 4, 5]);
  const c = core(1, v0);
  c.committed(1, { kind: 'change', changes: [remove(4)] });
  c.wedged(
    viewId(0),
    reportsFor(v0, nodeId(1), () => 3),
  );
  const forged = (from: number): ReceiveReportMessage => ({
    kind: 'receive-report',
    report: {
      viewId: viewId(0),
      subgroupId: subgroupId(0),
      shardIndex: shardIndex(0),
      reporter: nodeId(from),
      received: [0, 0],
    },
  });
  c.receive(nodeId(2), forged(2)); // node 2 is in Kv shard 1, not shard 0
  c.receive(nodeId(3), forged(5)); // reporter and sender disagree
  t.deepEqual(withoutAcks(c.ready().proposals), []);
  c.receive(nodeId(5), forged(5));
  t.deepEqual(
    withoutAcks(c.ready().proposals).map((p) => p.kind === 'trim' && p.trim),
    [[0, 0]],
  );
});

// ---- A small cluster ------------------------------------------------------------------------

interface SimNode {
  id: NodeId;
  core: ViewChangeCore;
  fd: FailureDetectorCore;
  alive: boolean;
  removed: boolean;
  nextIndex: number;
  installs: View[];
  /** Reports this node made, by view id, per shard key. */
  reported: Map<ViewId, Map<string, readonly number[]>>;
  pendingDelivered: ViewId | undefined;
  partitioned: boolean;
  /** The view in which the node last found itself on a minority side. */
  partitionedIn: ViewId | undefined;
}

type Wire = { to: NodeId; from: NodeId } & (
  { kind: 'heartbeat' } | { kind: 'core'; message: ReceiveReportMessage }
);

class Cluster {
  readonly nodes = new Map<NodeId, SimNode>();
  /** The membership log; null stands for Raft's own entries (conf changes, empty entries). */
  readonly log: (MembershipEntry | null)[] = [];
  private proposals: MembershipEntry[] = [];
  private network: Wire[] = [];
  /** Nodes cut off from everyone (messages and the log). */
  readonly cut = new Set<NodeId>();
  readonly viewsById = new Map<ViewId, Uint8Array>();
  readonly trimsByView = new Map<string, string>();
  readonly problems: string[] = [];
  /** What happened, for the failure message of a seed. */
  readonly trace: string[] = [];
  private stepCount = 0;
  private readonly allocator: Allocator;
  private nextNodeId: number;

  constructor(
    private readonly r: SeededRandom,
    initial: number[],
    private readonly policies: LayoutPolicies,
  ) {
    this.allocator = defaultAllocator(policies);
    const view = firstView(initial, policies);
    for (const n of view.memberIds) this.addNode(n, view, 0);
    this.nextNodeId = Math.max(...initial) + 1;
  }

  private addNode(n: NodeId, view: View, appliedIndex: number): void {
    const fd = new FailureDetectorCore({ self: n, heartbeatTicks: 3, timeoutTicks: 30 });
    fd.resetView(view.id, view.memberIds);
    const c = new ViewChangeCore({
      self: n,
      view,
      allocator: this.allocator,
      computeTrim: minTrim,
      votersCount: 3,
      proposalRetryTicks: 20,
      appliedIndex,
    });
    this.nodes.set(n, {
      id: n,
      core: c,
      fd,
      alive: true,
      removed: false,
      nextIndex: appliedIndex + 1,
      installs: [view],
      reported: new Map(),
      pendingDelivered: undefined,
      partitioned: false,
      partitionedIn: undefined,
    });
    this.viewsById.set(view.id, encodeView(view));
  }

  live(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.alive && !n.removed);
  }

  crash(n: NodeId): void {
    this.trace.push(`${this.stepCount} crash ${n}`);
    this.nodes.get(n)!.alive = false;
  }

  /** Asks a random live member to admit a fresh node. */
  join(): void {
    const members = this.live().filter((n) => !this.cut.has(n.id));
    if (members.length === 0) return;
    const contact = members[this.r.int(members.length)]!;
    const n = nodeId(this.nextNodeId++);
    this.trace.push(`${this.stepCount} join ${n} via ${contact.id}`);
    contact.core.requestJoin(n, address(n));
  }

  step(): void {
    this.stepCount += 1;
    // The network: deliver a random half of what is in flight, in random order.
    const inFlight = this.network;
    this.network = [];
    for (const w of inFlight) {
      if (this.r.int(2) === 0) {
        this.network.push(w);
        continue;
      }
      const to = this.nodes.get(w.to);
      if (to === undefined || !to.alive || to.removed || this.cut.has(w.to) || this.cut.has(w.from))
        continue;
      if (w.kind === 'heartbeat') to.fd.heartbeatReceived(w.from);
      else to.core.receive(w.from, w.message);
    }
    // The membership log: commit some proposals in random order (as a Raft leader would).
    while (this.proposals.length > 0 && this.r.int(3) !== 0) {
      if (this.r.int(10) === 0) this.log.push(null);
      this.log.push(this.proposals.splice(this.r.int(this.proposals.length), 1)[0]!);
    }
    for (const node of this.live()) this.stepNode(node);
  }

  private stepNode(node: SimNode): void {
    const connected = !this.cut.has(node.id);
    while (connected && node.nextIndex <= this.log.length && this.r.int(4) !== 0) {
      const entry = this.log[node.nextIndex - 1];
      if (entry) node.core.committed(node.nextIndex, entry); // the driver skips Raft's own entries
      node.nextIndex += 1;
    }
    if (node.pendingDelivered !== undefined && this.r.int(2) === 0) {
      node.core.delivered(node.pendingDelivered);
      node.pendingDelivered = undefined;
    }
    node.fd.tick();
    node.core.tick();
    const fdOut = node.fd.ready();
    // A node on a minority side goes silent (driver duty) so that the majority removes it.
    const silent = node.partitionedIn === node.core.view.id;
    for (const to of silent ? [] : fdOut.heartbeatsTo) {
      this.network.push({ kind: 'heartbeat', from: node.id, to });
    }
    for (const s of fdOut.suspicions) {
      this.trace.push(
        `${this.stepCount} node ${node.id} suspects ${s.node} (${s.cause}, view ${s.viewId}, ${s.silentTicks} ticks)`,
      );
      node.core.suspect(s.node);
    }
    this.drain(node);
  }

  private drain(node: SimNode): void {
    for (let round = 0; round < 3; round++) {
      const out = node.core.ready();
      if (!this.cut.has(node.id)) this.proposals.push(...out.proposals);
      for (const m of out.messages)
        this.network.push({ kind: 'core', from: node.id, to: m.to, message: m.message });
      for (const e of out.effects) this.onEffect(node, e);
    }
  }

  private onEffect(node: SimNode, e: ViewChangeEffect): void {
    const view = node.core.view;
    if (e.kind === 'install') {
      const seen = this.viewsById.has(e.view.id);
      if (!seen)
        this.trace.push(
          `${this.stepCount} view ${e.view.id} [${e.view.memberIds}] -${e.view.failed} -${e.view.departed}`,
        );
    } else if (e.kind !== 'wedge' && e.kind !== 'deliver') {
      this.trace.push(
        `${this.stepCount} node ${node.id} ${e.kind} ${JSON.stringify(e).slice(0, 120)}`,
      );
    }
    if (e.kind === 'wedge') {
      // What this node received from each sender: a random amount, fixed per (view, node, shard).
      const reports = reportsFor(view, node.id, () => this.r.int(20));
      const byShard = new Map(reports.map((r) => [`${r.subgroupId}/${r.shardIndex}`, r.received]));
      node.reported.set(e.viewId, byShard);
      node.core.wedged(e.viewId, reports);
    } else if (e.kind === 'deliver') {
      for (const s of e.trims) {
        const key = `${e.viewId}:${s.subgroupId}/${s.shardIndex}`;
        const trim = JSON.stringify(s.trim);
        const seen = this.trimsByView.get(key);
        if (seen !== undefined && seen !== trim)
          this.problems.push(`virtual synchrony: ${key} trims ${seen} and ${trim}`);
        this.trimsByView.set(key, trim);
        const received = node.reported.get(e.viewId)?.get(`${s.subgroupId}/${s.shardIndex}`);
        if (received === undefined || s.trim.some((count, i) => count > received[i]!)) {
          this.problems.push(
            `node ${node.id} must deliver ${trim} in ${key} but received ${JSON.stringify(received)}`,
          );
        }
      }
      node.pendingDelivered = e.viewId;
    } else if (e.kind === 'install') {
      this.checkInstall(node, e.view, e.previous);
      node.installs.push(e.view);
      node.fd.resetView(e.view.id, e.view.memberIds);
      for (const joiner of e.view.joined) {
        if (!this.nodes.has(joiner)) this.addNode(joiner, e.view, e.sealedAtIndex);
      }
    } else if (e.kind === 'removed') {
      node.removed = true;
    } else if (e.kind === 'partitioned') {
      node.partitioned = true;
      node.partitionedIn = e.viewId;
    }
  }

  private checkInstall(node: SimNode, view: View, previous: View): void {
    const bytes = encodeView(view);
    const seen = this.viewsById.get(view.id);
    if (seen !== undefined && Buffer.compare(Buffer.from(seen), Buffer.from(bytes)) !== 0) {
      this.problems.push(`node ${node.id} installed a different view ${view.id}`);
    }
    this.viewsById.set(view.id, bytes);
    const last = node.installs[node.installs.length - 1]!;
    if (view.id !== last.id + 1 || previous.id !== last.id)
      this.problems.push(`node ${node.id} installed view ${view.id} after ${last.id}`);
    if (!view.isMember(node.id))
      this.problems.push(`node ${node.id} installed view ${view.id} without itself`);
    if (node.removed) this.problems.push(`removed node ${node.id} installed view ${view.id}`);
    if (!leavesMajority(previous, view.departed, view.failed))
      this.problems.push(`view ${view.id} dropped a majority`);
  }

  /** Every live node's latest view, as ids. */
  latestViews(): number[] {
    return this.live().map((n) => n.installs[n.installs.length - 1]!.id);
  }
}

function runCluster(seed: number): { problems: string[]; views: number; cluster: Cluster } {
  const r = new SeededRandom(seed);
  const policies: LayoutPolicies =
    r.int(2) === 0
      ? POLICIES
      : {
          Cache: oneSubgroup(fixedEvenShards(2, 2)),
          Meta: oneSubgroup(flexibleEvenShards(1, 1, 2, { senders: { shardRanks: [0] } })),
        };
  const cluster = new Cluster(r, [1, 2, 3, 4, 5, 6].slice(0, 3 + r.int(4)), policies);
  const faultSteps = 300;
  let healAtStep = -1;
  const leaving = new Set<NodeId>();
  for (let step = 0; step < faultSteps + 600; step++) {
    if (step === healAtStep || (step === faultSteps && cluster.cut.size > 0)) {
      cluster.trace.push(`${step} heal ${[...cluster.cut]}`);
      cluster.cut.clear();
    }
    if (step < faultSteps && r.int(25) === 0) {
      const reachable = cluster.live().filter((n) => !cluster.cut.has(n.id));
      const roll = r.int(4);
      // Crash, leave or cut off nodes only while a majority of the newest view stays reachable
      // (counting leavers as failures, which is stricter than the rule), or the group rightly
      // stops.
      const view = reachable
        .map((n) => n.core.view)
        .reduce((a, b) => (b.id > a.id ? b : a), reachable[0]!.core.view);
      const gone = view.memberIds.filter(
        (n) => leaving.has(n) || !reachable.some((l) => l.id === n),
      ).length;
      const mayLose = (count: number): boolean =>
        2 * (view.members.length - gone - count) > view.members.length;
      const pick = (): SimNode => reachable[r.int(reachable.length)]!;
      if (roll === 0 && mayLose(1)) cluster.crash(pick().id);
      else if (roll === 1 && reachable.length < 9) cluster.join();
      else if (roll === 2 && mayLose(1) && reachable.length > 3) {
        const leaver = pick();
        leaving.add(leaver.id);
        cluster.trace.push(`${step} leave ${leaver.id}`);
        leaver.core.leave();
      } else if (roll === 3 && cluster.cut.size === 0 && mayLose(1)) {
        // A minority of the view is cut off from everyone, the membership log included.
        let count = 1;
        while (mayLose(count + 1) && r.int(2) === 0) count += 1;
        const members = reachable.filter((n) => view.isMember(n.id));
        for (let i = 0; i < count && members.length > 0; i++) {
          cluster.cut.add(members.splice(r.int(members.length), 1)[0]!.id);
        }
        healAtStep = step + 20 + r.int(150);
        cluster.trace.push(`${step} cut ${[...cluster.cut]} until ${healAtStep}`);
      }
    }
    cluster.step();
    if (cluster.problems.length > 0) break;
  }
  const problems = [...cluster.problems];
  // Liveness: faults stopped long ago, so every live node is in one view of exactly the live nodes.
  const latest = new Set(cluster.latestViews());
  if (problems.length === 0 && latest.size !== 1)
    problems.push(`live nodes ended in views ${[...latest]}`);
  const live = cluster.live();
  const final = live[0]?.installs[live[0].installs.length - 1];
  const liveIds = live.map((n) => n.id as number).sort((a, b) => a - b);
  if (
    problems.length === 0 &&
    JSON.stringify([...final!.memberIds].sort((a, b) => a - b)) !== JSON.stringify(liveIds)
  ) {
    problems.push(`final view ${final!.id} holds ${final!.memberIds}, live nodes are ${liveIds}`);
  }
  return { problems, views: final?.id ?? 0, cluster };
}

test('cluster: crashes, joins, leaves and partitions keep view agreement and virtual synchrony (150 seeds)', (t) => {
  let views = 0;
  let partitioned = 0;
  for (let seed = 1; seed <= 150; seed++) {
    const { problems, views: count, cluster } = runCluster(seed);
    if (problems.length > 0) {
      t.fail(
        `seed ${seed}: ${problems.slice(0, 3).join('; ')}\n${cluster.trace.slice(-25).join('\n')}`,
      );
      return;
    }
    views += count;
    partitioned += [...cluster.nodes.values()].filter((n) => n.partitioned).length;
  }
  t.true(partitioned > 10, `only ${partitioned} nodes ever found themselves on a minority side`);
  t.true(views > 150 * 3, `only ${views} views installed across all seeds`);
});

test('cluster: a minority side that holds the log never installs a view and knows it is cut off', (t) => {
  const r = new SeededRandom(3);
  const cluster = new Cluster(r, [1, 2, 3, 4, 5], POLICIES);
  for (let i = 0; i < 20; i++) cluster.step();
  // Nodes 3, 4, 5 vanish from the view of 1 and 2 (crashed, as far as 1 and 2 can tell), and 1
  // and 2 still reach the membership log.
  for (const n of ids(3, 4, 5)) cluster.crash(n);
  for (let i = 0; i < 200; i++) cluster.step();
  const minority = ids(1, 2).map((n) => cluster.nodes.get(n)!);
  t.deepEqual(
    minority.map((n) => n.installs.map((v) => v.id as number)),
    [[0], [0]],
    'neither installs a view',
  );
  t.true(
    minority.every((n) => n.partitioned),
    'both know they are on a minority side',
  );
  // Gone silent, each may see the other removed, but no view follows: the survivors of 3, 4, 5's
  // shards never report, and removing all of them is refused.
  t.true(cluster.live().every((n) => n.core.view.id === viewId(0)));
  t.deepEqual(cluster.problems, []);
  // The log holds the refused removal; the view is unchanged.
  t.true(
    cluster.log.some((e) => e?.kind === 'change' && e.changes.some((c) => c.kind === 'remove')),
  );
});
