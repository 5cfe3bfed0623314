// The total restart's membership-log rule (src/membership/restart-log.ts): the replay of a log
// past a view record, and the wait for a majority of the most up-to-date log's voters. The
// scenario is the hole it closes: U = [1..5], U + 1 = [1, 2, 3], U + 2 = [1, 2]; node 3
// acknowledged U's wedge but crashed before recording U + 1; nodes 3, 4 and 5 hold records of U
// and are a quorum of U. The last test checks the rule on random histories.
import test from 'ava';
import { nodeId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { defaultAllocator, flexibleEvenShards, oneSubgroup } from '../../src/membership/layout.js';
import { movesToLogView, peerSameId, replaySeals, restartLogRule, sameSeal, type LogSummary } from '../../src/membership/restart-log.js';
import {
  RestartProposer, acceptorAccept, acceptorPrepare, ballotQuorums, quorumRuleOf, restartLeadStep, restartQuorum, type RestartAcceptorState,
} from '../../src/membership/restart.js';
import { initialView, type MembershipEntry } from '../../src/membership/view-change-core.js';
import { buildHistory, commitIndex, divergentRound, raftConsistent, summaryOf, type History } from '../sim/restart-history.js';

const ids = (...xs: number[]): NodeId[] => xs.map((x) => nodeId(x));
const allocator = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(1, 1, 7)) });
const U = initialView([1, 2, 3, 4, 5].map((i) => ({ id: nodeId(i), address: `a${i}` })), allocator);
const history = buildHistory({ first: U, removals: [[4, 5], [3]], allocator, votersCount: 5, newTermAt: (r) => r === 1 });
const entries = (h: History, upTo = Infinity): { index: number; entry: MembershipEntry }[] =>
  h.log.filter((e) => e.kind === 'entry' && e.index <= upTo).map((e) => ({ index: e.index, entry: (e as { entry: MembershipEntry }).entry }));

test('the replay reports the views a log seals past a record, their trims and predecessors', (t) => {
  const sealed = replaySeals({ view: U, sealIndex: 0, entries: entries(history), allocator, votersCount: 5 });
  t.deepEqual(sealed.map((s) => [s.view.id, s.view.memberIds.map(Number)]), [[1, [1, 2, 3]], [2, [1, 2]]]);
  t.deepEqual(sealed.map((s) => s.sealIndex), [history.seals[1], history.seals[2]]);
  t.deepEqual(sealed[0]!.previous, quorumRuleOf(U));
  t.deepEqual(sealed[1]!.previous, quorumRuleOf(history.views[1]!));
  t.deepEqual(sealed[0]!.trims.map((x) => [x.subgroupId, x.shardIndex, x.trim.length]), [[0, 0, 5]], 'U\'s one shard, five senders');
  // Node 1 is removed in no round; node 3 is in U + 1's round only: the replay does not stop there.
  const fromPlusOne = replaySeals({ view: history.views[1]!, sealIndex: history.seals[1]!, entries: entries(history), allocator, votersCount: 5 });
  t.deepEqual(fromPlusOne.map((s) => s.view.id), [2]);
  // A prefix that stops one entry short of U + 2's seal seals U + 1 only.
  const short = replaySeals({ view: U, sealIndex: 0, entries: entries(history, history.seals[2]! - 1), allocator, votersCount: 5 });
  t.deepEqual(short.map((s) => s.view.id), [1]);
});

// Log lengths the crash left: nodes 1 and 2 hold all of it; node 3 (it acked U's wedge, then
// crashed before it recorded U + 1) up to the first voter step after U + 1's seal, the removal of
// voter 4, which had to commit before the next step (nodes 1, 2 and 3 are 3 of [1, 2, 3, 5]);
// nodes 4 and 5, removed with U + 1, up to the seal and a little less.
const lengths = new Map([[1, history.log.length], [2, history.log.length], [3, history.seals[1]! + 1], [4, history.seals[1]!], [5, history.seals[1]! - 3]]);
const commit = commitIndex(history, lengths);
const records = new Map([[1, 2], [2, 2], [3, 0], [4, 0], [5, 0]]);
const summaries = new Map<number, LogSummary>([...lengths].map(([node, length]) => [node, summaryOf({
  history, length, commit, epoch: '0', record: history.views[records.get(node)!]!, recordSealIndex: history.seals[records.get(node)!]!,
  allocator, votersCount: 5,
})]));

