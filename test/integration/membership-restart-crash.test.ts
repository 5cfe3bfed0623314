// A second crash wave during a total restart, in the driver (three in-process nodes on loopback,
// their "disks" kept across crashes: the last record each saved, and their shard states). Every
// node restarts from records of view 4 (one raw-mode shard of three, all sending) whose shard logs
// differ: node 1 applied the committed trim [2, 1, 0] (it holds positions 0, 1, 3 of view 4, and
// its record has the trim), node 2 did not and holds positions 0 to 4 (past the trim's first cut,
// and newer than node 1's), node 3 holds only view 3. The first restart chooses view 5 (the
// restart view); the nodes crash while installing it, at points the test picks (a save of the
// view record is the crash point: persisted or not, then the node's endpoint closes and it stops),
// and all restart again. The group must resume from view 5 in view 6, and every replica must end
// with exactly what view 4's trim delivered: view 3, then positions 0, 1, 3 of view 4.
//  1. Every node recorded view 5, none reconciled: each must have truncated before its record.
//  2. Only node 3 recorded view 5; node 2 crashed at its promise, untrimmed; node 1 (the leader)
//     before its record. In the second restart node 1 leads knowing view 5 only from node 3's
//     hello, and must decide with the trim node 3's record carries.
//  3. As 2, and in the second restart node 2 misses the decision until nodes 1 and 3 run view 6:
//     a member hands it on, naming the view its trims belong to.
// Without the fix each case ended with a replica holding positions 2 or 4 of view 4 (raw mode:
// reconciliation pulled them from node 2, the newest holder).
import test, { type ExecutionContext } from 'ava';
import { Packr } from 'msgpackr';
import { makeVersion, nodeId, viewId } from '../../src/core/ids.js';
import { fixedEvenShards } from '../../src/membership/layout.js';
import { decodeView, encodeView } from '../../src/membership/view.js';
import { MEMBERSHIP_REQUEST_TYPE, MembershipDriver } from '../../src/runtime/membership-driver.js';
import type { MembershipRecord } from '../../src/runtime/membership-store.js';
import type { Endpoint } from '../../src/transport/native-transport.js';
import type { Transport, TransportSession } from '../../src/transport/transport.js';
import { endpointAt, KvState, logOnFailure, threeNodesAtView4, waitFor } from '../support/membership-local.js';

/** Where a node crashes: at this save, persisted ('after') or not ('before'). */
type CrashPoint = 'before' | 'after';
/**
 * The restart leader crashes once the others have (`last`): it told them the decision, but a
 * one-way message may still be on its way when its endpoint closes (under load it was), and the
 * test is not about a decision nobody heard.
 */
type Crash = CrashPoint | { readonly at: CrashPoint; readonly last: true };

/**
 * Three nodes restarting from records of view 4 (see the header), their disks kept across crashes.
 * `wave(n, crashAt)` starts all three (new endpoints at the same addresses after the first wave);
 * `crashAt(node, record)` says whether that save is the node's crash point: 'after' it is
 * persisted, 'before' it is not; either way the node's endpoint closes at once and the save never
 * returns (the node stops there, as if killed). With `last`, the save first waits until the other
 * two nodes crashed.
 */
