/**
 * One field's records in LMDB, packed into segments.
 *
 * Records are grouped by sequence number into aligned segments of SEGMENT_RECORDS (seqs 32k to
 * 32k+31 form segment k), each stored as one LMDB value under key k. This divides the number of
 * LMDB puts by up to 32. A put is the dominant cost of an append: with one put per record,
 * appends ran at ~0.3x raw lmdb-js puts. A read is still one lookup, because a sequence number
 * names its segment: get(seq) is getBinaryFast(seq >> 5), then a walk over at most 31 length
 * prefixes.
 *
 * A record above INLINE_BYTES_MAX (a delta-mode checkpoint of a large map, say) is stored on
 * its own under the key -(seq + 1), and its slot in the segment holds a marker. Segments thus
 * stay small, so a read never copies someone else's large value.
 *
 * The open segment (the one the next append goes to) lives in memory as `tail`, already in its
 * LMDB form: makeVersion writes each record straight into the segment's buffer (no Buffer per
 * record, no second copy when the segment is written), and the tail is put once per event turn.
 * A put value is read from our buffer when the turn's transaction commits, later in the turn.
 * So bytes of a segment buffer, once written, never change: appends write above them, a full
 * buffer is replaced by a bigger copy, and anything else (replace, truncate) builds a new
 * segment. Every write goes through the store's TurnWriter: all writes of one event turn land
 * in one synchronous LMDB transaction (store.ts, commitTurn; the flush runs as a microtask,
 * before the commit). That gives group commit, and atomic multi-field versions and trims.
 * Segments written but not yet committed stay readable from `overlay`.
 *
 * Segment value: repeated [u32le length][record bytes]; length 0 is a hole (a seq below a trim
 * point, or before the first kept seq), length EXTERNAL means "stored under -(seq + 1)".
 */
import type { Database, RootDatabase } from 'lmdb';
import { assert } from '../src/core/assert.js';
import type { TurnWriter } from './store.js';
import type { FieldMeta, LogBounds, LogStorage } from './log-storage.js';
import { encodeRecord, RECORD_HEADER_BYTES, writeRecordInto, type RecordHeader } from './record.js';

export const SEGMENT_RECORDS = 32;
export const INLINE_BYTES_MAX = 1024;
const EXTERNAL = 0xffff_ffff;

const segmentOf = (seq: number) => Math.floor(seq / SEGMENT_RECORDS);
const externalKey = (seq: number) => -(seq + 1);

/**
 * One segment in memory, as the bytes of its LMDB value ([u32le length][record] per slot) plus
 * where each slot starts. Bytes below `used` never change (see the file comment); `value()` is
 * what goes to LMDB.
 */
class Segment {
  private bytes: Buffer;
  private view: DataView;
  private used = 0;
  /** `used` when this segment was last put (0: never): those bytes are in LMDB's value already. */
  private putBytes = 0;
  private readonly starts: number[] = [];
  // Records stored under their own key (above INLINE_BYTES_MAX), by slot index.
  private externals: Map<number, Buffer> | undefined;

  constructor(capacity = 0) {
    this.bytes = Buffer.allocUnsafeSlow(capacity);
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }

  /** A segment holding these slots (records, undefined for a hole), for rebuilds. */
  static of(slots: (Buffer | undefined)[]): Segment {
    let bytes = 0;
    for (const slot of slots) bytes += 4 + (slot && slot.byteLength <= INLINE_BYTES_MAX ? slot.byteLength : 0);
    const segment = new Segment(bytes);
    for (const slot of slots) {
      if (slot) segment.pushRecord(slot);
      else segment.pushHole();
    }
    return segment;
  }

  /** Parses a stored segment value (copied), fetching external records with `readExternal`. */
  static parse(value: Buffer, readExternal: (index: number) => Buffer | undefined): Segment {
    const slots: (Buffer | undefined)[] = [];
    let offset = 0;
    while (offset + 4 <= value.byteLength) {
      const length = value.readUInt32LE(offset);
      if (length === EXTERNAL) {
        const external = readExternal(slots.length);
        slots.push(external ? Buffer.from(external) : undefined);
        offset += 4;
        continue;
      }
      slots.push(length === 0 ? undefined : value.subarray(offset + 4, offset + 4 + length));
      offset += 4 + length;
    }
    return Segment.of(slots);
  }

