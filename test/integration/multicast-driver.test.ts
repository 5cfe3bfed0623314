// The multicast driver over the real native transport: a 3-member shard in 3 processes with a
// mixed SMC/RDMC workload ends with one delivered-sequence digest everywhere; in-process shards
// under injected packet loss deliver identical sequences; and a driver-level view change (wedge,
// trim, apply, install a 2-member view) re-sends the cut-off messages exactly once, with the
// stamps their receipts gave.
import test from 'ava';
import { computeTrim } from '../../src/multicast/ragged-edge.js';
import { nodeId, viewId } from '../../src/core/ids.js';
import { startMembers, startShard, stopMembers, type RunResult } from '../support/multicast-driver-cluster.js';
import {
  deliveryLine,
  payloadIntact,
  startLocalShard,
  stopLocalShard,
  tagOf,
  taggedPayload,
  waitFor,
  type LocalMember,
} from '../support/multicast-driver-local.js';

const MIXED_SIZES = [100, 1000, 3000, 20_000, 100, 200_000, 500, 64_000, 8, 4096, 4097];

function checkOrder(t: import('ava').ExecutionContext, member: LocalMember): void {
  let lastVersion = -1n;
  const nextIndex = new Map<number, number>();
  for (const d of member.deliveries) {
    t.true(d.version !== null && d.version > lastVersion, 'versions strictly increase');
    lastVersion = d.version!;
    t.is(d.index, nextIndex.get(d.sender) ?? 0, 'FIFO per sender, no gaps');
    nextIndex.set(d.sender, d.index + 1);
    t.true(payloadIntact(d.payload), 'payload intact');
  }
}

test.serial('3 processes, all sending mixed SMC and RDMC messages: one delivered digest', async (t) => {
  t.timeout(45_000);
  const members = await startMembers(3);
  try {
    await startShard(members, 7, {
      mode: 'ordered',
      limits: { payloadBytesMax: 1 << 20, smcPayloadBytesMax: 4096, blockBytes: 32 * 1024, windowSize: 64, sendQueueCountMax: 256 },
    });
    const perSender = 220;
    const results = await Promise.all(
      members.map((m) =>
        m.request<RunResult>(
          { cmd: 'run', shard: 7, plan: { count: perSender, sizes: MIXED_SIZES, ratePerSec: 0 }, expect: 3 * perSender, digest: 'full', timeoutMs: 30_000 },
          35_000,
        ),
      ),
    );
    if (results.some((r) => r.timedOut)) {
      for (const [i, r] of results.entries()) t.log(`member ${i + 1}: ${JSON.stringify({ d: r.delivered, core: r.core, counters: r.counters, diagnostics: r.diagnostics })}`);
    }
    for (const r of results) {
      t.false(r.timedOut, `every member delivered everything in time: ${JSON.stringify({ d: r.delivered, core: r.core })}`);
      t.is(r.delivered, 3 * perSender);
      t.true(r.core!.blockPacketsSent > 0, 'large messages went by RDMC');
    }
    t.is(results[1]!.digest, results[0]!.digest);
    t.is(results[2]!.digest, results[0]!.digest);
    const expectedBytes = 3 * Array.from({ length: perSender }, (_, i) => Math.max(MIXED_SIZES[i % MIXED_SIZES.length]!, 8)).reduce((a, b) => a + b, 0);
    t.is(results[0]!.bytes, expectedBytes);
  } finally {
    await stopMembers(members);
  }
});

test.serial('a member whose run starts late counts what it delivered before it (bench and test runs)', async (t) => {
  // The others' first messages are delivered there before its run begins (the null rule fills
  // its positions). Counted from its start only, they were lost: it waited out the timeout for
  // deliveries that had already happened (the bench's rare slow rounds).
  t.timeout(60_000);
  const members = await startMembers(3);
  try {
    await startShard(members, 8, { mode: 'ordered', limits: { payloadBytesMax: 1 << 20, windowSize: 64, sendQueueCountMax: 256 } });
    const perSender = 100;
    const sizes = [100, 2000];
    const run = (m: (typeof members)[number]): Promise<RunResult> => m.request<RunResult>(
      { cmd: 'run', shard: 8, plan: { count: perSender, sizes, ratePerSec: 0 }, expect: 3 * perSender, digest: 'full', timeoutMs: 15_000 },
      25_000,
    );
    for (const round of [1, 2]) {
      const late = new Promise<RunResult>((resolve, reject) => {
        setTimeout(() => run(members[2]!).then(resolve, reject), 400);
      });
      const results = await Promise.all([run(members[0]!), run(members[1]!), late]);
      for (const [i, r] of results.entries()) {
        t.false(r.timedOut, `round ${round}, member ${i + 1}: ${r.delivered} of ${3 * perSender}`);
        t.is(r.delivered, 3 * perSender);
        t.is(r.bytes, 3 * (perSender / 2) * (100 + 2000));
      }
      t.true((results[2]!.earlyDeliveries ?? 0) > 0, `round ${round}: member 3 delivered some before its run began`);
      t.is(results[1]!.digest, results[0]!.digest);
      t.is(results[2]!.digest, results[0]!.digest);
    }
  } finally {
    await stopMembers(members);
  }
});