test('nodes 3, 4 and 5 are a quorum of U but not a majority of the voters: the restart waits', (t) => {
  t.true(commit >= history.seals[2]!, 'U + 2\'s seal committed: it delivered');
  const back = new Set([3, 4, 5]);
  t.true(restartQuorum(U, new Set(ids(3, 4, 5))).ready, 'the record rule alone would decide from U');
  const rule = restartLogRule({ summaries, back, epoch: '0', recordVoters: [1, 2, 3, 4, 5], required: true });
  t.is(rule.holder, 3, 'node 3 holds the most up-to-date log of the three');
  t.deepEqual(rule.waiting, { kind: 'voters', voters: [1, 2, 3, 5], holder: 3 }, 'its log removed voter 4: 3 and 5 are 2 of 4');
  t.is(Number(rule.newest?.view.id), 1, 'it seals U + 1 past its record');
  const quorum = restartQuorum(U, new Set(ids(3, 4, 5)), undefined, [], rule.waiting);
  t.false(quorum.ready);
  t.deepEqual(quorum.shortLog, rule.waiting);
  t.is(restartLeadStep({ view: U, back: new Set(ids(3, 4, 5)), self: nodeId(3), nowMs: 0, quorumSinceMs: undefined, graceMs: 0, log: rule.waiting }).kind, 'wait');
  // Node 2 comes back: its log is the most up-to-date, and its configuration is U + 2's voters.
  const two = restartLogRule({ summaries, back: new Set([2, 3, 4, 5]), epoch: '0', recordVoters: [1, 2, 3, 4, 5], required: true });
  t.deepEqual(two.waiting, { kind: 'voters', voters: [1, 2], holder: 2 });
  const more = restartLogRule({ summaries, back: new Set([1, 2, 3, 4, 5]), epoch: '0', recordVoters: [1, 2, 3, 4, 5], required: true });
  t.is(more.waiting, undefined);
  t.is(more.holder, 1, 'nodes 1 and 2 hold the same log: the lower id');
  // Node 1 recorded U + 2: its log seals nothing past it. Node 3's, less up-to-date, seals U + 1
  // past its record of U; the caller restarts from the newest of that and the records (U + 2).
  t.is(more.sealedBy, 3);
  t.is(more.newest?.view.id, history.views[1]!.id);
  t.false(more.committed, 'a less up-to-date log\'s seal is never known committed');
  // Without a log on disk (required false) the rule does not wait (the earlier behaviour).
  t.is(restartLogRule({ summaries, back, epoch: '0', recordVoters: [], required: false }).waiting, undefined);
});

test('with no log back, the restart waits for the voters of the recorded view; other epochs do not count', (t) => {
  const rule = restartLogRule({ summaries: new Map(), back: new Set([4, 5]), epoch: '0', recordVoters: [1, 2, 3], required: true });
  t.deepEqual(rule.waiting, { kind: 'log', voters: [1, 2, 3] });
  const other = restartLogRule({ summaries, back: new Set([3, 4, 5]), epoch: '7-1-100', recordVoters: [1, 2, 3], required: true });
  t.deepEqual(other.waiting, { kind: 'log', voters: [1, 2, 3] });
});

test('a view only a log seals, by entries not known committed, needs acceptances from a quorum of its predecessor', (t) => {
  const plusOne = quorumRuleOf(history.views[1]!);
  const two = new Set([1, 2]);
  t.true(ballotQuorums(plusOne, quorumRuleOf(U)).accept(two));
  t.false(ballotQuorums(plusOne, quorumRuleOf(U), true).accept(two), '1 and 2 are a quorum of U + 1, not of U');
  t.true(ballotQuorums(plusOne, quorumRuleOf(U), true).accept(new Set([1, 2, 3])));
});

