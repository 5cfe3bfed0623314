// The large-message path's resource rules: blocks wait for a peer in delivery order (BlockQueue),
// delivered or acknowledged entries are let go at once (SenderStream, Fifo), so a member's
// memory follows what is still undelivered rather than the last 1,024 messages; a multi-block
// message is assembled in place as blocks arrive in any order, and relays forward exactly what
// they received.
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BlockQueue } from '../../src/multicast/block-queue.js';
import { SenderStream } from '../../src/multicast/sender-stream.js';
import { Fifo } from '../../src/multicast/fifo.js';
import { RdmcTransferState } from '../../src/multicast/rdmc-transfer.js';
import { MulticastCore } from '../../src/multicast/multicast-core.js';
import { multicastLimits } from '../../src/multicast/config.js';
import { decodePacket, encodePacket } from '../../src/multicast/codec.js';
import { nodeId, viewId } from '../../src/core/ids.js';
import type { BlockPacket } from '../../src/multicast/types.js';

setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/** Waits until a full collection has cleared every weak reference it can (finalizers are async). */
async function collected(refs: WeakRef<object>[]): Promise<number> {
  for (let round = 0; round < 10; round++) {
    collectGarbage();
    await new Promise((resolve) => setImmediate(resolve));
  }
  return refs.filter((r) => r.deref() === undefined).length;
}

interface Block {
  readonly viewId: number;
  readonly block: number;
  readonly name: string;
}

test('block queue: a peer gets blocks in delivery order (view, position, block, arrival), not queue order', (t) => {
  const queue = new BlockQueue<Block>();
  // A sender's own burst of large messages (positions 0, 3, 6, 9, 12 with 3 senders) enters
  // first; a relay of another sender's message at position 4 arrives later and must overtake
  // every own message after it.
  for (let i = 0; i < 5; i++) queue.push({ viewId: 7, block: 0, name: `own ${i * 3}` }, i * 3);
  queue.push({ viewId: 7, block: 1, name: 'relay 4/1' }, 4);
  queue.push({ viewId: 7, block: 0, name: 'relay 4/0' }, 4);
  queue.push({ viewId: 7, block: 0, name: 'relay 4/0 again' }, 4);
  // An old view's leftover goes before anything of the newer view.
  queue.push({ viewId: 6, block: 3, name: 'old view' }, 100);
  t.is(queue.length, 9);
  t.is(queue.peek()!.name, 'old view');
  const order: string[] = [];
  for (let b = queue.pop(); b !== undefined; b = queue.pop()) order.push(b.name);
  t.deepEqual(order, [
    'old view', 'own 0', 'own 3', 'relay 4/0', 'relay 4/0 again', 'relay 4/1', 'own 6', 'own 9', 'own 12',
  ]);
  t.is(queue.length, 0);
  t.is(queue.pop(), undefined);
});

test('block queue: a random mix pops sorted, like a stable sort on (view, position, block)', (t) => {
  let seed = 12345;
  const random = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const queue = new BlockQueue<Block & { position: number; seq: number }>();
  const pushed: (Block & { position: number; seq: number })[] = [];
  const popped: typeof pushed = [];
  for (let i = 0; i < 2000; i++) {
    if (random(3) === 0 && queue.length > 0) {
      popped.push(queue.pop()!);
      continue;
    }
    const item = { viewId: 1 + random(2), block: random(4), name: '', position: random(50), seq: i };
    pushed.push(item);
    queue.push(item, item.position);
  }
  // Between pops the queue must always hand out the minimum of what it holds; check the final
  // drain is sorted and that nothing was lost or duplicated.
  const rest: typeof pushed = [];
  for (let b = queue.pop(); b !== undefined; b = queue.pop()) rest.push(b);
  const key = (b: (typeof pushed)[number]): number[] => [b.viewId, b.position, b.block, b.seq];
  const cmp = (a: (typeof pushed)[number], b: (typeof pushed)[number]): number => {
    const ka = key(a);
    const kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i]! - kb[i]!;
    return 0;
  };
  t.deepEqual(rest, [...rest].sort(cmp));
  t.deepEqual([...popped, ...rest].map((b) => b.seq).sort((a, b) => a - b), pushed.map((b) => b.seq));
});

test('sender stream: a delivered payload is not kept alive until the next compaction', async (t) => {
  const stream = new SenderStream();
  const refs: WeakRef<object>[] = [];
  // In a helper: a suspended async test's frame could itself keep the last payload alive.
  ((): void => {
    for (let index = 0; index < 20; index++) {
      const payload = new Uint8Array(1024);
      refs.push(new WeakRef(payload));
      stream.insert({ kind: 'message', index, timestamp: { micros: index, logical: 0 }, payload, large: true });
    }
    for (let index = 0; index < 20; index++) stream.advance();
  })();
  // Compaction happens only every 1,024 entries: before the fix every one of these was kept.
  t.is(await collected(refs), 20);
  t.is(stream.receivedCount, 20);
});

test('fifo: dropped items are not kept alive until the next compaction', async (t) => {
  const fifo = new Fifo<{ payload: Uint8Array }>();
  const refs: WeakRef<object>[] = [];
  ((): void => {
    for (let i = 0; i < 20; i++) {
      const item = { payload: new Uint8Array(1024) };
      refs.push(new WeakRef(item));
      fifo.push(item);
    }
    fifo.drop(15);
  })();
  t.is(fifo.length, 5);
  t.is(await collected(refs), 15);
  t.is(fifo.at(0) as object | undefined, refs[15]!.deref());
});

