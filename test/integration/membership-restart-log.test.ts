// The total restart's membership-log rule (src/membership/restart-log.ts) in the driver: each
// restarting node reads its membership log of its record's epoch (raftStorageFor), reports it in
// its hellos, and the restart waits for a majority of the most up-to-date log's voters and
// restarts from the newest view that log seals.
//  1. The hole: view 4 = [1..5], view 5 = [1, 2, 3], view 6 = [1, 2]; node 3 acknowledged view
//     4's wedge but crashed before recording view 5; nodes 1 and 2 recorded view 6. Nodes 3, 4
//     and 5, with records of view 4, are a quorum of view 4: before, they resumed from it in a
//     view 5 of [3, 4, 5] while view 6 had delivered. Now they wait (node 3's log names voters
//     [1, 2, 3, 5]), and once nodes 1 and 2 are back the group resumes from view 6.
//  2. A view only the log seals: view 5 = [1, 2, 3] was sealed and committed, but every node
//     crashed before recording it. Nodes 1, 2 and 3 (records of view 4) resume from view 5 in
//     view 6, not in a second view 5.
//  3. The same with shard data: view 4 = [1, 2, 3] (one shard, all sending) closed with the trim
//     [2, 1, 0] into view 5 = [1, 2], which nobody recorded. Node 1 delivered up to the trim
//     (positions 0, 1, 3 of view 4); node 2 did not and holds positions 0 to 4 (raw mode: in
//     position order, past the trim's first cut, and newer than node 1's). The decision from view
//     5 carries view 4's trims (trimsViewId): node 2 truncates to position 1 and pulls 3, and both
//     end with positions 0, 1, 3 (read as view 5's trims, node 1 pulled position 4 instead).
//  4. Divergent suffixes (restart-history.ts divergentRound): two uncommitted seals of view 5,
//     [1, 2, 3] on nodes 1 and 2 (term 2) and [2, 3, 4] on 3 and 4 (term 3). Node 1, alone, restarts
//     from its own log's; once 3, 4 and 5 are back it moves to theirs (movesToLogView) and the
//     group resumes from [2, 3, 4] in view 6 [3, 4] (without the move, node 1 chose [1, 3]).
import test from 'ava';
import { makeVersion, nodeId, viewId } from '../../src/core/ids.js';
import { defaultAllocator, flexibleEvenShards, oneSubgroup, runAllocator } from '../../src/membership/layout.js';
import { encodeEntry } from '../../src/membership/view-change-core.js';
import { encodeView, View } from '../../src/membership/view.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { EntryType, encodeConfChange, type Entry } from '../../src/raft/types.js';
import { MembershipDriver } from '../../src/runtime/membership-driver.js';
import type { MembershipRecord } from '../../src/runtime/membership-store.js';
import { createEndpoint, KvState, logOnFailure, threeNodesAtView4, waitFor } from '../support/membership-local.js';
import { buildHistory, commitIndex, divergentRound, type History, type LogEntry } from '../sim/restart-history.js';

const allocator = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(1, 1, 5)) });

/** Node i's membership log of epoch '2': the first `length` entries of the history (or `log`). */
function storageOf(history: History, length: number, commit: number, log: readonly LogEntry[] = history.log.slice(0, length)): MemoryStorage {
  const storage = new MemoryStorage();
  const entries: Entry[] = log.map((e) => ({
    index: e.index, term: e.term,
    type: e.kind === 'entry' ? EntryType.Normal : EntryType.ConfChange,
    data: e.kind === 'entry' ? encodeEntry(e.entry) : encodeConfChange({ op: e.op, node: e.node }),
  }));
  storage.append(entries);
  storage.setHardState({ term: entries[entries.length - 1]?.term ?? 0, vote: 0, commit: Math.min(commit, entries.length) });
  void storage.flush();
  return storage;
}

async function group(seedBase: number, removals: number[][]) {
  const endpoints = await Promise.all([1, 2, 3, 4, 5].map((i) => createEndpoint(seedBase + i)));
  const all = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const layout = runAllocator(allocator, { previous: undefined, members: all.map((m) => m.id) });
  const view4 = new View({ id: viewId(4), members: all, joined: [], departed: [], failed: [], layout });
  const history = buildHistory({ first: view4, removals, allocator, votersCount: 5, newTermAt: (r) => r === 1 });
  const lines: string[] = [];
  const record = (view: number): MembershipRecord => {
    const i = view - 4;
    return { view: encodeView(history.views[i]!), epoch: '2', sealIndex: history.seals[i]! };
  };
  const driver = (i: number, rec: MembershipRecord, storage: MemoryStorage): MembershipDriver => new MembershipDriver({
    self: nodeId(i), transport: endpoints[i - 1]!, allocator, layoutHash: 'kv', founders: all, found: false,
    heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, record: rec, state: new KvState(), votersCount: 5,
    restartTimeoutMs: 20_000, restartGraceMs: 200,
    raftStorageFor: (epoch) => (epoch === '2' ? storage : new MemoryStorage()),
    log: (line) => lines.push(`n${i} ${line}`),
  });
  return { endpoints, history, lines, record, driver };
}

