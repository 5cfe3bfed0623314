// Proves the ordering core's individual rules with hand-driven schedules: limits and
// PayloadTooLargeError, round-robin positions and versions with non-senders, no delivery before
// every member reported receipt, reactive and compressed nulls, SMC batching under the packet
// budget with reports piggybacked (one report per flush, not per message), the window and send
// queue, raw mode, RDMC mixed with SMC, frontiers (persisted, time), the trim function, and the
// codec's round trip and rejection of malformed input, and re-sends carried into the next view
// with their original stamps.
import test from 'ava';
import { MulticastNet, makePayload, readPayload, sequenceOf } from '../support/multicast-net.js';
import { MulticastCore } from '../../src/multicast/multicast-core.js';
import {
  multicastLimits,
  multicastLimitsFromConfig,
  packetOverheadBytes,
  SMC_ENTRY_OVERHEAD_BYTES,
  type MulticastLimits,
} from '../../src/multicast/config.js';
import { computeTrim } from '../../src/multicast/ragged-edge.js';
import { decodePacket, encodePacket, MulticastDecodeError } from '../../src/multicast/codec.js';
import { AssertionError, ConfigError, PayloadTooLargeError } from '../../src/core/errors.js';
import { makeVersion, nodeId, viewId, VERSION_NONE, type Version } from '../../src/core/ids.js';
import type { DataPacket, Delivery, Packet, ResendMessage } from '../../src/multicast/types.js';

const LIMITS: Partial<MulticastLimits> = {
  payloadBytesMax: 4000,
  smcPayloadBytesMax: 200,
  blockBytes: 128,
  windowSize: 4,
  packetBytesMax: 2048,
  sendQueueCountMax: 6,
};

/** Flushes everyone and delivers everything, in order, until quiet (no faults). */
function settle(net: MulticastNet): void {
  net.drain();
}

test('limits: payload above max_payload_size fails at once; bad config names its keys', (t) => {
  const net = new MulticastNet({ seed: 1, memberCount: 2, limits: LIMITS });
  const error = t.throws(() => net.cores[0]!.send(new Uint8Array(4001), { micros: 1, logical: 0 }), {
    instanceOf: PayloadTooLargeError,
  });
  t.regex(error!.message, /max_payload_size/);
  t.true(net.send(0, 4000), 'exactly the maximum is accepted');
  const config = t.throws(() => multicastLimits({ windowSize: 0, rdmcAlgorithm: 'x' as never }), { instanceOf: ConfigError });
  t.deepEqual((config as ConfigError).problems.map((p) => p.key).sort(), [
    'multicast.rdmc_send_algorithm',
    'multicast.window_size',
  ]);
  t.throws(() => multicastLimits({ packetBytesMax: 1000, smcPayloadBytesMax: 1000 }), { instanceOf: ConfigError });
  // The config loader's keys map one to one; problems name the section they came from.
  const fromConfig = multicastLimitsFromConfig({
    max_payload_size: 1 << 20, max_smc_payload_size: 512, block_size: 4096, window_size: 8,
    rdmc_send_algorithm: 'chain',
  });
  t.like(fromConfig, {
    payloadBytesMax: 1 << 20, smcPayloadBytesMax: 512, blockBytes: 4096, windowSize: 8, rdmcAlgorithm: 'chain',
  });
  const bad = t.throws(() => multicastLimitsFromConfig({ window_size: -1 }, 'profile.big'), { instanceOf: ConfigError });
  t.deepEqual((bad as ConfigError).problems.map((p) => p.key), ['profile.big.window_size']);
});

test('round robin over senders only: positions i·n+r, versions from the view id, non-senders receive', (t) => {
  const net = new MulticastNet({ seed: 2, memberCount: 3, senderRanks: [0, 2], limits: LIMITS, viewNumber: 9 });
  t.throws(() => net.cores[1]!.send(new Uint8Array(1), { micros: 1, logical: 0 }), { instanceOf: AssertionError });
  net.send(2, 10);
  net.send(2, 10);
  net.send(0, 10);
  settle(net);
  const got = net.delivered[1]!.map((d) => [d.sender, d.index, d.position, d.version]);
  // Sender 0 (rank 0) sent 1 real message then a null (reacting to rank 2's index 1).
  t.deepEqual(got, [
    [net.nodes[0], 0, 0, makeVersion(viewId(9), 0)],
    [net.nodes[2], 0, 1, makeVersion(viewId(9), 1)],
    [net.nodes[2], 1, 3, makeVersion(viewId(9), 3)],
  ]);
  t.deepEqual(sequenceOf(net.delivered[0]!), sequenceOf(net.delivered[1]!));
  t.deepEqual(sequenceOf(net.delivered[2]!), sequenceOf(net.delivered[1]!));
  t.is(net.cores[0]!.counters.nullsSent, 1);
});

