// Total restart with diverging replicas (src/membership/restart.ts, the driver's restart()): three
// in-process nodes restart from view records of view 4 (one shard of three, all sending) whose
// shard logs differ: node 1 applied the committed trim [2, 1, 0] (it holds positions 0, 1, 3 of
// view 4), node 2 did not and holds positions 0, 1, 2 (2 is past the trim's first cut), node 3
// holds only view 3. They resume in view 5, node 2 truncates position 2, nodes 2 and 3 pull what
// they lack from node 1, and all three end with identical logs: view 3, then positions 0, 1, 3.
// Then the resumed group handles a failure (its new membership log works): node 3 is stopped and
// nodes 1 and 2 install view 6. Also: with one node of three missing, the other two resume after
// the grace period without it, and the late one, restarted later, rejoins the running group and
// drops the version the group never had; alone, a node gives up with RestartTimeoutError naming
// the members it waited for. And a founder stopped and restarted over its store after the others
// removed it comes back in a new view (not its recorded view 0) with what it missed.
import test, { type ExecutionContext } from 'ava';
import { makeVersion, nodeId, viewId } from '../../src/core/ids.js';
import { defaultAllocator, fixedEvenShards, flexibleEvenShards, oneSubgroup, runAllocator } from '../../src/membership/layout.js';
import { quorumRuleOf, restartView } from '../../src/membership/restart.js';
import { decodeView, encodeView, View } from '../../src/membership/view.js';
import { MembershipDriver, RestartTimeoutError, type MembershipDriverOptions } from '../../src/runtime/membership-driver.js';
import type { MembershipRecord } from '../../src/runtime/membership-store.js';
import { Endpoint } from '../../src/transport/native-transport.js';
import { createEndpoint, KvState, logOnFailure, threeNodesAtView4, waitFor } from '../support/membership-local.js';

test('diverging replicas restart to one history: truncation past the trim, pulls of what is missing', async (t) => {
  t.timeout(30_000);
  const { endpoints, members, allocator, view4: last, shard } = await threeNodesAtView4(980);
  const v3 = [0, 1, 2].map((p) => ({ version: makeVersion(viewId(3), p), tag: `v3:${p}` }));
  const v4 = (positions: number[]) => positions.map((p) => ({ version: makeVersion(viewId(4), p), tag: `v4:${p}` }));
  const logs = [[...v3, ...v4([0, 1, 3])], [...v3, ...v4([0, 1, 2])], [...v3]];
  const trims = { viewId: 4, trims: [{ ...shard, trim: [2, 1, 0] }] };
  const records: MembershipRecord[] = [
    { view: encodeView(last), epoch: '2', trims },
    { view: encodeView(last), epoch: '2' },
    { view: encodeView(last), epoch: '2' },
  ];
  const states = logs.map((log) => {
    const state = new KvState();
    for (const r of log) state.append(shard, r.version, r.tag);
    return state;
  });
  const lines: string[] = [];
  const drivers = endpoints.map((e, i) => new MembershipDriver({
    self: nodeId(i + 1), transport: e, allocator, layoutHash: 'kv', founders: members, found: false,
    heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, record: records[i]!, state: states[i]!,
    onDeliver: (s, d) => states[i]!.append(s, d.version!, new TextDecoder().decode(d.payload)),
    log: (line) => lines.push(`n${i + 1} ${line}`),
  }));
  try {
    await Promise.all(drivers.map((d) => d.start()));
    for (const d of drivers) t.is(d.current().id, viewId(5), 'resumed in view 5');
    t.deepEqual(drivers[0]!.current().memberIds.map(Number), [1, 2, 3]);
    await waitFor('every shard reconciled', () => drivers.every((d) => !d.awaitingState(shard)), 10_000);
    const expected = [...v3, ...v4([0, 1, 3])].map((r) => r.tag);
    for (const [i, s] of states.entries()) {
      t.deepEqual(s.shards.get('0/0')!.map((r) => r.tag), expected, `node ${i + 1} holds the reconciled history`);
    }
    t.true(lines.some((l) => l.startsWith('n2 restart: shard 0/0 truncates')), 'node 2 truncated past the trim');
    t.true(lines.some((l) => l.startsWith('n3 restart: shard 0/0 pulls')), 'node 3 pulled');
    // The new membership log (the restart's epoch) drives the next view change.
    await endpoints[2]!.close();
    await drivers[2]!.close();
    await waitFor('view 6 without node 3', () => drivers.slice(0, 2).every((d) => d.current().id === viewId(6)), 10_000);
    t.deepEqual(drivers[0]!.current().memberIds.map(Number), [1, 2]);
  } catch (error) {
    t.log(lines.join('\n'));
    throw error;
  } finally {
    for (const d of drivers) await d.close();
    for (const e of endpoints) await e.close().catch(() => undefined);
  }
});

