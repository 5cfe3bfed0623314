/**
 * Where one field's records live. A record is stored under its sequence number: 0, 1, 2, ... in
 * append order, contiguous (trim removes a prefix, truncate a suffix, appends continue after the
 * last kept one), so the i-th kept version is simply `firstSeq + i`.
 *
 * Two implementations: MemoryLogStorage (Volatile<T>, in-memory registries) and LmdbLogStorage
 * (lmdb-storage.ts: one LMDB named database per field, in the node's single environment).
 */
import { encodeRecord, type RecordHeader } from './record.js';

/** Per-field facts kept beside the records. */
export interface FieldMeta {
  /** True once trim() removed anything: reads below the first kept version then say "trimmed". */
  trimmed: boolean;
  /** The first kept sequence number, once a trim moved it (LMDB storage keeps it here). */
  firstSeq?: number;
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
   * Hands the writes made so far in this turn to the store's per-turn writer now (otherwise they
   * are handed over in a microtask queued by the turn's first write).
   */
  flushPending?(): void;
  /**
   * The record at `seq`, or undefined. The buffer may be transient (valid until the next get on
   * this storage): callers copy what they keep.
   */
  get(seq: number): Buffer | undefined;
  /** Stores the record after the newest; visible to get() at once, durable after the commit. */
  append(seq: number, record: Buffer): void;
  /**
   * Same as append(seq, encodeRecord(header, payload)), but the storage may write the record
   * straight into its own buffers (the append path of makeVersion: no Buffer per record).
   * `payload` is copied; the caller may reuse it.
   */
  appendRecord(seq: number, header: RecordHeader, payload: Uint8Array): void;
  /** Overwrites a kept record. */
  replace(seq: number, record: Buffer): void;
  /** Removes the records in [firstSeq, newFirstSeq) (trim). */
  dropBefore(firstSeq: number, newFirstSeq: number): void;
  /** Removes the records in [newNextSeq, nextSeq) (truncate). */
  dropFrom(newNextSeq: number, nextSeq: number): void;
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
  append(seq: number, record: Buffer): void {
    this.records.set(seq, record);
  }
  appendRecord(seq: number, header: RecordHeader, payload: Uint8Array): void {
    this.records.set(seq, encodeRecord(header, payload));
  }
  replace(seq: number, record: Buffer): void {
    this.records.set(seq, record);
  }
  dropBefore(firstSeq: number, newFirstSeq: number): void {
    for (let seq = firstSeq; seq < newFirstSeq; seq++) this.records.delete(seq);
  }
  dropFrom(newNextSeq: number, nextSeq: number): void {
    for (let seq = newNextSeq; seq < nextSeq; seq++) this.records.delete(seq);
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