test('the leader of a tentative view waits for a quorum of its predecessor before its first ballot', (t) => {
  const plusOne = history.views[1]!; // [1, 2, 3]
  // A predecessor of six members in one shard: 1, 2 and 4 meet every quorum of it (the other
  // three are no majority), and are no quorum of it.
  const previous = { viewId: 0, members: [1, 2, 3, 4, 5, 6], shards: [[1, 2, 3, 4, 5, 6]] };
  const lead = (back: number[], tentative: boolean) => restartLeadStep({
    view: plusOne, previous, back: new Set(ids(...back)), self: nodeId(1), nowMs: 0, quorumSinceMs: undefined, graceMs: 0, tentative,
  }).kind;
  t.is(lead([1, 2, 4], false), 'decide');
  t.is(lead([1, 2, 4], true), 'wait');
  const quorum = restartQuorum(plusOne, new Set(ids(1, 2, 4)), previous, [], undefined, true);
  t.true(quorum.tentativeShort);
  t.false(quorum.previousShort);
  t.is(lead([1, 2, 4, 5], true), 'decide', 'four of the six');
  t.false(restartQuorum(plusOne, new Set(ids(1, 2, 4, 5)), previous, [], undefined, true).tentativeShort);
});

test('random histories: once the rule is met, the restart starts from every view whose seal committed', (t) => {
  const random = new SeededRandom(9);
  let checked = 0;
  let waited = 0;
  let fromLog = 0;
  for (let run = 0; run < 300; run++) {
    const n = 5 + random.int(3);
    const first = initialView(Array.from({ length: n }, (_, i) => ({ id: nodeId(i + 1), address: `a${i + 1}` })), allocator);
    // Up to three rounds, each removing fewer than half of the view, never node 1.
    const removals: number[][] = [];
    let members = first.memberIds.map(Number);
    for (let r = 0, rounds = 1 + random.int(3); r < rounds && members.length > 2; r++) {
      const removable = members.filter((m) => m !== 1);
      const count = 1 + random.int(Math.floor((members.length - 1) / 2));
      const removed: number[] = [];
      while (removed.length < count) {
        const m = removable.splice(random.int(removable.length), 1)[0]!;
        removed.push(m);
      }
      removals.push(removed);
      members = members.filter((m) => !removed.includes(m));
    }
    const votersCount = 3 + random.int(3);
    const h = buildHistory({ first, removals, allocator, votersCount, newTermAt: () => random.int(2) === 0 });
    // Each node's log: a random prefix (nodes that were never voters hold none).
    const everVoter = new Set(h.log.flatMap((e) => (e.kind === 'conf' ? e.voters : [])));
    const len = raftConsistent(h, new Map(first.memberIds.map(Number).map((m) => [m, everVoter.has(m) ? random.int(h.log.length + 1) : 0])),
      (count) => random.int(count));
    const c = commitIndex(h, len);
    // Records: a node recorded a view only once its seal committed; it recorded the last view it
    // is in whose seal is at or below the commit index, or (it crashed first) an earlier one.
    const rec = new Map<number, number>();
    for (const m of first.memberIds.map(Number)) {
      const mine = h.views.map((_, i) => i).filter((i) => h.views[i]!.isMember(nodeId(m)) && h.seals[i]! <= c);
      rec.set(m, mine[Math.max(0, mine.length - 1 - random.int(2))]!);
    }
    const newestCommitted = Math.max(...h.seals.map((s, i) => (s <= c ? i : 0)));
    const sums = new Map([...len].map(([m, l]) => [m, summaryOf({
      history: h, length: l, commit: c, epoch: '0', record: h.views[rec.get(m)!]!, recordSealIndex: h.seals[rec.get(m)!]!, allocator, votersCount,
    })]));
    // Random sets of nodes back.
    for (let k = 0; k < 20; k++) {
      const back = new Set(first.memberIds.map(Number).filter(() => random.int(2) === 0));
      if (back.size === 0) continue;
      const newestRecord = Math.max(...[...back].map((m) => rec.get(m)!));
      const rule = restartLogRule({ summaries: sums, back, epoch: '0', recordVoters: [...h.views[newestRecord]!.memberIds.slice(0, votersCount).map(Number)], required: true });
      if (rule.waiting !== undefined) {
        waited++;
        continue;
      }
      const R = Math.max(newestRecord, rule.newest?.view.id ?? 0);
      if (R > newestRecord) fromLog++;
      checked++;
      t.true(R >= newestCommitted, `run ${run}: back [${[...back]}] restart from ${R}, view ${newestCommitted} sealed by committed entries`);
      if (rule.newest !== undefined && rule.committed) t.true(rule.newest.sealIndex <= c);
    }
  }
  t.true(checked > 500 && waited > 500 && fromLog > 20, `checked ${checked}, waited ${waited}, from the log ${fromLog}`);
});