/** Three endpoints, the view-4 record for them, and a driver factory over per-node KV states. */
async function restartingGroup(seedBase: number) {
  const { endpoints, members, allocator, view4: last, shard } = await threeNodesAtView4(seedBase);
  const states = [0, 1, 2].map(() => new KvState());
  const lines: string[] = [];
  const driver = (i: number, restartTimeoutMs = 20_000, extra: Partial<MembershipDriverOptions> = {}): MembershipDriver => new MembershipDriver({
    self: nodeId(i + 1), transport: endpoints[i]!, allocator, layoutHash: 'kv', founders: members, found: false,
    heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, record: { view: encodeView(last), epoch: '2' },
    state: states[i]!, restartTimeoutMs, restartGraceMs: 300, ...extra,
    onDeliver: (s, d) => states[i]!.append(s, d.version!, new TextDecoder().decode(d.payload)),
    log: (line) => lines.push(`n${i + 1} ${line}`),
  });
  /**
   * A record of view 4 whose acceptor accepted `node`'s decision (view 5 of [1, 2, 3], epoch
   * `5-<node>-1234`) under ballot 1.<node>, written before ballots named their view.
   */
  const acceptedFrom = (node: number): MembershipRecord => {
    const addresses = new Map(members.map((m) => [m.id, m.address]));
    const decision = {
      view: encodeView(restartView(last, addresses, allocator)), from: encodeView(last), trims: [], epoch: `5-${node}-1234`,
    };
    const ballot = { round: 1, node };
    return { view: encodeView(last), epoch: '2', restart: { instance: { viewId: 4, epoch: '2' }, promised: ballot, accepted: { ballot, decision } } };
  };
  return { endpoints, shard, states, lines, driver, last, members, acceptedFrom };
}

test('two of three restart without the third after the grace period; the third rejoins later', async (t) => {
  t.timeout(30_000);
  const { endpoints, shard, states, lines, driver } = await restartingGroup(990);
  const v = (view: number, p: number) => makeVersion(viewId(view), p);
  states[0]!.append(shard, v(4, 0), 'a');
  states[0]!.append(shard, v(4, 1), 'b');
  states[1]!.append(shard, v(4, 0), 'a');
  // Node 3 holds one version more than the others: it was never acknowledged (persisted() waits
  // for every member), and the group resumes without it.
  for (const [p, tag] of [[0, 'a'], [1, 'b'], [2, 'c']] as const) states[2]!.append(shard, v(4, p), tag);
  const drivers = [driver(0), driver(1)];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    const started = performance.now();
    await Promise.all(drivers.map((d) => d.start()));
    t.log(`resumed without node 3 after ${(performance.now() - started).toFixed(0)} ms`);
    for (const d of drivers) t.deepEqual(d.current().memberIds.map(Number), [1, 2]);
    t.deepEqual(drivers[0]!.current().failed.map(Number), [3]);
    await waitFor('reconciled', () => drivers.every((d) => !d.awaitingState(shard)));
    t.deepEqual(states[1]!.shards.get('0/0')!.map((r) => r.tag), ['a', 'b'], 'node 2 pulled from node 1');
    // A delivery in the resumed view, then node 3 comes back and rejoins.
    await drivers[0]!.multicast(shard)!.send(new TextEncoder().encode('d'));
    await waitFor('delivered on both', () => states.slice(0, 2).every((s) => s.shards.get('0/0')!.length === 3));
    drivers.push(driver(2));
    await drivers[2]!.start();
    await waitFor('node 3 has its state', () => !drivers[2]!.awaitingState(shard) && drivers[0]!.current().isMember(nodeId(3)));
    t.deepEqual(states[2]!.shards.get('0/0')!.map((r) => r.tag), ['a', 'b', 'd'],
      'node 3 dropped the version the group never had and received the rest');
    t.true(lines.some((l) => l.startsWith('n3 state: shard 0/0 truncates')));
  });
});

