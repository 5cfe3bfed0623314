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
 * The open segment (the one the next append goes to) lives in memory as `tail` and is written
 * once per event turn. Every write goes through lmdb-js's batched puts: all writes of one event
 * turn land in one transaction (the flush runs as a microtask, before lmdb-js closes the batch
 * in setImmediate). That gives group commit, and atomic multi-field versions and trims.
 * Segments written but not yet committed stay readable from `overlay`.
 *
 * Segment value: repeated [u32le length][record bytes]; length 0 is a hole (a seq below a trim
 * point, or before the first kept seq), length EXTERNAL means "stored under -(seq + 1)".
 */
import type { Database, RootDatabase } from 'lmdb';
import { assert } from '../src/core/assert.js';
import type { FieldMeta, LogBounds, LogStorage } from './log-storage.js';

export const SEGMENT_RECORDS = 32;
export const INLINE_BYTES_MAX = 1024;
const EXTERNAL = 0xffff_ffff;
const HOLE: Buffer = Buffer.alloc(0);

const segmentOf = (seq: number) => Math.floor(seq / SEGMENT_RECORDS);
const externalKey = (seq: number) => -(seq + 1);

/** A record slot in memory: the record, HOLE, or the record stored outside the segment. */
type Slot = Buffer;

export class LmdbLogStorage implements LogStorage {
  readonly durable = true;
  private tailKey = 0;
  private tail: Slot[] = [];
  private tailDirty = false;
  // Segments other than the tail that were written and may not be committed yet.
  private readonly overlay = new Map<number, Slot[]>();
  private meta: FieldMeta = { trimmed: false };
  private flushScheduled = false;
  private lastPut: Promise<unknown> | undefined;

