/**
 * RaftStorage on LMDB (lmdb-js). One environment, two named databases: `log` (entries keyed by
 * index, ordered) and `meta` (`hs`, `snap`). Each flush() is one LMDB write transaction, so a
 * Ready's writes land all or none (LMDB never tears a transaction).
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

interface StoredEntry {
  t: number;
  y: number;
  d: Uint8Array;
}

export interface LmdbStorageOptions {
  path: string;
  /** fsync every flush (default true). */
  durable?: boolean;
}

export class LmdbStorage extends QueuedStorage implements RaftStorage {
  private readonly root: RootDatabase;
  private readonly log: Database<StoredEntry, number>;
  private readonly meta: Database<unknown, string>;
  private readonly durable: boolean;
  /** Highest index written so far (for truncation ranges). */
  private lastIndex = -1;

  constructor(options: LmdbStorageOptions) {
    super();
    this.durable = options.durable ?? true;
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
    this.log = this.root.openDB<StoredEntry, number>({ name: 'log', keyEncoding: 'ordered-binary' });
    this.meta = this.root.openDB<unknown, string>({ name: 'meta' });
  }

  async flush(): Promise<void> {
    const ops = this.takeOps();
    if (ops.length === 0) return;
    if (this.lastIndex < 0) this.lastIndex = this.highestStoredIndex();
    if (this.durable) {
      // Asynchronous commit on lmdb-js's write thread, then wait for the fsync.
      await this.root.transaction(() => {
        for (const op of ops) this.applyOp(op);
      });
      await this.root.flushed;
    } else {
      // noSync: a synchronous commit (about 10 µs with the writable map) and no thread hop.
      // lmdb-js's asynchronous transaction measured 3x slower per commit here (it waits for
      // its write thread and the next event turn).
      this.root.transactionSync(() => {
        for (const op of ops) this.applyOp(op);
      });
    }
  }

  private applyOp(op: StorageOp): void {
    switch (op.kind) {
      case 'append':
        for (const e of op.entries) this.log.put(e.index, { t: e.term, y: e.type, d: e.data });
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
        this.meta.put('hs', { ...op.hs });
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
    for (const { key, value } of this.log.getRange({ start: after + 1 })) {
      out.push({ index: key, term: value.t, type: value.y as Entry['type'], data: toBytes(value.d) });
    }
    return out;
  }

  async loadHardState(): Promise<HardState | undefined> {
    const hs = this.meta.get('hs') as HardState | undefined;
    return hs ? { term: hs.term, vote: hs.vote, commit: hs.commit } : undefined;
  }

  async loadSnapshot(): Promise<Snapshot | undefined> {
    const s = this.meta.get('snap') as { meta: SnapshotMeta; data: Uint8Array } | undefined;
    return s ? { meta: s.meta, data: toBytes(s.data) } : undefined;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/** msgpackr decodes binary as a Buffer that may alias LMDB memory: copy to own it. */
function toBytes(d: Uint8Array): Uint8Array {
  return new Uint8Array(d);
}