test("a raft shard whose log's configuration lags the view holds the restart until a majority of its voters is back", async (t) => {
  t.timeout(30_000);
  // View 4's shard is [1, 2, 3], but node 1's raft log still has the configuration {1, 2} (a
  // step behind the view when everyone crashed). Nodes 1 and 3 are a majority of the view and of
  // the shard, yet that log's Raft could not elect a leader without node 2: the restart waits
  // for it (before, nodes 1 and 3 resumed alone in view 5 and the shard never elected).
  const { endpoints, lines, driver } = await restartingGroup(1040);
  const lagging = { raftVoters: async () => [{ shard: '1/0', voters: [1, 2] }] };
  const drivers = [driver(0, 20_000, lagging), driver(2)];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    const started = drivers.map((d) => d.start());
    await waitFor('nodes 1 and 3 see each other', () => lines.some((l) => /^n1 restart: view 4: back \[1,3\]/.test(l)), 10_000);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // longer than the 300 ms grace period
    t.true(lines.some((l) => /^n1 restart: view 4: back \[1,3\], waiting for \[2\] and a majority of raft shard 1\/0's voters \[1,2\]/.test(l)),
      'the progress line names the raft shard it waits for');
    t.false(lines.some((l) => /runs ballot|chose view/.test(l)), 'nodes 1 and 3 did not decide without node 2');
    drivers.push(driver(1));
    await Promise.all([...started, drivers[2]!.start()]);
    for (const d of drivers) t.deepEqual(d.current().memberIds.map(Number), [1, 2, 3]);
  });
});

test('a decision accepted before the restart leader failed is the one the others resume in', async (t) => {
  t.timeout(30_000);
  const { endpoints, lines, driver, acceptedFrom } = await restartingGroup(1000);
  // Node 1 led the restart of view 4 with all three back, got its decision (view 5 of [1, 2, 3])
  // accepted by node 2 under ballot 1.1, and died before anyone adopted it. Nodes 2 and 3 are a
  // quorum without it: node 2 leads now, and must propose that decision again, not its own
  // (view 5 of [2, 3]), since a quorum may have accepted it and node 1 may have acted on it.
  const record2 = acceptedFrom(1);
  const saved: MembershipRecord[] = [];
  const drivers = [
    driver(1, 20_000, { record: record2 }),
    driver(2, 20_000, { saveRecord: async (r) => void saved.push(r) }),
  ];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    await Promise.all(drivers.map((d) => d.start()));
    for (const d of drivers) {
      t.is(d.current().id, viewId(5));
      t.deepEqual(d.current().memberIds.map(Number), [1, 2, 3], 'the accepted decision, with node 1');
    }
    t.true(lines.some((l) => /^n2 restart: ballot \d+\.2 proposes view 5 \[1,2,3\] \(accepted before: adopted\)/.test(l)));
    // Node 3 persisted its promise and its acceptance before it answered.
    const acceptance = saved.find((r) => r.restart?.accepted !== undefined);
    t.is(acceptance?.restart?.accepted?.decision.epoch, '5-1-1234');
    t.true(saved.indexOf(acceptance!) > saved.findIndex((r) => r.restart?.promised !== undefined && r.restart.accepted === undefined));
    // Node 1 is not back: the resumed group removes it.
    await waitFor('view 6 without node 1', () => drivers.every((d) => d.current().memberIds.map(Number).join() === '2,3'), 10_000);
  });
});

