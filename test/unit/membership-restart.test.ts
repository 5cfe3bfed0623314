// The total restart's decisions (src/membership/restart.ts): when the quorum is back, who leads,
// the view the group resumes in, how far each node truncates past the committed trim, and whom
// it pulls from. The last test runs random shard histories through truncation and
// reconciliation and checks that every node ends with the same versions, all inside the trim,
// none of which a node that applied the trim held is lost.
import test from 'ava';
import { makeVersion, nodeId, viewId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { customShards, defaultAllocator, fixedEvenShards, oneSubgroup } from '../../src/membership/layout.js';
import {
  RestartProposer, acceptorAccept, acceptorPrepare, ballotQuorums, compareBallots, keptVersion, meetsEveryQuorum, nextBallot,
  quorumRuleOf, reconcileShard, restartAcceptorOf, restartLeadStep, restartLeader, restartQuorum, restartView, type Ballot,
} from '../../src/membership/restart.js';
import { initialView } from '../../src/membership/view-change-core.js';

const ids = (...xs: number[]): NodeId[] => xs.map((x) => nodeId(x));
const allocator = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(2, 2)) });
const view = initialView([1, 2, 3, 4].map((i) => ({ id: nodeId(i), address: `127.0.0.1:${7000 + i}` })), allocator);

test('the quorum needs a majority of the view and of every shard', (t) => {
  // Shards [1, 2] and [3, 4].
  t.deepEqual(view.layout.types[0]!.subgroups[0]!.shards.map((s) => s.members.map(Number)), [[1, 2], [3, 4]]);
  const q1 = restartQuorum(view, new Set(ids(1, 2, 3)));
  t.false(q1.ready, '3 of 4 back, but shard [3, 4] has only one of two');
  t.deepEqual(q1.missing, ids(4));
  t.deepEqual(q1.shortShards, [{ typeName: 'KV', subgroupIndex: 0, shardIndex: 1, back: 1, needed: 2 }]);
  t.true(restartQuorum(view, new Set(ids(1, 2, 3, 4))).ready);
  t.false(restartQuorum(view, new Set(ids(1))).ready);
  const three = initialView([1, 2, 3].map((i) => ({ id: nodeId(i), address: `a${i}` })),
    defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, 3)) }));
  t.true(restartQuorum(three, new Set(ids(2, 3))).ready, 'two of three');
  t.false(restartQuorum(three, new Set(ids(3))).ready);
});


test('the quorum also needs a majority of every raft shard configuration a member reported', (t) => {
  // Shards [1, 2] and [3, 4]; one member's log of the first has voters {1, 2, 5} (it lagged).
  const lagging = [{ shard: '1/0', voters: [1, 2, 5] }];
  t.true(restartQuorum(view, new Set(ids(1, 2, 3, 4)), undefined, lagging).ready, '1 and 2 are 2 of its 3 voters (5 is not back)');
  const short = restartQuorum(view, new Set(ids(1, 3, 4)), undefined, [{ shard: '1/0', voters: [1, 2] }, { shard: '1/0', voters: [2, 1] }]);
  t.false(short.ready, 'a majority of the view and of both shards is back, but only 1 of the voters {1, 2}');
  t.deepEqual(short.shortRaft, [{ shard: '1/0', voters: [1, 2] }], 'the same configuration reported twice is named once');
  t.deepEqual(restartQuorum(view, new Set(ids(1, 3, 4))).shortRaft, [], 'nothing reported: the view rule alone');
  t.deepEqual(restartQuorum(view, new Set(ids(1, 3)), undefined, [{ shard: '1/0', voters: [] }]).shortRaft, [], 'an empty configuration is ignored');
  // The leader waits on it as on any short shard.
  const step = restartLeadStep({
    view, raftVoters: [{ shard: '1/0', voters: [1, 2] }], back: new Set(ids(1, 3, 4)), self: nodeId(1), nowMs: 10_000, quorumSinceMs: 0, graceMs: 100,
  });
  t.is(step.kind, 'wait');
});
test('the leader is the lowest-ranked member that is back', (t) => {
  t.is(restartLeader(view, new Set(ids(3, 2, 4))), nodeId(2));
  t.is(restartLeader(view, new Set(ids(9))), undefined);
});

