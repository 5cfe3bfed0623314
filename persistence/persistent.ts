/**
 * Persistent<T> and Volatile<T>: a field's current value plus the log of its versions.
 *
 * User code changes the current value with `field.value = next` or `field.update(fn)`; a delta
 * type (PersistentMap) records its own changes. Nothing is logged until the runtime calls
 * `registry.makeVersion(version, time)` after an ordered call is delivered: then every field
 * whose value changed appends one record. Reads of history work once a PersistentRegistry has
 * attached the field.
 */
import { FIELD_HOOKS, type FieldHooks, type HasFieldHooks } from '../decorators/field-hooks.js';
import { assert } from '../src/core/assert.js';
import { compareHlc, hlcAtOrBefore, maxHlc, type Hlc } from '../src/core/hlc.js';
import { VERSION_NONE, type Version } from '../src/core/ids.js';
import { msgpackCodec, type DeltaCodec, type ValueCodec } from './codec.js';
import {
  FieldNotAttachedError,
  IndexOutOfRangeError,
  TimeNotStableError,
  VersionBeyondLatestError,
  VersionNotFoundError,
  VersionTrimmedError,
} from './errors.js';
import {
  encodeRecord,
  recordBaseSeq,
  recordEffectiveTime,
  recordKind,
  recordPayload,
  recordTime,
  recordVersion,
  RECORD_DELTA,
  RECORD_FULL,
} from './record.js';
import type { VersionLog } from './version-log.js';

export interface PersistentOptions<T> {
  /** How values become bytes; default msgpack (Map, Set, Date, bigint, typed arrays survive). */
  codec?: ValueCodec<T>;
  /** Delta mode: store only changes per version (the codec then comes from here). */
  delta?: DeltaCodec<T>;
  /**
   * Delta mode: also a full checkpoint at least every this many versions (default: no count
   * bound). Without it the byte budget alone decides (see CHECKPOINT_BYTES_MIN).
   */
  checkpointEvery?: number;
}

/**
 * Delta mode's checkpoint rule: a full record is written once the deltas since the last one
 * would exceed that full record's size (and at least this many bytes). Writing then costs
 * O(delta) amortized, however large the value (a checkpoint every N versions costs O(value)
 * per N versions: a 100,000-key map re-encoded every 1,024 puts cost more than the puts), and
 * reading any version costs one full decode plus at most as many delta bytes as the full
 * record holds: about twice a full decode.
 */
export const CHECKPOINT_BYTES_MIN = 1024;

/** What the registry gives a field when it attaches it. */
export interface FieldBinding {
  readonly log: VersionLog;
  /** The registry's stability frontier: temporal reads beyond it are refused. */
  stabilityFrontier(): Hlc;
  /** False once the store is closed. */
  isOpen(): boolean;
}

/** A version as stored: its number, sender timestamp and 0-based index in the kept log. */
export interface VersionInfo {
  version: Version;
  time: Hlc;
  index: number;
}

export type TimeQuery = Hlc | Date | number;

function toHlc(time: TimeQuery): Hlc {
  return time instanceof Date || typeof time === 'number' ? hlcAtOrBefore(time) : time;
}

export class Persistent<T> implements HasFieldHooks {
  /** 'lmdb' fields keep history in the node's LMDB store; Volatile<T> keeps it in memory. */
  readonly storageKind: 'lmdb' | 'memory' = 'lmdb';
  /** Set by the registry when attached: "<registry>/<field>". */
  name = '(unattached field)';

  private current: T;
  private readonly codec: ValueCodec<T>;
  private readonly delta: DeltaCodec<T> | undefined;
  private readonly checkpointEvery: number;
  // Delta mode: the size of the last full record and the delta bytes logged after it.
  private checkpointBytes = 0;
  private deltaBytesSinceCheckpoint = 0;
  private binding: FieldBinding | undefined;
  private writes = 0;
  // Full mode: bytes of the last logged value, to log only real changes.
  private lastLoggedBytes: Uint8Array | undefined;
  // Delta mode: the value was replaced since the last version, so the next record must be full.
  private replaced = true;
  private lastCheckpointSeq = -1;
  private lastEffectiveTime: Hlc | undefined;