  constructor(
    private readonly db: Database<Buffer, number>,
    private readonly metaDb: RootDatabase | Database,
    private readonly metaKey: string,
    private readonly onWrite: (promise: Promise<unknown>) => void,
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
      this.tail = [];
      return { firstSeq: seq, nextSeq: seq, meta: { trimmed: this.meta.trimmed } };
    }
    this.tailKey = lastKey;
    this.tail = this.readSegment(lastKey, true);
    const nextSeq = lastKey * SEGMENT_RECORDS + this.tail.length;
    const firstSeq = this.meta.firstSeq ?? firstKey * SEGMENT_RECORDS;
    return { firstSeq, nextSeq, meta: { trimmed: this.meta.trimmed } };
  }

  get(seq: number): Buffer | undefined {
    const key = segmentOf(seq);
    const index = seq - key * SEGMENT_RECORDS;
    const slots = key === this.tailKey ? this.tail : this.overlay.get(key);
    if (slots) {
      const slot = slots[index];
      if (slot === undefined || slot === HOLE) return undefined;
      return slot;
    }
    const segment = this.db.getBinaryFast(key);
    if (segment === undefined) return undefined;
    // lmdb-js reuses one buffer and overrides its `length` to the value's size.
    const view = segment.subarray(0, segment.length);
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
    const key = segmentOf(seq);
    if (key !== this.tailKey) {
      assert(key > this.tailKey, 'appends move forward');
      this.retireTail();
      this.tailKey = key;
      this.tail = [];
    }
    const index = seq - key * SEGMENT_RECORDS;
    assert(index >= this.tail.length, 'append after the newest record');
    while (this.tail.length < index) this.tail.push(HOLE);
    this.tail.push(record);
    this.writeExternalIfLarge(seq, record);
    this.markTailDirty();
  }

  replace(seq: number, record: Buffer): void {
    const key = segmentOf(seq);
    const index = seq - key * SEGMENT_RECORDS;
    this.writeExternalIfLarge(seq, record);
    if (key === this.tailKey) {
      this.tail[index] = record;
      this.markTailDirty();
      return;
    }
    const slots = [...(this.overlay.get(key) ?? this.readSegment(key, true))];
    slots[index] = record;
    this.writeSegment(key, slots);
  }

  dropBefore(firstSeq: number, newFirstSeq: number): void {
    if (newFirstSeq <= firstSeq) return;
    this.removeExternal(firstSeq, newFirstSeq);
    const keepKey = segmentOf(newFirstSeq);
    for (let key = segmentOf(firstSeq); key < keepKey; key++) {
      this.overlay.delete(key);
      if (key === this.tailKey) {
        this.tailKey = keepKey;
        this.tail = [];
        this.tailDirty = false;
      }
      this.track(this.db.remove(key));
    }
    // Records below newFirstSeq in segment keepKey stay in place; bounds come from meta.
    this.meta = { ...this.meta, firstSeq: newFirstSeq };
    this.track(this.metaDb.put(this.metaKey, this.meta));
  }

  dropFrom(newNextSeq: number, nextSeq: number): void {
    if (newNextSeq >= nextSeq) return;
    this.removeExternal(newNextSeq, nextSeq);
    const keepKey = segmentOf(newNextSeq);
    for (let key = keepKey + 1; key <= segmentOf(nextSeq - 1); key++) {
      this.overlay.delete(key);
      this.track(this.db.remove(key));
    }
    let slots: Slot[];
    if (keepKey === this.tailKey) slots = this.tail;
    else slots = this.overlay.get(keepKey) ?? this.readSegment(keepKey, true);
    this.overlay.delete(keepKey);
    this.tailKey = keepKey;
    this.tail = slots.slice(0, newNextSeq - keepKey * SEGMENT_RECORDS);
    this.markTailDirty();
    if (this.meta.firstSeq !== undefined && newNextSeq < this.meta.firstSeq) {
      this.meta = { ...this.meta, firstSeq: newNextSeq };
      this.track(this.metaDb.put(this.metaKey, this.meta));
    }
  }

  putMeta(meta: FieldMeta): void {
    this.meta = { ...meta, firstSeq: this.meta.firstSeq };
    this.track(this.metaDb.put(this.metaKey, this.meta));
  }

  // ---- internals ---------------------------------------------------------------------------

  /** The open segment is full (or abandoned): write it now and keep it readable until commit. */
  private retireTail(): void {
    if (this.tail.length === 0) return;
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
    queueMicrotask(() => this.flush());
  }

  /** Writes the tail once per turn, then clears committed segments out of the overlay. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.tailDirty) {
      this.tailDirty = false;
      if (this.tail.length === 0) this.track(this.db.remove(this.tailKey));
      else this.track(this.db.put(this.tailKey, encodeSegment(this.tail)));
    }
    if (this.overlay.size === 0 || !this.lastPut) return;
    const written = [...this.overlay];
    this.lastPut.then(
      () => {
        for (const [key, slots] of written) {
          if (this.overlay.get(key) === slots) this.overlay.delete(key);
        }
      },
      () => undefined, // the registry reports write failures
    );
  }

  private writeSegment(key: number, slots: Slot[]): void {
    this.overlay.set(key, slots);
    this.track(this.db.put(key, encodeSegment(slots)));
    this.scheduleFlush();
  }

  private writeExternalIfLarge(seq: number, record: Buffer): void {
    if (record.byteLength > INLINE_BYTES_MAX) this.track(this.db.put(externalKey(seq), record));
  }

  private removeExternal(fromSeq: number, toSeq: number): void {
    // External keys -(seq + 1) for seq in [fromSeq, toSeq) lie in [-toSeq, -fromSeq - 1].
    const keys = [...this.db.getKeys({ start: -toSeq, end: -fromSeq })];
    for (const key of keys) if (key < 0) this.track(this.db.remove(key));
  }

  private readExternal(seq: number): Buffer | undefined {
    const bytes = this.db.getBinaryFast(externalKey(seq));
    return bytes === undefined ? undefined : bytes.subarray(0, bytes.length);
  }

  /** Slots of a stored segment, copied out of LMDB's transient buffer. */
  private readSegment(key: number, copy: boolean): Slot[] {
    const segment = this.db.getBinary(key);
    if (!segment) return [];
    const slots: Slot[] = [];
    let offset = 0;
    while (offset + 4 <= segment.byteLength) {
      const length = segment.readUInt32LE(offset);
      const seq = key * SEGMENT_RECORDS + slots.length;
      if (length === EXTERNAL) {
        const external = this.readExternal(seq);
        slots.push(external ? Buffer.from(external) : HOLE);
        offset += 4;
        continue;
      }
      const bytes = segment.subarray(offset + 4, offset + 4 + length);
      slots.push(length === 0 ? HOLE : copy ? Buffer.from(bytes) : bytes);
      offset += 4 + length;
    }
    return slots;
  }

  private track(promise: Promise<unknown>): void {
    this.lastPut = promise;
    this.onWrite(promise);
  }
}

function encodeSegment(slots: Slot[]): Buffer {
  let bytes = 0;
  for (const slot of slots) bytes += 4 + (slot.byteLength > INLINE_BYTES_MAX ? 0 : slot.byteLength);
  const segment = Buffer.allocUnsafe(bytes);
  let offset = 0;
  for (const slot of slots) {
    if (slot.byteLength > INLINE_BYTES_MAX) {
      segment.writeUInt32LE(EXTERNAL, offset);
      offset += 4;
      continue;
    }
    segment.writeUInt32LE(slot.byteLength, offset);
    segment.set(slot, offset + 4);
    offset += 4 + slot.byteLength;
  }
  return segment;
}