  get count(): number {
    return this.starts.length;
  }

  /** The record in slot `index` (a view: valid as long as this segment), or undefined. */
  get(index: number): Buffer | undefined {
    if (index >= this.starts.length) return undefined;
    const start = this.starts[index]!;
    const length = this.view.getUint32(start, true);
    if (length === 0) return undefined;
    if (length === EXTERNAL) return this.externals?.get(index);
    return this.bytes.subarray(start + 4, start + 4 + length);
  }

  /** The slots 0 .. count-1 (undefined for holes), for rebuilds. */
  slots(count = this.count): (Buffer | undefined)[] {
    const slots: (Buffer | undefined)[] = [];
    for (let i = 0; i < count; i++) slots.push(this.get(i));
    return slots;
  }

  /** The LMDB value: the bytes written so far. */
  value(): Buffer {
    return this.bytes.subarray(0, this.used);
  }

  /**
   * Puts the value under `key` through `writer`, saying how many of its first bytes the previous
   * put of this segment held (unchanged: bytes below `used` never change). A segment is only
   * ever put under its own key, so they are that key's previous value's first bytes (a new
   * segment, e.g. a rebuild, says 0): the write-ahead log logs the rest only.
   */
  putTo(writer: TurnWriter, db: Database<Buffer, number>, key: number): void {
    const kept = this.putBytes;
    this.putBytes = this.used;
    writer.put(db, key, this.value(), kept);
  }

  pushHole(): void {
    const start = this.reserve(4);
    this.view.setUint32(start, 0, true);
    this.used = start + 4;
  }

  /** Appends a record: inline, or as a marker (the caller stores it under its own key). */
  pushRecord(record: Buffer): void {
    if (record.byteLength > INLINE_BYTES_MAX) {
      const start = this.reserve(4);
      this.view.setUint32(start, EXTERNAL, true);
      (this.externals ??= new Map()).set(this.starts.length - 1, record);
      this.used = start + 4;
      return;
    }
    const start = this.reserve(4 + record.byteLength);
    this.view.setUint32(start, record.byteLength, true);
    this.bytes.set(record, start + 4);
    this.used = start + 4 + record.byteLength;
  }

  /** Appends the record for header + payload, written in place. Must be inline-sized. */
  pushNew(header: RecordHeader, payload: Uint8Array): void {
    const length = RECORD_HEADER_BYTES + payload.byteLength;
    const start = this.reserve(4 + length);
    this.view.setUint32(start, length, true);
    writeRecordInto(this.bytes, this.view, start + 4, header, payload);
    this.used = start + 4 + length;
  }

  /** Room for `bytes` more at `used`, in a bigger copy if needed; records the slot start. */
  private reserve(bytes: number): number {
    const needed = this.used + bytes;
    if (needed > this.bytes.byteLength) {
      // Room for the whole segment at this record size, so a segment grows about once.
      const capacity = Math.max(needed, this.bytes.byteLength * 2, bytes * SEGMENT_RECORDS);
      const next = Buffer.allocUnsafeSlow(capacity);
      this.bytes.copy(next, 0, 0, this.used);
      this.bytes = next;
      this.view = new DataView(next.buffer, next.byteOffset, next.byteLength);
    }
    this.starts.push(this.used);
    return this.used;
  }
}

export class LmdbLogStorage implements LogStorage {
  readonly durable = true;
  private tailKey = 0;
  private tail = new Segment();
  private tailDirty = false;
  // Segments other than the tail that were written and may not be committed yet.
  private readonly overlay = new Map<number, Segment>();
  private meta: FieldMeta = { trimmed: false };
  private flushScheduled = false;

  constructor(
    private readonly db: Database<Buffer, number>,
    private readonly metaDb: RootDatabase | Database,
    private readonly metaKey: string,
    /** The store's per-turn transaction: every put and removal goes through it. */
    private readonly writer: TurnWriter,
  ) {}

