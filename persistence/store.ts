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
  /** 'durable': the last put handed to lmdb-js's batched writes. */
  private lastWrite: Promise<unknown> = Promise.resolve();
  private capacityCheckedAtMs = -Infinity;
  private capacityCalls = 255;
  private full: MapFullError | undefined;
  readonly path: string;
  readonly syncMode: SyncMode;
  readonly mapSizeBytes: number;

  private constructor(config: Required<PersistenceConfig>) {
    this.path = join(config.dataDir, STORE_FILE);
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
  // 'buffered': the store commits the turn's writes itself, synchronously on this thread
  // (commitTurn). 'durable': lmdb-js's batched puts (eventTurnBatching), committed and synced
  // on its write thread while this thread goes on: a synchronous durable commit would hold this
  // thread for two device syncs per turn, which halved the append rate of the persistence
  // bench (1.82 M -> 0.88 M versions/s, same minute, load 3) and did not shorten persisted()
  // measurably next to the syncs themselves.

  put(db: Database<any, any>, key: number | string, value: unknown): void {
    if (this.syncMode === 'durable') {
      this.lastWrite = db.put(key, value as never);
      return;
    }
    this.turnWrites.push({ db, key, value });
    this.scheduleCommit();
  }

  remove(db: Database<any, any>, key: number | string): void {
    if (this.syncMode === 'durable') {
      this.lastWrite = db.remove(key);
      return;
    }
    this.turnWrites.push({ db, key, value: undefined });
    this.scheduleCommit();
  }

  whenWritten(): Promise<void> {
    if (this.syncMode === 'durable') {
      // lmdb-js's put() promise resolves at commit; `flushed` once that commit is synced.
      return Promise.all([this.lastWrite, this.root.flushed]).then(() => undefined);
    }
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
    const turn = this.turn!;
    const writes = this.turnWrites;
    this.turn = undefined;
    this.turnWrites = [];
    if (!this.open) {
      turn.reject(new Error(`${this.path}: the persistence store is closed`));
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
      this.lastTurn = turn.promise;
      turn.reject(error);
      return;
    }
    this.lastTurn = turn.promise;
    turn.resolve();
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