test('nothing is delivered until every member reported receipt', (t) => {
  const net = new MulticastNet({ seed: 3, memberCount: 3, senderRanks: [0], limits: LIMITS });
  net.send(0, 50);
  net.flush(0);
  // Deliver rank 0's data to rank 1 only; rank 2 never hears of it.
  const toTwo = net.inFlight.filter((p) => p.to === 2);
  net.inFlight = net.inFlight.filter((p) => p.to !== 2);
  for (let round = 0; round < 5; round++) {
    for (const r of [0, 1]) net.flush(r);
    net.inFlight = net.inFlight.filter((p) => p.to !== 2);
    while (net.deliverOne()) { /* */ }
  }
  t.deepEqual(net.delivered.map((d) => d.length), [0, 0, 0]);
  net.inFlight.push(...toTwo);
  // Rank 1's report to rank 2 was dropped above (a loss the reliable transport would repair);
  // after the tick its row goes again once its delivered count moved (a lazy field).
  net.tick();
  settle(net);
  t.deepEqual(net.delivered.map((d) => d.length), [1, 1, 1]);
});

test('nulls: only in reaction to others, compressed into one run per flush, never delivered', (t) => {
  const net = new MulticastNet({ seed: 4, memberCount: 2, limits: { ...LIMITS, windowSize: 50, sendQueueCountMax: 50 } });
  settle(net);
  t.is(net.packetsSent, 0, 'an idle shard sends nothing at all: no timer-driven nulls');
  for (let i = 0; i < 40; i++) net.send(0, 8);
  net.flush(0);
  while (net.deliverOne()) { /* */ }
  const ready = net.cores[1]!.ready();
  const data = ready.packets.map((p) => p.packet).filter((p): p is DataPacket => p.kind === 'data');
  const runs = data.flatMap((p) => p.entries).filter((e) => e.kind === 'null');
  t.deepEqual(runs, [{ kind: 'null', index: 0, count: 40 }], 'rank 1 fills through index 39, the last it received');
  net.absorb(1, ready);
  settle(net);
  t.is(net.delivered[0]!.length, 40);
  t.is(net.delivered[1]!.length, 40);
  t.true(net.delivered[1]!.every((d) => d.sender === net.nodes[0]), 'no null was delivered');
  const before = net.packetsSent;
  settle(net);
  t.is(net.packetsSent, before, 'quiescent again: no null storm');
});

test('nulls fill through the received index: a lone sender\'s next message is stable after one exchange', (t) => {
  // Three senders, only rank 0 talks. With the classic rule (fill through i - 1 when ranked
  // after the sender) the positions before rank 0's message i are filled only in reaction to
  // it, so every member needs a second round of reports: three one-way hops to delivery.
  // Filling through i makes the next message's predecessors already filled when it arrives.
  const net = new MulticastNet({ seed: 40, memberCount: 3, limits: { ...LIMITS, windowSize: 50, sendQueueCountMax: 50 } });
  net.send(0, 8);
  settle(net);
  t.deepEqual(net.delivered.map((d) => d.length), [1, 1, 1]);
  const before = net.packetsSent;
  settle(net);
  t.is(net.packetsSent, before, 'quiescent after the first message: no null storm');
  for (let round = 2; round <= 4; round++) {
    net.send(0, 8);
    net.flush(0); // hop 1: rank 0's message (with its report) to ranks 1 and 2
    while (net.deliverOne()) { /* */ }
    net.flush(1); // hop 2: each receiver's null run and report to everyone
    net.flush(2);
    while (net.deliverOne()) { /* */ }
    for (const r of [0, 1, 2]) net.flush(r); // no packet moves: only what each member knows now
    t.deepEqual(net.delivered.map((d) => d.length), [round, round, round], `message ${round} delivered everywhere after one exchange`);
    settle(net);
  }
  t.deepEqual(sequenceOf(net.delivered[1]!), sequenceOf(net.delivered[0]!));
  t.deepEqual(sequenceOf(net.delivered[2]!), sequenceOf(net.delivered[0]!));
  // One null per message per other sender, never more: the ranks after 0 fill index i, not i + 1.
  t.is(net.cores[1]!.counters.nullsSent, 4);
  t.is(net.cores[2]!.counters.nullsSent, 4);
  t.is(net.cores[0]!.counters.nullsSent, 0);
});

test('SMC batching: a burst fills few packets under the budget, each carrying the report', (t) => {
  const limits = { ...LIMITS, windowSize: 100, sendQueueCountMax: 100 };
  const net = new MulticastNet({ seed: 5, memberCount: 3, senderRanks: [0], limits });
  for (let i = 0; i < 100; i++) net.send(0, 100);
  const ready = net.cores[0]!.ready();
  const packets = ready.packets.map((p) => p.packet) as DataPacket[];
  const encoded = packets.map((p) => encodePacket(p).length);
  t.true(encoded.every((bytes) => bytes <= 2048), `sizes ${encoded}`);
  const perPacket = Math.floor((2048 - packetOverheadBytes(1)) / (100 + SMC_ENTRY_OVERHEAD_BYTES));
  t.is(packets.length, Math.ceil(100 / perPacket), `${packets.length} packets for 100 messages`);
  t.true(packets.every((p) => p.report !== null && p.entries.length > 1));
  t.true(ready.packets.every((p) => p.to.length === 2), 'one encoding goes to both peers');
  // A receiver of the whole burst answers with one report in its next flush, not 100 acks.
  for (const p of packets) net.cores[1]!.receive(decodePacket(encodePacket(p)));
  const answer = net.cores[1]!.ready();
  t.is(answer.packets.length, 1);
  const report = (answer.packets[0]!.packet as DataPacket).report!;
  t.deepEqual(report.receivedCounts, [100]);
});