  load(): LogBounds {
    this.meta = (this.metaDb.get(this.metaKey) as FieldMeta | undefined) ?? { trimmed: false };
    let lastKey = -1;
    for (const key of this.db.getKeys({ reverse: true, limit: 1 })) lastKey = key;
    let firstKey = -1;
    for (const key of this.db.getKeys({ start: 0, limit: 1 })) firstKey = key;
    if (lastKey < 0) {
      const seq = this.meta.firstSeq ?? 0;
      this.tailKey = segmentOf(seq);
      this.tail = new Segment();
      return { firstSeq: seq, nextSeq: seq, meta: { trimmed: this.meta.trimmed } };
    }
    this.tailKey = lastKey;
    this.tail = this.readSegment(lastKey);
    const nextSeq = lastKey * SEGMENT_RECORDS + this.tail.count;
    const firstSeq = this.meta.firstSeq ?? firstKey * SEGMENT_RECORDS;
    return { firstSeq, nextSeq, meta: { trimmed: this.meta.trimmed } };
  }

  get(seq: number): Buffer | undefined {
    const key = segmentOf(seq);
    const index = seq - key * SEGMENT_RECORDS;
    const segment = key === this.tailKey ? this.tail : this.overlay.get(key);
    if (segment) return segment.get(index);
    const stored = this.db.getBinaryFast(key);
    if (stored === undefined) return undefined;
    // lmdb-js reuses one buffer and overrides its `length` to the value's size.
    const view = stored.subarray(0, stored.length);
    let offset = 0;
    for (let i = 0; i < index; i++) {
      if (offset + 4 > view.byteLength) return undefined;
      const length = view.readUInt32LE(offset);
      offset += 4 + (length === EXTERNAL ? 0 : length);
    }
    if (offset + 4 > view.byteLength) return undefined;
    const length = view.readUInt32LE(offset);
    if (length === 0) return undefined;
    if (length === EXTERNAL) return this.readExternal(seq);
    return view.subarray(offset + 4, offset + 4 + length);
  }

  append(seq: number, record: Buffer): void {
    this.openSlot(seq);
    this.tail.pushRecord(record);
    this.writeExternalIfLarge(seq, record);
    this.markTailDirty();
  }

  appendRecord(seq: number, header: RecordHeader, payload: Uint8Array): void {
    if (RECORD_HEADER_BYTES + payload.byteLength > INLINE_BYTES_MAX) {
      this.append(seq, encodeRecord(header, payload));
      return;
    }
    this.openSlot(seq);
    this.tail.pushNew(header, payload);
    this.markTailDirty();
  }

  replace(seq: number, record: Buffer): void {
    const key = segmentOf(seq);
    const index = seq - key * SEGMENT_RECORDS;
    this.writeExternalIfLarge(seq, record);
    const old = key === this.tailKey ? this.tail : (this.overlay.get(key) ?? this.readSegment(key));
    const slots = old.slots();
    slots[index] = record;
    const rebuilt = Segment.of(slots);
    if (key === this.tailKey) {
      this.tail = rebuilt;
      this.markTailDirty();
    } else this.writeSegment(key, rebuilt);
  }

  dropBefore(firstSeq: number, newFirstSeq: number): void {
    if (newFirstSeq <= firstSeq) return;
    this.removeExternal(firstSeq, newFirstSeq);
    const keepKey = segmentOf(newFirstSeq);
    for (let key = segmentOf(firstSeq); key < keepKey; key++) {
      this.overlay.delete(key);
      if (key === this.tailKey) {
        this.tailKey = keepKey;
        this.tail = new Segment();
        this.tailDirty = false;
      }
      this.writer.remove(this.db, key);
    }
    // Records below newFirstSeq in segment keepKey stay in place; bounds come from meta.
    this.meta = { ...this.meta, firstSeq: newFirstSeq };
    this.writer.put(this.metaDb, this.metaKey, this.meta);
  }