test('the restart view: next id, members back in rank order at their new addresses, survivors keep their shards', (t) => {
  const spare = defaultAllocator({ KV: oneSubgroup(customShards([{ nodesMin: 1, nodesMax: 2 }, { nodesMin: 1, nodesMax: 2 }])) });
  const last = initialView([1, 2, 3, 4, 5].map((i) => ({ id: nodeId(i), address: `a${i}` })), spare);
  const next = restartView(last, new Map([[nodeId(4), 'b4'], [nodeId(1), 'b1'], [nodeId(5), 'b5']]), spare);
  t.is(next.id, viewId(1));
  t.deepEqual(next.members.map((m) => [Number(m.id), m.address]), [[1, 'b1'], [4, 'b4'], [5, 'b5']]);
  t.deepEqual(next.failed.map(Number), [2, 3]);
  t.deepEqual(next.joined, []);
  const before = last.layout.types[0]!.subgroups[0]!.shards.map((s) => s.members.map(Number));
  const after = next.layout.types[0]!.subgroups[0]!.shards.map((s) => s.members.map(Number));
  for (const [i, members] of after.entries()) {
    for (const m of members) if (before.flat().includes(m) && before[i]!.includes(m) === false) t.fail(`node ${m} moved`);
  }
  t.true(after.every((members) => members.length >= 1), 'every shard has a member');
});

test('keptVersion truncates a node that did not apply the trim to the first position the trim cut', (t) => {
  const v = (position: number): bigint => makeVersion(viewId(5), position);
  // Two senders; trim [2, 1]: sender 0 delivers positions 0, 2; sender 1 position 1; position 3
  // (sender 1's second) is the first cut, so position 4 (sender 0's third) is cut too.
  const trim = { viewId: 5, trim: [2, 1] };
  t.is(keptVersion({ latest: v(4), trimApplied: false }, trim), v(2));
  t.is(keptVersion({ latest: v(3), trimApplied: false }, trim), v(2));
  t.is(keptVersion({ latest: v(1), trimApplied: false }, trim), v(1), 'a shorter prefix stays');
  t.is(keptVersion({ latest: v(4), trimApplied: true }, trim), v(4), 'a node that applied the trim holds only trim messages');
  t.is(keptVersion({ latest: makeVersion(viewId(4), 9), trimApplied: false }, trim), makeVersion(viewId(4), 9),
    'versions of earlier views stay');
  t.is(keptVersion({ latest: v(4), trimApplied: false }, undefined), v(4), 'no committed trim: nothing to cut');
  t.is(keptVersion({ latest: v(0), trimApplied: false }, { viewId: 5, trim: [0, 0] }), v(0) - 1n,
    'an empty trim cuts the whole view');
  t.is(keptVersion({ latest: -1n, trimApplied: false }, trim), -1n);
});

test('reconcileShard pulls from the lowest-ranked member holding the newest version', (t) => {
  t.deepEqual(reconcileShard(5n, [{ node: nodeId(1), kept: 7n }, { node: nodeId(3), kept: 9n }, { node: nodeId(4), kept: 9n }]),
    { kind: 'pull', from: nodeId(3), after: 5n, target: 9n });
  t.deepEqual(reconcileShard(9n, [{ node: nodeId(1), kept: 7n }, { node: nodeId(3), kept: 9n }]), { kind: 'current' });
  t.deepEqual(reconcileShard(-1n, []), { kind: 'current' });
});