test('window: at most window_size messages in flight; the queue holds the rest, then refuses', (t) => {
  const net = new MulticastNet({ seed: 6, memberCount: 2, senderRanks: [0], limits: LIMITS });
  for (let i = 0; i < 6; i++) t.true(net.send(0, 10));
  t.false(net.send(0, 10), 'queue of 6 full');
  t.deepEqual(net.cores[0]!.send(new Uint8Array(3), { micros: net.nowMicros, logical: 0 }), {
    accepted: false,
    reason: 'queue-full',
  });
  const ready = net.cores[0]!.ready();
  const entries = ready.packets.flatMap((p) => (p.packet as DataPacket).entries);
  t.is(entries.length, 4, 'window_size = 4 go out');
  t.is(ready.sendCapacity, 4);
  net.absorb(0, ready);
  settle(net);
  t.is(net.delivered[1]!.length, 6);
  t.is(net.cores[0]!.ready().sendCapacity, 6);
});

test('raw mode: delivers on receipt without waiting for others, per-sender FIFO', (t) => {
  const net = new MulticastNet({ seed: 7, memberCount: 3, mode: 'raw', limits: LIMITS });
  net.send(0, 10);
  net.send(0, 10);
  net.send(1, 10);
  net.flush(0);
  net.flush(1);
  const toTwo = net.inFlight.filter((p) => p.to === 2);
  for (const p of toTwo) net.cores[2]!.receive(decodePacket(p.bytes));
  net.flush(2);
  t.is(net.delivered[2]!.length, 3, 'rank 2 delivered without anyone else acknowledging');
  t.true(net.delivered[2]!.every((d) => d.version === null));
  t.deepEqual(net.delivered[0]!.map((d) => d.index), [0, 1], 'a raw sender delivers its own at once');
});

test('RDMC: large messages split into blocks, ordered with SMC ones, intact, origin uploads once', (t) => {
  const net = new MulticastNet({ seed: 8, memberCount: 4, limits: { ...LIMITS, rdmcAlgorithm: 'binomial' } });
  net.send(0, 100);
  net.send(0, 3000); // 24 blocks
  net.send(0, 100);
  net.send(1, 1000);
  settle(net);
  const seq = net.delivered[3]!.map((d) => [d.sender, d.index, d.large]);
  t.deepEqual(seq, [
    [net.nodes[0], 0, false],
    [net.nodes[1], 0, true],
    [net.nodes[0], 1, true],
    [net.nodes[0], 2, false],
  ]);
  for (const list of net.delivered) for (const d of list) t.not(readPayload(d.payload), null);
  // Each non-origin receives each block exactly once: 3 receivers x (24 + 8) blocks in all.
  const blockPackets = net.cores.map((c) => c.counters.blockPacketsSent);
  t.is(blockPackets.reduce((a, b) => a + b, 0), 3 * (24 + 8));
  t.true(blockPackets[0]! <= 24 + 2 + 8, `origin uploads its 24 blocks about once (${blockPackets[0]})`);
  t.is(net.check(true).length, 0);
});

test('released payloads: an own payload comes back once, only when done everywhere (or within the trim), never sent after', (t) => {
  // Ordered: SMC and RDMC messages; nothing comes back while a member has not delivered it.
  const net = new MulticastNet({ seed: 21, memberCount: 3, limits: LIMITS });
  net.send(0, 100);
  net.send(0, 3000);
  net.send(1, 50);
  net.flush(0);
  net.flush(1);
  t.is(net.releasedCount, 0, 'sent, delivered nowhere: nothing released');
  settle(net);
  // The last delivered counts are lazy: they go with the next tick's reports.
  net.tick();
  settle(net);
  t.is(net.releasedCount, 3, 'all three released after the drain and a tick');
  t.deepEqual(net.check(true), [], 'each once, after every member delivered it; none sent again');
  // Raw: done when every member received it.
  const raw = new MulticastNet({ seed: 22, memberCount: 3, mode: 'raw', limits: LIMITS });
  raw.send(2, 10);
  raw.send(2, 1000);
  settle(raw);
  raw.tick();
  settle(raw);
  t.is(raw.releasedCount, 2);
  t.deepEqual(raw.check(true), []);
  // Trim: the messages within the trim are released by applyTrim, the cut-off ones re-sent.
  const cut = new MulticastNet({ seed: 23, memberCount: 2, limits: LIMITS });
  cut.send(0, 10);
  cut.send(0, 10);
  cut.flush(0);
  cut.deliverOne();
  cut.flush(1);
  cut.cores[0]!.wedge();
  cut.cores[1]!.wedge();
  const received = cut.cores[1]!.receiveState().receivedCounts;
  t.is(received[0], 2, 'the one packet carried both messages');
  const { resend, released } = cut.cores[0]!.applyTrim([1, 0]);
  t.deepEqual(resend.map((m) => readPayload(m.payload)), [[0, 1]]);
  t.deepEqual(released.map((m) => readPayload(m)), [[0, 0]]);
});