  constructor(
    private readonly factory: () => T,
    options: PersistentOptions<T> = {},
  ) {
    this.delta = options.delta;
    this.codec = options.delta ?? options.codec ?? msgpackCodec<T>();
    this.checkpointEvery = options.checkpointEvery ?? Number.POSITIVE_INFINITY;
    assert(
      this.checkpointEvery === Number.POSITIVE_INFINITY ||
        (Number.isInteger(this.checkpointEvery) && this.checkpointEvery >= 1),
      'checkpointEvery must be a positive integer',
    );
    this.current = factory();
  }

  // ---- current value ----------------------------------------------------------------------

  /** The current value (including changes not yet made into a version). */
  get value(): T {
    return this.current;
  }
  set value(next: T) {
    this.replaceCurrent(next);
  }

  /**
   * Changes the current value: `fn` may mutate it in place (return nothing) or return a new
   * value. Either way the change counts as a write and is logged at the next makeVersion.
   */
  update(fn: (value: T) => T | void): void {
    const result = fn(this.current);
    if (result === undefined) this.writes += 1;
    else this.replaceCurrent(result);
  }

  /** True if the field runs in delta mode. */
  get deltaMode(): boolean {
    return this.delta !== undefined;
  }

  readonly [FIELD_HOOKS]: FieldHooks = (() => {
    const field = this;
    return {
      get writeCount(): number {
        return field.writeCount();
      },
      snapshotCurrent: (): Uint8Array => field.codec.encode(field.current),
      restoreCurrent: (bytes: Uint8Array): void => field.replaceCurrent(field.codec.decode(bytes)),
    };
  })();

  private writeCount(): number {
    return this.writes + (this.delta ? this.delta.changeCount(this.current) : 0);
  }

  private replaceCurrent(next: T): void {
    // writeCount must only grow, also when the new value's own change counter is lower.
    this.writes += (this.delta ? this.delta.changeCount(this.current) : 0) + 1;
    this.current = next;
    this.replaced = true;
  }

  // ---- registry side ----------------------------------------------------------------------

  /** @internal Called by PersistentRegistry.attach: loads the latest version if there is one. */
  attachLog(name: string, binding: FieldBinding): void {
    assert(this.binding === undefined, `${name} is already attached to a registry`);
    this.name = name;
    this.binding = binding;
    const log = binding.log;
    if (log.count > 0) {
      this.loadTailCursors();
    } else {
      // Nothing logged yet: the initial value is not a version; only changes to it are.
      this.replaced = false;
      if (this.delta) this.delta.takeDelta(this.current);
      else this.lastLoggedBytes = this.codec.encode(this.current);
    }
  }

  /** @internal Appends a record if the value changed since the last version. */
  makeVersion(version: Version, time: Hlc): boolean {
    const log = this.attachedLog('makeVersion');
    let kind = RECORD_FULL;
    let payload: Uint8Array;
    if (this.delta) {
      const delta = this.delta.takeDelta(this.current);
      if (delta === null && !this.replaced) return false;
      const needsCheckpoint =
        this.replaced || delta === null || this.checkpointDue(log, delta.byteLength);
      if (needsCheckpoint) payload = this.encodeFull(this.current);
      else {
        kind = RECORD_DELTA;
        payload = delta;
      }
    } else {
      payload = this.codec.encode(this.current);
      if (this.lastLoggedBytes && Buffer.compare(payload, this.lastLoggedBytes) === 0) return false;
      this.lastLoggedBytes = payload;
    }
    this.appendRecord(kind, version, time, payload);
    this.replaced = false;
    return true;
  }