test('random shard histories: after truncation and reconciliation every node holds the same versions, inside the trim', (t) => {
  for (let seed = 1; seed <= 500; seed++) {
    const r = new SeededRandom(seed);
    const senders = 1 + r.int(3);
    const R = 7;
    // Messages every survivor received: per sender, a count; the trim is the committed one.
    const trim = Array.from({ length: senders }, () => r.int(5));
    const underTrim = (p: number): boolean => Math.floor(p / senders) < trim[p % senders]!;
    const end = Math.max(0, ...trim.map((c, s) => (c > 0 ? (c - 1) * senders + s + 1 : 0)));
    const trimSet = Array.from({ length: end }, (_, p) => p).filter(underTrim);
    const nodes = Array.from({ length: 2 + r.int(3) }, (_, i) => {
      const applied = r.next() < 0.4;
      // A node that applied the trim holds exactly the trim's positions; one that did not
      // delivered a prefix in position order (raw mode may run past the trim).
      const positions = applied ? trimSet : Array.from({ length: r.int(end + 3) }, (_, p) => p);
      return { node: nodeId(i + 1), applied, positions };
    });
    const versions = (ps: readonly number[]): bigint[] => ps.map((p) => makeVersion(viewId(R), p));
    const latest = (ps: readonly number[]): bigint => (ps.length === 0 ? makeVersion(viewId(R - 1), 3) : versions(ps).at(-1)!);
    const kept = nodes.map((n) => keptVersion({ latest: latest(n.positions), trimApplied: n.applied }, { viewId: R, trim }));
    const after = nodes.map((n, i) => versions(n.positions).filter((v) => v <= kept[i]!));
    const finals = nodes.map((n, i) => {
      const plan = reconcileShard(kept[i]!, nodes.flatMap((m, j) => (j === i ? [] : [{ node: m.node, kept: kept[j]! }])));
      if (plan.kind === 'current') return after[i]!;
      const source = nodes.findIndex((m) => m.node === plan.from);
      return [...after[i]!, ...after[source]!.filter((v) => v > plan.after)];
    });
    const first = JSON.stringify(finals[0]!.map(String));
    for (const f of finals) t.is(JSON.stringify(f.map(String)), first, `seed ${seed}: every node ends equal`);
    const inTrim = new Set(versions(trimSet).map(String));
    t.true(finals[0]!.every((v) => inTrim.has(String(v))), `seed ${seed}: nothing past the trim survives`);
    if (nodes.some((n) => n.applied)) {
      t.is(finals[0]!.length, trimSet.length, `seed ${seed}: a node that applied the trim keeps all of it`);
    }
  }
});

// ---- The decision's ballots (acceptorPrepare, acceptorAccept, RestartProposer) ----------------

const inst = (viewId: number, epoch = '0'): { viewId: number; epoch: string } => ({ viewId, epoch });
const b = (round: number, node: number, viewId = 5): Ballot => ({ viewId, round, node });

test('an acceptor promises only upward, and reports what it accepted', (t) => {
  const p1 = acceptorPrepare<string>(undefined, inst(5), inst(5), b(1, 2));
  t.deepEqual(p1.reply, { kind: 'promise' });
  t.true(p1.persist, 'a new promise is persisted before the answer');
  const lower = acceptorPrepare(p1.state, inst(5), inst(5), b(1, 1));
  t.deepEqual(lower.reply, { kind: 'nack', promised: b(1, 2) }, 'round 1 of node 1 is below round 1 of node 2');
  const acc = acceptorAccept(p1.state, inst(5), inst(5), b(1, 2), 'D1');
  t.deepEqual(acc.reply, { kind: 'accepted' });
  t.true(acc.persist);
  t.deepEqual(acceptorAccept(acc.state, inst(5), inst(5), b(0, 9), 'D0').reply, { kind: 'nack', promised: b(1, 2) });
  const p2 = acceptorPrepare(acc.state, inst(5), inst(5), b(2, 1));
  t.deepEqual(p2.reply, { kind: 'promise', accepted: { ballot: b(1, 2), decision: 'D1' } });
  t.false(acceptorPrepare(p2.state, inst(5), inst(5), b(2, 1)).persist, 'a repeated prepare changes nothing');
});

