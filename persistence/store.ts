/**
 * The node's persistence store: one LMDB environment per node (file `<dataDir>/squall.mdb`),
 * one named database per persistent field (named by registry and field), and one `squall.meta`
 * database holding the format marker and per-field facts.
 */
import { closeSync, existsSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { assert } from '../src/core/assert.js';
import { ConfigError } from '../src/core/errors.js';
import { CorruptDataDirError, ForeignDataDirError, MapFullError, WalReplayNotDurableError } from './errors.js';
import { MemoryLogStorage, type LogStorage } from './log-storage.js';
import { LmdbLogStorage } from './lmdb-storage.js';
import { PersistentRegistry, type RegistryBackend } from './registry.js';
import { applyExtend, ROTATE_BYTES, WriteAheadLog, walFileNames, type WalStats, type WalSync } from './wal.js';

/**
 * How the persisted frontier relates to the disk:
 * - 'durable': a version is reported persisted only after its LMDB commit was fsynced
 *   (survives power loss and kernel crashes);
 * - 'buffered': reported at commit without fsync (noSync); survives the process being killed,
 *   not the machine losing power. Faster; for tests and volatile deployments.
 */
export type SyncMode = 'durable' | 'buffered';

export interface PersistenceConfig {
  /** Directory for this node's store; created if missing. */
  dataDir: string;
  /** Wipe the store when opening (Derecho's PERS/reset). Default false. */
  reset?: boolean;
  /** Refuse new versions once the file reaches this size. Default 16 GiB. */
  mapSizeBytes?: number;
  /** Default 'durable'. */
  syncMode?: SyncMode;
  /** Named databases the environment can hold (one per field, plus one). Default 1000. */
  fieldsMax?: number;
  /**
   * 'durable' only: the frontier moves when each turn's writes, appended to a write-ahead log
   * (`squall.wal.*`), are fdatasynced; LMDB gets the same writes off that path (wal.ts). False:
   * the frontier waits for LMDB's own synced commit. Default false (see persistence/README.md,
   * "Write-ahead log": it did not beat LMDB's own commit in the group benchmarks on this VM).
   * A log left in the data dir is replayed on open either way.
   */
  writeAheadLog?: boolean;
  /** With the write-ahead log: a log file is left for a new one once it holds this much. Default 16 MiB. */
  walFileBytes?: number;
  /**
   * With the write-ahead log: the turns' writes go to LMDB together, this long after the first
   * of them (one LMDB transaction and its two syncs per batch, not per turn). Default 50 ms.
   */
  lmdbBatchMs?: number;
  /**
   * With the write-ahead log: 'inline' fdatasyncs each turn's frame on the JS thread as it is
   * written (the frontier moves in the turn of the deliveries); 'pool' on libuv's thread pool,
   * one in flight covering every frame written before it (group commit). Default 'pool'.
   */
  walSync?: WalSync;
}

export const STORE_FILE = 'squall.mdb';
const META_DB = 'squall.meta';
const FORMAT_KEY = 'format';
const FORMAT = { magic: 'squall-persistence', formatVersion: 1 } as const;
// Looking at LMDB's stats costs ~70 µs: do it every 256 writes and at most every 100 ms.
const CAPACITY_CHECK_INTERVAL_MS = 100;

/** One write of a turn's transaction: a put, or a removal when `value` is undefined. */
interface TurnWrite {
  readonly db: Database<any, any>;
  /** The database's name (for the write-ahead log). */
  readonly name: string;
  readonly key: number | string;
  readonly value: unknown;
  /** The first `kept` bytes of `value` equal the key's previous put's (TurnWriter.put). */
  readonly kept: number;
}

/** A promise and its settlers. */
interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (error: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // observers see failures; an unobserved one is not unhandled
  return { promise, resolve, reject };
}

/** A turn's durability, and (write-ahead log only: else it is the same) its LMDB commit. */
interface Turn {
  readonly durable: Deferred;
  readonly inLmdb: Deferred | undefined;
}

/** What the storages of one store write through: one transaction per event turn. */
export interface TurnWriter {
  /**
   * `kept`: the first `kept` bytes of `value` (bytes) equal those of this key's previous put
   * (a tail segment that grew in place): the write-ahead log then logs the rest only.
   */
  put(db: Database<any, any>, key: number | string, value: unknown, kept?: number): void;
  remove(db: Database<any, any>, key: number | string): void;
  /** Resolves once everything written so far is committed (and durable, per syncMode). */
  whenWritten(): Promise<void>;
  /** Resolves once everything written so far is committed to LMDB (readable from it). */
  whenInLmdb(): Promise<void>;
}

export class PersistenceStore implements TurnWriter {
  private readonly root: RootDatabase;
  private readonly metaDb: Database;
  /** Databases by name and names by database (the write-ahead log names them). */
  private readonly dbs = new Map<string, Database<any, any>>();
  private readonly dbNames = new Map<Database<any, any>, string>();
  /** Field databases a storage has opened (one storage per field). */
  private readonly fieldsOpen = new Set<string>();
  private readonly registries = new Map<string, PersistentRegistry>();
  private open = true;
  /** This turn's writes, committed together at the end of the turn (see commitTurn). */
  private turnWrites: TurnWrite[] = [];
  /** This turn's durability (per syncMode), and (write-ahead log) its LMDB commit. */
  private turn: Turn | undefined;
  /** The outcome of the last committed turn: what whenWritten() answers between turns. */
  private lastTurn: Promise<void> = Promise.resolve();
  /** 'durable': the last put handed to lmdb-js's batched writes. */
  private lastWrite: Promise<unknown> = Promise.resolve();
  /** 'durable' with the write-ahead log (see wal.ts and commitTurnToLog). */
  private readonly wal: WriteAheadLog | undefined;
  private lmdbFailure: unknown;
  private readonly logStats: WalStats;
  /** Log mode: writes in the log and not yet handed to LMDB, the last frame they hold, their commit. */
  private lmdbPending: TurnWrite[] = [];
  private lmdbPendingFrame = 0;
  private lmdbPendingCommit: Deferred | undefined;
  /** Log mode: the commit of the last batch handed over (or waiting for its frames' sync). */
  private lmdbBatch: Promise<void> | undefined;
  /** Log mode: the last batch's hand-over to lmdb-js, which waits for its frames' fdatasync. */
  private lmdbHandOver: Promise<void> = Promise.resolve();
  private lmdbTimer: NodeJS.Timeout | undefined;
  private readonly lmdbBatchMs: number;
  private capacityCheckedAtMs = -Infinity;
  private capacityCalls = 255;
  private full: MapFullError | undefined;
  readonly path: string;
  readonly syncMode: SyncMode;
  readonly mapSizeBytes: number;

  private constructor(config: Required<PersistenceConfig>) {
    this.path = join(config.dataDir, STORE_FILE);
    this.lmdbBatchMs = config.lmdbBatchMs;
    this.syncMode = config.syncMode;
    this.mapSizeBytes = config.mapSizeBytes;
    try {
      this.root = open({
        path: this.path,
        maxDbs: config.fieldsMax + 1,
        mapSize: Math.min(config.mapSizeBytes, 1 << 30),
        noSync: config.syncMode === 'buffered',
        // 'durable': group commit by lmdb-js: all puts of one event turn go in one transaction.
        eventTurnBatching: true,
      });
      this.metaDb = this.root.openDB(META_DB, {});
    } catch (error) {
      throw new CorruptDataDirError(this.path, `LMDB cannot open it (${String(error)})`, error);
    }
    this.dbs.set(META_DB, this.metaDb);
    this.dbNames.set(this.metaDb, META_DB);
    this.checkFormat();
    // A log left by a store that used one is replayed whatever this store's settings.
    const useLog = config.syncMode === 'durable' && config.writeAheadLog;
    const log = new WriteAheadLog(config.dataDir, useLog, config.walFileBytes, config.walSync);
    try {
      this.replayLog(log, config.dataDir);
    } catch (error) {
      this.root.close();
      throw error;
    }
    this.logStats = log.stats;
    if (useLog) {
      log.restart();
      this.wal = log;
    } else log.discard();
  }

  /**
   * Applies every write of the log's frames to LMDB, in order, in one synced transaction (a
   * 'buffered' store refuses: WalReplayNotDurableError), then
   * starts a new log and deletes the old one. Idempotent: each write sets (or removes) a whole
   * value, the log starts at or before what LMDB holds durably (a file is deleted only once LMDB
   * reported all of it synced), so replaying writes LMDB already has ends in the same state.
   */
  private replayLog(wal: WriteAheadLog, dataDir: string): void {
    const frames = wal.open();
    if (frames.length > 0 && this.syncMode !== 'durable') throw new WalReplayNotDurableError(dataDir, frames.length);
    if (frames.length > 0) {
      // The values this replay wrote, for the extends that follow them (wal.ts, applyExtend).
      const replayed = new Map<string, Map<number | string, Uint8Array | undefined>>();
      // (Durable: this commit syncs before it returns, so the log may then go.)
      this.root.transactionSync(() => {
        for (const writes of frames) {
          for (const write of writes) {
            const db = this.dbNamed(write.name);
            let keys = replayed.get(write.name);
            if (!keys) replayed.set(write.name, (keys = new Map()));
            let value = write.value;
            if (write.kept !== undefined) {
              const previous = keys.has(write.key) ? keys.get(write.key) : (db.getBinary(write.key) as Uint8Array | undefined);
              value = applyExtend(previous, write.kept, value as Uint8Array);
            }
            keys.set(write.key, value instanceof Uint8Array ? value : undefined);
            if (value === undefined) db.remove(write.key);
            else db.put(write.key, value);
          }
        }
      });
    }
  }

  /** The database of that name (a field's, or the meta database). */
  private dbNamed(name: string): Database<any, any> {
    let db = this.dbs.get(name);
    if (!db) {
      db = this.root.openDB<Buffer, number>(name, { encoding: 'binary' });
      this.dbs.set(name, db);
      this.dbNames.set(db, name);
    }
    return db;
  }

  /** What the write-ahead log did (replayed when opening; written, with the log on). */
  get walStats(): WalStats & { fdatasyncsTotal: number } {
    return { ...this.logStats, fdatasyncsTotal: this.wal?.fdatasyncs ?? 0 };
  }

  /** Opens (creating if needed) the node's store. Throws Foreign/CorruptDataDirError. */
  static open(config: PersistenceConfig): PersistenceStore {
    const full: Required<PersistenceConfig> = {
      reset: false,
      mapSizeBytes: 16 * 2 ** 30,
      syncMode: 'durable',
      fieldsMax: 1000,
      writeAheadLog: false,
      walFileBytes: ROTATE_BYTES,
      lmdbBatchMs: 50,
      walSync: 'pool',
      ...config,
    };
    const problems: { key: string; message: string }[] = [];
    if (!full.dataDir) problems.push({ key: 'persistence.dataDir', message: 'is required' });
    if (!(full.mapSizeBytes >= 1 << 20)) {
      problems.push({ key: 'persistence.mapSizeBytes', message: 'must be at least 1 MiB' });
    }
    if (full.walSync !== 'inline' && full.walSync !== 'pool') {
      problems.push({ key: 'persistence.walSync', message: 'must be "inline" or "pool"' });
    }
    if (full.syncMode !== 'durable' && full.syncMode !== 'buffered') {
      problems.push({ key: 'persistence.syncMode', message: 'must be "durable" or "buffered"' });
    }
    if (!(full.lmdbBatchMs >= 0 && full.lmdbBatchMs <= 60_000)) {
      problems.push({ key: 'persistence.lmdbBatchMs', message: 'must be 0 to 60000' });
    }
    if (!(full.walFileBytes >= 4096)) {
      problems.push({ key: 'persistence.walFileBytes', message: 'must be at least 4096' });
    }
    if (problems.length > 0) throw new ConfigError(problems);
    if (full.reset) {
      rmSync(join(full.dataDir, STORE_FILE), { force: true });
      rmSync(join(full.dataDir, `${STORE_FILE}-lock`), { force: true });
      for (const name of walFileNames(full.dataDir)) rmSync(join(full.dataDir, name), { force: true });
    }
    if (!existsSync(full.dataDir)) mkdirSync(full.dataDir, { recursive: true });
    checkLmdbHeader(join(full.dataDir, STORE_FILE));
    return new PersistenceStore(full);
  }

  private checkFormat(): void {
    let marker: unknown;
    try {
      marker = this.metaDb.get(FORMAT_KEY);
    } catch (error) {
      throw new CorruptDataDirError(this.path, 'its format marker cannot be read', error);
    }
    if (marker === undefined) {
      // A new store holds only the meta database we just created; anything else is foreign.
      const names = [...this.root.getKeys({ limit: 10 })].filter((k) => k !== META_DB);
      const metaKeys = [...this.metaDb.getKeys({ limit: 1 })];
      if (names.length > 0 || metaKeys.length > 0) {
        this.root.close();
        throw new ForeignDataDirError(this.path, 'data without a Squall format marker');
      }
      this.metaDb.putSync(FORMAT_KEY, FORMAT);
      return;
    }
    const found = marker as { magic?: unknown; formatVersion?: unknown };
    if (found.magic !== FORMAT.magic || found.formatVersion !== FORMAT.formatVersion) {
      this.root.close();
      throw new ForeignDataDirError(
        this.path,
        `marker ${JSON.stringify(marker)}, expected ${JSON.stringify(FORMAT)}`,
      );
    }
  }

  /** The registry for one replicated-object instance, e.g. "Cache/0/1" (type/subgroup/shard). */
  registry(name: string): PersistentRegistry {
    assert(this.open, 'the persistence store is closed');
    let registry = this.registries.get(name);
    if (!registry) {
      registry = new PersistentRegistry(name, this.backend());
      this.registries.set(name, registry);
    }
    return registry;
  }

  /** Bytes the LMDB file uses (its high-water mark). */
  usedBytes(): number {
    const stats = this.root.getStats() as { pageSize: number; lastPageNumber: number };
    return (stats.lastPageNumber + 1) * stats.pageSize;
  }

  /** Resolves when every write issued so far is durable (per syncMode). */
  whenWritesDurable(): Promise<void> {
    return this.whenWritten();
  }

  // ---- one transaction per event turn ----------------------------------------------------
  //
  // 'buffered': the store commits the turn's writes itself, synchronously on this thread
  // (commitTurn). 'durable': lmdb-js's batched puts (eventTurnBatching), committed and synced
  // on its write thread while this thread goes on: a synchronous durable commit would hold this
  // thread for two device syncs per turn, which halved the append rate of the persistence
  // bench (1.82 M -> 0.88 M versions/s, same minute, load 3) and did not shorten persisted()
  // measurably next to the syncs themselves.

  put(db: Database<any, any>, key: number | string, value: unknown, kept = 0): void {
    if (this.syncMode === 'durable' && !this.wal) {
      this.lastWrite = db.put(key, value as never);
      return;
    }
    this.turnWrites.push({ db, name: this.dbNames.get(db)!, key, value, kept });
    this.scheduleCommit();
  }

  remove(db: Database<any, any>, key: number | string): void {
    if (this.syncMode === 'durable' && !this.wal) {
      this.lastWrite = db.remove(key);
      return;
    }
    this.turnWrites.push({ db, name: this.dbNames.get(db)!, key, value: undefined, kept: 0 });
    this.scheduleCommit();
  }

  whenWritten(): Promise<void> {
    if (this.syncMode === 'durable' && !this.wal) return this.lmdbFlushed();
    return this.turn?.durable.promise ?? this.lastTurn;
  }

  whenInLmdb(): Promise<void> {
    if (!this.wal) return this.whenWritten();
    return this.turn?.inLmdb?.promise ?? this.lmdbPendingCommit?.promise ?? this.lmdbBatch ?? this.lastWrite.then(() => undefined);
  }

  /** lmdb-js's put() promise resolves at commit; `flushed` once that commit is synced. */
  private lmdbFlushed(): Promise<void> {
    return Promise.all([this.lastWrite, this.root.flushed]).then(() => undefined);
  }

  private scheduleCommit(): void {
    if (this.turn !== undefined) return;
    this.turn = { durable: deferred(), inLmdb: this.wal ? deferred() : undefined };
    // In a microtask queued by the first write of the turn, so after the microtasks already
    // queued (the storages' segment flushes that makeVersion queued): the commit costs ~10 µs
    // and the frontier moves in the very turn of the deliveries.
    queueMicrotask(() => this.commitTurn());
  }

  /**
   * 'buffered': commits the turn's writes in one synchronous LMDB transaction, here on the JS
   * thread, and settles the turn's promise. Group commit: every version delivered in the turn,
   * every field, one transaction. The frontier moves in the same turn as the deliveries: no
   * hand-off to lmdb-js's write thread and back, which cost 0.3-0.8 ms per turn on the shared
   * VM (a wake-up of each thread), against ~10 µs for the commit itself.
   */
  private commitTurn(): void {
    const turn = this.turn;
    if (turn === undefined) return; // committed early (commitEarly)
    const writes = this.turnWrites;
    this.turn = undefined;
    this.turnWrites = [];
    this.lastTurn = turn.durable.promise;
    if (!this.open) {
      turn.durable.reject(new Error(`${this.path}: the persistence store is closed`));
      turn.inLmdb?.reject(new Error(`${this.path}: the persistence store is closed`));
      return;
    }
    if (this.wal) {
      this.commitTurnToLog(this.wal, turn, writes);
      return;
    }
    try {
      this.root.transactionSync(() => {
        for (const write of writes) {
          if (write.value === undefined) write.db.remove(write.key);
          else write.db.put(write.key, write.value);
        }
      }, 2); // lmdb-js: not abortable (as its putSync); the environment is noSync
    } catch (error) {
      turn.durable.reject(error);
      return;
    }
    turn.durable.resolve();
  }

  /** See RegistryBackend.commitEarly: with the log's fdatasync idle, commit the writes so far now. */
  private commitEarly(flush: () => void): void {
    if (this.wal === undefined || !this.wal.syncIdle) return;
    flush();
    this.commitTurn();
  }

  /**
   * 'durable' with the write-ahead log: appends the turn's writes to the log as one frame (a
   * write() on this thread), and the turn is durable when the log's fdatasync covering that frame
   * completes (group commit: one fdatasync in flight, on libuv's pool, covering every frame
   * written before it started). The same writes go to LMDB later, off the frontier's path
   * (handToLmdb). Reads keep segments in memory until LMDB has committed them (whenInLmdb).
   */
  private commitTurnToLog(wal: WriteAheadLog, turn: Turn, writes: TurnWrite[]): void {
    const inLmdb = turn.inLmdb!;
    let frame: number;
    try {
      if (this.lmdbFailure !== undefined) throw this.lmdbFailure;
      frame = wal.append(writes);
    } catch (error) {
      turn.durable.reject(error);
      inLmdb.reject(error);
      return;
    }
    wal.whenSynced(frame).then(turn.durable.resolve, turn.durable.reject);
    for (const write of writes) this.lmdbPending.push(write);
    this.lmdbPendingFrame = frame;
    this.lmdbPendingCommit ??= deferred();
    this.lmdbPendingCommit.promise.then(inLmdb.resolve, inLmdb.reject);
    this.lmdbTimer ??= setTimeout(() => this.handToLmdb(), this.lmdbBatchMs);
  }

  /**
   * Log mode: hands the writes of the turns since the last batch to lmdb-js's batched puts, all
   * in this event turn, so one LMDB transaction, committed and synced crash-safely on its write
   * thread (overlappingSync). Only a key's last write in the batch is handed over: a crash may
   * leave LMDB with any part of the batch, and the log, which still holds all of it (a log file is
   * deleted once LMDB has reported the batches covering it synced), is replayed over it in order.
   * One batch per lmdbBatchMs, not one per turn: LMDB's two syncs per transaction then stay off
   * the disk while the log's fdatasync waits there.
   *
   * A batch goes to lmdb-js only once the log's fdatasync covering its frames completed: LMDB
   * must never durably hold a write the log may lose. Otherwise a machine crash could leave LMDB
   * with a later turn (say a new tail segment) and the log durable only up to an earlier one;
   * replaying that shorter log would set the keys it holds back to the earlier turn and keep
   * LMDB's later ones: a field log with a hole.
   */
  private handToLmdb(): void {
    this.lmdbTimer = undefined;
    const writes = this.lmdbPending;
    const frame = this.lmdbPendingFrame;
    const commit = this.lmdbPendingCommit!;
    this.lmdbPending = [];
    this.lmdbPendingCommit = undefined;
    this.lmdbBatch = commit.promise;
    this.lmdbHandOver = this.wal!.whenSynced(frame).then(
      () => this.putBatch(writes, frame, commit),
      (error: unknown) => {
        // The log's sync failed: the store has failed (the registry reports it); LMDB gets nothing more.
        this.lmdbFailure ??= error;
        commit.reject(error);
      },
    );
  }

  /** Log mode: hands one batch (its frames are durable in the log) to lmdb-js. */
  private putBatch(writes: readonly TurnWrite[], frame: number, commit: Deferred): void {
    const last = new Map<Database<any, any>, Map<number | string, unknown>>();
    for (const write of writes) {
      let keys = last.get(write.db);
      if (!keys) last.set(write.db, (keys = new Map()));
      keys.set(write.key, write.value);
    }
    let put = this.lastWrite;
    for (const [db, keys] of last) {
      for (const [key, value] of keys) put = value === undefined ? db.remove(key) : db.put(key, value as never);
    }
    this.lastWrite = put;
    put.then(commit.resolve, (error: unknown) => {
      // The log holds these writes (replayed at the next open); LMDB refuses them now.
      this.lmdbFailure ??= error;
      commit.reject(error);
    });
    const wal = this.wal!;
    this.lmdbFlushed().then(() => wal.lmdbDurable(frame), () => undefined);
  }

  /** Waits for pending writes, then closes LMDB. Fields attached to it stop working. */
  async close(): Promise<void> {
    if (!this.open) return;
    await Promise.resolve(); // let this turn's segment flushes (microtasks) reach LMDB first
    await this.whenWritesDurable().catch(() => undefined);
    if (this.wal) {
      if (this.lmdbTimer !== undefined) {
        clearTimeout(this.lmdbTimer);
        this.handToLmdb();
      }
      await this.lmdbHandOver;
      const lmdbHasAll = await this.lmdbFlushed().then(() => true, () => false);
      await this.wal.close(lmdbHasAll && this.lmdbFailure === undefined);
    }
    this.open = false;
    await this.root.close();
  }

  private backend(): RegistryBackend {
    return {
      where: this.path,
      openStorage: (registry, field, kind) => this.openStorage(registry, field, kind),
      whenWritesDurable: () => this.whenWritesDurable(),
      commitEarly: (flush) => this.commitEarly(flush),
      checkCapacity: () => this.checkCapacity(),
      isOpen: () => this.open,
    };
  }

  private openStorage(registry: string, field: string, kind: 'lmdb' | 'memory'): LogStorage {
    if (kind === 'memory') return new MemoryLogStorage();
    const dbName = JSON.stringify([registry, field]);
    assert(!this.fieldsOpen.has(dbName), `${registry}/${field} is already open`);
    this.fieldsOpen.add(dbName);
    return new LmdbLogStorage(this.dbNamed(dbName), this.metaDb, `field:${dbName}`, this);
  }

  private checkCapacity(): void {
    if (this.full) throw this.full;
    if ((this.capacityCalls = (this.capacityCalls + 1) & 255) !== 0) return;
    const nowMs = performance.now();
    if (nowMs - this.capacityCheckedAtMs < CAPACITY_CHECK_INTERVAL_MS) return;
    this.capacityCheckedAtMs = nowMs;
    const used = this.usedBytes();
    if (used >= this.mapSizeBytes) {
      this.full = new MapFullError(this.path, used, this.mapSizeBytes);
      throw this.full;
    }
  }
}

/**
 * LMDB trusts its file: opening garbage can crash the process (seen here: a segfault), so look
 * at the first meta page before handing the file to LMDB. Page 0 holds MDB_meta after a 16-byte
 * page header: magic 0xBEEFC0DE, then the data format version (2 for lmdb-js's LMDB).
 */
function checkLmdbHeader(path: string): void {
  if (!existsSync(path)) return;
  const size = statSync(path).size;
  if (size === 0) return;
  const header = Buffer.alloc(32);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, header, 0, header.byteLength, 0);
  } finally {
    closeSync(fd);
  }
  const magic = header.readUInt32LE(24);
  const formatVersion = header.readUInt32LE(28);
  if (size < 2 * 4096 || magic !== 0xbeefc0de || formatVersion !== 2) {
    throw new CorruptDataDirError(
      path,
      `it is not an LMDB file of this version (size ${size}, magic 0x${magic.toString(16)}, ` +
        `format ${formatVersion})`,
    );
  }
}

/** A registry whose fields all keep history in memory (tests, simulation, Volatile-only use). */
export function memoryRegistry(name: string): PersistentRegistry {
  return new PersistentRegistry(name, {
    where: `memory registry ${name}`,
    openStorage: () => new MemoryLogStorage(),
    whenWritesDurable: () => Promise.resolve(),
    checkCapacity: () => undefined,
    isOpen: () => true,
  });
}