test('received large payloads: let go of once each member delivered it and its relays and repairs are done', (t) => {
  // One-block (128 B) and several-block RDMC messages, ordered and raw, 4 members (the binomial
  // schedule has members relay). The net checks each let-go: once, delivered there before, and
  // never in a later packet of that member (a raw member delivers on receipt, before its relays).
  for (const mode of ['ordered', 'raw'] as const) {
    const net = new MulticastNet({ seed: 31, memberCount: 4, mode, limits: { ...LIMITS, blockBytes: 1024 } });
    net.send(0, 1000);
    net.send(0, 3500);
    net.send(1, 100);
    net.send(2, 2100);
    net.flush(0);
    net.flush(2);
    t.is(net.releasedReceivedCount, 0, `${mode}: nothing let go before anything arrived`);
    settle(net);
    // Raw: a repair hold ends when the reports show every member received it (a tick's check).
    net.tick();
    settle(net);
    t.is(net.releasedReceivedCount, 3 * 3, `${mode}: 3 large messages, each let go by the 3 members that received it`);
    t.deepEqual(net.check(true), [], mode);
  }
  // The view ends: what was delivered within the trim is let go, in the ready() that delivers it.
  const cut = new MulticastNet({ seed: 32, memberCount: 2, limits: { ...LIMITS, blockBytes: 1024 } });
  cut.send(0, 1000);
  cut.flush(0);
  while (cut.deliverOne()) { /* member 1 receives the block; no report goes back */ }
  for (const r of [0, 1]) cut.cores[r]!.wedge();
  t.deepEqual(cut.cores[1]!.receiveState().receivedCounts, [1, 0]);
  cut.cores[1]!.applyTrim([1, 0]);
  t.is(cut.releasedReceivedCount, 0, 'delivered by the next ready(), not yet');
  cut.flush(1);
  t.is(cut.delivered[1]!.length, 1);
  t.is(cut.releasedReceivedCount, 1, 'delivered within the trim and let go in that ready()');
  t.deepEqual(cut.check(false), []);
});

test('reports alone: received counts go at once; a delivered count alone waits for a tick, or half a window', (t) => {
  const net = new MulticastNet({ seed: 24, memberCount: 2, senderRanks: [0], limits: LIMITS });
  const reportsTo = (rank: number): DataPacket[] =>
    net.inFlight.filter((p) => p.to === rank).map((p) => decodePacket(p.bytes) as DataPacket);
  net.send(0, 10);
  net.flush(0);
  while (net.deliverOne()) { /* the message reaches rank 1 */ }
  net.flush(1);
  t.is(net.delivered[1]!.length, 1);
  t.is(reportsTo(0).length, 1, 'rank 1 received something: its report goes at once');
  while (net.deliverOne()) { /* rank 1's report reaches rank 0 */ }
  net.flush(0);
  t.is(net.delivered[0]!.length, 1, 'rank 0 delivered');
  t.is(net.inFlight.length, 0, 'a row changed only in its delivered count does not go alone');
  net.tick();
  net.flush(0);
  t.deepEqual(reportsTo(1).map((p) => [p.entries.length, p.report!.deliveredCount]), [[0, 1]], 'it goes after the tick');
  while (net.deliverOne()) { /* */ }
  // Half a window (windowSize 4, one sender: 2 positions) of delivered count goes at once.
  net.send(0, 10);
  net.send(0, 10);
  net.flush(0);
  while (net.deliverOne()) { /* */ }
  net.flush(1);
  while (net.deliverOne()) { /* */ }
  net.flush(0);
  t.is(net.delivered[0]!.length, 3);
  t.deepEqual(reportsTo(1).map((p) => p.report!.deliveredCount), [3], 'two positions at once: no tick needed');
  t.deepEqual(net.check(true), []);
});