test('RDMC reassembly: blocks arriving out of order (and twice) are copied in place; the packets may be reused at once', (t) => {
  const blockBytes = 1000;
  const totalBytes = 4 * blockBytes + 123;
  const payload = new Uint8Array(totalBytes).map((_, i) => (i * 13 + 7) & 0xff);
  const state = new RdmcTransferState(totalBytes, blockBytes, []);
  // A packet buffer the transport (or the driver) reuses after each block: the state must have
  // taken its copy, not a view.
  const packet = new Uint8Array(blockBytes);
  for (const block of [3, 0, 4, 0, 2, 1, 4]) {
    const start = block * blockBytes;
    const bytes = packet.subarray(0, state.blockLength(block));
    bytes.set(payload.subarray(start, start + bytes.length));
    const fresh = !state.hasBlock(block);
    t.is(state.receiveBlock(block, bytes), fresh, `block ${block} ${fresh ? 'stored' : 'dropped as a duplicate'}`);
    packet.fill(0xee);
    // A relay forwards the block from the assembly: the bytes that arrived, not the reused buffer.
    t.deepEqual(state.blockView(block), payload.subarray(start, start + state.blockLength(block)));
  }
  t.true(state.complete);
  t.deepEqual(state.message(), payload);
  t.is(state.message(), state.message(), 'one buffer');
});

test('RDMC reassembly: a message of several blocks is assembled in the buffer its allocator gives (a recycled one, old bytes overwritten)', (t) => {
  const blockBytes = 1000;
  const totalBytes = 2 * blockBytes + 10;
  const payload = new Uint8Array(totalBytes).map((_, i) => (i * 7 + 1) & 0xff);
  const recycled = new Uint8Array(totalBytes).fill(0xee);  // an earlier message's bytes
  const asked: number[] = [];
  const state = new RdmcTransferState(totalBytes, blockBytes, [], undefined, (bytes) => {
    asked.push(bytes);
    return recycled;
  });
  for (const block of [1, 2, 0]) {
    const start = block * blockBytes;
    state.receiveBlock(block, payload.slice(start, start + state.blockLength(block)));
  }
  t.deepEqual(asked, [totalBytes], 'asked once, for the message\'s length, at its first block');
  t.is(state.message(), recycled);
  t.deepEqual(state.message(), payload);
  // A one-block message is its block: no buffer asked for.
  const one = new RdmcTransferState(700, 1000, [], undefined, () => t.fail('allocated') as never);
  t.true(one.receiveBlock(0, new Uint8Array(700)));
  // A buffer of the wrong length is a bug of the allocator, caught at once.
  const wrong = new RdmcTransferState(totalBytes, blockBytes, [], undefined, () => new Uint8Array(5));
  t.throws(() => wrong.receiveBlock(0, payload.slice(0, blockBytes)), { message: /length/ });
});

test('RDMC reassembly: a one-block message is the received block itself (no copy)', (t) => {
  const bytes = new Uint8Array(700).fill(9);
  const state = new RdmcTransferState(700, 1000, []);
  t.true(state.receiveBlock(0, bytes));
  t.is(state.message(), bytes);
  t.is(state.blockView(0).buffer, bytes.buffer, 'relayed from the same memory');
});

test('RDMC relay: a relay forwards exactly the bytes it received, under its own rank, on schedule', (t) => {
  const limits = multicastLimits({ payloadBytesMax: 8192, smcPayloadBytesMax: 100, blockBytes: 1000, rdmcAlgorithm: 'chain' });
  const members = [nodeId(1), nodeId(2), nodeId(3)];
  const cores = members.map((self) => new MulticastCore({ viewId: viewId(1), members, senders: members, self, mode: 'ordered', limits }));
  const payload = new Uint8Array(2500).map((_, i) => (i * 29 + 3) & 0xff);
  t.true(cores[0]!.send(payload, { micros: 1, logical: 0 }).accepted);
  const blocksTo = (rank: number, from: number): BlockPacket[] =>
    cores[from]!.ready().packets
      .filter((p) => p.packet.kind === 'block' && p.to.includes(members[rank]!))
      .map((p) => p.packet as BlockPacket);
  // Chain 0 -> 1 -> 2: the origin sends rank 1 all three blocks.
  const fromOrigin = blocksTo(1, 0);
  t.deepEqual(fromOrigin.map((p) => p.block), [0, 1, 2]);
  // Rank 1 gets them out of order, each decoded from its own wire buffer.
  for (const p of [fromOrigin[2]!, fromOrigin[0]!, fromOrigin[1]!]) cores[1]!.receive(decodePacket(encodePacket(p)));
  const relayed = blocksTo(2, 1);
  t.deepEqual(relayed.map((p) => p.block).sort(), [0, 1, 2]);
  for (const p of relayed) {
    t.is(p.fromRank, 1, 'sent under the relay\'s rank');
    t.is(p.senderIndex, 0, 'for the origin\'s stream');
    t.is(p.totalBytes, payload.length);
    t.deepEqual(p.bytes, payload.subarray(p.block * 1000, Math.min(payload.length, (p.block + 1) * 1000)));
    cores[2]!.receive(decodePacket(encodePacket(p)));
  }
  t.is(cores[2]!.receivedCount(0), 1);
  t.is(cores[1]!.receivedCount(0), 1);
});