test('an acceptor answers an older instance stale, carries its acceptance into a newer one of the epoch, and starts over in another epoch', (t) => {
  const acc = acceptorAccept<string>(undefined, inst(5), inst(5), b(3, 1), 'D');
  t.deepEqual(acceptorPrepare(acc.state, inst(6), inst(5), b(9, 1)).reply, { kind: 'stale', newer: inst(6) },
    'this node heard of view 6: a restart from view 5 is stale');
  t.deepEqual(acceptorPrepare(acc.state, inst(5), inst(4), b(9, 1, 4)).reply, { kind: 'stale', newer: inst(5) });
  const newer = acceptorPrepare(acc.state, inst(5), inst(6), b(1, 1, 6));
  t.deepEqual(newer.reply, { kind: 'promise', accepted: { ballot: b(3, 1), decision: 'D' } },
    'the decision accepted in view 5 is reported to a ballot of view 6 (it may have been chosen)');
  t.true(newer.persist, 'moving to the newer instance is persisted');
  t.deepEqual(newer.state!.instance, inst(6));
  t.deepEqual(newer.state!.accepted, { ballot: b(3, 1), decision: 'D' });
  // Its persisted instance counts even when its own record is older (it crashed and came back).
  t.deepEqual(acceptorPrepare(newer.state, inst(5), inst(5), b(7, 1)).reply, { kind: 'stale', newer: inst(6) });
  // Another epoch (a restart decided since) starts over.
  const other = acceptorPrepare(acc.state, inst(5), inst(6, '6-1-9'), b(1, 1, 6));
  t.deepEqual(other.reply, { kind: 'promise' });
  t.is(other.state!.accepted, undefined);
});

test('ballots rank by view, then round, then node; a record without views in its ballots reads as before', (t) => {
  t.true(compareBallots(b(1, 1, 6), b(9, 9, 5)) > 0, 'any ballot of view 6 is above every ballot of view 5');
  t.true(compareBallots(b(2, 1), b(1, 9)) > 0);
  t.true(compareBallots(b(1, 2), b(1, 1)) > 0);
  const old = { instance: inst(5), promised: { round: 4, node: 2 }, accepted: { ballot: { round: 3, node: 1 }, decision: 'D' } };
  t.deepEqual(restartAcceptorOf(old), { instance: inst(5), promised: b(4, 2), accepted: { ballot: b(3, 1), decision: 'D' } });
  t.is(restartAcceptorOf(undefined), undefined);
  // The next ballot is above the promised one of its view, and round 1 in a newer view.
  t.deepEqual(nextBallot(restartAcceptorOf(old), inst(5), 1, 3), b(5, 3));
  t.deepEqual(nextBallot(restartAcceptorOf(old), inst(6), 1, 3), b(1, 3, 6));
});

test('a ballot of a view whose predecessor lost members must meet every quorum of the predecessor', (t) => {
  // View 4: [1..5], one shard. View 5 removed 4 and 5: [1, 2, 3]. If only 1 and 2 recorded view 5
  // (3 crashed first), {3, 4, 5} (records of view 4) are a quorum of view 4 that may decide a
  // restart from it; {1, 2}, a quorum of view 5, must not decide alone.
  const one = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, 5)) });
  const v4 = initialView([1, 2, 3, 4, 5].map((i) => ({ id: nodeId(i), address: `a${i}` })), one);
  const small = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, 3)) });
  const v5 = initialView([1, 2, 3].map((i) => ({ id: nodeId(i), address: `a${i}` })), small);
  const rule4 = quorumRuleOf(v4);
  t.deepEqual(rule4, { viewId: v4.id, members: [1, 2, 3, 4, 5], shards: [[1, 2, 3, 4, 5]] });
  t.false(meetsEveryQuorum(rule4, new Set([1, 2])), '{3, 4, 5} is a quorum without them');
  t.true(meetsEveryQuorum(rule4, new Set([1, 2, 3])));
  const q = ballotQuorums(quorumRuleOf(v5), rule4);
  t.false(q.promise(new Set([1, 2])));
  t.true(q.promise(new Set([1, 2, 3])));
  t.true(q.promise(new Set([1, 2, 4])), 'a removed node that is back counts for the predecessor');
  t.true(q.accept(new Set([1, 2])), 'phase 2 needs a quorum of the view only');
  t.true(ballotQuorums(quorumRuleOf(v5), undefined).promise(new Set([1, 2])), 'no predecessor rule: the earlier quorum');
  // The leader waits for it too, and says why.
  t.false(restartQuorum(v5, new Set(ids(1, 2)), rule4).ready);
  t.true(restartQuorum(v5, new Set(ids(1, 2)), rule4).previousShort);
  t.true(restartQuorum(v5, new Set(ids(1, 2))).ready);
  const lead = (previous: typeof rule4 | undefined): string => restartLeadStep({
    view: v5, previous, back: new Set(ids(1, 2)), self: nodeId(1), nowMs: 0, quorumSinceMs: 0, graceMs: 0,
  }).kind;
  t.is(lead(rule4), 'wait');
  t.is(lead(undefined), 'decide');
  // The proposer: promises of 1 and 2 are not enough, a third of view 4's members completes phase 1.
  const p = new RestartProposer<string>(inst(5), b(1, 1), q, () => 'mine');
  t.deepEqual(p.onReply(1, { kind: 'promise' }), { kind: 'wait' });
  t.deepEqual(p.onReply(2, { kind: 'promise' }), { kind: 'wait' });
  t.deepEqual(p.onReply(4, { kind: 'promise', accepted: { ballot: b(2, 3, 4), decision: 'of view 4' } }),
    { kind: 'accept', ballot: b(1, 1), decision: 'of view 4', adopted: true }, 'it proposes what view 4\'s instance accepted');
  t.deepEqual(p.onReply(1, { kind: 'accepted' }), { kind: 'wait' });
  t.deepEqual(p.onReply(2, { kind: 'accepted' }), { kind: 'chosen', decision: 'of view 4' });
});