test('reports alone, ordered: a received count that leaves the contiguous count where it was waits for a tick (raw: at once)', (t) => {
  // Ranks 0 and 1 send (positions 0, 2, ... and 1, 3, ...), rank 2 only receives. Ordered
  // stability reads contiguous counts alone; there the per-sender counts only feed RDMC repair,
  // which waits far longer than a tick. Raw mode's window and let-go read them: at once.
  for (const mode of ['ordered', 'raw'] as const) {
    const net = new MulticastNet({
      seed: 31, memberCount: 3, senderRanks: [0, 1], mode, limits: { ...LIMITS, rdmcAlgorithm: 'sequential' },
    });
    const reportsFrom = (from: number): number[][] =>
      net.inFlight.map((p) => decodePacket(p.bytes))
        .filter((p): p is DataPacket => p.kind === 'data' && p.fromRank === from && p.entries.length === 0)
        .map((p) => [p.report!.contiguousCount, ...p.report!.receivedCounts]);
    /** Hands rank 2 what is in flight to it; drops the rest (this test follows rank 2 alone). */
    const deliverToRank2 = (): void => {
      for (const p of net.inFlight) if (p.to === 2) net.cores[2]!.receive(decodePacket(p.bytes.slice()));
      net.inFlight = [];
    };
    // Rank 1's own large message (position 1): its count moves, its contiguous count (held at
    // position 0) does not.
    net.send(1, 300);
    net.flush(1);
    t.deepEqual(reportsFrom(1), mode === 'raw' ? [[0, 0, 1], [0, 0, 1]] : [], `${mode}: own send`);
    // Rank 2 receives it before position 0: the same.
    deliverToRank2();
    net.flush(2);
    t.deepEqual(reportsFrom(2), mode === 'raw' ? [[0, 0, 1], [0, 0, 1]] : [], `${mode}: received`);
    if (mode === 'ordered') {
      net.flush(2);
      t.deepEqual(reportsFrom(2), [], 'ordered: not in the next ready() either');
      net.tick();
      net.flush(2);
      t.deepEqual(reportsFrom(2), [[0, 0, 1], [0, 0, 1]], 'ordered: the tick sends it');
    }
    net.inFlight = [];
    // Position 0 arrives: the contiguous count moves, and the report goes at once.
    net.send(0, 10);
    net.flush(0);
    deliverToRank2();
    net.flush(2);
    t.deepEqual(reportsFrom(2), [[2, 1, 1], [2, 1, 1]], `${mode}: the contiguous count moved`);
  }
});

test('reports alone, ordered: a contiguous count moved over nulls alone waits for a tick; past a message, at once', (t) => {
  // All three ranks send. A null reacting to a message moves the others' contiguous counts
  // again, but makes nothing deliverable: that report waits (it was a second round of report
  // frames per message). A null that fills the gap before a message moves the count past the
  // message: that report goes at once.
  const start = (): MulticastNet => new MulticastNet({ seed: 37, memberCount: 3, limits: LIMITS });
  const decoded = (net: MulticastNet) => net.inFlight.map((p) => ({ to: p.to, bytes: p.bytes, packet: decodePacket(p.bytes) as DataPacket }));
  /** Hands `to` the packets in flight from `from` to it, and takes them out of flight. */
  const hand = (net: MulticastNet, from: number, to: number): void => {
    const all = decoded(net);
    for (const p of all) if (p.to === to && p.packet.fromRank === from) net.cores[to]!.receive(decodePacket(p.bytes.slice()));
    net.inFlight = net.inFlight.filter((_, i) => !(all[i]!.to === to && all[i]!.packet.fromRank === from));
  };
  const reportsAloneFrom = (net: MulticastNet, from: number): number[] =>
    decoded(net).filter((p) => p.packet.fromRank === from && p.packet.entries.length === 0).map((p) => p.packet.report!.contiguousCount);

  /** A fresh shard where rank 0's message (position 0) reached ranks 1 and 2, and each sent its null. */
  const afterFirstMessage = (): MulticastNet => {
    const net = start();
    net.send(0, 10);
    net.flush(0);
    hand(net, 0, 1);
    hand(net, 0, 2);
    net.flush(1);
    net.flush(2);
    return net;
  };

  // Over nulls alone.
  let net = afterFirstMessage();
  // Rank 1 gets rank 2's null (position 2, and rank 2's report: it has position 0).
  hand(net, 2, 1);
  net.inFlight = [];
  net.flush(1);
  t.is(net.delivered[1]!.length, 1, 'rank 1 delivered the message: the reports it needed came with the packets');
  t.deepEqual(reportsAloneFrom(net, 1), [], 'its contiguous count moved over a null alone: no report yet');
  net.tick();
  net.flush(1);
  t.deepEqual(reportsAloneFrom(net, 1), [3, 3], 'the tick sends it');

  // Past a message. Rank 2's null (position 2) is late at rank 1, behind rank 0's next message
  // (position 3): when it comes, rank 1's contiguous count moves past that message.
  net = afterFirstMessage();
  const late = net.inFlight.filter((p) => p.to === 1 && (decodePacket(p.bytes) as DataPacket).fromRank === 2);
  net.inFlight = [];
  net.send(0, 10);
  net.flush(0);
  hand(net, 0, 1);
  net.inFlight = [];
  net.flush(1);
  net.inFlight = [];
  net.inFlight = late;
  hand(net, 2, 1);
  net.flush(1);
  t.deepEqual(reportsAloneFrom(net, 1), [5, 5], 'the contiguous count moved past a message: at once');
});