test('two logs with different uncommitted seals of one view id: without the tentative rule two decisions are chosen', (t) => {
  // View S = [1..5]. Leader 1's term wrote a round removing 4 and 5 (sealing [1, 2, 3]) on
  // nodes 1 and 2 only; leader 4's later term wrote one removing 1 and 2 (sealing [3, 4, 5]) on
  // 4 and 5 only. Neither committed. Nodes 1, 2, 3 (back) would elect node 1; nodes 3, 4, 5
  // node 4: each side's most up-to-date log seals a different view with the same id.
  const a = buildHistory({ first: U, removals: [[4, 5]], allocator, votersCount: 5 }).views[1]!;
  const b = buildHistory({ first: U, removals: [[1, 2]], allocator, votersCount: 5 }).views[1]!;
  t.is(a.id, b.id);
  t.notDeepEqual(a.memberIds, b.memberIds);
  const run = (tentative: boolean): string[] => {
    const inst = { viewId: a.id, epoch: '0' };
    const own = { viewId: U.id, epoch: '0' };
    const states = new Map<number, RestartAcceptorState<string> | undefined>();
    const chosen: string[] = [];
    const pa = new RestartProposer<string>(inst, { viewId: a.id, round: 1, node: 1 }, ballotQuorums(quorumRuleOf(a), quorumRuleOf(U), tentative), () => 'A');
    const pb = new RestartProposer<string>(inst, { viewId: b.id, round: 1, node: 3 }, ballotQuorums(quorumRuleOf(b), quorumRuleOf(U), tentative), () => 'B');
    const ask = (p: RestartProposer<string>, node: number, accept?: string): void => {
      const step = accept === undefined
        ? acceptorPrepare(states.get(node), own, inst, p.ballot)
        : acceptorAccept(states.get(node), own, inst, p.ballot, accept);
      states.set(node, step.state);
      const out = p.onReply(node, step.reply);
      if (out.kind === 'chosen') chosen.push(out.decision);
    };
    for (const n of [1, 2, 3]) ask(pa, n); // A's promises: a quorum of [1, 2, 3] meeting every quorum of S
    for (const n of [3, 4, 5]) ask(pb, n); // B's: node 3 now promised B's higher ballot
    for (const n of [1, 2, 3]) ask(pa, n, pa.proposing!); // node 3 refuses A's accept
    for (const n of [3, 4, 5]) ask(pb, n, pb.proposing!);
    return chosen;
  };
  t.deepEqual(run(false), ['A', 'B'], 'the accept quorum of [1, 2, 3] alone: both chosen');
  t.deepEqual(run(true), ['B'], 'with a quorum of S also needed, A is not chosen');
});