async function crashingGroup(seedBase: number) {
  const start = await threeNodesAtView4(seedBase, fixedEvenShards(1, 3, { mode: 'raw' }));
  let endpoints = start.endpoints;
  const { members, allocator, view4, shard } = start;
  const ports = endpoints.map((e) => Number(e.address.split(':').at(-1)));
  const v3 = [0, 1, 2].map((p) => ({ version: makeVersion(viewId(3), p), tag: `v3:${p}` }));
  const v4 = (positions: number[]) => positions.map((p) => ({ version: makeVersion(viewId(4), p), tag: `v4:${p}` }));
  const states = [[...v3, ...v4([0, 1, 3])], [...v3, ...v4([0, 1, 2, 3, 4])], [...v3]].map((log) => {
    const state = new KvState();
    for (const r of log) state.append(shard, r.version, r.tag);
    return state;
  });
  const disk: MembershipRecord[] = [
    { view: encodeView(view4), epoch: '2', trims: { viewId: 4, trims: [{ ...shard, trim: [2, 1, 0] }] } },
    { view: encodeView(view4), epoch: '2' },
    { view: encodeView(view4), epoch: '2' },
  ];
  const expected = [...v3, ...v4([0, 1, 3])].map((r) => r.tag);
  const lines: string[] = [];
  let drivers: MembershipDriver[] = [];
  const everyDriver: MembershipDriver[] = [];
  const everyEndpoint: Endpoint[] = [...endpoints];
  const hang = (): Promise<void> => new Promise<void>(() => undefined);
  const wave = async (
    n: number, crashAt: (node: number, r: MembershipRecord) => Crash | undefined = () => undefined,
    options: { transport?: (node: number, endpoint: Endpoint) => Transport; failureTimeoutMs?: number } = {},
  ) => {
    if (n > 1) endpoints = await Promise.all(ports.map((p) => endpointAt(p)));
    if (n > 1) everyEndpoint.push(...endpoints);
    const crashed = new Set<number>();
    drivers = [0, 1, 2].map((i) => new MembershipDriver({
      self: nodeId(i + 1), transport: options.transport?.(i + 1, endpoints[i]!) ?? endpoints[i]!, allocator, layoutHash: 'kv',
      founders: members, found: false, heartbeatMs: 20, failureTimeoutMs: options.failureTimeoutMs ?? 5000, tickMs: 10,
      record: disk[i]!, state: states[i]!,
      restartTimeoutMs: 30_000, restartGraceMs: 3000, // generous: all three are back at once
      saveRecord: async (r) => {
        if (crashed.has(i + 1)) return hang();
        const crash = crashAt(i + 1, r);
        if (typeof crash === 'object') await waitFor(`nodes other than ${i + 1} crashed`, () => crashed.size === 2, 30_000);
        const point = typeof crash === 'object' ? crash.at : crash;
        if (point !== 'before') disk[i] = r;
        if (point === undefined) return;
        // Crashed: nothing reaches or leaves the node from now on (its endpoint closes before any
        // further network event is handled), and this save, like any later one, never returns.
        crashed.add(i + 1);
        const endpoint = endpoints[i]!;
        queueMicrotask(() => void endpoint.close());
        return hang();
      },
      onDeliver: (s, d) => states[i]!.append(s, d.version!, new TextDecoder().decode(d.payload)),
      log: (line) => lines.push(`w${n} n${i + 1} ${line}`),
    }));
    everyDriver.push(...drivers);
    const started = drivers.map((d) => d.start());
    for (const s of started) s.catch(() => undefined);
    return { drivers, started, crashed };
  };
  /** Every process of the current wave ends (kill -9: its endpoint goes silent at once). */
  const stop = async (): Promise<void> => {
    for (const e of endpoints) await e.close();
    for (const d of drivers) await d.close();
  };
  const logs = (): string[][] => states.map((s) => s.shards.get('0/0')!.map((r) => r.tag));
  /** Waits until `drivers` reconciled; every replica must then hold exactly what view 4's trim delivered. */
  const reconciled = async (t: ExecutionContext, drivers: readonly MembershipDriver[]): Promise<void> => {
    await waitFor('every shard reconciled', () => drivers.every((d) => !d.awaitingState(shard)), 20_000);
    for (const [i, log] of logs().entries()) t.deepEqual(log, expected, `node ${i + 1} holds the history view 4's trim delivered`);
  };
  /** Runs `body`; logs the nodes' lines if it fails; stops every wave's drivers and endpoints at the end. */
  const run = (t: ExecutionContext, body: () => Promise<void>): Promise<void> => logOnFailure(t, lines, everyDriver, everyEndpoint, body);
  return { shard, disk, expected, lines, wave, stop, logs, reconciled, run };
}

const viewOfRecord = (r: MembershipRecord): string => {
  const v = decodeView(r.view);
  return `${v.id} [${v.memberIds}]${r.trims !== undefined ? ` trims of view ${r.trims.viewId}` : ''}`;
};

/**
 * Wave 1 of cases 2 and 3: node 2 (which holds view 4's positions 2 and 4, past the trim) crashes
 * at its first save (its promise), node 1 (the leader) once the decision is chosen but before it
 * recorded view 5, node 3 once it recorded view 5.
 */
async function onlyNode3RecordsView5(g: Awaited<ReturnType<typeof crashingGroup>>): Promise<void> {
  const first = await g.wave(1, (node, r) => {
    if (node === 2) return 'after';
    if (decodeView(r.view).id !== 5) return undefined;
    return node === 1 ? { at: 'before', last: true } : 'after';
  });
  await waitFor('every node crashed', () => first.crashed.size === 3, 30_000);
}

test('a crash of every node once it recorded the restart view, before reconciling: the second restart resumes from it, trimmed', async (t) => {
  t.timeout(60_000);
  const g = await crashingGroup(1700);
  await g.run(t, async () => {
    // Wave 1: the restart of view 4 chooses view 5; each node crashes once it recorded view 5.
    const first = await g.wave(1, (node, r) => (decodeView(r.view).id !== 5 ? undefined : node === 1 ? { at: 'after', last: true } : 'after'));
    await waitFor('every node recorded view 5', () => first.crashed.size === 3, 30_000);
    t.deepEqual(g.disk.map(viewOfRecord), [1, 2, 3].map(() => '5 [1,2,3] trims of view 4'), 'each record of view 5 carries view 4\'s trim');
    t.deepEqual(g.logs()[1], g.expected.slice(0, 5), 'node 2 truncated past the trim before it recorded view 5');
    await g.stop();

    // Wave 2: all three restart from those records: view 6, every replica view 4's trimmed history.
    const second = await g.wave(2);
    await Promise.all(second.started);
    for (const d of second.drivers) t.deepEqual([d.current().id, d.current().memberIds.map(Number)], [viewId(6), [1, 2, 3]]);
    await g.reconciled(t, second.drivers);
  });
});

