/**
 * Where a Raft node keeps what must survive a crash (Raft Figure 2: currentTerm, votedFor, log[],
 * plus the commit index and the latest snapshot). Three small interfaces in hashicorp/raft's
 * spirit, one object implements them all, and `flush()` is the single durability point:
 *
 *   - Writes (append, truncateFrom, compactTo, setHardState, saveSnapshot) are buffered in order
 *     and take effect together at the next flush(): one atomic batch (one LMDB transaction), so a
 *     crash keeps a Ready's writes all or none.
 *   - flush() resolves only when the batch is durable (fsync'd) if the store was opened durable.
 *     The driver calls it once per Ready and sends that Ready's messages only afterwards
 *     (persist before send). Several Readies' worth of proposals share one flush, because the core
 *     accumulates while a flush is in flight.
 *   - Reads (load*) are for start-up only: the core keeps its own in-memory copy of the log.
 *
 * Errors: a failed flush rejects; the driver must then stop the node (Raft cannot continue with
 * an unknown disk state). Methods are not re-entrant across an unresolved flush() except that
 * writes may be buffered for the next flush.
 */
import type { RaftInitialState } from './raft-core.js';
import {
  EMPTY_CONF, withConfChanges, type ConfState, type Entry, type HardState, type Ready, type Snapshot,
} from './types.js';

export interface LogStore {
  /** Buffers entries to append; entries[0].index must be ≤ the last index + 1 (earlier ones are overwritten). */
  append(entries: readonly Entry[]): void;
  /** Buffers deletion of every entry with index ≥ index. */
  truncateFrom(index: number): void;
  /** Buffers deletion of every entry with index ≤ index (they are in a snapshot). */
  compactTo(index: number): void;
  /** All stored entries with index > after, in order. */
  loadEntries(after: number): Promise<Entry[]>;
}

export interface StableStore {
  setHardState(hs: HardState): void;
  loadHardState(): Promise<HardState | undefined>;
}

export interface SnapshotStore {
  /** Buffers replacing the stored snapshot (only the latest one is kept). */
  saveSnapshot(snapshot: Snapshot): void;
  loadSnapshot(): Promise<Snapshot | undefined>;
}

export interface RaftStorage extends LogStore, StableStore, SnapshotStore {
  /**
   * Makes every buffered write durable, atomically. Resolves when durable. Several flushes may
   * be in flight at once; they become durable, and resolve, in the order they were called.
   * Returns undefined instead if every write was durable before it returned (a flush that costs
   * only CPU: MemoryStorage, LMDB without fsync), and then throws on failure: the driver goes
   * on in the same turn (a follower sends its ack at once, then applies) instead of awaiting.
   */
  flush(): Promise<void> | undefined;
  /**
   * True if a flush waits on the disk (fsync) for long enough that a leader should not hold its
   * next appends behind it: the driver then lets a leader's own log writes overlap with
   * replication and with each other (Ready.persistAsync). False or absent: flush() costs only
   * CPU (MemoryStorage, LMDB without fsync) and the driver awaits each one.
   */
  readonly slowFlush?: boolean;
  close(): Promise<void>;
}

/** Whether a Ready has anything to persist (if not, its messages may go out at once). */
export function readyNeedsPersist(rd: Ready): boolean {
  return rd.hardState !== undefined || rd.snapshot !== undefined || rd.compacted !== undefined || rd.entries.length > 0;
}

/**
 * Buffers one Ready's durable part into storage in the order that keeps it consistent (snapshot,
 * then log, then hard state). The caller then flushes (and awaits a returned promise) before
 * sending. With `withHardState` false, rd.hardState is left for the caller to write later.
 */
export function bufferReady(storage: RaftStorage, rd: Ready, withHardState = true): void {
  if (rd.snapshot) {
    // An installed snapshot replaces the whole log.
    storage.saveSnapshot(rd.snapshot);
    storage.truncateFrom(0);
  }
  if (rd.compacted) {
    storage.saveSnapshot(rd.compacted);
    storage.compactTo(rd.compacted.meta.index);
  }
  if (rd.entries.length) {
    storage.truncateFrom(rd.entries[0]!.index);
    storage.append(rd.entries);
  }
  if (withHardState && rd.hardState) storage.setHardState(rd.hardState);
}

