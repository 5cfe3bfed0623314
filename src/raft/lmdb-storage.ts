/**
 * RaftStorage on LMDB (lmdb-js). One environment, three named databases: `entries` (the log keyed
 * by index, ordered), `state` (`hs`: the hard state) and `meta` (`snap`: the latest snapshot).
 * Each flush() is one LMDB write transaction, so a Ready's writes land all or none (LMDB never
 * tears a transaction).
 *
 * Format (version 2): an entry is stored as raw bytes, `u8 type | f64 term | data`, and the hard
 * state as `f64 term | f64 vote | f64 commit`. Version 1 stored both as msgpack maps (in `log`
 * and `meta`), which cost about 1.5 µs of the ~5 µs CPU of a one-entry commit (msgpack encoding
 * of the entry and of the hard state); a store in version 1 is moved to version 2 when opened
 * (one transaction, see migrate()). The snapshot stays msgpack (rare, and large data dominates).
 *
 * Durability: lmdb-js resolves a transaction's promise when it is committed, which is not yet on
 * disk. With `durable: true` (the default) flush() also awaits `db.flushed`, which resolves after
 * the fsync; lmdb-js groups concurrent commits into one fsync. With `durable: false` the env is
 * opened with noSync (and a writable map): a process crash keeps committed data (it is in the OS
 * page cache) but a machine crash may lose the tail — benchmarks only, or with a replicated
 * quorum that tolerates it.
 */
import { open, type Database, type RootDatabase } from 'lmdb';
import type { Entry, HardState, Snapshot, SnapshotMeta } from './types.js';
import { QueuedStorage, type RaftStorage, type StorageOp } from './storage.js';

/** Version 1's entry value (msgpack), read only to migrate an old store. */
interface StoredEntryV1 {
  t: number;
  y: number;
  d: Uint8Array;
}

const ENTRY_HEADER_BYTES = 9; // u8 type | f64 term
const HARD_STATE_BYTES = 24; // f64 term | f64 vote | f64 commit

export interface LmdbStorageOptions {
  path: string;
  /** fsync every flush (default true). */
  durable?: boolean;
}

export class LmdbStorage extends QueuedStorage implements RaftStorage {
  private readonly root: RootDatabase;
  private readonly log: Database<Uint8Array, number>;
  private readonly state: Database<Uint8Array, string>;
  private readonly meta: Database<unknown, string>;
  private readonly durable: boolean;
  /** With fsync, a flush waits on the disk: the driver overlaps a leader's writes (storage.ts). */
  readonly slowFlush: boolean;
  /** The latest durable flush (fsync'd stores only). */
  private lastFlush: Promise<void> = Promise.resolve();
  /** Highest index written so far (for truncation ranges). */
  private lastIndex = -1;

  constructor(options: LmdbStorageOptions) {
    super();
    this.durable = options.durable ?? true;
    this.slowFlush = this.durable;
    this.root = open({
      path: options.path,
      noSync: !this.durable,
      compression: false,
      // Without fsync, commit with a writable map (LMDB's MDB_WRITEMAP): a commit writes pages
      // in place instead of one pwrite per page, about half the cost of a one-entry commit
      // here (~10 µs instead of ~20), and there are three on every commit's path. It trades
      // LMDB's protection against stray writes into the map for speed; lmdb-js never hands out
      // a writable view. Durable mode keeps the default (msync of a writable map is slower).
      useWritemap: !this.durable,
    });
    this.log = this.root.openDB<Uint8Array, number>({ name: 'entries', keyEncoding: 'ordered-binary', encoding: 'binary' });
    this.state = this.root.openDB<Uint8Array, string>({ name: 'state', encoding: 'binary' });
    this.meta = this.root.openDB<unknown, string>({ name: 'meta' });
    this.migrate();
  }

  /**
   * Moves a version-1 store (msgpack values in `log`, hard state in `meta`) to version 2, in one
   * transaction: a crash midway leaves version 1 intact, to be migrated at the next open.
   */
  private migrate(): void {
    const oldHs = this.meta.get('hs') as HardState | undefined;
    if (oldHs === undefined) return;
    const old = this.root.openDB<StoredEntryV1, number>({ name: 'log', keyEncoding: 'ordered-binary' });
    this.root.transactionSync(() => {
      for (const { key, value } of old.getRange({})) {
        this.log.put(key, encodeEntry({ index: key, term: value.t, type: value.y as Entry['type'], data: value.d }));
        old.remove(key);
      }
      this.state.put('hs', encodeHardState(oldHs));
      this.meta.remove('hs');
    });
  }