test('the proposer proposes the highest accepted decision of a quorum, else its own, and is chosen by a quorum', (t) => {
  const quorum = ballotQuorums(quorumRuleOf(view), undefined);
  let freshCalls = 0;
  const p = new RestartProposer<string>(inst(5), b(4, 1), quorum, () => {
    freshCalls++;
    return 'mine';
  });
  t.deepEqual(p.onReply(1, { kind: 'promise' }), { kind: 'wait' });
  t.deepEqual(p.onReply(2, { kind: 'promise', accepted: { ballot: b(2, 3), decision: 'old' } }), { kind: 'wait' });
  // Shards [1, 2] and [3, 4] of two each: only all four are a quorum.
  t.deepEqual(p.onReply(3, { kind: 'promise', accepted: { ballot: b(3, 2), decision: 'newer' } }), { kind: 'wait' });
  t.deepEqual(p.onReply(4, { kind: 'promise' }), { kind: 'accept', ballot: b(4, 1), decision: 'newer', adopted: true });
  t.is(freshCalls, 0);
  t.deepEqual(p.onReply(1, { kind: 'accepted' }), { kind: 'wait' });
  t.deepEqual(p.onReply(1, { kind: 'accepted' }), { kind: 'wait' }, 'a duplicate counts once');
  t.deepEqual(p.onReply(3, { kind: 'accepted' }), { kind: 'wait' });
  t.deepEqual(p.onReply(4, { kind: 'accepted' }), { kind: 'wait' }, 'three of four, but one of shard [1, 2]');
  t.deepEqual(p.onReply(2, { kind: 'accepted' }), { kind: 'chosen', decision: 'newer' });
  t.deepEqual(p.onReply(2, { kind: 'accepted' }), { kind: 'wait' }, 'chosen once');

  const q = new RestartProposer<string>(inst(5), b(1, 1), quorum, () => 'mine');
  for (const n of [1, 2, 3]) q.onReply(n, { kind: 'promise' });
  t.deepEqual(q.onReply(4, { kind: 'promise' }), { kind: 'accept', ballot: b(1, 1), decision: 'mine', adopted: false });
  t.deepEqual(q.onReply(2, { kind: 'nack', promised: b(1, 1) }), { kind: 'wait' }, 'its own ballot is no refusal');
  t.deepEqual(q.onReply(2, { kind: 'nack', promised: b(6, 3) }), { kind: 'retry', nextRound: 7 });
  const s = new RestartProposer<string>(inst(5), b(1, 1), quorum, () => 'mine');
  t.deepEqual(s.onReply(2, { kind: 'stale', newer: inst(8) }), { kind: 'retry', nextRound: 2, newer: inst(8) });
});