  /**
   * @internal Appends a record shipped from another node (state transfer) and keeps `current`
   * in step. The sender's effective time is carried over so temporal reads agree.
   */
  appendTransferred(
    kind: number,
    version: Version,
    time: Hlc,
    effectiveTime: Hlc,
    payload: Buffer,
  ): void {
    const log = this.attachedLog('applyChunk');
    if (kind === RECORD_FULL) this.current = this.codec.decode(payload);
    else {
      assert(this.delta !== undefined, `${this.name}: a delta record for a field in full mode`);
      this.delta.applyDelta(this.current, payload);
    }
    this.writes += 1;
    let ownKind = kind;
    let bytes: Uint8Array = payload;
    if (this.delta) {
      this.delta.takeDelta(this.current);
      if (kind === RECORD_DELTA && this.checkpointDue(log, payload.byteLength)) {
        ownKind = RECORD_FULL;
        bytes = this.encodeFull(this.current);
      }
    } else {
      bytes = Uint8Array.prototype.slice.call(payload);
      this.lastLoggedBytes = bytes;
    }
    if (this.lastEffectiveTime) effectiveTime = maxHlc(effectiveTime, this.lastEffectiveTime);
    this.lastEffectiveTime = effectiveTime;
    this.appendRecord(ownKind, version, time, bytes);
    this.replaced = false;
  }

  /** The payload of a full record of `value` in this field's log (see DeltaCodec.encodeCheckpoint). */
  private encodeFull(value: T): Uint8Array {
    return this.delta?.encodeCheckpoint?.(value) ?? this.codec.encode(value);
  }

  private appendRecord(kind: number, version: Version, time: Hlc, payload: Uint8Array): void {
    const log = this.attachedLog('makeVersion');
    const effectiveTime = this.lastEffectiveTime ? maxHlc(this.lastEffectiveTime, time) : time;
    const seq = log.nextSeq;
    const baseSeq = kind === RECORD_FULL ? seq : this.lastCheckpointSeq;
    log.appendRecord({ kind, version, time, effectiveTime, baseSeq }, payload);
    if (kind === RECORD_FULL) {
      this.lastCheckpointSeq = seq;
      this.checkpointBytes = payload.byteLength;
      this.deltaBytesSinceCheckpoint = 0;
    } else {
      this.deltaBytesSinceCheckpoint += payload.byteLength;
    }
    this.lastEffectiveTime = effectiveTime;
  }

  /** Delta mode: whether the next record must be full instead of a delta of `deltaBytes`. */
  private checkpointDue(log: VersionLog, deltaBytes: number): boolean {
    return (
      this.lastCheckpointSeq < log.firstSeq ||
      log.nextSeq - this.lastCheckpointSeq >= this.checkpointEvery ||
      this.deltaBytesSinceCheckpoint + deltaBytes > Math.max(this.checkpointBytes, CHECKPOINT_BYTES_MIN)
    );
  }

  /**
   * The cursors of a non-empty log's tail (at attach and after a truncate): effective time, last
   * checkpoint and the bytes after it (so the checkpoint rule holds across restarts), current value.
   */
  private loadTailCursors(): void {
    const log = this.attachedLog('history');
    const last = log.record(log.lastSeq);
    this.lastEffectiveTime = recordEffectiveTime(last);
    this.lastCheckpointSeq = recordKind(last) === RECORD_FULL ? log.lastSeq : recordBaseSeq(last);
    this.measureSinceCheckpoint();
    this.resetCurrentTo(log.lastSeq);
  }

  private measureSinceCheckpoint(): void {
    const log = this.attachedLog('history');
    this.checkpointBytes = 0;
    this.deltaBytesSinceCheckpoint = 0;
    if (!this.delta || this.lastCheckpointSeq < log.firstSeq) return; // the next record is full
    this.checkpointBytes = recordPayload(log.record(this.lastCheckpointSeq)).byteLength;
    for (let seq = this.lastCheckpointSeq + 1; seq <= log.lastSeq; seq++) {
      this.deltaBytesSinceCheckpoint += recordPayload(log.record(seq)).byteLength;
    }
  }

  /** @internal Rebuilds `current` from the record at seq (after truncate or attach). */
  resetCurrentTo(seq: number): void {
    this.current = this.valueAtSeq(seq);
    this.writes += 1;
    this.replaced = false;
    if (this.delta) this.delta.takeDelta(this.current);
    else this.lastLoggedBytes = this.codec.encode(this.current);
  }

