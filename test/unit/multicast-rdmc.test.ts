// The large-message path's resource rules: blocks wait for a peer in delivery order (BlockQueue),
// and delivered or acknowledged entries are let go at once (SenderStream, Fifo), so a member's
// memory follows what is still undelivered rather than the last 1,024 messages.
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BlockQueue } from '../../src/multicast/block-queue.js';
import { SenderStream } from '../../src/multicast/sender-stream.js';
import { Fifo } from '../../src/multicast/fifo.js';

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
