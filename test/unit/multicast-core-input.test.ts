// The ordering core's input checks (src/multicast/multicast-core.ts): a packet that decodes but
// cannot be right for this shard (a peer with a bug, or a peer of another configuration) is
// dropped and counted in `malformedDropped`, changes nothing, and later good packets are taken
// as before: SMC entries from a member that is not a sender, an SMC message above the SMC size,
// a report with the wrong number of senders, and RDMC blocks whose sender, own origin, sizes,
// block number or length do not fit the limits, or whose size disagrees with the transfer under
// way.
import test from 'ava';
import { hlc } from '../../src/core/hlc.js';
import { nodeId, viewId, VERSION_NONE } from '../../src/core/ids.js';
import { multicastLimits, type MulticastLimits } from '../../src/multicast/config.js';
import { MulticastCore } from '../../src/multicast/multicast-core.js';
import type { BlockPacket, DataPacket, ReceiveReport } from '../../src/multicast/types.js';

const LIMITS: Partial<MulticastLimits> = { payloadBytesMax: 4000, smcPayloadBytesMax: 200, blockBytes: 128, windowSize: 4, packetBytesMax: 2048 };
const V = 3;
// Members 1, 2, 3; senders 1 and 2 (sender indexes 0, 1); this core is member 3 (rank 2, not a sender).
const members = [nodeId(1), nodeId(2), nodeId(3)];
const senders = [nodeId(1), nodeId(2)];

function core(): MulticastCore {
  return new MulticastCore({ viewId: viewId(V), members, senders, self: nodeId(3), mode: 'ordered', limits: multicastLimits(LIMITS) });
}

const report = (receivedCounts: number[]): ReceiveReport => ({
  receivedCounts, contiguousCount: 0, deliveredCount: 0, persistedVersion: VERSION_NONE, stabilityFrontierMicros: 0,
});
const data = (fromRank: number, entries: DataPacket['entries'], r: ReceiveReport | null = null): DataPacket =>
  ({ kind: 'data', viewId: V, fromRank, report: r, entries });
const message = (index: number, bytes: number): DataPacket['entries'][number] =>
  ({ kind: 'message', index, timestamp: hlc(1_000 + index, 0), payload: new Uint8Array(bytes) });
const block = (fields: Partial<BlockPacket>): BlockPacket => ({
  kind: 'block', viewId: V, fromRank: 0, senderIndex: 0, index: 0, timestamp: hlc(2_000, 0), totalBytes: 300, block: 0,
  bytes: new Uint8Array(128), ...fields,
});

test('SMC input that cannot be right is dropped and counted; good input after it is taken', (t) => {
  const c = core();
  // Entries from a member that is not a sender: a core of a shard whose only sender is member 2.
  const nonSender = new MulticastCore({ viewId: viewId(V), members, senders: [nodeId(2)], self: nodeId(3), mode: 'ordered', limits: multicastLimits(LIMITS) });
  nonSender.receive(data(0, [message(0, 10)]));
  t.is(nonSender.counters.malformedDropped, 1, 'entries from a member that is not a sender');
  t.is(nonSender.receivedCount(0), 0);

  c.receive(data(0, [message(0, 201)]));
  t.is(c.counters.malformedDropped, 1, 'an SMC message above smcPayloadBytesMax');
  t.is(c.receivedCount(0), 0);
  c.receive(data(1, [], report([1, 2, 3])));
  t.is(c.counters.malformedDropped, 2, 'a report with three senders in a shard of two');

  c.receive(data(0, [message(0, 200)], report([1, 0])));
  t.is(c.counters.malformedDropped, 2);
  t.is(c.receivedCount(0), 1, 'a good message after the bad ones is received');
});

test('RDMC blocks that do not fit the limits or the transfer under way are dropped and counted', (t) => {
  const c = core();
  const bad: [string, Partial<BlockPacket>][] = [
    ['a sender index past the senders', { senderIndex: 2 }],
    ['a size an SMC message would carry', { totalBytes: 200, bytes: new Uint8Array(128) }],
    ['a size above payloadBytesMax', { totalBytes: 4001 }],
    ['a block number past the message', { block: 3 }],
    ['a block shorter than its place', { bytes: new Uint8Array(100) }],
    ['a last block longer than the rest of the message', { block: 2, bytes: new Uint8Array(128) }],
  ];
  bad.forEach(([what, fields], i) => {
    c.receive(block(fields));
    t.is(c.counters.malformedDropped, i + 1, what);
  });
  // A transfer under way (block 0 of a 300-byte message), then a block claiming another size.
  c.receive(block({}));
  t.is(c.counters.malformedDropped, bad.length);
  c.receive(block({ block: 1, totalBytes: 400 }));
  t.is(c.counters.malformedDropped, bad.length + 1, 'a size that disagrees with the transfer under way');
  // The rest of the real message completes it.
  c.receive(block({ block: 1 }));
  c.receive(block({ block: 2, bytes: new Uint8Array(300 - 256) }));
  t.is(c.counters.malformedDropped, bad.length + 1);
  t.is(c.receivedCount(0), 1, 'the well-formed transfer completed');

  // A block whose origin is this member: a sender core (member 2, sender index 1) gets its own
  // message's block back.
  const sender = new MulticastCore({ viewId: viewId(V), members, senders, self: nodeId(2), mode: 'ordered', limits: multicastLimits(LIMITS) });
  sender.receive(block({ senderIndex: 1 }));
  t.is(sender.counters.malformedDropped, 1, 'a block of this member\'s own message');
});