  /** @internal After truncate emptied the log: back to the factory value, nothing logged. */
  resetToInitial(): void {
    this.current = this.factory();
    this.writes += 1;
    this.replaced = false;
    if (this.delta) this.delta.takeDelta(this.current);
    this.lastCheckpointSeq = -1;
    this.checkpointBytes = 0;
    this.deltaBytesSinceCheckpoint = 0;
    this.lastEffectiveTime = undefined;
    this.lastLoggedBytes = this.delta ? undefined : this.codec.encode(this.current);
  }

  /** @internal After a truncate: the effective-time and checkpoint cursors of the new tail. */
  reloadTail(): void {
    const log = this.attachedLog('truncate');
    if (log.count === 0) return this.resetToInitial();
    this.loadTailCursors();
  }

  /** @internal The full record for seq (materializing a delta chain), for trim and transfer. */
  fullRecordAt(seq: number): Buffer {
    const log = this.attachedLog('trim');
    const record = log.record(seq);
    if (recordKind(record) === RECORD_FULL) return Buffer.from(record);
    const header = {
      kind: RECORD_FULL,
      version: recordVersion(record),
      time: recordTime(record),
      effectiveTime: recordEffectiveTime(record),
      baseSeq: seq,
    };
    return encodeRecord(header, this.encodeFull(this.valueAtSeq(seq)));
  }

  /** @internal After trim made `seq` the first record, a delta there must become full. */
  noteCheckpointAt(seq: number): void {
    if (this.lastCheckpointSeq >= seq) return;
    this.lastCheckpointSeq = seq;
    this.measureSinceCheckpoint();
  }

  /** @internal */
  get log(): VersionLog {
    return this.attachedLog('history');
  }

  private attachedLog(operation: string): VersionLog {
    if (!this.binding || !this.binding.isOpen()) {
      throw new FieldNotAttachedError(this.name, operation);
    }
    return this.binding.log;
  }

  /** A fresh copy of the value at seq: the base checkpoint plus the deltas after it. */
  private valueAtSeq(seq: number): T {
    const log = this.attachedLog('history');
    const record = log.record(seq);
    if (recordKind(record) === RECORD_FULL) return this.codec.decode(recordPayload(record));
    assert(this.delta !== undefined, `${this.name}: delta record ${seq} in a full-mode field`);
    // After a trim the first kept record is full and later deltas may name a dropped base.
    const baseSeq = Math.max(recordBaseSeq(record), log.firstSeq);
    if (baseSeq >= seq) assert(false, `${this.name}: delta base ${baseSeq} is not below ${seq}`);
    const value = this.delta.decode(recordPayload(log.record(baseSeq)));
    for (let s = baseSeq + 1; s <= seq; s++) {
      const step = log.record(s);
      if (recordKind(step) !== RECORD_DELTA) assert(false, `${this.name}: record ${s} not a delta`);
      this.delta.applyDelta(value, recordPayload(step));
    }
    this.delta.takeDelta(value);
    return value;
  }

  // ---- reads by version, index and time ---------------------------------------------------

  /** Versions kept (after trims). */
  count(): number {
    return this.attachedLog('count').count;
  }

  /** The value at `version`: that of the newest version at or below it. */
  get(version: bigint): T {
    return this.valueAtSeq(this.seqOfVersion(version));
  }

  /** The newest version at or below `version` (same errors as get()). */
  versionAt(version: bigint): Version {
    return this.attachedLog('versionAt').versionAt(this.seqOfVersion(version));
  }

  /** The 0-based index of the newest version at or below `version`. */
  indexOfVersion(version: bigint): number {
    const log = this.attachedLog('indexOfVersion');
    return this.seqOfVersion(version) - log.firstSeq;
  }

  /** The value at index (0 = earliest kept, -1 = latest). */
  getByIndex(index: number): T {
    return this.valueAtSeq(this.seqOfIndex(index));
  }

  versionOfIndex(index: number): Version {
    return this.attachedLog('versionOfIndex').versionAt(this.seqOfIndex(index));
  }

  /**
   * The value of the newest version whose effective time is at or before `time` (an HLC, a
   * Date, or epoch microseconds). Refused beyond the registry's stability frontier.
   */
  getByTime(time: TimeQuery): T {
    return this.valueAtSeq(this.seqOfTime(time));
  }