test('reports alone, ordered: a persisted version goes at once only to members whose messages it covers', (t) => {
  // Rank 0 sends one message; ranks 1 and 2 only fill nulls. Rank 0's calls wait on every
  // member's persisted report; nobody waits on rank 0's or on each other's: those go with the
  // next report to everyone (a tick at the latest). One put at a time in a 3-member shard, that
  // is 4 of 14 requests per put, and a member's third wake-up per put.
  const net = new MulticastNet({ seed: 41, memberCount: 3, limits: LIMITS });
  net.send(0, 10);
  settle(net);
  t.true(net.delivered.every((list) => list.length === 1), 'delivered everywhere');
  const version = net.delivered[0]![0]!.version!;
  const reportsTo = (from: number): { to: number; persisted: bigint }[] =>
    net.inFlight
      .map((p) => ({ to: p.to, packet: decodePacket(p.bytes) as DataPacket }))
      .filter((p) => p.packet.fromRank === from)
      .map((p) => ({ to: p.to, persisted: p.packet.report!.persistedVersion }));
  const deliverAll = (): void => {
    for (const p of net.inFlight) net.cores[p.to]!.receive(decodePacket(p.bytes.slice()));
    net.inFlight = [];
  };
  net.cores[1]!.persisted(version);
  net.flush(1);
  t.deepEqual(reportsTo(1), [{ to: 0, persisted: version }], 'rank 1: to the sender only');
  deliverAll();
  net.cores[0]!.persisted(version);
  net.flush(0);
  t.deepEqual(reportsTo(0), [], 'rank 0: its own message, nobody else waits on it');
  net.cores[2]!.persisted(version);
  net.flush(2);
  t.deepEqual(reportsTo(2), [{ to: 0, persisted: version }], 'rank 2: to the sender only');
  deliverAll();
  t.is(net.cores[0]!.ready().globalPersistedVersion, version, 'the sender has the global frontier without a tick');
  t.is(net.cores[1]!.ready().globalPersistedVersion, VERSION_NONE, 'rank 1 learns it later');
  net.flush(1);
  t.deepEqual(reportsTo(1), [], 'nothing new for rank 1 to report');
  net.tick();
  for (const r of [0, 1, 2]) net.flush(r);
  t.deepEqual(new Set(reportsTo(0).map((p) => p.to)), new Set([1, 2]), 'the tick: rank 0 reports to everyone');
  deliverAll();
  for (const r of [1, 2]) t.is(net.cores[r]!.ready().globalPersistedVersion, version, `rank ${r} after the tick`);
});

test('caughtUp: false while a received message waits for stability, true once only nulls are left', (t) => {
  const net = new MulticastNet({ seed: 43, memberCount: 2, limits: LIMITS });
  net.send(0, 10);
  net.send(0, 10);
  net.flush(0);
  // Rank 1 gets both messages (positions 0 and 2) and fills its nulls (1 and 3); rank 0's report
  // (contiguous 1) lets it deliver position 0 only.
  for (const p of net.inFlight) if (p.to === 1) net.cores[1]!.receive(decodePacket(p.bytes.slice()));
  net.inFlight = net.inFlight.filter((p) => p.to !== 1);
  net.flush(1);
  t.is(net.delivered[1]!.length, 1);
  t.false(net.cores[1]!.caughtUp, 'the second message waits');
  settle(net);
  t.is(net.delivered[1]!.length, 2);
  t.true(net.cores[1]!.caughtUp && net.cores[0]!.caughtUp);
  // Three members, one message: its receivers' null runs after it wait for the sender's next
  // report (lazy), undelivered, and deliver nothing.
  const three = new MulticastNet({ seed: 44, memberCount: 3, limits: LIMITS });
  three.send(0, 10);
  settle(three);
  t.true(three.delivered.every((list) => list.length === 1));
  const waiting = [1, 2].filter((r) => three.cores[r]!.report().contiguousCount > three.cores[r]!.ready().deliveredCount);
  t.true(waiting.length > 0, 'some null positions wait');
  for (const r of waiting) t.true(three.cores[r]!.caughtUp, `rank ${r}: nulls alone wait`);
});

test('frontiers: global persisted = min over members; time stability waits for undelivered messages', (t) => {
  const net = new MulticastNet({ seed: 9, memberCount: 2, limits: LIMITS });
  net.tick(1000);
  net.send(0, 10);
  const sentAt = net.nowMicros;
  net.tick(5000);
  net.cores[0]!.persisted(7n as Version);
  net.flush(0);
  net.flush(1);
  let ready = net.cores[1]!.ready();
  t.is(ready.globalPersistedVersion, VERSION_NONE, 'rank 1 persisted nothing yet');
  t.true(ready.stabilityFrontierMicros <= sentAt, 'an undelivered message holds the time frontier back');
  settle(net);
  net.cores[1]!.persisted(5n as Version);
  net.tick(10);
  settle(net);
  ready = net.cores[0]!.ready();
  t.is(ready.globalPersistedVersion, 5n as Version);
  t.is(ready.stabilityFrontierMicros, net.nowMicros, 'everything delivered: the frontier is now');
  t.throws(() => net.cores[0]!.send(new Uint8Array(1), { micros: 1, logical: 0 }), { instanceOf: AssertionError });
});

test('computeTrim takes the per-sender minimum; applyTrim refuses a trim above what arrived', (t) => {
  t.deepEqual(computeTrim([[3, 5, 0], [4, 2, 1], [3, 9, 1]]), [3, 2, 0]);
  const net = new MulticastNet({ seed: 10, memberCount: 2, limits: LIMITS });
  net.send(0, 10);
  net.cores[1]!.wedge();
  t.deepEqual(net.cores[1]!.receiveState().receivedCounts, [0, 0]);
  t.throws(() => net.cores[1]!.applyTrim([1, 0]), { instanceOf: AssertionError });
  t.deepEqual(net.cores[1]!.applyTrim([0, 0]).resend, []);
  net.cores[0]!.wedge();
  t.deepEqual(net.cores[0]!.send(new Uint8Array(1), { micros: net.nowMicros, logical: 0 }), {
    accepted: false,
    reason: 'wedged',
  });
  const { resend } = net.cores[0]!.applyTrim([0, 0]);
  t.deepEqual(resend.map((m) => readPayload(m.payload)), [[0, 0]], 'the queued message comes back');
  t.is(net.cores[0]!.ready().packets.length, 0, 'a wedged core sends nothing');
});

