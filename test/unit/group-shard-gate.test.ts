// Proves the ShardGate holds multicast frames of a shard until its driver exists and then hands
// them over in arrival order, passes frames of open shards straight through, leaves other request
// types to the endpoint, and bounds what it holds. Without it, a frame that arrives before the
// local driver is created is acknowledged by the transport and lost (the start-up stall this
// gate fixed: members create their drivers at different moments).
import test from 'ava';
import { ShardGate } from '../../src/group/shard-gate.js';
import type { RequestHandler, Transport } from '../../src/transport/transport.js';

function fakeTransport() {
  const handlers = new Map<number, RequestHandler>();
  const transport: Transport = {
    address: '127.0.0.1:1',
    handle: (type, handler) => void handlers.set(type, handler),
    connect: () => Promise.reject(new Error('unused')),
    stats: () => ({}),
    close: () => Promise.resolve(),
  };
  return { transport, handlers };
}

function frame(shard: number, tag: number): Uint8Array {
  const bytes = new Uint8Array(5);
  new DataView(bytes.buffer).setUint32(0, shard, true);
  bytes[4] = tag;
  return bytes;
}

const context = { peer: '127.0.0.1:2', sessionId: 1 };

test('frames wait for their shard to open, then arrive in order; open shards pass through', (t) => {
  const { transport, handlers } = fakeTransport();
  const gate = new ShardGate(transport, 48);
  const seen: string[] = [];
  const deliver = handlers.get(48)!;
  void deliver(frame(7, 1), context); // before the driver registered its handler at all
  gate.handle(48, (f) => {
    seen.push(`${new DataView(f.buffer, f.byteOffset).getUint32(0, true)}:${f[4]}`);
    return new Uint8Array(0);
  });
  void deliver(frame(7, 2), context);
  void deliver(frame(9, 1), context);
  t.deepEqual(seen, []);
  t.is(gate.heldFrames, 3);
  gate.openShard(7);
  t.deepEqual(seen, ['7:1', '7:2']);
  void deliver(frame(7, 3), context);
  t.deepEqual(seen, ['7:1', '7:2', '7:3']);
  gate.openShard(9);
  t.deepEqual(seen, ['7:1', '7:2', '7:3', '9:1']);
  // Other request types go to the endpoint itself.
  gate.handle(60, () => new Uint8Array([1]));
  t.true(handlers.has(60));
});

test('held frames are bounded; beyond the bound they are dropped and counted', (t) => {
  const { transport, handlers } = fakeTransport();
  const gate = new ShardGate(transport, 48, 2);
  for (let i = 0; i < 5; i++) void handlers.get(48)!(frame(1, i), context);
  t.is(gate.heldFrames, 2);
  t.is(gate.droppedFrames, 3);
});