test('a record quorum of view 4 without a majority of the log\'s voters waits; with nodes 1 and 2 back it resumes from view 6', async (t) => {
  t.timeout(40_000);
  const { endpoints, history, lines, record, driver } = await group(1240, [[4, 5], [3]]);
  const seal5 = history.seals[1]!;
  // Nodes 1 and 2 hold the whole log; node 3 up to the first voter step after view 5's seal (the
  // removal of voter 4, which 1, 2 and 3 committed); nodes 4 and 5 up to the seal and less.
  const lengths = new Map([[1, history.log.length], [2, history.log.length], [3, seal5 + 1], [4, seal5], [5, seal5 - 3]]);
  const commit = commitIndex(history, lengths);
  t.true(commit >= history.seals[2]!, 'view 6 was sealed by committed entries');
  const make = (i: number): MembershipDriver => driver(i, record(i <= 2 ? 6 : 4), storageOf(history, lengths.get(i)!, i <= 2 ? commit : 0));
  const drivers = [make(3), make(4), make(5)];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    const started = drivers.map((d) => d.start());
    await waitFor('nodes 3, 4 and 5 see each other', () => lines.some((l) => /^n3 restart: view \d: back \[3,4,5\]/.test(l)), 10_000);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // longer than the grace period
    t.true(lines.some((l) => /^n3 restart: node 3's membership log \(the most up-to-date back\) seals view 5 \[1,2,3\]/.test(l)),
      'node 3\'s log seals view 5 past every record');
    t.true(lines.some((l) => /^n3 restart: view 5: back \[3,4,5\], waiting for \[1,2\] and a majority of the membership log's voters \[1,2,3,5\] \(the configuration of node 3's log/.test(l)),
      'the progress line names the voters it waits for');
    t.false(lines.some((l) => /runs ballot|chose view/.test(l)), 'nodes 3, 4 and 5 did not decide from view 4');
    drivers.push(make(1), make(2));
    const more = [drivers[3]!.start(), drivers[4]!.start()];
    await Promise.all(more);
    for (const d of drivers.slice(3)) {
      t.is(d.current().id, viewId(7));
      t.deepEqual(d.current().memberIds.map(Number), [1, 2]);
    }
    t.true(lines.some((l) => /chose view 7 \[1,2\]/.test(l)), 'the decision restarts from view 6');
    // Nodes 3, 4 and 5 are not in view 6: they learn the decision and join the resumed group.
    await Promise.all(started);
    await waitFor('all five in one view', () => drivers.every((d) => d.current().memberIds.length === 5 && d.current().id === drivers[0]!.current().id), 20_000);
  });
});