test('a decision accepted in the restart of view 4 carries into the restart of view 5, whose record holder leads', async (t) => {
  t.timeout(30_000);
  const { endpoints, lines, driver, last, members, acceptedFrom } = await restartingGroup(1010);
  // Node 2 accepted node 3's decision for the restart of view 4 (view 5 of [1, 2, 3]; a record
  // written before ballots named their view), and it may have been chosen. Node 1 recorded a view
  // 5 that only it installed before the crash (it delivered nothing), so the restart moves to
  // view 5's instance, which node 1 leads. The earlier rule started over there and resumed in a
  // new decision (view 6 of [1, 2]); now node 2 reports its acceptance and node 1 proposes it.
  const record2 = acceptedFrom(3);
  const view5 = new View({ id: viewId(5), members, joined: [], departed: [], failed: [], layout: last.layout });
  const record1: MembershipRecord = { view: encodeView(view5), epoch: '2', previous: quorumRuleOf(last) };
  const saved: MembershipRecord[] = [];
  const drivers = [
    driver(0, 20_000, { record: record1, saveRecord: async (r) => void saved.push(r) }),
    driver(1, 20_000, { record: record2 }),
  ];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    await Promise.all(drivers.map((d) => d.start()));
    for (const d of drivers) {
      t.is(d.current().id, viewId(5));
      t.deepEqual(d.current().memberIds.map(Number), [1, 2, 3], 'the decision accepted in view 4\'s instance');
    }
    t.true(lines.some((l) => /^n1 restart: leader runs ballot \d+\.1 for view 5/.test(l)), 'node 1 led view 5\'s instance');
    t.true(lines.some((l) => /^n1 restart: ballot \d+\.1 proposes view 5 \[1,2,3\] \(accepted before: adopted\)/.test(l)));
    // Node 3 is not back: the resumed group removes it, and node 1's record of that view names
    // view 5's quorums (a restart from it must meet them).
    await waitFor('view 6 without node 3', () => drivers.every((d) => d.current().memberIds.map(Number).join() === '1,2'), 10_000);
    const record6 = saved.find((r) => decodeView(r.view).id === 6);
    t.deepEqual(record6?.previous, { viewId: 5, members: [1, 2, 3], shards: [[1, 2, 3]] });
  });
});

