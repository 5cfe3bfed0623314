/**
 * One sender's messages as seen by one member: which indices arrived (contiguously or not) and
 * which are still to be delivered. Nulls are kept as runs, so an idle sender's nulls cost one
 * entry per run, not one per index.
 *
 * The common case (entries arriving in order) touches only an array queue; entries that arrive
 * ahead of a gap wait in a map until the gap fills.
 */
import { assert } from '../core/assert.js';
import type { MessageTimestamp } from './types.js';

export type StoredEntry =
  | {
      readonly kind: 'message';
      readonly index: number;
      readonly timestamp: MessageTimestamp;
      readonly payload: Uint8Array;
      /** True if it came (or goes) by RDMC. */
      readonly large?: boolean;
    }
  | { readonly kind: 'null'; readonly index: number; readonly count: number };

export function entryLength(entry: StoredEntry): number {
  return entry.kind === 'null' ? entry.count : 1;
}

export class SenderStream {
  /** Entries that arrived contiguously and are not fully delivered, in index order. */
  private queue: StoredEntry[] = [];
  private queueHead = 0;
  /** Entries that arrived beyond a gap, by their first index. */
  private readonly ahead = new Map<number, StoredEntry>();
  /** Every index below this has arrived. */
  receivedCount = 0;
  /** Every index below this has been delivered (or skipped, for nulls). */
  deliveredIndexCount = 0;

  /**
   * Stores an entry that arrived. Returns false for one already here (a duplicate). A correct
   * sender never sends overlapping entries (peers are authenticated members; a run that overlaps
   * another entry would be a bug in the sender, not an attack to survive).
   */
  insert(entry: StoredEntry): boolean {
    if (entry.index < this.receivedCount) return false;
    if (entry.index > this.receivedCount) {
      if (this.ahead.has(entry.index)) return false;
      this.ahead.set(entry.index, entry);
      return true;
    }
    this.append(entry);
    while (this.ahead.size > 0) {
      const next = this.ahead.get(this.receivedCount);
      if (next === undefined) break;
      this.ahead.delete(this.receivedCount);
      this.append(next);
    }
    return true;
  }

  private append(entry: StoredEntry): void {
    this.queue.push(entry);
    this.receivedCount += entryLength(entry);
  }

  /** True if index `index` arrived. */
  has(index: number): boolean {
    return index < this.receivedCount || this.ahead.has(index);
  }

  /**
   * True if a message (not a null) arrived contiguously at an index in [from, to) that is not
   * delivered yet here (`to` at most receivedCount). Walks the undelivered entries from the
   * oldest, so it costs the entries before `to`: few, between the delivered and contiguous counts.
   */
  hasUndeliveredMessageIn(from: number, to: number): boolean {
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const entry = this.queue[i]!;
      if (entry.index >= to) return false;
      if (entry.kind === 'message' && entry.index >= from) return true;
    }
    return false;
  }

  /** Entries that arrived ahead of a gap (for bounds and tests). */
  get bufferedEntryCount(): number {
    return this.ahead.size;
  }

  /**
   * Moves the delivery cursor past index `deliveredIndexCount` and returns the entry that holds
   * it (a message, or the null run it falls in). The index must have arrived.
   */
  advance(): StoredEntry {
    const index = this.deliveredIndexCount;
    // (Constant messages: a template literal would be built on every delivery.)
    assert(index < this.receivedCount, 'sender stream: the next index has not arrived');
    const entry = this.queue[this.queueHead];
    assert(entry !== undefined && entry.index <= index, 'sender stream: no entry holds the index');
    this.deliveredIndexCount = index + 1;
    if (index + 1 === entry.index + entryLength(entry)) {
      // Let go of the entry at once: a delivered payload (up to a whole RDMC message) must not
      // stay reachable until the next compaction, 1,024 entries later.
      this.queue[this.queueHead] = undefined as unknown as StoredEntry;
      this.queueHead++;
      // Compact now and then, so the queue's memory follows what is undelivered.
      if (this.queueHead >= 1024 && this.queueHead * 2 >= this.queue.length) {
        this.queue = this.queue.slice(this.queueHead);
        this.queueHead = 0;
      }
    }
    return entry;
  }
}