test.serial('in process under 5% injected packet loss: identical deliveries on all members', async (t) => {
  t.timeout(40_000);
  const members = await startLocalShard(3, { endpoint: { retransmitTimeoutMs: 5 } });
  try {
    for (const m of members) m.endpoint.injectFault({ dropProbability: 0.05 });
    const perSender = 120;
    const sends = members.map(async (m) => {
      for (let i = 0; i < perSender; i++) await m.driver.send(taggedPayload(m.node, i, MIXED_SIZES[i % MIXED_SIZES.length]!));
    });
    await Promise.all(sends);
    const done = await waitFor(() => members.every((m) => m.deliveries.length >= 3 * perSender), 30_000);
    t.true(done, `delivered ${members.map((m) => m.deliveries.length).join(', ')} of ${3 * perSender}`);
    const drops = members.reduce((n, m) => n + (m.endpoint.stats()['drops.injected'] ?? 0), 0);
    t.true(drops > 20, `loss was injected (${drops} drops)`);
    const lines = members.map((m) => m.deliveries.map(deliveryLine));
    t.deepEqual(lines[1], lines[0]);
    t.deepEqual(lines[2], lines[0]);
    t.is(lines[0]!.length, 3 * perSender);
    for (const m of members) checkOrder(t, m);
  } finally {
    await stopLocalShard(members);
  }
});

test.serial('view change: wedge, trim, apply, 2-member next view delivers the re-sent messages once', async (t) => {
  t.timeout(40_000);
  const members = await startLocalShard(3, { endpoint: { retransmitTimeoutMs: 5 } });
  const [m1, m2, m3] = members as [LocalMember, LocalMember, LocalMember];
  try {
    const stamps = new Map<string, string>();
    const send = async (m: LocalMember, from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i++) {
        const payload = taggedPayload(m.node, i, MIXED_SIZES[i % MIXED_SIZES.length]!);
        const receipt = await m.driver.send(payload);
        stamps.set(tagOf(payload), `${receipt.timestamp.micros}.${receipt.timestamp.logical}`);
      }
    };
    // A first stretch delivered everywhere.
    await Promise.all(members.map((m) => send(m, 0, 30)));
    t.true(await waitFor(() => members.every((m) => m.deliveries.length >= 90), 20_000), 'first stretch delivered');
    // Cut 1 <-> 2: what 1 and 2 send now reaches member 3 only, so it is not stable.
    m1.endpoint.injectFault({ failPeer: m2.endpoint.address });
    await Promise.all(members.map((m) => send(m, 30, 50)));
    await new Promise((resolve) => setTimeout(resolve, 300));
    const beforeTrim = members.map((m) => m.deliveries.length);

    for (const m of members) m.driver.wedge();
    const states = members.map((m) => m.driver.receiveState().receivedCounts);
    const trim = computeTrim(states);
    t.true(trim[0]! < 50 && trim[1]! < 50, `the cut senders are trimmed (trim ${trim.join(',')})`);
    const resend = members.map((m) => m.driver.applyTrim(trim).resendCount);
    t.log(`trim ${trim.join(",")}, re-sends ${resend.join(",")}, delivered before trim ${beforeTrim.join(",")}`);
    t.true(resend[0]! > 0 && resend[1]! > 0, `members 1 and 2 have messages to re-send (${resend.join(',')})`);
    // Every member ends view 1 with the same sequence, exactly the trimmed prefix.
    const view1 = members.map((m) => m.deliveries.filter((d) => d.viewId === 1).map(deliveryLine));
    t.deepEqual(view1[1], view1[0]);
    t.deepEqual(view1[2], view1[0]);
    t.true(view1[0]!.length >= 90 && view1[0]!.length <= trim.reduce((a, b) => a + b, 0), 'view 1 ends at the trim');
    t.true(beforeTrim.every((n, i) => members[i]!.deliveries.length >= n));

    // Member 3 leaves; 1 and 2 install view 2 (one of them first: the other holds its packets).
    m1.endpoint.injectFault({ restorePeer: m2.endpoint.address });
    await m3.driver.close();
    const view2 = {
      viewId: viewId(2),
      members: [nodeId(1), nodeId(2)],
      senders: [nodeId(1), nodeId(2)],
      addresses: new Map([[nodeId(1), m1.endpoint.address], [nodeId(2), m2.endpoint.address]]),
    };
    await m1.driver.installView(view2);
    // m1's re-sends reach m2 before m2 installs the view: m2 holds them (waited for, not timed,
    // so a loaded machine does not turn this into a race).
    await waitFor(() => m2.driver.counters.heldPackets > 0, 10_000);
    await m2.driver.installView(view2);
    // New sends after the re-sends, to check they come after them.
    await Promise.all([send(m1, 50, 55), send(m2, 50, 55)]);
    const survivors = [m1, m2];
    const fromThree = m1.deliveries.filter((d) => d.sender === 3).length;
    const expected = (_m: LocalMember): number => 2 * 55 + fromThree;
    t.true(
      await waitFor(() => survivors.every((m) => m.deliveries.length >= expected(m)), 20_000),
      `survivors delivered ${survivors.map((m) => m.deliveries.length).join(', ')} of ${expected(m1)}`,
    );
    t.deepEqual(m2.deliveries.map(deliveryLine), m1.deliveries.map(deliveryLine));
    for (const m of survivors) {
      const tags = m.deliveries.map((d) => tagOf(d.payload));
      t.is(new Set(tags).size, tags.length, 'no message delivered twice');
      for (const sender of [1, 2]) {
        const seqs = m.deliveries.filter((d) => d.payload[0] === sender).map((d) => Number(tagOf(d.payload).split(':')[1]));
        t.deepEqual(seqs, Array.from({ length: 55 }, (_, i) => i), `sender ${sender}: every message once, in order`);
      }
      t.true(m.deliveries.every((d) => payloadIntact(d.payload)));
      t.true(
        m.deliveries.every((d) => stamps.get(tagOf(d.payload)) === `${d.timestamp.micros}.${d.timestamp.logical}`),
        're-sent messages keep the stamp of their receipt',
      );
      t.true(m.driver.counters.heldPackets > 0 || m.node === 1, 'the later installer held early packets');
    }
  } finally {
    await stopLocalShard(members);
  }
});