test('a restart of a view whose predecessor lost two of five members waits for half the predecessor', async (t) => {
  t.timeout(30_000);
  // View 4: [1..5], one shard. View 5 removed 4 and 5: [1, 2, 3]; only nodes 1 and 2 recorded it
  // (node 3 crashed first; its record is view 4). Nodes 1 and 2 are a quorum of view 5, but nodes
  // 3, 4 and 5 could be a quorum of view 4 deciding on their own, so 1 and 2 must not decide
  // alone (the earlier rule resumed them in view 6 of [1, 2]); with node 3 back they do.
  const endpoints = await Promise.all([1, 2, 3, 4, 5].map((i) => createEndpoint(1020 + i)));
  const all = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const allocator = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(1, 1, 5)) });
  const layoutOf = (ids: number[]) => runAllocator(allocator, { previous: undefined, members: ids.map((i) => nodeId(i)) });
  const view4 = new View({ id: viewId(4), members: all, joined: [], departed: [], failed: [], layout: layoutOf([1, 2, 3, 4, 5]) });
  const view5 = new View({
    id: viewId(5), members: all.slice(0, 3), joined: [], departed: [], failed: [nodeId(4), nodeId(5)], layout: layoutOf([1, 2, 3]),
  });
  const records: MembershipRecord[] = [
    { view: encodeView(view5), epoch: '2', previous: quorumRuleOf(view4) },
    { view: encodeView(view5), epoch: '2', previous: quorumRuleOf(view4) },
    { view: encodeView(view4), epoch: '2' },
  ];
  const lines: string[] = [];
  const driver = (i: number, restartTimeoutMs: number): MembershipDriver => new MembershipDriver({
    self: nodeId(i + 1), transport: endpoints[i]!, allocator, layoutHash: 'kv', founders: all, found: false,
    heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, record: records[i]!, state: new KvState(),
    restartTimeoutMs, restartGraceMs: 200, log: (line) => lines.push(`n${i + 1} ${line}`),
  });
  const drivers = [driver(0, 20_000), driver(1, 20_000)];
  await logOnFailure(t, lines, drivers, endpoints, async () => {
    const started = drivers.map((d) => d.start());
    await waitFor('nodes 1 and 2 see each other', () => lines.some((l) => /^n1 restart: view 5: back \[1,2\]/.test(l)), 10_000);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // longer than the grace period
    t.true(lines.some((l) => /^n1 restart: view 5: back \[1,2\], waiting for \[3\] and half of view 4 \[1,2,3,4,5\]/.test(l)));
    t.false(lines.some((l) => /runs ballot|chose view/.test(l)), 'nodes 1 and 2 did not decide alone');
    drivers.push(driver(2, 20_000));
    await Promise.all([...started, drivers[2]!.start()]);
    for (const d of drivers) {
      t.is(d.current().id, viewId(6));
      t.deepEqual(d.current().memberIds.map(Number), [1, 2, 3]);
    }
    // Given up waiting, the error names the view it could not hear enough of.
    const error = new RestartTimeoutError(5, [nodeId(3)], '', 60_000, quorumRuleOf(view4));
    t.regex(error.message, /the nodes back do not hold half of view 4 \[1, 2, 3, 4, 5\]/);
  });
});

test('a node alone gives up after the restart timeout, naming who it waited for', async (t) => {
  const { endpoints, driver } = await restartingGroup(995);
  const d = driver(0, 800);
  try {
    const error = await t.throwsAsync(d.start(), { instanceOf: RestartTimeoutError });
    t.regex(error!.message, /members \[2, 3\] are not back/);
    t.regex(error!.message, /Fix: start those nodes/);
  } finally {
    await d.close();
    for (const e of endpoints) await e.close();
  }
});

