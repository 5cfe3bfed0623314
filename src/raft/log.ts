/**
 * The core's in-memory view of its log: a snapshot boundary (snapIndex, snapTerm) followed by
 * the entries after it. The core owns this copy; storage is written through Ready and read only
 * at start-up. Compaction (snapshots) is what bounds its memory.
 */
import { assert } from '../core/assert.js';
import type { Entry } from './types.js';

export class RaftLog {
  snapIndex: number;
  snapTerm: number;
  private entries: Entry[];

  constructor(snapIndex: number, snapTerm: number, entries: readonly Entry[]) {
    this.snapIndex = snapIndex;
    this.snapTerm = snapTerm;
    this.entries = [...entries];
    for (let i = 0; i < this.entries.length; i++) {
      assert(this.entries[i]!.index === snapIndex + 1 + i, 'log entries must be contiguous after the snapshot');
    }
  }

  firstIndex(): number {
    return this.snapIndex + 1;
  }
  lastIndex(): number {
    return this.snapIndex + this.entries.length;
  }
  lastTerm(): number {
    return this.entries.length ? this.entries[this.entries.length - 1]!.term : this.snapTerm;
  }

  /** The term at index, or undefined if it is compacted away (below snapIndex) or beyond the end. */
  term(index: number): number | undefined {
    if (index === this.snapIndex) return this.snapTerm;
    if (index < this.snapIndex || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapIndex - 1]!.term;
  }

  entry(index: number): Entry | undefined {
    if (index <= this.snapIndex || index > this.lastIndex()) return undefined;
    return this.entries[index - this.snapIndex - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Raft §5.4.1: a candidate's log is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const myTerm = this.lastTerm();
    return lastTerm > myTerm || (lastTerm === myTerm && lastIndex >= this.lastIndex());
  }

  /** Entries in [lo, hi), bounded by count and total data bytes (at least one if any). */
  slice(lo: number, hi: number, countMax = Infinity, bytesMax = Infinity): Entry[] {
    // (The message is built only on failure: slice and append run several times per commit.)
    if (lo <= this.snapIndex) assert(false, `slice(${lo}) below the snapshot at ${this.snapIndex}`);
    const from = lo - this.snapIndex - 1;
    let to = Math.min(hi, this.lastIndex() + 1, lo + countMax) - this.snapIndex - 1;
    if (bytesMax !== Infinity) {
      let bytes = 0;
      for (let i = from; i < to; i++) {
        bytes += this.entries[i]!.data.length + 24;
        if (i > from && bytes > bytesMax) to = i;
      }
    }
    // Array slice() sizes the copy exactly; pushing onto [] reserved room for 17 entries, most
    // of a leader's allocation per commit (a Ready's entries and committed, each append's).
    return to > from ? this.entries.slice(from, to) : [];
  }

  /** Appends, truncating any existing suffix from entries[0].index (which must be ≤ last+1). */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    if (first <= this.snapIndex || first > this.lastIndex() + 1) assert(false, `append at ${first} leaves a gap`);
    // Truncate only when something is overwritten: a store to an array's length is a runtime
    // call even when it changes nothing (~1 % of a follower's samples per commit in the raft bench).
    const keep = first - this.snapIndex - 1;
    if (keep < this.entries.length) this.entries.length = keep;
    for (const e of entries) this.entries.push(e);
  }

  /** The first index of the term that `index` has, scanning back (for fast backtracking). */
  firstIndexOfTerm(index: number): number {
    const term = this.term(index);
    let i = index;
    while (i - 1 > this.snapIndex && this.term(i - 1) === term) i--;
    return i;
  }

  /** The last index ≤ upTo whose term is ≤ term, or snapIndex if none (leader side of backtracking). */
  lastIndexWithTermAtMost(upTo: number, term: number): number {
    let i = Math.min(upTo, this.lastIndex());
    while (i > this.snapIndex && this.term(i)! > term) i--;
    return i;
  }

  /** Drops entries up to and including index (they are in a snapshot now). */
  compact(index: number, term: number): void {
    assert(index > this.snapIndex && index <= this.lastIndex(), `compact(${index}) out of range`);
    this.entries = this.entries.slice(index - this.snapIndex);
    this.snapIndex = index;
    this.snapTerm = term;
  }

  /** Replaces everything with a snapshot boundary (after installing a leader's snapshot). */
  restore(index: number, term: number): void {
    this.entries = [];
    this.snapIndex = index;
    this.snapTerm = term;
  }
}
