/**
 * The node's persistence store: one LMDB environment per node (file `<dataDir>/squall.mdb`),
 * one named database per persistent field (named by registry and field), and one `squall.meta`
 * database holding the format marker and per-field facts.
 */
import { closeSync, existsSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { open, type Database, type RootDatabase, type TransactionFlags } from 'lmdb';
import { assert } from '../src/core/assert.js';
import { ConfigError } from '../src/core/errors.js';
import { CorruptDataDirError, ForeignDataDirError, MapFullError } from './errors.js';
import { MemoryLogStorage, type LogStorage } from './log-storage.js';
import { LmdbLogStorage } from './lmdb-storage.js';
import { PersistentRegistry, type RegistryBackend } from './registry.js';

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
}

export const STORE_FILE = 'squall.mdb';
const META_DB = 'squall.meta';
const FORMAT_KEY = 'format';
const FORMAT = { magic: 'squall-persistence', formatVersion: 1 } as const;
// Looking at LMDB's stats costs ~70 µs: do it every 256 writes and at most every 100 ms.
const CAPACITY_CHECK_INTERVAL_MS = 100;
/**
 * 'durable': a commit (synchronous: the time it held the JS thread; on the write thread: from
 * hand-off to sync report) longer than this sends the following turns to the write thread until
 * one is quick again: a stalled disk must not stall the event loop (timers, the transport).
 */
export const DURABLE_INLINE_COMMIT_MS_MAX = 10;

/** One write of a turn's transaction: a put, or a removal when `value` is undefined. */
interface TurnWrite {
  readonly db: Database<any, any>;
  readonly key: number | string;
  readonly value: unknown;
}

/** What the storages of one store write through: one transaction per event turn. */
export interface TurnWriter {
  put(db: Database<any, any>, key: number | string, value: unknown): void;
  remove(db: Database<any, any>, key: number | string): void;
  /** Resolves once everything written so far is committed (and durable, per syncMode). */
  whenWritten(): Promise<void>;
}

export class PersistenceStore implements TurnWriter {
  private readonly root: RootDatabase;
  private readonly metaDb: Database;
  private readonly fieldDbs = new Map<string, Database<Buffer, number>>();
  private readonly registries = new Map<string, PersistentRegistry>();
  private open = true;
  /** This turn's writes, committed together at the end of the turn (see commitTurn). */
  private turnWrites: TurnWrite[] = [];
  private turn: { promise: Promise<void>; resolve: () => void; reject: (error: unknown) => void } | undefined;
  /** The outcome of the last committed turn: what whenWritten() answers between turns. */
  private lastTurn: Promise<void> = Promise.resolve();
  /** 'durable': turns handed to lmdb-js's write thread whose sync was not reported yet. */
  private turnsInFlight = 0;
  /** 'durable': the event loop's idle time (ms, cumulative) when the last turn committed. */
  private idleAtLastCommitMs: number;
  /** 'durable': how long the last commit took (inline: held the thread; else hand-off to sync). */
  private lastCommitMs = 0;
  /** The event loop's cumulative idle time in ms (a seam for tests). */
  private loopIdleMs: () => number = () => performance.eventLoopUtilization().idle;
  private capacityCheckedAtMs = -Infinity;
  private capacityCalls = 255;
  private full: MapFullError | undefined;
  readonly path: string;
  readonly syncMode: SyncMode;
  readonly mapSizeBytes: number;

  private constructor(config: Required<PersistenceConfig>) {
    this.path = join(config.dataDir, STORE_FILE);
    this.syncMode = config.syncMode;
    this.idleAtLastCommitMs = this.loopIdleMs();
    this.mapSizeBytes = config.mapSizeBytes;
    try {
      this.root = open({
        path: this.path,
        maxDbs: config.fieldsMax + 1,
        mapSize: Math.min(config.mapSizeBytes, 1 << 30),
        noSync: config.syncMode === 'buffered',
        // 'durable' (overlappingSync, lmdb-js's default here): a turn handed to lmdb-js's write
        // thread is one transaction (commitTurn issues all its puts in one microtask).
        eventTurnBatching: true,
      });
      this.metaDb = this.root.openDB(META_DB, {});
    } catch (error) {
      throw new CorruptDataDirError(this.path, `LMDB cannot open it (${String(error)})`, error);
    }
    this.checkFormat();
  }

