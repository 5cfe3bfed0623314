/**
 * PersistentRegistry: the persistent fields of one replicated-object instance (one per shard),
 * versioned together. The runtime drives it:
 *
 *   1. attach(name, field) for every @persistent field when it builds the object;
 *   2. makeVersion(version, time) after each delivered ordered call (every changed field appends
 *      one record; all of them land in one LMDB transaction);
 *   3. onPersisted()/whenPersisted() report the locally persisted frontier, which the runtime
 *      combines into the shard's global persistence frontier;
 *   4. setStabilityFrontier(time) as the stability frontier moves (temporal reads need it);
 *   5. truncate(version) on restart reconciliation, trim(point) when history may go;
 *   6. serializeSuffix()/applyChunk() for state transfer to a joining member.
 */
import { assert } from '../src/core/assert.js';
import { compareHlc, HLC_ZERO, type Hlc } from '../src/core/hlc.js';
import { VERSION_NONE, type Version } from '../src/core/ids.js';
import { Packr } from 'msgpackr';
import { MapFullError, VersionOrderError } from './errors.js';
import type { LogStorage } from './log-storage.js';
import type { Persistent } from './persistent.js';
import {
  checkRecord,
  RECORD_FULL,
  recordEffectiveTime,
  recordKind,
  recordPayload,
  recordTime,
  recordVersion,
} from './record.js';
import { VersionLog } from './version-log.js';

/** What a registry needs from where it lives (an LMDB environment, or nothing: memory). */
export interface RegistryBackend {
  readonly where: string;
  openStorage(registry: string, field: string, kind: 'lmdb' | 'memory'): LogStorage;
  /**
   * Called once per event turn after that turn's writes were issued: resolves when all of them
   * are durable (rejects if a write failed).
   */
  whenWritesDurable(): Promise<void>;
  /**
   * Optional, called after each makeVersion: if committing now would start the durability wait
   * at once (the write-ahead log's fdatasync is idle), calls `flush` (the fields hand their
   * pending writes over) and commits what was written so far; otherwise does nothing and the
   * turn commits at its end as usual.
   */
  commitEarly?(flush: () => void): void;
  /** Throws MapFullError if the store reached its configured size. */
  checkCapacity(): void;
  isOpen(): boolean;
}

export type TrimPoint = bigint | Hlc;

/** Default bytes per state-transfer chunk. */
export const CHUNK_BYTES_DEFAULT = 1 << 20;

const chunkPackr = new Packr({ useRecords: false });

interface Waiter {
  version: Version;
  resolve: () => void;
  reject: (error: unknown) => void;
}

export class PersistentRegistry {
  private readonly fields = new Map<string, Persistent<unknown>>();
  private sortedFields: Persistent<unknown>[] = [];
  private lastVersion: Version = VERSION_NONE;
  private persisted: Version = VERSION_NONE;
  private stability: Hlc = HLC_ZERO;
  private readonly listeners = new Set<(version: Version) => void>();
  private waiters: Waiter[] = [];
  private watchScheduled = false;
  private failure: unknown;

  constructor(
    readonly name: string,
    private readonly backend: RegistryBackend,
  ) {}

  /** Attaches a field under a name unique in this registry and loads its history. */
  attach<T>(fieldName: string, field: Persistent<T>): Persistent<T> {
    assert(!this.fields.has(fieldName), `${this.name}: field ${fieldName} attached twice`);
    const storage = this.backend.openStorage(this.name, fieldName, field.storageKind);
    const where = `${this.backend.where} field ${this.name}/${fieldName}`;
    const log = new VersionLog(storage, where);
    field.attachLog(`${this.name}/${fieldName}`, {
      log,
      stabilityFrontier: () => this.stability,
      isOpen: () => this.backend.isOpen(),
    });
    this.fields.set(fieldName, field as Persistent<unknown>);
    this.sortedFields = this.fieldNames().map((name) => this.fields.get(name)!);
    const latest = field.latestVersion();
    if (latest > this.lastVersion) this.lastVersion = latest;
    // What was on disk at open is durable: it survived the restart.
    if (storage.durable && latest > this.persisted) this.persisted = latest;
    return field;
  }

  field(name: string): Persistent<unknown> | undefined {
    return this.fields.get(name);
  }
  fieldNames(): string[] {
    return [...this.fields.keys()].sort();
  }