  dropFrom(newNextSeq: number, nextSeq: number): void {
    if (newNextSeq >= nextSeq) return;
    this.removeExternal(newNextSeq, nextSeq);
    const keepKey = segmentOf(newNextSeq);
    for (let key = keepKey + 1; key <= segmentOf(nextSeq - 1); key++) {
      this.overlay.delete(key);
      this.writer.remove(this.db, key);
    }
    let kept: Segment;
    if (keepKey === this.tailKey) kept = this.tail;
    else kept = this.overlay.get(keepKey) ?? this.readSegment(keepKey);
    this.overlay.delete(keepKey);
    this.tailKey = keepKey;
    // A new segment: the old buffer may still be read by an uncommitted put.
    this.tail = Segment.of(kept.slots(newNextSeq - keepKey * SEGMENT_RECORDS));
    this.markTailDirty();
    if (this.meta.firstSeq !== undefined && newNextSeq < this.meta.firstSeq) {
      this.meta = { ...this.meta, firstSeq: newNextSeq };
      this.writer.put(this.metaDb, this.metaKey, this.meta);
    }
  }

  putMeta(meta: FieldMeta): void {
    this.meta = { ...meta, firstSeq: this.meta.firstSeq };
    this.writer.put(this.metaDb, this.metaKey, this.meta);
  }

  // ---- internals ---------------------------------------------------------------------------

  /** Makes the tail the segment of `seq` (retiring a full one) and fills holes before it. */
  private openSlot(seq: number): void {
    const key = segmentOf(seq);
    if (key !== this.tailKey) {
      assert(key > this.tailKey, 'appends move forward');
      this.retireTail();
      this.tailKey = key;
      this.tail = new Segment();
    }
    const index = seq - key * SEGMENT_RECORDS;
    if (index < this.tail.count) assert(false, 'append after the newest record');
    while (this.tail.count < index) this.tail.pushHole();
  }

  /** The open segment is full (or abandoned): write it now and keep it readable until commit. */
  private retireTail(): void {
    if (this.tail.count === 0) return;
    // Written in an earlier turn, it may still be uncommitted: keep it in the overlay anyway.
    if (this.tailDirty) this.writeSegment(this.tailKey, this.tail);
    else this.overlay.set(this.tailKey, this.tail);
    this.tailDirty = false;
    this.scheduleFlush();
  }

  private markTailDirty(): void {
    this.tailDirty = true;
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flushPending());
  }

  flushPending(): void {
    if (this.flushScheduled) this.flush();
  }

  /** Writes the tail once per turn, then clears committed segments out of the overlay. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.tailDirty) {
      this.tailDirty = false;
      if (this.tail.count === 0) this.writer.remove(this.db, this.tailKey);
      else this.tail.putTo(this.writer, this.db, this.tailKey);
    }
    if (this.overlay.size === 0) return;
    const written = [...this.overlay];
    this.writer.whenInLmdb().then(
      () => {
        for (const [key, segment] of written) {
          if (this.overlay.get(key) === segment) this.overlay.delete(key);
        }
      },
      () => undefined, // the registry reports write failures
    );
  }

  private writeSegment(key: number, segment: Segment): void {
    this.overlay.set(key, segment);
    segment.putTo(this.writer, this.db, key);
    this.scheduleFlush();
  }

  private writeExternalIfLarge(seq: number, record: Buffer): void {
    if (record.byteLength > INLINE_BYTES_MAX) this.writer.put(this.db, externalKey(seq), record);
  }

  private removeExternal(fromSeq: number, toSeq: number): void {
    // External keys -(seq + 1) for seq in [fromSeq, toSeq) lie in [-toSeq, -fromSeq - 1].
    const keys = [...this.db.getKeys({ start: -toSeq, end: -fromSeq })];
    for (const key of keys) if (key < 0) this.writer.remove(this.db, key);
  }

  private readExternal(seq: number): Buffer | undefined {
    const bytes = this.db.getBinaryFast(externalKey(seq));
    return bytes === undefined ? undefined : bytes.subarray(0, bytes.length);
  }

  /** A stored segment, copied out of LMDB's transient buffer. */
  private readSegment(key: number): Segment {
    const stored = this.db.getBinary(key);
    if (!stored) return new Segment();
    return Segment.parse(stored, (index) => this.readExternal(key * SEGMENT_RECORDS + index));
  }
}
