/**
 * The ordered log of one field: bounds, appends, trim/truncate, and the searches every read
 * uses. Records sit under contiguous sequence numbers, so by-index is one lookup. Versions and
 * effective times are non-decreasing along the sequence, so by-version and by-time are binary
 * searches. To keep those at a handful of record reads, an in-memory fence table holds the
 * version and effective time of every FENCE_STRIDE-th record (n / 32 entries, 24 bytes each):
 * a search is a binary search over the fences, then one over at most 32 records (5 reads,
 * all in one LMDB segment: see lmdb-storage.ts).
 */
import { assert } from '../src/core/assert.js';
import type { Hlc } from '../src/core/hlc.js';
import type { Version } from '../src/core/ids.js';
import type { FieldMeta, LogStorage } from './log-storage.js';
import { compareRecordEffectiveTime, recordEffectiveTime, recordVersion } from './record.js';
import { CorruptDataDirError } from './errors.js';

export const FENCE_STRIDE = 32;

export class VersionLog {
  firstSeq: number;
  nextSeq: number;
  meta: FieldMeta;
  // Fence k (k >= fenceHead) describes seq (fenceFirstIndex + k - fenceHead) * FENCE_STRIDE.
  private fenceVersions: bigint[] = [];
  private fenceMicros: number[] = [];
  private fenceLogical: number[] = [];
  private fenceHead = 0;
  private fenceFirstIndex = 0;

  constructor(
    readonly storage: LogStorage,
    private readonly where: string,
  ) {
    const bounds = storage.load();
    this.firstSeq = bounds.firstSeq;
    this.nextSeq = bounds.nextSeq;
    this.meta = bounds.meta;
    this.rebuildFences();
  }

  get count(): number {
    return this.nextSeq - this.firstSeq;
  }
  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  /** The record at seq, which must be kept. Transient buffer (see LogStorage.get). */
  record(seq: number): Buffer {
    // Hot path: build the message only on failure (a template literal is evaluated eagerly).
    if (seq < this.firstSeq || seq >= this.nextSeq) assert(false, `seq ${seq} outside the log`);
    const record = this.storage.get(seq);
    if (!record) {
      throw new CorruptDataDirError(this.where, `record ${seq} is missing from the log`);
    }
    return record;
  }

  versionAt(seq: number): Version {
    return recordVersion(this.record(seq));
  }
  effectiveTimeAt(seq: number): Hlc {
    return recordEffectiveTime(this.record(seq));
  }

  append(record: Buffer): number {
    const seq = this.nextSeq;
    this.storage.append(seq, record);
    this.nextSeq += 1;
    if (seq % FENCE_STRIDE === 0) this.pushFence(seq, record);
    return seq;
  }

  /** Replaces a kept record in place (trim uses it to turn a delta into a full record). */
  replace(seq: number, record: Buffer): void {
    assert(seq >= this.firstSeq && seq < this.nextSeq, `seq ${seq} outside the kept log`);
    this.storage.replace(seq, record);
  }

  /** Drops records below newFirstSeq. The caller issues it in one event turn (one txn). */
  dropBefore(newFirstSeq: number): void {
    assert(newFirstSeq >= this.firstSeq && newFirstSeq <= this.nextSeq, 'trim point inside log');
    this.storage.dropBefore(this.firstSeq, newFirstSeq);
    this.firstSeq = newFirstSeq;
    while (this.fenceCount() > 0 && this.fenceSeq(this.fenceHead) < newFirstSeq) {
      this.fenceHead += 1;
      this.fenceFirstIndex += 1;
    }
    if (this.fenceHead > 1024 && this.fenceHead * 2 > this.fenceVersions.length) {
      this.fenceVersions = this.fenceVersions.slice(this.fenceHead);
      this.fenceMicros = this.fenceMicros.slice(this.fenceHead);
      this.fenceLogical = this.fenceLogical.slice(this.fenceHead);
      this.fenceHead = 0;
    }
  }

