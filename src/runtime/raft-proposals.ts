/**
 * The proposals a RaftDriver waits on, by log index: a queue in index order instead of a Map.
 *
 * A leader's proposals get increasing indexes and are applied in index order, so on every
 * commit one is added at the back and one taken from the front. In a Map each of those was a
 * set of a new key and a delete, and the deletes left the table to be rehashed (a new table,
 * allocated) every few dozen commits: in the raft bench's heap profile the Map's deletes were
 * ~3 % of all the leader allocated. Here the common case is an array push and a move of the
 * front of a ring (doubled when full).
 *
 * Same contract as the Map it replaces: `set` of a waiter at an index already waiting replaces it
 * (a leader that lost and regained leadership may propose at an index again), an index lower
 * than the back's is inserted in order (rare: the same case), `take(index)` removes and returns
 * the waiter at exactly that index, and `takeUpTo` / `takeAll` remove those at or below an
 * index (a snapshot installed over them) or all (close), in index order.
 */
/** What waits: anything with the log index it waits for. */
export interface AtIndex {
  readonly index: number;
}

export class ProposalQueue<T extends AtIndex> {
  /** A ring: the waiters in index order from `head`, `count` of them; the length is a power of two. */
  private slots: (T | undefined)[] = new Array<T | undefined>(16).fill(undefined);
  private head = 0;
  private count = 0;

  get size(): number {
    return this.count;
  }

  set(waiter: T): void {
    const index = waiter.index;
    if (this.count === 0 || this.at(this.count - 1).index < index) {
      if (this.count === this.slots.length) this.rebuild(this.inOrder(), 2 * this.slots.length);
      this.slots[(this.head + this.count) & (this.slots.length - 1)] = waiter;
      this.count++;
      return;
    }
    // Not after the back (rare): replace the waiter at `index`, or insert it in order.
    const all = this.inOrder();
    let i = all.length - 1;
    while (i >= 0 && all[i]!.index > index) i--;
    if (i >= 0 && all[i]!.index === index) all[i] = waiter;
    else all.splice(i + 1, 0, waiter);
    this.rebuild(all, this.slots.length);
  }

  /** Removes and returns the waiter at `index`, or undefined. */
  take(index: number): T | undefined {
    if (this.count === 0) return undefined;
    const front = this.at(0);
    if (front.index === index) {
      this.dropFront();
      return front;
    }
    if (front.index > index) return undefined;
    // Behind the front (only if an index was skipped, which applying in order does not do): search.
    const all = this.inOrder();
    const i = all.findIndex((p) => p.index === index);
    if (i < 0) return undefined;
    const [p] = all.splice(i, 1);
    this.rebuild(all, this.slots.length);
    return p;
  }

  /** Removes and returns, in index order, the waiters at or below `index`. */
  takeUpTo(index: number): T[] {
    const taken: T[] = [];
    while (this.count > 0 && this.at(0).index <= index) {
      taken.push(this.at(0));
      this.dropFront();
    }
    return taken;
  }

  /** Removes and returns every waiter, in index order. */
  takeAll(): T[] {
    const all = this.inOrder();
    this.rebuild([], this.slots.length);
    return all;
  }

  private at(i: number): T {
    return this.slots[(this.head + i) & (this.slots.length - 1)]!;
  }

  private dropFront(): void {
    this.slots[this.head] = undefined; // no reference kept to a settled waiter
    this.head = (this.head + 1) & (this.slots.length - 1);
    this.count--;
  }

  private inOrder(): T[] {
    const all: T[] = [];
    for (let i = 0; i < this.count; i++) all.push(this.at(i));
    return all;
  }

  private rebuild(all: readonly T[], capacity: number): void {
    let size = capacity;
    while (size < all.length) size *= 2;
    this.slots = new Array<T | undefined>(size).fill(undefined);
    for (let i = 0; i < all.length; i++) this.slots[i] = all[i];
    this.head = 0;
    this.count = all.length;
  }
}