test('codec: round trip of every packet kind; malformed input is a typed error', (t) => {
  const packets: Packet[] = [
    {
      kind: 'data', viewId: 3, fromRank: 1,
      report: { receivedCounts: [1, 2], contiguousCount: 3, deliveredCount: 2, persistedVersion: makeVersion(viewId(3), 1), stabilityFrontierMicros: 123456789012345 },
      entries: [
        { kind: 'message', index: 0, timestamp: { micros: 2 ** 50, logical: 4 }, payload: makePayload(1, 0, 30) },
        { kind: 'null', index: 1, count: 17 },
      ],
    },
    { kind: 'data', viewId: 0, fromRank: 0, report: null, entries: [] },
    {
      kind: 'block', viewId: 1, fromRank: 2, senderIndex: 0, index: 5, timestamp: { micros: 9, logical: 0 },
      totalBytes: 1000, block: 3, bytes: new Uint8Array([1, 2, 3]),
    },
  ];
  for (const p of packets) {
    const back = decodePacket(encodePacket(p));
    t.deepEqual(plain(back), plain(p));
  }
  const good = encodePacket(packets[0]!);
  t.throws(() => decodePacket(good.subarray(0, good.length - 5)), { instanceOf: MulticastDecodeError });
  t.throws(() => encodePacket({ ...(packets[1] as DataPacket), fromRank: -1 }), { instanceOf: AssertionError });
  t.throws(() => decodePacket(new Uint8Array([0x93, 9, 9, 9])), { instanceOf: MulticastDecodeError });
  t.throws(() => decodePacket(new Uint8Array(0)), { instanceOf: MulticastDecodeError });
  const corrupt = (at: number, value: number): Uint8Array => {
    const copy = good.slice();
    copy[at] = value;
    return copy;
  };
  t.throws(() => decodePacket(corrupt(1, 6)), { instanceOf: MulticastDecodeError, message: /flags/ });
  t.throws(() => decodePacket(corrupt(8, 200)), { instanceOf: MulticastDecodeError, message: /entries/ });
  t.throws(() => decodePacket(Uint8Array.of(...good, 0)), { instanceOf: MulticastDecodeError, message: /trailing/ });
  const block = encodePacket(packets[2]!);
  t.throws(() => decodePacket(block.subarray(0, 20)), { instanceOf: MulticastDecodeError, message: /truncated/ });
  const badStamp = block.slice();
  new DataView(badStamp.buffer).setFloat64(16, 0.5, true);
  t.throws(() => decodePacket(badStamp), { instanceOf: MulticastDecodeError, message: /micros/ });
});

