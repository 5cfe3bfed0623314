/**
 * One sender's messages as seen by one member: which indices arrived (contiguously or not) and
 * which are still to be delivered. Nulls are kept as runs, so an idle sender's nulls cost one
 * entry per run, not one per index.
 */
import { assert } from '../core/assert.js';
import type { MessageTimestamp } from './types.js';

export type StoredEntry =
  | {
      readonly kind: 'message';
      readonly index: number;
      readonly timestamp: MessageTimestamp;
      readonly payload: Uint8Array;
      readonly large: boolean;
    }
  | { readonly kind: 'null'; readonly index: number; readonly count: number };

export function entryLength(entry: StoredEntry): number {
  return entry.kind === 'null' ? entry.count : 1;
}

export class SenderStream {
  /** Undelivered entries that arrived, by their first index. */
  private readonly entries = new Map<number, StoredEntry>();
  /** Every index below this has arrived. */
  receivedCount = 0;
  /** Every index below this has been delivered (or skipped, for nulls). */
  deliveredIndexCount = 0;
  /** First index of the entry that holds `deliveredIndexCount`. */
  private cursorStart = 0;

  /**
   * Stores an entry that arrived. Returns false for one already here (a duplicate). A correct
   * sender never sends overlapping entries (peers are authenticated members; a run that overlaps
   * another entry would be a bug in the sender, not an attack to survive).
   */
  insert(entry: StoredEntry): boolean {
    if (entry.index < this.receivedCount || this.entries.has(entry.index)) return false;
    this.entries.set(entry.index, entry);
    for (;;) {
      const next = this.entries.get(this.receivedCount);
      if (next === undefined) break;
      this.receivedCount += entryLength(next);
    }
    return true;
  }

  /** True if index `index` arrived. */
  has(index: number): boolean {
    if (index < this.receivedCount) return true;
    return this.entries.has(index);
  }

  /** Undelivered entries that arrived out of order (for bounds and tests). */
  get bufferedEntryCount(): number {
    return this.entries.size;
  }

  /**
   * Moves the delivery cursor past index `deliveredIndexCount` and returns the entry that holds
   * it (a message, or the null run it falls in). The index must have arrived.
   */
  advance(): StoredEntry {
    const index = this.deliveredIndexCount;
    assert(index < this.receivedCount, `sender stream: index ${index} has not arrived`);
    const entry = this.entries.get(this.cursorStart);
    assert(entry !== undefined, `sender stream: no entry at ${this.cursorStart}`);
    this.deliveredIndexCount = index + 1;
    if (index + 1 === entry.index + entryLength(entry)) {
      this.entries.delete(this.cursorStart);
      this.cursorStart = index + 1;
    }
    return entry;
  }
}
