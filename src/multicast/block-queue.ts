/**
 * The RDMC blocks waiting to go to one peer, in delivery order: oldest view first, then lowest
 * position (a message's place in the view's round-robin total order, `index × senders +
 * senderIndex`, given by the caller), then lowest block, then arrival. A pure data structure
 * (a binary heap); the driver keeps one per peer.
 *
 * Why not first-in first-out: a sender's whole window of large messages enters the queue at once
 * when it starts them, so relays of other senders' messages that arrive a moment later waited
 * behind every one of them. No member can deliver position p before it holds p's message, so
 * the peer sat on everything else it received (the 1 MiB benchmark held ~300 MiB per member),
 * stability stalled, and a stuck-looking stream triggered RDMC repairs that resent whole
 * messages. In position order each link carries what the receivers need next.
 */

/** What the queue needs of a block packet (BlockPacket has these fields). */
export interface QueuedBlock {
  readonly viewId: number;
  readonly block: number;
}

interface Slot<T> {
  readonly viewId: number;
  readonly position: number;
  readonly block: number;
  readonly seq: number;
  readonly item: T;
}

export class BlockQueue<T extends QueuedBlock> {
  private readonly heap: Slot<T>[] = [];
  private seq = 0;

  get length(): number {
    return this.heap.length;
  }

  /** Queues `item`, the block of the message at `position` in its view's total order. */
  push(item: T, position: number): void {
    const slot = {
      viewId: item.viewId,
      position,
      block: item.block,
      seq: this.seq++,
      item,
    };
    const heap = this.heap;
    heap.push(slot);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(slot, heap[parent]!)) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = slot;
  }

  /** The first block in delivery order, or undefined. */
  peek(): T | undefined {
    return this.heap[0]?.item;
  }

  /** Removes and returns the first block in delivery order, or undefined. */
  pop(): T | undefined {
    const heap = this.heap;
    const top = heap[0];
    if (top === undefined) return undefined;
    const last = heap.pop()!;
    if (heap.length > 0) {
      let i = 0;
      const n = heap.length;
      for (;;) {
        const left = 2 * i + 1;
        if (left >= n) break;
        const right = left + 1;
        const child = right < n && before(heap[right]!, heap[left]!) ? right : left;
        if (!before(heap[child]!, last)) break;
        heap[i] = heap[child]!;
        i = child;
      }
      heap[i] = last;
    }
    return top.item;
  }
}

function before<T>(a: Slot<T>, b: Slot<T>): boolean {
  if (a.viewId !== b.viewId) return a.viewId < b.viewId;
  if (a.position !== b.position) return a.position < b.position;
  if (a.block !== b.block) return a.block < b.block;
  return a.seq < b.seq;
}