  /** Opens (creating if needed) the node's store. Throws Foreign/CorruptDataDirError. */
  static open(config: PersistenceConfig): PersistenceStore {
    const full: Required<PersistenceConfig> = {
      reset: false,
      mapSizeBytes: 16 * 2 ** 30,
      syncMode: 'durable',
      fieldsMax: 1000,
      ...config,
    };
    const problems: { key: string; message: string }[] = [];
    if (!full.dataDir) problems.push({ key: 'persistence.dataDir', message: 'is required' });
    if (!(full.mapSizeBytes >= 1 << 20)) {
      problems.push({ key: 'persistence.mapSizeBytes', message: 'must be at least 1 MiB' });
    }
    if (full.syncMode !== 'durable' && full.syncMode !== 'buffered') {
      problems.push({ key: 'persistence.syncMode', message: 'must be "durable" or "buffered"' });
    }
    if (problems.length > 0) throw new ConfigError(problems);
    if (full.reset) {
      rmSync(join(full.dataDir, STORE_FILE), { force: true });
      rmSync(join(full.dataDir, `${STORE_FILE}-lock`), { force: true });
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
  // Every write of a turn is collected and committed at the end of the turn (commitTurn), in
  // one transaction: group commit, and atomic multi-field versions and trims.

  put(db: Database<any, any>, key: number | string, value: unknown): void {
    this.turnWrites.push({ db, key, value });
    this.scheduleCommit();
  }

  remove(db: Database<any, any>, key: number | string): void {
    this.turnWrites.push({ db, key, value: undefined });
    this.scheduleCommit();
  }

  whenWritten(): Promise<void> {
    return this.turn?.promise ?? this.lastTurn;
  }

  private scheduleCommit(): void {
    if (this.turn !== undefined) return;
    let resolve!: () => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // registries observe it; an unobserved failure is not unhandled
    this.turn = { promise, resolve, reject };
    // In a microtask queued by the first write of the turn, so after the microtasks already
    // queued (the storages' segment flushes that makeVersion queued): the commit comes in the
    // very turn of the deliveries.
    queueMicrotask(() => this.commitTurn());
  }

  /**
   * Commits the turn's writes in one LMDB transaction and settles the turn's promise once they
   * are committed ('buffered') or committed and synced ('durable'):
   * - 'buffered': synchronously, here on the JS thread (noSync: ~10 µs). No hand-off to
   *   lmdb-js's write thread and back, which cost 0.3-0.8 ms per turn on the shared VM.
   * - 'durable', when the node waits on others rather than on its own work (commitInline: the
   *   loop idled since the last commit at least as long as that commit took; a lone call, a
   *   sporadic writer): synchronously here too, syncs included (lmdb-js's
   *   overlappingSync commit: data pages, fdatasync, then the meta page through an O_DSYNC
   *   descriptor). The thread waits for the disk, but had nothing else to do, and the frontier
   *   moves without the two thread hand-offs (~0.3 ms at load 9 measured on tmpfs, where the
   *   syncs cost nothing; as much as the two syncs on this disk).
   * - 'durable' otherwise (work keeps arriving, a turn already on lmdb-js's write thread, or
   *   a slow disk): lmdb-js's batched puts, committed and synced on its write thread while this
   *   thread goes on, reported by its `flushed`. All-synchronous durable commits halved the
   *   persistence append rate (1.82 M -> 0.88 M versions/s): a streaming writer must not wait
   *   for the disk on every turn.
   * LMDB offers no safe third way (commit here, sync later on another thread): a commit with
   * MDB_NOSYNC followed by a background mdb_env_sync may leave the meta page on disk before the
   * data pages it points to (LMDB: "a system crash can corrupt the database" unless the file
   * system preserves write order, which ext4 does not promise), and lmdb-js's overlappingSync
   * commit, which is crash-safe, syncs inside mdb_txn_commit on the committing thread.
   */
  private commitTurn(): void {
    const turn = this.turn!;
    const writes = this.turnWrites;
    this.turn = undefined;
    this.turnWrites = [];
    this.lastTurn = turn.promise;
    if (!this.open) {
      turn.reject(new Error(`${this.path}: the persistence store is closed`));
      return;
    }
    const idleMs = this.loopIdleMs();
    const idleSinceLastCommitMs = idleMs - this.idleAtLastCommitMs;
    this.idleAtLastCommitMs = idleMs;
    if (this.syncMode === 'durable' && !this.commitInline(idleSinceLastCommitMs)) {
      this.commitOnWriteThread(writes, turn);
      return;
    }
    const startedMs = performance.now();
    try {
      this.root.transactionSync(() => {
        for (const write of writes) {
          if (write.value === undefined) write.db.remove(write.key);
          else write.db.put(write.key, write.value);
        }
        // lmdb-js: not abortable (as its putSync). 'buffered': the environment is noSync.
        // 'durable': a MDB_NOSYNC transaction in an overlappingSync environment, which LMDB
        // syncs (data, then meta) inside the commit, before this call returns.
      }, (this.syncMode === 'durable' ? 0x10002 : 2) as TransactionFlags);
    } catch (error) {
      turn.reject(error);
      return;
    }
    if (this.syncMode === 'durable') this.lastCommitMs = performance.now() - startedMs;
    turn.resolve();
  }

  /**
   * 'durable': commit this turn inline? Only when the node is waiting on others, not on its own
   * work: the loop sat idle since the last commit for at least as long as that commit took (a
   * node with work arriving, e.g. many calls outstanding, idles less and keeps its loop running
   * while lmdb-js's thread syncs); no turn is on the write thread (a later inline commit would
   * report its versions durable before the earlier turn's sync was); and the last commit took
   * at most DURABLE_INLINE_COMMIT_MS_MAX.
   */
  private commitInline(idleSinceLastCommitMs: number): boolean {
    return this.turnsInFlight === 0
      && idleSinceLastCommitMs > 0
      && idleSinceLastCommitMs >= this.lastCommitMs
      && this.lastCommitMs <= DURABLE_INLINE_COMMIT_MS_MAX;
  }

  /** 'durable': hands the turn to lmdb-js's write thread; settles once the commit is synced. */
  private commitOnWriteThread(writes: TurnWrite[], turn: NonNullable<typeof this.turn>): void {
    let committed: Promise<unknown> = Promise.resolve();
    try {
      for (const write of writes) {
        committed = write.value === undefined ? write.db.remove(write.key) : write.db.put(write.key, write.value);
      }
    } catch (error) {
      turn.reject(error);
      return;
    }
    // Taken now, after the turn's puts: lmdb-js's `flushed` resolves once everything written
    // before it was committed and synced (a put's own promise resolves at commit).
    const flushed = new Promise<void>((resolve, reject) => {
      this.root.flushed.then(() => resolve(), reject);
    });
    this.turnsInFlight += 1;
    const startedMs = performance.now();
    Promise.all([committed, flushed]).then(
      () => {
        this.turnsInFlight -= 1;
        this.lastCommitMs = performance.now() - startedMs;
        turn.resolve();
      },
      (error: unknown) => {
        this.turnsInFlight -= 1;
        turn.reject(error);
      },
    );
  }

  /** Waits for pending writes, then closes LMDB. Fields attached to it stop working. */
  async close(): Promise<void> {
    if (!this.open) return;
    await Promise.resolve(); // let this turn's segment flushes (microtasks) reach LMDB first
    await this.whenWritesDurable().catch(() => undefined);
    this.open = false;
    await this.root.close();
  }

  private backend(): RegistryBackend {
    return {
      where: this.path,
      openStorage: (registry, field, kind) => this.openStorage(registry, field, kind),
      whenWritesDurable: () => this.whenWritesDurable(),
      checkCapacity: () => this.checkCapacity(),
      isOpen: () => this.open,
    };
  }

  private openStorage(registry: string, field: string, kind: 'lmdb' | 'memory'): LogStorage {
    if (kind === 'memory') return new MemoryLogStorage();
    const dbName = JSON.stringify([registry, field]);
    assert(!this.fieldDbs.has(dbName), `${registry}/${field} is already open`);
    const db = this.root.openDB<Buffer, number>(dbName, { encoding: 'binary' });
    this.fieldDbs.set(dbName, db);
    return new LmdbLogStorage(db, this.metaDb, `field:${dbName}`, this);
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