/** Bytes as arrays (decoded Buffers vs sent Uint8Arrays), everything else as is. */
function plain(value: unknown): unknown {
  if (value instanceof Uint8Array) return Array.from(value);
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

test('a packet from another view or a non-member rank is counted and dropped', (t) => {
  const limits = multicastLimits(LIMITS);
  const members = [nodeId(1), nodeId(2)];
  const core = new MulticastCore({ viewId: viewId(2), members, senders: members, self: nodeId(2), mode: 'ordered', limits });
  core.receive({ kind: 'data', viewId: 1, fromRank: 0, report: null, entries: [{ kind: 'null', index: 0, count: 1 }] });
  core.receive({ kind: 'data', viewId: 2, fromRank: 5, report: null, entries: [] });
  t.is(core.counters.otherViewDropped, 1);
  t.is(core.counters.malformedDropped, 1);
  t.is(core.receivedCount(0), 0);
});

test('edge shapes: empty payloads, a one-member shard, a shard whose only sender is idle', (t) => {
  const limits = multicastLimits(LIMITS);
  const one = [nodeId(4)];
  const solo = new MulticastCore({ viewId: viewId(1), members: one, senders: one, self: nodeId(4), mode: 'ordered', limits });
  solo.send(new Uint8Array(0), { micros: 1, logical: 0 });
  solo.send(new Uint8Array(3000).fill(9), { micros: 1, logical: 1 });
  const ready = solo.ready();
  t.is(ready.packets.length, 0, 'nobody to send to');
  t.deepEqual(ready.deliveries.map((d) => [d.index, d.payload.length, d.large]), [[0, 0, false], [1, 3000, true]]);

  const net = new MulticastNet({
    seed: 12, memberCount: 3, senderRanks: [1], limits: LIMITS, allowEmptyPayloads: true,
  });
  net.cores[1]!.send(new Uint8Array(0), { micros: net.nowMicros, logical: 0 });
  settle(net);
  t.deepEqual(net.delivered.map((list) => list.map((d) => d.payload.length)), [[0], [0], [0]]);
  t.is(net.cores.reduce((n, c) => n + c.counters.nullsSent, 0), 0, 'a lone sender needs no nulls');
});

test('re-sends keep their stamps: the next core queues them before any tick can pass them', (t) => {
  const limits = multicastLimits(LIMITS);
  const members = [nodeId(1), nodeId(2)];
  const make = (view: number, self: number, resend?: ResendMessage[]): MulticastCore =>
    new MulticastCore({ viewId: viewId(view), members, senders: members, self: nodeId(self), mode: 'ordered', limits, resend });
  // View 1: member 1 sends three messages that never reach member 2; the trim cuts them all.
  const old = make(1, 1);
  old.tick(100);
  for (let i = 0; i < 3; i++) old.send(makePayload(0, i, 20), { micros: 200 + i, logical: 0 });
  old.ready();
  old.wedge();
  const { resend } = old.applyTrim([0, 0]);
  t.deepEqual(resend.map((m) => m.timestamp.micros), [200, 201, 202]);

  // The old way (send() after the new core ticked) trips the time-stability assertion...
  const late = make(2, 1);
  late.tick(5000);
  late.ready();
  t.throws(() => late.send(resend[0]!.payload, resend[0]!.timestamp), { instanceOf: AssertionError });

  // ...while carried over at construction they go first, hold the frontier back, and arrive
  // with the stamps they were first sent with.
  const a = make(2, 1, resend);
  const b = make(2, 2);
  a.tick(5000);
  b.tick(5000);
  const delivered: Delivery[] = [];
  for (let round = 0; round < 6; round++) {
    const ra = a.ready();
    const rb = b.ready();
    if (round === 0) t.true(ra.stabilityFrontierMicros <= 200, 'queued re-sends hold the frontier');
    for (const p of ra.packets) b.receive(decodePacket(encodePacket(p.packet)));
    for (const p of rb.packets) a.receive(decodePacket(encodePacket(p.packet)));
    delivered.push(...rb.deliveries);
  }
  t.deepEqual(delivered.map((d) => [readPayload(d.payload)![1], d.timestamp.micros, d.index]), [
    [0, 200, 0], [1, 201, 1], [2, 202, 2],
  ]);
  const demoted = (): MulticastCore => new MulticastCore({
    viewId: viewId(2), members, senders: [nodeId(2)], self: nodeId(1), mode: 'ordered', limits, resend,
  });
  t.throws(demoted, { instanceOf: AssertionError, message: /not a sender/ });
});

test('RDMC repair: a relay that died mid-transfer does not strand the members behind it', (t) => {
  // Chain schedule 0 -> 1 -> 2 -> 3: rank 1 dies before relaying. Without repair, ranks 2 and 3
  // would wait for its blocks until a view change trims the message off and the origin re-sends
  // it in the next view; with it, the origin sends rank 2 the blocks itself after rdmc_repair_ms
  // per block (here 10 ms x 4 blocks) of silence from rank 2's upstream, and rank 2 relays them
  // on to rank 3 as its schedule says.
  const net = new MulticastNet({
    seed: 5, memberCount: 4, senderRanks: [0],
    limits: { ...LIMITS, rdmcAlgorithm: 'chain', rdmcRepairMicros: 10_000 },
  });
  // The clock moves in 10 ms steps, as a driver's ticks do (members report every step).
  const advance = (micros: number): void => {
    for (let done = 0; done < micros; done += 10_000) {
      net.tick(10_000);
      net.drain();
    }
  };
  net.failed.add(1);
  net.tick(10);
  t.true(net.send(0, 3 * 128 + 7));
  net.drain();
  t.deepEqual([2, 3].map((r) => net.cores[r]!.receivedCount(0)), [0, 0], 'stranded behind the dead relay');
  advance(30_000);
  t.deepEqual([2, 3].map((r) => net.cores[r]!.receivedCount(0)), [0, 0], 'no repair before rdmc_repair_ms');
  advance(20_000);
  t.deepEqual([2, 3].map((r) => net.cores[r]!.receivedCount(0)), [1, 1], 'repaired from the origin');
  // Only rank 2, whose upstream (rank 1) went silent. Rank 1's only upstream is the origin
  // itself (resending over the same reliable session adds nothing), and rank 3's upstream
  // (rank 2) kept reporting, so neither is repaired: a busy machine or a slow link must not
  // cost duplicate messages.
  t.is(net.cores[0]!.counters.rdmcRepairs, 1, 'the origin repaired rank 2 only');
  advance(500_000);
  t.is(net.cores[0]!.counters.rdmcRepairs, 1, 'once per member and message');
  // The origin never repairs the dead member (it is rank 1's only upstream). Ranks 2 and 3 do,
  // once each: the origin, idle with its message unfinished, sends nothing for 500 ms, so to
  // them it looks as silent as a dead relay (the driver drops packets to a failed peer; the
  // view change ends it). In a busy shard every member's packets keep coming.
  t.deepEqual([2, 3].map((r) => net.cores[r]!.counters.rdmcRepairs), [1, 1]);
  t.true(net.delivered.every((list) => list.length === 0), 'no delivery: the dead member never received it');
});
