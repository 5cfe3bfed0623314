// RaftCore, one rule of the Raft paper (and of Ongaro's thesis) per scenario, in the style of
// etcd's raft_test.go: cores talk through a one-line network (raft-helpers.ts) that persists
// instantly and can cut links, and each test drives ticks, campaigns and proposals by hand.
import test from 'ava';
import { SeededRandom } from '../../src/core/random.js';
import { RaftCore } from '../../src/raft/raft-core.js';
import { RaftProposalError } from '../../src/raft/errors.js';
import { RaftLog } from '../../src/raft/log.js';
import { EntryType, type Message } from '../../src/raft/types.js';
import { Net, stateWith } from './raft-helpers.js';

const ids = [1, 2, 3];

test('§5.2 a candidate with a majority of votes becomes leader; the others follow it', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  t.is(net.core(1).role, 'leader');
  t.is(net.core(1).term, 2, 'one term increment (pre-vote does not raise the term)');
  for (const id of [2, 3]) {
    t.is(net.core(id).role, 'follower');
    t.is(net.core(id).lead, 1);
  }
});

test('§5.2 an election timeout with no leader starts an election without any explicit campaign', (t) => {
  const net = new Net(ids);
  net.tick(25);
  t.truthy(net.leader());
  t.is([...net.cores.values()].filter((c) => c.role === 'leader').length, 1);
});

test('§5.2 no leader without a majority; pre-vote keeps the isolated candidate from raising its term', (t) => {
  const net = new Net(ids);
  net.isolate(2);
  net.isolate(3);
  for (let i = 0; i < 5; i++) net.campaign(1);
  t.not(net.core(1).role, 'leader');
  t.is(net.core(1).term, 1, 'pre-vote failed each time, so no term was burned');
});

test('§9.6 without pre-vote an isolated node inflates its term; with it, rejoining does not depose the leader', (t) => {
  const noPre = new Net(ids, { preVote: false, checkQuorum: false });
  noPre.campaign(1);
  noPre.isolate(3);
  noPre.tick(60, [3]);
  t.true(noPre.core(3).term > 4, 'terms were burned');

  const net = new Net(ids);
  net.campaign(1);
  net.isolate(3);
  net.tick(60, [3]);
  t.is(net.core(3).term, 2);
  net.heal();
  net.tick(3);
  t.is(net.core(1).role, 'leader');
  t.is(net.core(1).term, 2);
});

test('§5.2 a voter grants at most one vote per term', (t) => {
  const core = new RaftCore({ id: 3, random: new SeededRandom(1) }, stateWith(1, []), ids);
  const vote = (from: number): Message => ({ type: 'vote', from, to: 3, term: 2, lastIndex: 3, lastTerm: 1, transfer: false });
  core.step(vote(1));
  core.step(vote(2));
  const rd = core.ready();
  const resps = rd.messages.filter((m) => m.type === 'voteResp');
  t.deepEqual(resps.map((m) => [m.to, (m as { reject: boolean }).reject]), [[1, false], [2, true]]);
  t.is(rd.hardState?.vote, 1, 'the vote is in the same Ready as the response: persisted before it is sent');
});

test('§5.4.1 a voter rejects a candidate whose log is less up to date', (t) => {
  const core = new RaftCore({ id: 3, random: new SeededRandom(1) }, stateWith(2, [[4, 2]]), ids);
  core.step({ type: 'vote', from: 1, to: 3, term: 3, lastIndex: 5, lastTerm: 1, transfer: false });
  core.step({ type: 'vote', from: 2, to: 3, term: 4, lastIndex: 4, lastTerm: 2, transfer: false });
  const resps = core.ready().messages.filter((m) => m.type === 'voteResp') as Array<{ to: number; reject: boolean }>;
  t.deepEqual(resps.map((m) => [m.to, m.reject]), [[1, true], [2, false]]);
});

test('§5.3 proposals replicate and every node applies the same entries in the same order', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  for (let i = 0; i < 20; i++) net.propose(1, `p${i}`);
  net.tick(2);
  for (const id of ids) t.deepEqual(net.appliedData(id), Array.from({ length: 20 }, (_, i) => `p${i}`));
});