  /** Drops records at and above newNextSeq. */
  dropFrom(newNextSeq: number): void {
    assert(newNextSeq >= this.firstSeq && newNextSeq <= this.nextSeq, 'truncate point inside log');
    this.storage.dropFrom(newNextSeq, this.nextSeq);
    this.nextSeq = newNextSeq;
    while (this.fenceCount() > 0 && this.fenceSeq(this.fenceVersions.length - 1) >= newNextSeq) {
      this.fenceVersions.pop();
      this.fenceMicros.pop();
      this.fenceLogical.pop();
    }
    if (this.fenceCount() === 0) this.rebuildFences();
  }

  setMeta(meta: FieldMeta): void {
    this.meta = { ...meta };
    this.storage.putMeta(this.meta);
  }

  /** The newest seq whose version is <= version, or -1 if every kept version is above it. */
  floorSeqByVersion(version: bigint): number {
    if (this.count === 0) return -1;
    let fence = -1;
    let lo = this.fenceHead;
    let hi = this.fenceVersions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.fenceVersions[mid]! <= version) {
        fence = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const [from, to] = this.window(fence);
    return this.searchRecords(from, to, (seq) => recordVersion(this.record(seq)) <= version);
  }

  /** The newest seq whose effective time is <= time, or -1 if none. */
  floorSeqByTime(time: Hlc): number {
    if (this.count === 0) return -1;
    let fence = -1;
    let lo = this.fenceHead;
    let hi = this.fenceVersions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const micros = this.fenceMicros[mid]!;
      const atOrBefore =
        micros < time.micros || (micros === time.micros && this.fenceLogical[mid]! <= time.logical);
      if (atOrBefore) {
        fence = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    const [from, to] = this.window(fence);
    return this.searchRecords(
      from,
      to,
      (seq) => compareRecordEffectiveTime(this.record(seq), time.micros, time.logical) <= 0,
    );
  }

  /** Seqs [from, to] between fence `fence` (or the log start if -1) and the next fence. */
  private window(fence: number): [number, number] {
    if (fence < 0) {
      const next = this.fenceCount() > 0 ? this.fenceSeq(this.fenceHead) - 1 : this.lastSeq;
      return [this.firstSeq, next];
    }
    const seq = this.fenceSeq(fence);
    return [seq, Math.min(seq + FENCE_STRIDE - 1, this.lastSeq)];
  }

  /** The last seq in [from, to] satisfying a predicate true on a prefix, or -1. */
  private searchRecords(from: number, to: number, atOrBelow: (seq: number) => boolean): number {
    let found = -1;
    let lo = from;
    let hi = to;
    while (lo <= hi) {
      const mid = Math.floor((lo + hi) / 2);
      if (atOrBelow(mid)) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  private fenceCount(): number {
    return this.fenceVersions.length - this.fenceHead;
  }
  private fenceSeq(fence: number): number {
    return (this.fenceFirstIndex + fence - this.fenceHead) * FENCE_STRIDE;
  }

  private pushFence(seq: number, record: Buffer): void {
    if (this.fenceCount() === 0) {
      this.fenceVersions = [];
      this.fenceMicros = [];
      this.fenceLogical = [];
      this.fenceHead = 0;
      this.fenceFirstIndex = seq / FENCE_STRIDE;
    }
    assert(this.fenceSeq(this.fenceVersions.length) === seq, 'fences are contiguous');
    const time = recordEffectiveTime(record);
    this.fenceVersions.push(recordVersion(record));
    this.fenceMicros.push(time.micros);
    this.fenceLogical.push(time.logical);
  }

  private rebuildFences(): void {
    this.fenceVersions = [];
    this.fenceMicros = [];
    this.fenceLogical = [];
    this.fenceHead = 0;
    const firstFence = Math.ceil(this.firstSeq / FENCE_STRIDE) * FENCE_STRIDE;
    this.fenceFirstIndex = firstFence / FENCE_STRIDE;
    for (let seq = firstFence; seq < this.nextSeq; seq += FENCE_STRIDE) {
      this.pushFence(seq, this.record(seq));
    }
  }
}
