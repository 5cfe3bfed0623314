/**
 * A first-in first-out queue over an array with a moving head: `drop(n)` is O(1) amortized where
 * `Array.prototype.splice(0, n)` shifts everything left (the send queue and the window hold
 * thousands of messages and lose a few at every ready()).
 */
export class Fifo<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  /** The item `i` places from the front (undefined past the end). */
  at(i: number): T | undefined {
    return this.items[this.head + i];
  }

  /** Removes the first `count` items. */
  drop(count: number): void {
    // Dropped slots are cleared at once, so their items (payloads of up to a large message) can
    // be collected before the next compaction.
    const end = this.head + Math.min(count, this.length);
    for (let i = this.head; i < end; i++) this.items[i] = undefined as T;
    this.head = end;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i]!;
  }
}