test('§5.3 a follower deletes a conflicting suffix and takes the leader\'s entries', (t) => {
  const states = new Map([
    [1, stateWith(3, [[4, 3], [5, 3]])],
    [2, stateWith(3, [[4, 3]])],
    [3, stateWith(2, [[4, 2], [5, 2], [6, 2], [7, 2]])],
  ]);
  const net = new Net(ids, {}, states, []);
  net.campaign(1);
  net.propose(1, 'x');
  net.tick(2);
  const log3 = net.core(3).log;
  t.is(log3.lastIndex(), 7);
  t.deepEqual([4, 5, 6, 7].map((i) => log3.term(i)), [3, 3, 4, 4]);
});

test('§5.4.2 / Figure 8: a leader does not commit a previous-term entry by counting replicas', (t) => {
  // Leader 1 (term 3 after campaigning) has index 4 from term 2 that no one else has.
  const states = new Map([
    [1, stateWith(2, [[4, 2]])],
    [2, stateWith(2, [])],
    [3, stateWith(2, [])],
  ]);
  const net = new Net(ids, { entriesPerMessageMax: 1, inflightMax: 1 }, states, []);
  // Let the leader's no-op (index 5) reach no one: only appends carrying index ≤ 4 pass.
  net.filters.push((m) => m.type === 'append' && m.entries.some((e) => e.index >= 5) && net.core(m.to).log.term(4) === 2);
  net.campaign(1);
  t.is(net.core(1).role, 'leader');
  t.is(net.core(2).log.term(4), 2, 'the old entry reached a majority');
  t.is(net.core(1).commit, 3, 'but it is not committed by counting');
  net.heal();
  net.tick(2);
  t.is(net.core(1).commit, 5, 'it commits together with the current-term no-op');
});

test('thesis §5.3 fast backtracking: a long divergent follower is fixed in one round trip per term', (t) => {
  const tail3: Array<[number, number]> = [];
  for (let i = 4; i < 54; i++) tail3.push([i, 2]);
  const states = new Map([
    [1, stateWith(3, [[4, 3]])],
    [2, stateWith(3, [[4, 3]])],
    [3, stateWith(2, tail3)],
  ]);
  const net = new Net(ids, {}, states, []);
  net.campaign(1);
  net.tick(2);
  const rejections = net.delivered.filter((m) => m.type === 'appendResp' && m.reject && m.from === 3 && m.index > 0);
  t.true(rejections.length <= 2, `${rejections.length} rejections`);
  t.is(net.core(3).log.lastIndex(), net.core(1).log.lastIndex());
});

test('pipelining: at most inflightMax appends are outstanding to a silent follower', (t) => {
  const net = new Net(ids, { inflightMax: 4, entriesPerMessageMax: 1 });
  net.campaign(1);
  net.filters.push((m) => m.from === 3 && m.type === 'appendResp');
  for (let i = 0; i < 20; i++) net.core(1).propose(new Uint8Array([i]));
  net.delivered = [];
  net.settle();
  const appendsTo3 = net.delivered.filter((m) => m.type === 'append' && m.to === 3 && m.entries.length > 0);
  t.is(appendsTo3.length, 4);
  t.is(net.core(1).commit, net.core(1).log.lastIndex(), 'the other follower still makes a majority');
});

test('§6.2 check-quorum: a leader cut off from the majority steps down within an election timeout', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.isolate(1);
  net.tick(21, [1]);
  t.is(net.core(1).role, 'follower');
});

test('§6.2 leader lease: a voter that hears from a leader ignores a disruptive vote request', (t) => {
  const net = new Net(ids, { preVote: false });
  net.campaign(1);
  net.core(3).step({ type: 'vote', from: 2, to: 3, term: 5, lastIndex: 100, lastTerm: 9, transfer: false });
  t.is(net.core(3).term, 2);
  t.is(net.core(3).lead, 1);
});

