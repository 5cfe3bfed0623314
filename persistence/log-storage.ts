/**
 * Where one field's records live. A record is stored under its sequence number: 0, 1, 2, ... in
 * append order, contiguous (trim removes a prefix, truncate a suffix, appends continue after the
 * last kept one), so the i-th kept version is simply `firstSeq + i`.
 *
 * Two implementations: MemoryLogStorage (Volatile<T>, in-memory registries) and LmdbLogStorage
 * (one LMDB named database per field, in the node's single environment).
 */
import type { Database, RootDatabase } from 'lmdb';

/** Per-field facts kept beside the records. */
export interface FieldMeta {
  /** True once trim() removed anything: reads below the first kept version then say "trimmed". */
  trimmed: boolean;
}

export interface LogBounds {
  /** The sequence number of the oldest kept record (== nextSeq when empty). */
  firstSeq: number;
  /** One past the newest record. */
  nextSeq: number;
  meta: FieldMeta;
}

export interface LogStorage {
  /** Reads bounds and meta; called once when a registry attaches the field. */
  load(): LogBounds;
  /**
   * The record at `seq`, or undefined. The buffer may be transient (valid until the next get on
   * this storage): callers copy what they keep.
   */
  get(seq: number): Buffer | undefined;
  /** Stores a record; visible to get() at once, durable after the next group commit. */
  put(seq: number, record: Buffer): void;
  remove(seq: number): void;
  putMeta(meta: FieldMeta): void;
  /** True if records survive a restart (LMDB), false for memory. */
  readonly durable: boolean;
}

export class MemoryLogStorage implements LogStorage {
  readonly durable = false;
  private readonly records = new Map<number, Buffer>();
  private meta: FieldMeta = { trimmed: false };

  load(): LogBounds {
    let firstSeq = Infinity;
    let nextSeq = 0;
    for (const seq of this.records.keys()) {
      firstSeq = Math.min(firstSeq, seq);
      nextSeq = Math.max(nextSeq, seq + 1);
    }
    return { firstSeq: firstSeq === Infinity ? nextSeq : firstSeq, nextSeq, meta: { ...this.meta } };
  }
  get(seq: number): Buffer | undefined {
    return this.records.get(seq);
  }
  put(seq: number, record: Buffer): void {
    this.records.set(seq, record);
  }
  remove(seq: number): void {
    this.records.delete(seq);
  }
  putMeta(meta: FieldMeta): void {
    this.meta = { ...meta };
  }
}

/**
 * Writes go through lmdb-js's asynchronous batched puts: every write issued in one event turn
 * lands in one LMDB transaction (eventTurnBatching), which is the group commit and also what
 * makes a multi-record change (a version of several fields, a trim) atomic on a crash.
 *
 * A put is not readable from LMDB until its transaction commits, so puts also sit in an overlay
 * map until then; get() looks there first.
 */
export class LmdbLogStorage implements LogStorage {
  readonly durable = true;
  private readonly overlay = new Map<number, { record: Buffer; writeId: number }>();
  private writeId = 0;
  private lastPut: Promise<unknown> | undefined;
  private cleanupScheduled = false;

  constructor(
    private readonly db: Database<Buffer, number>,
    private readonly metaDb: RootDatabase | Database,
    private readonly metaKey: string,
    private readonly onWrite: (promise: Promise<unknown>) => void,
  ) {}

  load(): LogBounds {
    let firstSeq = 0;
    let nextSeq = 0;
    for (const key of this.db.getKeys({ limit: 1 })) firstSeq = key;
    for (const key of this.db.getKeys({ limit: 1, reverse: true })) nextSeq = key + 1;
    if (nextSeq === 0) firstSeq = 0;
    const meta = (this.metaDb.get(this.metaKey) as FieldMeta | undefined) ?? { trimmed: false };
    return { firstSeq, nextSeq, meta };
  }

  get(seq: number): Buffer | undefined {
    const pending = this.overlay.get(seq);
    if (pending) return pending.record;
    return this.db.getBinaryFast(seq) ?? undefined;
  }

  put(seq: number, record: Buffer): void {
    this.writeId += 1;
    this.overlay.set(seq, { record, writeId: this.writeId });
    this.track(this.db.put(seq, record));
  }

  remove(seq: number): void {
    this.overlay.delete(seq);
    this.track(this.db.remove(seq));
  }

  putMeta(meta: FieldMeta): void {
    this.track(this.metaDb.put(this.metaKey, meta));
  }

  private track(promise: Promise<unknown>): void {
    this.lastPut = promise;
    this.onWrite(promise);
    if (this.cleanupScheduled) return;
    this.cleanupScheduled = true;
    // One cleanup per event turn: when the turn's transaction commits, its puts are readable
    // from LMDB and can leave the overlay.
    queueMicrotask(() => {
      this.cleanupScheduled = false;
      const committedWriteId = this.writeId;
      const committed = this.lastPut!;
      committed.then(
        () => {
          for (const [seq, pending] of this.overlay) {
            if (pending.writeId <= committedWriteId) this.overlay.delete(seq);
          }
        },
        () => undefined, // the registry reports write failures
      );
    });
  }
}