  flush(): Promise<void> | undefined {
    const ops = this.takeOps();
    // Nothing new: resolve once every earlier flush has (flushes resolve in order); without
    // fsync every earlier flush was durable when it returned.
    if (ops.length === 0) return this.durable ? this.lastFlush : undefined;
    if (this.lastIndex < 0) this.lastIndex = this.highestStoredIndex();
    if (this.durable) {
      // Asynchronous commit on lmdb-js's write thread, then wait for the fsync. lmdb-js commits
      // queued transactions in order and groups concurrent ones into one fsync, so flushes in
      // flight together cost one disk round and resolve in order.
      const committed = this.root.transaction(() => {
        for (const op of ops) this.applyOp(op);
      });
      this.lastFlush = committed.then(() => this.root.flushed).then(() => undefined);
      return this.lastFlush;
    } else {
      // noSync: a synchronous commit (about 10 µs with the writable map), no thread hop, and no
      // promise: the caller goes on in the same turn (RaftStorage.flush); a failure throws.
      // lmdb-js's asynchronous transaction measured 3x slower per commit here (it waits for
      // its write thread and the next event turn).
      this.root.transactionSync(() => {
        for (const op of ops) this.applyOp(op);
      });
      return undefined;
    }
  }

  private applyOp(op: StorageOp): void {
    switch (op.kind) {
      case 'append':
        for (const e of op.entries) this.log.put(e.index, encodeEntry(e));
        if (op.entries.length) this.lastIndex = Math.max(this.lastIndex, op.entries[op.entries.length - 1]!.index);
        return;
      case 'truncate':
        // Every append starts with a truncate from its first index; nothing is stored there
        // in the common case, so skip the range scan (a read cursor per flush) then.
        if (op.index > this.lastIndex) return;
        for (const key of this.log.getKeys({ start: op.index })) this.log.remove(key);
        this.lastIndex = Math.max(0, Math.min(this.lastIndex, op.index - 1));
        return;
      case 'compact':
        for (const key of this.log.getKeys({ end: op.index + 1 })) this.log.remove(key);
        return;
      case 'hs':
        this.state.put('hs', encodeHardState(op.hs));
        return;
      case 'snap':
        this.meta.put('snap', { meta: op.snapshot.meta, data: op.snapshot.data });
        return;
    }
  }

  private highestStoredIndex(): number {
    for (const key of this.log.getKeys({ reverse: true, limit: 1 })) return key;
    return 0;
  }

  async loadEntries(after: number): Promise<Entry[]> {
    const out: Entry[] = [];
    for (const { key, value } of this.log.getRange({ start: after + 1 })) out.push(decodeEntry(key, value));
    return out;
  }

  async loadHardState(): Promise<HardState | undefined> {
    const bytes = this.state.get('hs');
    if (bytes === undefined) return undefined;
    const view = new DataView(bytes.buffer, bytes.byteOffset, HARD_STATE_BYTES);
    return { term: view.getFloat64(0), vote: view.getFloat64(8), commit: view.getFloat64(16) };
  }

  async loadSnapshot(): Promise<Snapshot | undefined> {
    const s = this.meta.get('snap') as { meta: SnapshotMeta; data: Uint8Array } | undefined;
    return s ? { meta: s.meta, data: toBytes(s.data) } : undefined;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

function encodeEntry(e: Entry): Uint8Array {
  const out = new Uint8Array(ENTRY_HEADER_BYTES + e.data.byteLength);
  out[0] = e.type;
  new DataView(out.buffer).setFloat64(1, e.term);
  out.set(e.data, ENTRY_HEADER_BYTES);
  return out;
}

/** The stored bytes may alias LMDB memory (valid only until the next read): copy the data. */
function decodeEntry(index: number, bytes: Uint8Array): Entry {
  const term = new DataView(bytes.buffer, bytes.byteOffset, ENTRY_HEADER_BYTES).getFloat64(1);
  return { index, term, type: bytes[0] as Entry['type'], data: bytes.slice(ENTRY_HEADER_BYTES) };
}

function encodeHardState(hs: HardState): Uint8Array {
  const out = new Uint8Array(HARD_STATE_BYTES);
  const view = new DataView(out.buffer);
  view.setFloat64(0, hs.term);
  view.setFloat64(8, hs.vote);
  view.setFloat64(16, hs.commit);
  return out;
}

/** msgpackr decodes binary as a Buffer that may alias LMDB memory: copy to own it. */
function toBytes(d: Uint8Array): Uint8Array {
  return new Uint8Array(d);
}