test('§5.1 the leader counts its own log only once it is durable (advance)', (t) => {
  const core = new RaftCore({ id: 1, random: new SeededRandom(1) }, undefined, [1]);
  core.campaign();
  while (core.hasReady()) {
    core.ready();
    core.advance();
  }
  const { index } = core.propose(new Uint8Array([1]));
  const rd = core.ready();
  t.deepEqual(rd.entries.map((e) => e.index), [index]);
  t.false(rd.committed.some((e) => e.index === index), 'not committed before it is persisted');
  core.advance();
  t.is(core.commit, index);
  t.true(core.ready().committed.some((e) => e.index === index));
});

/** A leader of [1,2,3] (term durable, no-op committed) with every Ready handled. */
function settledLeader(): RaftCore {
  const core = new RaftCore({ id: 1, random: new SeededRandom(1) }, undefined, [1, 2, 3]);
  core.campaign();
  const drain = (): void => {
    while (core.hasReady()) {
      const rd = core.ready();
      for (const m of [...rd.messagesNow, ...rd.messages]) {
        if (m.type === 'prevote' || m.type === 'vote') core.step({ type: m.type === 'vote' ? 'voteResp' : 'prevoteResp', from: m.to, to: 1, term: m.term, reject: false });
        if (m.type === 'append') core.step({ type: 'appendResp', from: m.to, to: 1, term: m.term, index: m.prevIndex + m.entries.length, reject: false, hintIndex: 0, hintTerm: 0 });
      }
      core.advance();
    }
  };
  drain();
  drain();
  return core;
}

test('§10.2.1 a leader may finish its own append before it is durable; it counts itself only at persisted()', (t) => {
  const core = settledLeader();
  t.is(core.role, 'leader');
  const { index, term } = core.propose(new Uint8Array([1]));
  const rd = core.ready();
  t.true(rd.persistAsync, 'a leader\'s own append in a durable term may be written in the background');
  t.true(rd.messagesNow.some((m) => m.type === 'append' && m.to === 2), 'replicated at once');
  core.advance({ persisted: false });
  // Follower 2 acknowledges: with the leader's own write still in flight, that is 1 of 3.
  core.step({ type: 'appendResp', from: 2, to: 1, term, index, reject: false, hintIndex: 0, hintTerm: 0 });
  t.true(core.commit < index, 'not committed: the leader\'s copy is not durable yet');
  core.persisted(index, term + 1); // a write of another entry at that index: ignored
  t.true(core.commit < index);
  core.persisted(index, term);
  t.is(core.commit, index, 'leader + follower 2 are a majority once the leader\'s write is durable');
});

test('§10.2.1 two followers commit an entry while the leader\'s own write is still in flight', (t) => {
  const core = settledLeader();
  const { index, term } = core.propose(new Uint8Array([1]));
  core.ready();
  core.advance({ persisted: false });
  core.step({ type: 'appendResp', from: 2, to: 1, term, index, reject: false, hintIndex: 0, hintTerm: 0 });
  core.step({ type: 'appendResp', from: 3, to: 1, term, index, reject: false, hintIndex: 0, hintTerm: 0 });
  t.is(core.commit, index);
  t.true(core.ready().committed.some((e) => e.index === index), 'applied without waiting for the local write');
});

test('a Ready that must be durable first (a vote, a new term) is not persistAsync and refuses advance({ persisted: false })', (t) => {
  const core = new RaftCore({ id: 1, random: new SeededRandom(1), preVote: false }, undefined, [1, 2, 3]);
  core.campaign();
  const rd = core.ready();
  t.false(rd.persistAsync, 'a new term and a vote for itself must be on disk before the vote requests leave');
  t.throws(() => core.advance({ persisted: false }), { message: /persistAsync is false/ });
});