/** Reads what RaftCore's constructor needs. */
export async function loadInitialState(storage: RaftStorage): Promise<RaftInitialState> {
  const hardState = (await storage.loadHardState()) ?? { term: 0, vote: 0, commit: 0 };
  const snapshot = await storage.loadSnapshot();
  const entries = await storage.loadEntries(snapshot?.meta.index ?? 0);
  return { hardState, snapshot, entries };
}

/**
 * The configuration a persisted log holds: its snapshot's, then each conf change entry after it
 * in order (the one RaftCore starts with; committed or not, as a candidate counts its votes by
 * it). A total restart reads it to know whose votes a raft shard's election needs.
 */
export function persistedConf(state: RaftInitialState): ConfState {
  return withConfChanges(state.snapshot?.meta.conf ?? EMPTY_CONF, state.entries);
}

/** A write queued until flush(), in the order the driver made it. */
export type StorageOp =
  | { kind: 'append'; entries: readonly Entry[] }
  | { kind: 'truncate'; index: number }
  | { kind: 'compact'; index: number }
  | { kind: 'hs'; hs: HardState }
  | { kind: 'snap'; snapshot: Snapshot };

/**
 * The write half every storage shares: the five write calls only queue, and flush() takes the
 * queue (`takeOps`) and makes it durable in one batch.
 */
export abstract class QueuedStorage {
  private ops: StorageOp[] = [];

  append(entries: readonly Entry[]): void {
    this.ops.push({ kind: 'append', entries });
  }
  truncateFrom(index: number): void {
    this.ops.push({ kind: 'truncate', index });
  }
  compactTo(index: number): void {
    this.ops.push({ kind: 'compact', index });
  }
  setHardState(hs: HardState): void {
    this.ops.push({ kind: 'hs', hs });
  }
  saveSnapshot(snapshot: Snapshot): void {
    this.ops.push({ kind: 'snap', snapshot });
  }

  /** The writes queued since the last call, oldest first; the queue is left empty. */
  protected takeOps(): StorageOp[] {
    const ops = this.ops;
    this.ops = [];
    return ops;
  }
}

/** The in-memory implementation: for tests, the simulator-free driver tests and benchmarks. */
export class MemoryStorage extends QueuedStorage implements RaftStorage {
  private log = new Map<number, Entry>();
  private hs: HardState | undefined;
  private snap: Snapshot | undefined;
  /** Highest index stored (0 when empty): no key above it. */
  private lastIndex = 0;
  readonly stats = { flushes: 0 };

  /** Synchronous: returns undefined (see RaftStorage.flush). */
  flush(): Promise<void> | undefined {
    const ops = this.takeOps();
    this.stats.flushes++;
    for (const op of ops) {
      switch (op.kind) {
        case 'append':
          for (const e of op.entries) {
            this.log.set(e.index, e);
            if (e.index > this.lastIndex) this.lastIndex = e.index;
          }
          break;
        case 'truncate':
          // Appends truncate from their first index; skip the scan when nothing is there.
          if (op.index > this.lastIndex) break;
          for (const i of [...this.log.keys()]) if (i >= op.index) this.log.delete(i);
          this.lastIndex = Math.max(0, op.index - 1);
          break;
        case 'compact':
          for (const i of [...this.log.keys()]) if (i <= op.index) this.log.delete(i);
          break;
        case 'hs':
          this.hs = op.hs;
          break;
        case 'snap':
          this.snap = op.snapshot;
          break;
      }
    }
    return undefined;
  }

  async loadEntries(after: number): Promise<Entry[]> {
    return this.entriesAfter(after);
  }
  private entriesAfter(after: number): Entry[] {
    return [...this.log.keys()].filter((i) => i > after).sort((a, b) => a - b).map((i) => this.log.get(i)!);
  }
  /** Everything flushed, read synchronously: the snapshot, the hard state, the entries after the snapshot. */
  contents(): { snapshot: Snapshot | undefined; hardState: HardState | undefined; entries: Entry[] } {
    return { snapshot: this.snap, hardState: this.hs, entries: this.entriesAfter(this.snap?.meta.index ?? 0) };
  }
  async loadHardState(): Promise<HardState | undefined> {
    return this.hs;
  }
  async loadSnapshot(): Promise<Snapshot | undefined> {
    return this.snap;
  }
  async close(): Promise<void> {}
}