test('a crash while installing the restart view that only one node recorded: the second restart, led by a node that heard of it, carries its trims', async (t) => {
  t.timeout(60_000);
  const g = await crashingGroup(1710);
  await g.run(t, async () => {
    await onlyNode3RecordsView5(g);
    t.deepEqual(g.disk.map(viewOfRecord), ['4 [1,2,3] trims of view 4', '4 [1,2,3]', '5 [1,2,3] trims of view 4']);
    t.is(g.logs()[1]!.length, 8, 'node 2 did not truncate');
    await g.stop();

    // Wave 2: the group restarts from node 3's record of view 5. Node 1 leads (the lowest-ranked
    // member of view 5), knowing view 5 and its carried trim only from node 3's hello; node 2
    // must truncate by that trim (without it, its positions 2 and 4 would be the newest and
    // replicated to the others).
    const second = await g.wave(2);
    await Promise.all(second.started);
    for (const d of second.drivers) t.deepEqual([d.current().id, d.current().memberIds.map(Number)], [viewId(6), [1, 2, 3]]);
    t.true(g.lines.some((l) => /^w2 n1 restart: ballot \d+\.1 chose view 6 \[1,2,3\] \(failed \[\], 1 committed trims\)/.test(l)), 'node 1 decided with the carried trim');
    await g.reconciled(t, second.drivers);
    t.true(g.lines.some((l) => l.startsWith('w2 n2 restart: shard 0/0 truncates')), 'node 2 truncated in the second restart');
  });
});

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const isDecision = (bytes: Uint8Array): boolean => {
  try {
    const t = (packr.unpack(bytes) as { t?: string }).t;
    return t === 'restartDecision' || t === 'restartDecided';
  } catch {
    return false;
  }
};

/**
 * `endpoint` as a driver's transport that, until `open()`, neither receives a chosen restart
 * decision (the leader's `restartDecision`) nor hears one in an answer (`restartDecided`): the
 * node takes part in the ballots but misses their outcome, as when the leader went down right
 * after the decision was chosen.
 */
function missingDecisions(endpoint: Endpoint, open: () => boolean): Transport {
  const session = (s: TransportSession): TransportSession => new Proxy(s, {
    get(target, property) {
      if (property === 'call') {
        return async (...args: Parameters<TransportSession['call']>) => {
          const reply = await target.call(...args);
          if (!open() && args[0] === MEMBERSHIP_REQUEST_TYPE && isDecision(reply)) throw new Error('decision not heard (test)');
          return reply;
        };
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return new Proxy(endpoint, {
    get(target, property) {
      if (property === 'handle') {
        return (type: number, handler: Parameters<Transport['handle']>[1]) => target.handle(type, (request, context) =>
          (!open() && type === MEMBERSHIP_REQUEST_TYPE && isDecision(request) ? new Uint8Array(0) : handler(request, context)));
      }
      if (property === 'connect') return async (remote: string) => session(await target.connect(remote));
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as unknown as Transport;
}

test('a node of the second restart that missed its decision hears it from a member with the trims of view 4', async (t) => {
  t.timeout(60_000);
  const g = await crashingGroup(1720);
  await g.run(t, async () => {
    // Wave 1 as above: only node 3 recorded view 5; node 2 holds view 4 untrimmed.
    await onlyNode3RecordsView5(g);
    await g.stop();

    // Wave 2: node 2 takes part in the ballots but misses the decision until nodes 1 and 3 run
    // view 6; then a member hands the decision on (answerOutsideRestart), which must name the
    // view its trims belong to (view 4, not view 5), or node 2 keeps its positions 2 and 4 and
    // holds the newest version. (Long failure timeouts: node 2 must not be removed meanwhile.)
    let heard = false;
    const second = await g.wave(2, undefined, {
      transport: (node, endpoint) => (node === 2 ? missingDecisions(endpoint, () => heard) : endpoint),
      failureTimeoutMs: 60_000,
    });
    const [d1, d2, d3] = second.drivers as [MembershipDriver, MembershipDriver, MembershipDriver];
    await Promise.all([second.started[0], second.started[2]]);
    t.false(d2.isMember, 'node 2 has not heard the decision');
    for (const d of [d1, d3]) t.deepEqual([d.current().id, d.current().memberIds.map(Number)], [viewId(6), [1, 2, 3]]);
    heard = true;
    await second.started[1];
    t.deepEqual(d2.current().id, viewId(6));
    await g.reconciled(t, second.drivers);
    t.true(g.lines.some((l) => l.startsWith('w2 n2 restart: shard 0/0 truncates')), 'node 2 truncated by view 4\'s trim');
  });
});