  /** The last version made (or loaded, or truncated to). */
  get latestVersion(): Version {
    return this.lastVersion;
  }

  /**
   * Makes `version` of every field whose value changed since the previous version, stamped with
   * the sender's HLC time. Records go to LMDB in the current event turn's transaction.
   * Throws VersionOrderError if version is not above the previous one, MapFullError when full.
   */
  makeVersion(version: Version, time: Hlc): void {
    if (this.failure) throw this.failure;
    if (version <= this.lastVersion) {
      throw new VersionOrderError(this.name, version, this.lastVersion);
    }
    this.backend.checkCapacity();
    // Sorted by name: every replica writes the fields in the same order.
    for (const field of this.sortedFields) field.makeVersion(version, time);
    this.lastVersion = version;
    // With the log's fdatasync idle, this version's frame is written and synced now rather than
    // at the end of the turn: the rest of the turn (the delivery's reply, the multicast's sends)
    // held the sync's start ~50-70 µs (trace, 1 outstanding). While a sync runs, the turn's
    // versions wait for the turn's end and go in one frame (the next sync covers them anyway).
    this.backend.commitEarly?.(this.flushFields);
    this.scheduleWatch();
  }

  private readonly flushFields = (): void => this.flushStorages();

  // ---- frontiers --------------------------------------------------------------------------

  /** The highest version whose writes (and all before it) are durable on this node. */
  get persistedFrontier(): Version {
    return this.persisted;
  }