test('divergent suffixes: the met rule\'s log decides between two seals of one id; a committed peer view wins', (t) => {
  // U = [1..5], 5 voters. The change removing 5 committed; leader 1 (term 2) appended a removal
  // of 4 and the acknowledgements on nodes 1 and 2; leader 3 (term 3), elected by 3, 4 and 5,
  // appended a removal of 1 and its own on nodes 3 and 4, which overwrote nothing.
  const start = buildHistory({ first: U, removals: [], allocator, votersCount: 5 });
  const { common, a, b } = divergentRound({
    history: start, removed: [5], extraA: [4], extraB: [1], ackedCommon: 1, trimA: (n) => Array.from({ length: n }, () => 1),
    trimB: (n) => Array.from({ length: n }, () => 2), allocator, votersCount: 5,
  });
  t.is(a.view.id, b.view.id);
  t.deepEqual([a.view.memberIds.map(Number), b.view.memberIds.map(Number)], [[1, 2, 3], [2, 3, 4]]);
  t.true(b.entries[0]!.term > a.entries[0]!.term);
  const logs = new Map([[1, [...common, ...a.entries]], [2, [...common, ...a.entries]], [3, [...common, ...b.entries]], [4, [...common, ...b.entries]], [5, common]]);
  const sums = new Map([...logs].map(([n, log]) => [n, summaryOf({
    history: start, length: log.length, log, commit: common.length, epoch: '0', record: U, recordSealIndex: 0, allocator, votersCount: 5,
  })]));
  const rule = (back: number[]) => restartLogRule({ summaries: sums, back: new Set(back), epoch: '0', recordVoters: [1, 2, 3, 4, 5], required: true });
  const sideA = rule([1, 2, 5]);
  t.is(sideA.waiting, undefined, 'side a\'s nodes and node 5 are a majority of the voters');
  t.true(sameSeal(sideA.newest!, { view: a.view, trims: sideA.newest!.trims }));
  t.false(sideA.committed);
  const fromA = { view: a.view, sealTrims: sideA.newest!.trims };
  t.false(movesToLogView(sideA, fromA), 'the same seal');
  // Node 3 comes back: its log (term 3) is the most up-to-date, and it seals the other view.
  const both = rule([1, 2, 3, 5]);
  t.is(both.holder, 3);
  t.true(sameSeal(both.newest!, { view: b.view, trims: both.newest!.trims }));
  t.false(sameSeal(both.newest!, { view: a.view, trims: sideA.newest!.trims }));
  t.true(movesToLogView(both, fromA), 'a node in side a\'s view moves to side b\'s once the rule is met');
  t.false(movesToLogView({ ...both, waiting: { kind: 'voters', voters: [1, 2, 3, 4, 5], holder: 3 } }, fromA), 'not before');
  t.false(movesToLogView(both, { view: a.view, sealTrims: undefined }), 'a record of a view id is committed: never replaced');
  // A less up-to-date log back that seals a higher id than the holder's counts (tentative).
  const short = new Map(sums).set(3, summaryOf({
    history: start, length: common.length + 1, log: [...common, b.entries[0]!], commit: common.length, epoch: '0', record: U, recordSealIndex: 0,
    allocator, votersCount: 5,
  }));
  const lesser = restartLogRule({ summaries: short, back: new Set([1, 3, 5]), epoch: '0', recordVoters: [1, 2, 3, 4, 5], required: true });
  t.is(lesser.holder, 3, 'node 3\'s one entry of term 3 outranks side a\'s');
  t.is(lesser.sealedBy, 1);
  t.deepEqual(lesser.newest?.view.memberIds.map(Number), [1, 2, 3]);
  t.false(lesser.committed);
  // Hellos: a record or known-committed view of the same id replaces a log's; a tentative one does not.
  t.is(peerSameId(fromA, { view: b.view, tentative: false }), 'adopt');
  t.is(peerSameId(fromA, { view: b.view, tentative: true }), 'keep');
  t.is(peerSameId({ view: b.view, sealTrims: undefined }, { view: a.view, tentative: false }), 'keep');
});