// A founder killed with kill -9 and restarted over its store and view record at the same address
// (`squall demo` step 10). After its removal: the survivors' history still holds view 0, which
// lists every founder as joined at that address, and they used to welcome the restarted process
// back into its old view 0, where it stayed alone. Before its removal: the new process's requests
// come from the old member's address and kept it looking alive. Either way it must come back in
// a new view, with what the others delivered while it was down.
async function killAndRestartFounder(t: ExecutionContext, seedBase: number, waitForRemoval: boolean): Promise<void> {
  t.timeout(30_000);
  const endpoints = await Promise.all([1, 2, 3].map((i) => createEndpoint(seedBase + i)));
  const founders = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const allocator = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, 3)) });
  const states = [0, 1, 2].map(() => new KvState());
  const records: (MembershipRecord | undefined)[] = [undefined, undefined, undefined];
  const lines: string[] = [];
  const driver = (i: number): MembershipDriver => new MembershipDriver({
    self: nodeId(i + 1), transport: endpoints[i]!, allocator, layoutHash: 'kv', founders, found: true,
    heartbeatMs: 20, failureTimeoutMs: 400, tickMs: 10, state: states[i]!,
    ...(records[i] !== undefined ? { record: records[i] } : {}),
    saveRecord: async (r) => {
      records[i] = r;
    },
    onDeliver: (s, d) => states[i]!.append(s, d.version!, new TextDecoder().decode(d.payload)),
    log: (line) => lines.push(`n${i + 1} ${line}`),
  });
  const drivers = [0, 1, 2].map(driver);
  const tags = (i: number): string[] => (states[i]!.shards.get('0/0') ?? []).map((r) => r.tag);
  const without3 = (): boolean => drivers.slice(0, 2).every((d) => d.current().memberIds.map(Number).join() === '1,2');
  try {
    await Promise.all(drivers.map((d) => d.start()));
    const shard = drivers[0]!.current().shardsOf(nodeId(1))[0]!;
    const send = (tag: string): Promise<unknown> => drivers[0]!.multicast(shard)!.send(new TextEncoder().encode(tag));
    await send('before');
    await waitFor('delivered on all three', () => [0, 1, 2].every((i) => tags(i).includes('before')));

    // kill -9 of node 3: its endpoint goes silent (no goodbye: the others' sessions to it stay
    // open until the transport's peer-failure timeout), its driver stops without leaving.
    for (const f of founders.slice(0, 2)) endpoints[2]!.injectFault({ failPeer: f.address });
    const killedAt = performance.now();
    await endpoints[2]!.close();
    await drivers[2]!.close();
    if (waitForRemoval) {
      await waitFor('nodes 1 and 2 in a view without node 3', without3);
      await send('while-down');
      await waitFor('delivered on both', () => [0, 1].every((i) => tags(i).includes('while-down')));
      t.false(tags(2).includes('while-down'));
    } else {
      t.false(without3(), 'node 3 restarts before the others removed it');
    }

    // The process starts again at the same address, over its store and view record.
    const port = Number(founders[2]!.address.split(':').pop());
    // The closed endpoint's socket may take a moment to release its port.
    for (let attempt = 0; ; attempt++) {
      try {
        endpoints[2] = await Endpoint.create({ host: '127.0.0.1', port, seed: seedBase + 6, peerFailureTimeoutMs: 1000 });
        break;
      } catch (error) {
        if (attempt >= 40) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    t.is(endpoints[2].address, founders[2]!.address, 'the restarted process listens at the same address');
    t.is(decodeView(records[2]!.view).id, viewId(0), 'node 3 recorded view 0');
    drivers[2] = driver(2);
    await drivers[2].start();
    const back = drivers[2].current();
    t.true(back.id > 1, `node 3 came back in view ${back.id}, after the view 1 that removed it`);
    t.deepEqual(back.memberIds.map(Number), [1, 2, 3]);
    t.deepEqual(back.joined.map(Number), [3]);
    await waitFor('the survivors installed it too', () => drivers.slice(0, 2).every((d) => d.current().id === back.id));
    await waitFor('node 3 has its state', () => !drivers[2]!.awaitingState(shard));
    await send('after');
    await waitFor('delivered on all three again', () => [0, 1, 2].every((i) => tags(i).includes('after')));
    t.deepEqual(tags(2), tags(0), 'node 3 holds what the others delivered while it was down');
    // The others' sessions to the killed process fail one peer-failure timeout (1 s) after the
    // kill: that must not count as the new process's failure.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, killedAt + 1500 - performance.now())));
    await send('later');
    await waitFor('delivered on all three later', () => [0, 1, 2].every((i) => tags(i).includes('later')));
    for (const d of drivers) t.is(d.current().id, back.id, 'still in the view node 3 came back in');
  } catch (error) {
    t.log(lines.join('\n'));
    throw error;
  } finally {
    for (const d of drivers) await d.close();
    for (const e of endpoints) await e.close().catch(() => undefined);
  }
}

test('a member killed and restarted over its store after its removal rejoins in a new view', async (t) => {
  await killAndRestartFounder(t, 970, true);
});

test('a member killed and restarted over its store before its removal rejoins in a new view', async (t) => {
  await killAndRestartFounder(t, 960, false);
});