  /** Calls `listener` with each new persisted frontier. Returns an unsubscribe function. */
  onPersisted(listener: (version: Version) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves once `version` is durable here (at once if it already is). */
  whenPersisted(version: bigint): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (version <= this.persisted) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiters.push({ version: version as Version, resolve, reject });
    });
  }

  /**
   * The runtime's stability frontier: no version stamped at or before `time` will be delivered
   * any more. Temporal reads beyond it are refused. It only moves forward.
   */
  setStabilityFrontier(time: Hlc): void {
    if (compareHlc(time, this.stability) > 0) this.stability = time;
  }
  get stabilityFrontier(): Hlc {
    return this.stability;
  }

  private scheduleWatch(): void {
    if (this.watchScheduled) return;
    this.watchScheduled = true;
    // Runs after the synchronous code that issued this turn's writes, so the durability
    // promise it takes covers all of them: one watch per group commit, not per version.
    queueMicrotask(() => {
      this.watchScheduled = false;
      const target = this.lastVersion;
      // A field's writes may have been queued after this microtask (the turn's first version
      // changed no field, a later one did): hand them to the store first, so the durability
      // promise taken below covers every version up to target.
      this.flushStorages();
      this.backend.whenWritesDurable().then(
        () => this.advance(target),
        (error: unknown) => this.fail(error),
      );
    });
  }

  private advance(version: Version): void {
    if (version <= this.persisted || version > this.lastVersion) return;
    this.persisted = version;
    const ready = this.waiters.filter((w) => w.version <= version);
    this.waiters = this.waiters.filter((w) => w.version > version);
    for (const waiter of ready) waiter.resolve();
    for (const listener of this.listeners) listener(version);
  }

  private fail(error: unknown): void {
    const message = String((error as Error)?.message ?? error);
    this.failure = /MAP_FULL|mapsize|ENOSPC/i.test(message)
      ? new MapFullError(this.backend.where, -1, -1, error)
      : error;
    for (const waiter of this.waiters) waiter.reject(this.failure);
    this.waiters = [];
  }

  // ---- trim and truncate -----------------------------------------------------------------

  /**
   * Drops history no read at or after `point` needs: every version older than the newest one
   * at or before `point` (a version number or an HLC time). A delta kept as the new first record
   * is rewritten as a full value. One transaction: a crash leaves all fields before or after.
   */
  trim(point: TrimPoint): Promise<void> {
    for (const name of this.fieldNames()) {
      const field = this.fields.get(name)!;
      const log = field.log;
      const seq =
        typeof point === 'bigint' ? log.floorSeqByVersion(point) : log.floorSeqByTime(point);
      if (seq <= log.firstSeq) continue;
      if (recordKind(log.record(seq)) !== RECORD_FULL) log.replace(seq, field.fullRecordAt(seq));
      field.noteCheckpointAt(seq);
      log.dropBefore(seq);
      log.setMeta({ ...log.meta, trimmed: true });
    }
    this.scheduleWatch();
    return this.afterFlush();
  }

  /**
   * Drops every version above `version` in every field and resets current values to the
   * versions kept (restart reconciliation: Derecho's ragged-trim truncate). One transaction.
   */
  truncate(version: bigint): Promise<void> {
    for (const name of this.fieldNames()) {
      const field = this.fields.get(name)!;
      const log = field.log;
      const seq = log.floorSeqByVersion(version);
      const keepNext = seq < 0 ? log.firstSeq : seq + 1;
      if (keepNext === log.nextSeq) continue;
      log.dropFrom(keepNext);
      field.reloadTail();
    }
    if (version < this.lastVersion) this.lastVersion = version as Version;
    if (version < this.persisted) this.persisted = version as Version;
    return this.afterFlush();
  }

  /**
   * Durability of everything issued so far, taken after the storages' per-turn flush microtasks
   * (queued while issuing) have handed their segment writes to LMDB.
   */
  private afterFlush(): Promise<void> {
    return Promise.resolve().then(() => {
      this.flushStorages();
      return this.backend.whenWritesDurable();
    });
  }

  private flushStorages(): void {
    for (const field of this.fields.values()) field.log.storage.flushPending?.();
  }

  // ---- state transfer ---------------------------------------------------------------------

  /**
   * The log suffix after `afterVersion` (every version above it, all fields) as a stream of
   * chunks of about `chunkBytesMax` bytes, built lazily: a large history streams instead of
   * becoming one buffer. Each field's first record in the suffix is sent as a full value, so the
   * receiver needs nothing older. Chunks must be applied in order with applyChunk().
   */
  *serializeSuffix(
    afterVersion: bigint,
    chunkBytesMax = CHUNK_BYTES_DEFAULT,
  ): Generator<Uint8Array> {
    assert(chunkBytesMax > 0, 'chunkBytesMax must be positive');
    // Merge all fields' suffixes by version so the receiver appends in version order.
    const cursors = this.fieldNames().map((name) => {
      const field = this.fields.get(name)!;
      const log = field.log;
      const seq = log.floorSeqByVersion(afterVersion) + 1;
      return { name, field, log, seq: Math.max(seq, log.firstSeq), first: true };
    });
    let items: [string, Uint8Array][] = [];
    let bytes = 0;
    for (;;) {
      let best: (typeof cursors)[number] | undefined;
      let bestVersion = 0n;
      for (const cursor of cursors) {
        if (cursor.seq > cursor.log.lastSeq) continue;
        const version = cursor.log.versionAt(cursor.seq);
        if (!best || version < bestVersion) {
          best = cursor;
          bestVersion = version;
        }
      }
      if (!best) break;
      const record = best.first
        ? best.field.fullRecordAt(best.seq)
        : Buffer.from(best.log.record(best.seq));
      best.first = false;
      best.seq += 1;
      items.push([best.name, record]);
      bytes += record.byteLength + best.name.length + 8;
      if (bytes >= chunkBytesMax) {
        yield chunkPackr.pack(items);
        items = [];
        bytes = 0;
      }
    }
    if (items.length > 0) yield chunkPackr.pack(items);
  }

  /**
   * Applies one chunk from serializeSuffix() on another node. Records at or below a field's
   * latest version are skipped (re-applying a chunk is harmless). The records are written like
   * makeVersion's, so they count toward the persisted frontier.
   */
  applyChunk(chunk: Uint8Array): void {
    if (this.failure) throw this.failure;
    this.backend.checkCapacity();
    const items = chunkPackr.unpack(chunk) as [string, Uint8Array][];
    assert(Array.isArray(items), 'a state-transfer chunk is a list of records');
    for (const [name, bytes] of items) {
      const field = this.fields.get(name);
      assert(field !== undefined, `${this.name}: chunk names field ${name}, which is not attached`);
      const record = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      checkRecord(record);
      const version = recordVersion(record);
      if (version <= field.latestVersion()) continue;
      field.appendTransferred(
        recordKind(record),
        version,
        recordTime(record),
        recordEffectiveTime(record),
        recordPayload(record),
      );
      if (version > this.lastVersion) this.lastVersion = version;
    }
    this.scheduleWatch();
  }
}