test('§7 a follower behind the log start gets the snapshot in chunks, installs it and catches up', (t) => {
  const net = new Net(ids, { snapshotChunkBytes: 100 });
  net.campaign(1);
  net.isolate(3);
  for (let i = 0; i < 30; i++) net.propose(1, `v${i}`);
  const leader = net.core(1);
  leader.compact(leader.applied, new Uint8Array(450).fill(7));
  t.true(leader.log.snapIndex > 30);
  net.heal();
  net.delivered = [];
  net.tick(3);
  const chunks = net.delivered.filter((m) => m.type === 'snapshot' && m.to === 3);
  t.is(new Set(chunks.map((m) => (m as { offset: number }).offset)).size, 5, '450 bytes in 100-byte chunks');
  t.is(net.core(3).latestSnapshot()!.data.length, 450);
  t.is(net.core(3).log.lastIndex(), leader.log.lastIndex());
  net.propose(1, 'after');
  net.tick(2);
  t.deepEqual(net.appliedData(3), ['after']);
});

test('§4.1 membership: a learner receives the log without voting, is promoted, and the quorum grows', (t) => {
  const net = new Net(ids);
  net.add(4);
  net.campaign(1);
  net.core(1).proposeConfChange({ op: 'addLearner', node: 4 });
  net.settle();
  net.propose(1, 'a');
  net.tick(2);
  t.deepEqual(net.core(4).conf, { voters: [1, 2, 3], learners: [4] });
  t.deepEqual(net.appliedData(4), ['a']);
  net.tick(30, [4]);
  t.is(net.core(4).role, 'follower', 'a learner never campaigns');
  net.core(1).proposeConfChange({ op: 'addVoter', node: 4 });
  net.settle();
  net.tick(2);
  t.deepEqual(net.core(1).conf.voters, [1, 2, 3, 4]);
  // With four voters the quorum is three: two followers cut off means no commit.
  net.isolate(3);
  net.isolate(4);
  const before = net.core(1).commit;
  net.core(1).propose(new Uint8Array([1]));
  net.settle();
  t.is(net.core(1).commit, before);
});

test('§4.1 one membership change at a time; a removed leader steps down once its removal commits', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.core(1).proposeConfChange({ op: 'remove', node: 3 });
  const err = t.throws(() => net.core(1).proposeConfChange({ op: 'remove', node: 2 }), { instanceOf: RaftProposalError });
  t.is(err!.reason, 'conf-change-pending');
  net.settle();
  net.tick(2);
  net.core(1).proposeConfChange({ op: 'remove', node: 1 });
  net.settle();
  net.tick(2);
  t.not(net.core(1).role, 'leader');
  t.deepEqual(net.core(2).conf.voters, [2]);
  net.tick(30);
  t.is(net.core(2).role, 'leader', 'the remaining voter elects itself');
});

test('§3.10 leader transfer: the target takes over without waiting for a timeout; proposals pause', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.isolate(3);
  net.propose(1, 'x');
  net.heal();
  net.core(1).transferLeadership(3);
  t.throws(() => net.core(1).propose(new Uint8Array([1])), { instanceOf: RaftProposalError });
  net.settle();
  net.tick(2);
  t.is(net.core(3).role, 'leader');
  t.is(net.core(3).term, 3);
  t.is(net.core(1).lead, 3);
});

test('§6.4 ReadIndex: confirmed by a heartbeat quorum on the leader, forwarded from a follower, withheld when cut off', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.propose(1, 'x');
  const commit = net.core(1).commit;
  net.core(1).readIndex(7);
  net.settle();
  t.deepEqual(net.reads.get(1), [{ id: 7, index: commit }]);
  net.core(2).readIndex(8);
  net.settle();
  t.deepEqual(net.reads.get(2), [{ id: 8, index: commit }]);
  net.isolate(1);
  net.core(1).readIndex(9);
  net.tick(3, [1]);
  t.is(net.reads.get(1)!.length, 1, 'a leader that cannot reach a majority does not answer');
});

test('a restarted core resumes from its persisted term, vote and log', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.propose(1, 'x');
  net.tick(2);
  const c = net.core(2);
  const restarted = new RaftCore({ id: 2, random: new SeededRandom(5) },
    { hardState: { term: c.term, vote: c.vote, commit: c.commit }, snapshot: undefined,
      entries: c.log.slice(1, Infinity) }, ids);
  t.is(restarted.term, c.term);
  t.is(restarted.vote, 1);
  t.is(restarted.log.lastIndex(), c.log.lastIndex());
  t.is(restarted.ready().committed.filter((e) => e.type === EntryType.Normal && e.data.length).length, 1,
    'committed entries are re-delivered for the state machine to rebuild');
});