  versionAtTime(time: TimeQuery): Version {
    return this.attachedLog('versionAtTime').versionAt(this.seqOfTime(time));
  }

  indexAtTime(time: TimeQuery): number {
    return this.seqOfTime(time) - this.attachedLog('indexAtTime').firstSeq;
  }

  /** Version number, sender timestamp and index of the entry at index. */
  infoByIndex(index: number): VersionInfo {
    const log = this.attachedLog('infoByIndex');
    const seq = this.seqOfIndex(index);
    const record = log.record(seq);
    return { version: recordVersion(record), time: recordTime(record), index: seq - log.firstSeq };
  }

  earliestVersion(): Version {
    const log = this.attachedLog('earliestVersion');
    return log.count === 0 ? VERSION_NONE : log.versionAt(log.firstSeq);
  }
  latestVersion(): Version {
    const log = this.attachedLog('latestVersion');
    return log.count === 0 ? VERSION_NONE : log.versionAt(log.lastSeq);
  }
  /** -1 when empty. */
  earliestIndex(): number {
    return this.attachedLog('earliestIndex').count === 0 ? -1 : 0;
  }
  latestIndex(): number {
    return this.attachedLog('latestIndex').count - 1;
  }
  /** Sender timestamp of the earliest kept version, undefined when empty. */
  earliestTime(): Hlc | undefined {
    const log = this.attachedLog('earliestTime');
    return log.count === 0 ? undefined : recordTime(log.record(log.firstSeq));
  }
  latestTime(): Hlc | undefined {
    const log = this.attachedLog('latestTime');
    return log.count === 0 ? undefined : recordTime(log.record(log.lastSeq));
  }

  /** The newest kept version strictly below `version`, or VERSION_NONE. */
  previousVersion(version: bigint): Version {
    const log = this.attachedLog('previousVersion');
    const seq = log.floorSeqByVersion(version - 1n);
    return seq < 0 ? VERSION_NONE : log.versionAt(seq);
  }

  /** The oldest kept version strictly above `version`, or VERSION_NONE. */
  nextVersion(version: bigint): Version {
    const log = this.attachedLog('nextVersion');
    const seq = log.floorSeqByVersion(version) + 1;
    const next = Math.max(seq, log.firstSeq);
    return next > log.lastSeq ? VERSION_NONE : log.versionAt(next);
  }

  private seqOfVersion(version: bigint): number {
    const log = this.attachedLog('get');
    const latest = this.latestVersion();
    if (version > latest) throw new VersionBeyondLatestError(this.name, version, latest);
    const seq = log.floorSeqByVersion(version);
    if (seq < 0) {
      if (log.meta.trimmed) {
        throw new VersionTrimmedError(this.name, version, this.earliestVersion());
      }
      throw new VersionNotFoundError(this.name, `version ${version}`);
    }
    return seq;
  }

  private seqOfIndex(index: number): number {
    const log = this.attachedLog('getByIndex');
    const count = log.count;
    if (!Number.isInteger(index) || index >= count || index < -count) {
      throw new IndexOutOfRangeError(this.name, index, count);
    }
    return log.firstSeq + (index < 0 ? count + index : index);
  }

  private seqOfTime(query: TimeQuery): number {
    const log = this.attachedLog('getByTime');
    const time = toHlc(query);
    const frontier = this.binding!.stabilityFrontier();
    if (compareHlc(time, frontier) > 0) throw new TimeNotStableError(this.name, time, frontier);
    const seq = log.floorSeqByTime(time);
    if (seq < 0) {
      const what = `time ${time.micros}.${time.logical}`;
      if (log.meta.trimmed && log.count > 0) {
        throw new VersionTrimmedError(this.name, -1n, this.earliestVersion());
      }
      throw new VersionNotFoundError(this.name, what);
    }
    return seq;
  }
}

/** Same API as Persistent<T>; history lives in memory and is lost on restart. */
export class Volatile<T> extends Persistent<T> {
  override readonly storageKind: 'lmdb' | 'memory' = 'memory';
}