test('two seals of view 5 in divergent log suffixes: node 1 moves from its own to the more up-to-date log\'s', async (t) => {
  t.timeout(30_000);
  const { endpoints, history, lines, record, driver } = await group(1270, []);
  // The change removing 5 committed; leader 1 (term 2) appended the removal of 4 and the
  // acknowledgements on nodes 1 and 2 (sealing [1, 2, 3]); leader 3 (term 3), elected by 3, 4
  // and 5, appended the removal of 1 and its own on 3 and 4 (sealing [2, 3, 4]). Neither committed.
  const ones = (n: number): number[] => Array.from({ length: n }, () => 1);
  const { common, a, b } = divergentRound({
    history, removed: [5], extraA: [4], extraB: [1], ackedCommon: 0, trimA: ones, trimB: ones, allocator, votersCount: 5,
  });
  const logOf = (i: number): LogEntry[] => [...common, ...(i <= 2 ? a.entries : i <= 4 ? b.entries : [])];
  const make = (i: number): MembershipDriver => driver(i, record(4), storageOf(history, 0, common.length, logOf(i)));
  const drivers = [make(1)];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    const first = drivers[0]!.start();
    await waitFor('node 1 restarts from its own log\'s view 5', () => lines.some((l) => /^n1 restart: node 1's .* seals view 5 \[1,2,3\]/.test(l)), 10_000);
    drivers.push(make(3), make(4), make(5));
    await Promise.all([first, ...drivers.slice(1).map((d) => d.start())]);
    t.true(lines.some((l) => /^n1 restart: node [34]'s membership log \(the most up-to-date back\) seals view 5 \[2,3,4\].*another seal of view 5 \[1,2,3\]/.test(l)),
      'node 1 moved to side b\'s view 5 once nodes 3 and 4 (term 3) were back');
    t.true(lines.some((l) => /chose view 6 \[3,4\]/.test(l)), 'the decision restarts from [2, 3, 4]');
    await waitFor('all four in one view', () => drivers.every((d) => d.current().id === drivers[1]!.current().id && d.current().memberIds.length === 4), 20_000);
  });
});

test('a view the log seals but nobody recorded is the one the group restarts from', async (t) => {
  t.timeout(30_000);
  const { endpoints, history, lines, record, driver } = await group(1250, [[4, 5]]);
  // Every node crashed after view 5's seal committed, before any recorded it (and before any
  // voter step): nodes 1, 2 and 3 hold the whole log, nodes 4 and 5 stop short of the seal.
  const full = history.seals[1]!;
  const lengths = new Map([[1, full], [2, full], [3, full], [4, full - 2], [5, full - 3]]);
  const commit = commitIndex(history, lengths);
  const drivers = [1, 2, 3].map((i) => driver(i, record(4), storageOf(history, lengths.get(i)!, commit)));
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    await Promise.all(drivers.map((d) => d.start()));
    for (const d of drivers) {
      t.is(d.current().id, viewId(6), 'view 6: view 5 was sealed, its id is not reused');
      t.deepEqual(d.current().memberIds.map(Number), [1, 2, 3]);
    }
    t.true(lines.some((l) => /seals view 5 \[1,2,3\] at index \d+, newer than every record \(view 4\): restarting from it/.test(l)));
  });
});

test('a restart from a view only the log seals truncates by the trims of the round that sealed it', async (t) => {
  t.timeout(30_000);
  const { endpoints, members, allocator: three, layout, view4, shard } = await threeNodesAtView4(1260);
  const history = buildHistory({ first: view4, removals: [[3]], allocator: three, votersCount: 3, trimOf: () => [2, 1, 0] });
  t.deepEqual(history.views[1]!.memberIds.map(Number), [1, 2]);
  const v3 = [0, 1, 2].map((p) => ({ version: makeVersion(viewId(3), p), tag: `v3:${p}` }));
  const v4 = (positions: number[]) => positions.map((p) => ({ version: makeVersion(viewId(4), p), tag: `v4:${p}` }));
  const logs = [[...v3, ...v4([0, 1, 3])], [...v3, ...v4([0, 1, 2, 3, 4])]];
  const records: MembershipRecord[] = [
    { view: encodeView(view4), epoch: '2', sealIndex: 0, trims: { viewId: 4, trims: [{ ...shard, trim: [2, 1, 0] }] } },
    { view: encodeView(view4), epoch: '2', sealIndex: 0 },
  ];
  const commit = history.log.length;
  const lines: string[] = [];
  const states = logs.map((log) => {
    const state = new KvState();
    for (const r of log) state.append(shard, r.version, r.tag);
    return state;
  });
  const drivers = [0, 1].map((i) => {
    const storage = storageOf(history, history.log.length, commit);
    return new MembershipDriver({
      self: nodeId(i + 1), transport: endpoints[i]!, allocator: three, layoutHash: 'kv', founders: members, found: false,
      heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, record: records[i]!, state: states[i]!, votersCount: 3,
      restartTimeoutMs: 20_000, restartGraceMs: 200,
      raftStorageFor: (epoch) => (epoch === '2' ? storage : new MemoryStorage()),
      onDeliver: (s, d) => states[i]!.append(s, d.version!, new TextDecoder().decode(d.payload)),
      log: (line) => lines.push(`n${i + 1} ${line}`),
    });
  });
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    await Promise.all(drivers.map((d) => d.start()));
    for (const d of drivers) t.deepEqual([d.current().id, d.current().memberIds.map(Number)], [viewId(6), [1, 2]]);
    await waitFor('every shard reconciled', () => drivers.every((d) => !d.awaitingState(shard)), 10_000);
    const expected = [...v3, ...v4([0, 1, 3])].map((r) => r.tag);
    for (const [i, s] of states.entries()) t.deepEqual(s.shards.get('0/0')!.map((r) => r.tag), expected, `node ${i + 1}`);
    t.true(lines.some((l) => l.startsWith('n2 restart: shard 0/0 truncates')), 'node 2 truncated past view 4\'s trim');
  });
});
