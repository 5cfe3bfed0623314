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
    if (firstSeq === Infinity) firstSeq = nextSeq;
    return { firstSeq, nextSeq, meta: { ...this.meta } };
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
  // Uncommitted appends, contiguous: pending[i - pendingHead] is seq pendingFirstSeq + i. An
  // array, not a Map, because this is on the append path of every version.
  private pending: (Buffer | undefined)[] = [];
  private pendingHead = 0;
  private pendingFirstSeq = 0;
  // Uncommitted puts that are not appends (trim rewriting a record), by seq.
  private replaced = new Map<number, Buffer>();
  private cleanupScheduled = false;
  private lastPut: Promise<unknown> | undefined;

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
    this.pendingFirstSeq = nextSeq;
    const meta = (this.metaDb.get(this.metaKey) as FieldMeta | undefined) ?? { trimmed: false };
    return { firstSeq, nextSeq, meta };
  }

  get(seq: number): Buffer | undefined {
    if (this.replaced.size > 0) {
      const replaced = this.replaced.get(seq);
      if (replaced) return replaced;
    }
    const index = seq - this.pendingFirstSeq + this.pendingHead;
    if (index >= this.pendingHead && index < this.pending.length) {
      const pending = this.pending[index];
      if (pending) return pending;
    }
    const bytes = this.db.getBinaryFast(seq);
    // lmdb-js returns a reused buffer whose `length` property is overridden to the value's size
    // while its byteLength is the whole scratch area: take a real view of just the value.
    return bytes === undefined ? undefined : bytes.subarray(0, bytes.length);
  }

  put(seq: number, record: Buffer): void {
    const end = this.pendingFirstSeq + this.pending.length - this.pendingHead;
    if (seq === end) this.pending.push(record);
    else if (seq > end || seq < this.pendingFirstSeq) {
      // Not an append after the pending run (after a truncate, or a rewrite of an old record).
      if (seq > end || this.pending.length === this.pendingHead) this.restartPending(seq, record);
      else this.replaced.set(seq, record);
    } else {
      // Rewriting a record that is itself still pending (trim's rewrite, truncate then
      // append). The pending array only grows, so commits can drop a prefix by count.
      this.replaced.set(seq, record);
    }
    this.track(this.db.put(seq, record));
  }

  remove(seq: number): void {
    this.replaced.delete(seq);
    const index = seq - this.pendingFirstSeq + this.pendingHead;
    if (index >= this.pendingHead && index < this.pending.length) this.pending[index] = undefined;
    this.track(this.db.remove(seq));
  }

  putMeta(meta: FieldMeta): void {
    this.track(this.metaDb.put(this.metaKey, meta));
  }

  private restartPending(seq: number, record: Buffer): void {
    // Keep what is still uncommitted readable through the replaced map.
    for (let i = this.pendingHead; i < this.pending.length; i++) {
      const pending = this.pending[i];
      if (pending) this.replaced.set(this.pendingFirstSeq + i - this.pendingHead, pending);
    }
    this.pending = [record];
    this.pendingHead = 0;
    this.pendingFirstSeq = seq;
  }

  private track(promise: Promise<unknown>): void {
    this.lastPut = promise;
    this.onWrite(promise);
    if (this.cleanupScheduled) return;
    this.cleanupScheduled = true;
    // One cleanup per event turn: when the turn's transaction commits, what it wrote is
    // readable from LMDB and can leave the overlay.
    queueMicrotask(() => {
      this.cleanupScheduled = false;
      const pendingEnd = this.pending.length;
      const pendingArray = this.pending;
      const replaced = [...this.replaced];
      this.lastPut!.then(
        () => {
          if (this.pending === pendingArray) {
            this.pendingFirstSeq += pendingEnd - this.pendingHead;
            this.pendingHead = pendingEnd;
            if (this.pendingHead === this.pending.length) {
              this.pending = [];
              this.pendingHead = 0;
            } else if (this.pendingHead > 4096) {
              this.pending = this.pending.slice(this.pendingHead);
              this.pendingHead = 0;
            }
          }
          for (const [seq, record] of replaced) {
            if (this.replaced.get(seq) === record) this.replaced.delete(seq);
          }
        },
        () => undefined, // the registry reports write failures
      );
    });
  }
}