test('propose on a follower fails with NOT_LEADER naming the leader', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  const err = t.throws(() => net.core(2).propose(new Uint8Array([1])), { instanceOf: RaftProposalError });
  t.is(err!.code, 'NOT_LEADER');
  t.is(err!.leader, 1);
});

test('§5.3 a duplicated or reordered shorter append never truncates a longer matching log', (t) => {
  const core = new RaftCore({ id: 2, random: new SeededRandom(1) }, stateWith(2, []), ids);
  const app = (n: number): Message => ({
    type: 'append', from: 1, to: 2, term: 2, prevIndex: 3, prevTerm: 1, commit: 3,
    entries: Array.from({ length: n }, (_, i) => ({ index: 4 + i, term: 2, type: EntryType.Normal, data: new Uint8Array([i]) })),
  });
  core.step(app(3));
  core.step(app(1)); // an older, shorter copy arrives late
  t.is(core.log.lastIndex(), 6);
});

test('§5.3 followers learn the commit index from heartbeats and apply', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  // Without the leader's commit notice (a heartbeat with ctx 0 right after the commit), only the
  // next heartbeat tick tells them.
  net.filters.push((m) => m.type === 'heartbeat' && m.ctx === 0);
  net.propose(1, 'x');
  t.deepEqual(net.appliedData(2), [], 'the append that carried x could not yet carry its commit');
  net.heal();
  net.tick(1);
  t.deepEqual(net.appliedData(2), ['x']);
});

test('followers that hold every entry learn a new commit at once (commit notice), without a tick', (t) => {
  const net = new Net(ids);
  net.campaign(1);
  net.propose(1, 'x');
  for (const id of [2, 3]) t.deepEqual(net.appliedData(id), ['x'], `follower ${id} applied x before any tick`);
  // A follower that was cut off catches up by appends; once it holds everything it learns the
  // commit too, still without a tick.
  net.cut(1, 3);
  net.propose(1, 'y');
  t.deepEqual(net.appliedData(3), ['x']);
  net.heal();
  net.propose(1, 'z');
  t.deepEqual(net.appliedData(2), ['x', 'y', 'z']);
  t.deepEqual(net.appliedData(3), ['x', 'y', 'z']);
});

test('RaftLog.slice: the range, the count bound and the byte bound (at least one entry), an exact copy', (t) => {
  const entries = [1, 2, 3, 4, 5].map((index) => ({ index, term: 1, type: 0 as const, data: new Uint8Array(index * 10) }));
  const log = new RaftLog(0, 0, entries);
  const indexes = (es: readonly { index: number }[]): number[] => es.map((e) => e.index);
  t.deepEqual(indexes(log.slice(2, 4)), [2, 3]);
  t.deepEqual(indexes(log.slice(2, Infinity)), [2, 3, 4, 5]);
  t.deepEqual(indexes(log.slice(6, Infinity)), []);
  t.deepEqual(indexes(log.slice(1, Infinity, 2)), [1, 2]);
  // Each entry counts its data + 24 bytes: 34, 44, 54 ...
  t.deepEqual(indexes(log.slice(1, Infinity, Infinity, 34 + 44)), [1, 2]);
  t.deepEqual(indexes(log.slice(1, Infinity, Infinity, 34 + 44 - 1)), [1]);
  t.deepEqual(indexes(log.slice(3, Infinity, Infinity, 1)), [3]); // one even if over the bound
  const copy = log.slice(1, Infinity);
  t.is(copy.length, 5);
  (copy as unknown[]).length = 0; // the log's own entries are not shared with the slice
  t.is(log.lastIndex(), 5);
  t.deepEqual(indexes(log.slice(1, 3)), [1, 2]);
});
