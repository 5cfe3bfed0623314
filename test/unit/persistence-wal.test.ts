// Proves the store's write-ahead log (syncMode 'durable'): the persisted frontier waits for the
// log's fdatasync; opening replays what LMDB lacks; a torn last frame is dropped and counted, a
// damaged earlier one is WalCorruptError; log files are deleted only once LMDB reported them
// synced.
import test from 'ava';
import { copyFileSync, fdatasync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hlc, HLC_MAX } from '../../src/core/hlc.js';
import { makeVersion, viewId, VERSION_NONE } from '../../src/core/ids.js';
import { FRAME_HEADER_BYTES, frameBodies } from '../../src/core/frame-file.js';
import { Persistent, PersistenceStore, PersistentMap, WalCorruptError, WalReplayNotDurableError, type PersistentRegistry } from '../../persistence/index.js';
import { WAL_PREFIX, walFileNames, type WriteAheadLog } from '../../persistence/wal.js';
import { tempDir } from '../support/persistence-harness.js';

const v = (i: number) => makeVersion(viewId(1), i);
const walFiles = (dir: string) => walFileNames(dir).sort((a, b) => Number(a.slice(WAL_PREFIX.length)) - Number(b.slice(WAL_PREFIX.length)));
const internals = (store: PersistenceStore) => store as unknown as { wal: WriteAheadLog; dbs: Map<string, { put: unknown; remove: unknown }>; root: { flushed: PromiseLike<unknown> } };

interface Fields {
  n: Persistent<number>;
  map: Persistent<PersistentMap<string, number>>;
}

function attach(registry: PersistentRegistry): Fields {
  const n = registry.attach('n', new Persistent(() => -1));
  const map = registry.attach('map', new Persistent(() => new PersistentMap<string, number>(), { delta: PersistentMap.codec(), checkpointEvery: 8 }));
  registry.setStabilityFrontier(HLC_MAX);
  return { n, map };
}

/** Versions 0..count-1 over turns of 1..4 versions: n = i, map k(i % 5) = i. */
async function write(registry: PersistentRegistry, f: Fields, from: number, count: number): Promise<void> {
  for (let i = from; i < from + count; ) {
    const burst = 1 + (i % 4);
    for (let b = 0; b < burst && i < from + count; b++, i++) {
      f.n.value = i;
      f.map.value.set(`k${i % 5}`, i);
      registry.makeVersion(v(i), hlc(i + 1));
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
  await registry.whenPersisted(v(from + count - 1));
}

function check(t: import('ava').ExecutionContext, f: Fields, count: number): void {
  t.is(f.n.count(), count, 'versions kept');
  const expected = new Map<string, number>();
  for (let i = 0; i < count; i++) {
    expected.set(`k${i % 5}`, i);
    t.is(f.n.get(v(i)), i);
    if (i % 7 === 0 || i === count - 1) t.deepEqual([...f.map.get(v(i))].sort(), [...expected].sort(), `map at ${i}`);
  }
  t.is(f.n.value, count - 1);
}

/** A store whose LMDB never receives the writes (as if killed after the log's sync, before LMDB's). */
function withoutLmdb(store: PersistenceStore): void {
  for (const db of internals(store).dbs.values()) {
    db.put = () => Promise.resolve(true);
    db.remove = () => Promise.resolve(true);
  }
}

/** A store with the log on whose LMDB never got the writes of versions 0.., written in `batches`. */
async function logOnlyStore(t: import('ava').ExecutionContext, label: string, batches: number[]): Promise<{ dataDir: string; store: PersistenceStore }> {
  const dataDir = tempDir(t, label);
  const store = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true });
  const registry = store.registry('Wal/0/0');
  const fields = attach(registry);
  withoutLmdb(store);
  let from = 0;
  for (const count of batches) {
    await write(registry, fields, from, count);
    from += count;
  }
  return { dataDir, store };
}

/** Copies the store's files (LMDB and log) to a new dir, as a crash would leave them. */
function crashCopy(t: import('ava').ExecutionContext, from: string, label: string): string {
  const to = tempDir(t, label);
  for (const name of readdirSync(from)) if (!name.endsWith('-lock')) copyFileSync(join(from, name), join(to, name));
  return to;
}

/**
 * A log store with one field `a` whose log fdatasyncs are held until the test calls the
 * functions in `held` (each completes one); the attach's own writes already synced.
 */
async function heldSyncStore(t: import('ava').ExecutionContext, label: string, options: { lmdbBatchMs?: number; walSync?: 'pool' }) {
  const store = PersistenceStore.open({ dataDir: tempDir(t, label), syncMode: 'durable', writeAheadLog: true, ...options });
  const registry = store.registry('Wal/0/0');
  const a = registry.attach('a', new Persistent(() => 0));
  const held: (() => void)[] = [];
  let holding = true;
  internals(store).wal.fdatasync = (fd, done) => {
    const release = () => fdatasync(fd, done);
    if (holding) held.push(release);
    else release();
  };
  t.teardown(() => {
    holding = false;
    for (const release of held.splice(0)) release();
    return store.close();
  });
  await new Promise((resolve) => setTimeout(resolve, 20)); // (attach's own writes)
  for (const release of held.splice(0)) release();
  await new Promise((resolve) => setTimeout(resolve, 20));
  return { store, registry, a, held };
}

test('durable, walSync "inline": the frontier moves after the frame\'s fdatasync returned, in the same turn; a failed one fails the registry', async (t) => {
  const store = PersistenceStore.open({ dataDir: tempDir(t, 'wal-inline'), syncMode: 'durable', writeAheadLog: true, walSync: 'inline' });
  t.teardown(() => store.close());
  const registry = store.registry('Wal/0/0');
  const a = registry.attach('a', new Persistent(() => 0));
  const wal = internals(store).wal;
  const real = wal.fdatasyncSync;
  let synced: bigint = VERSION_NONE;
  let syncs = 0;
  wal.fdatasyncSync = (fd) => {
    const covers = registry.latestVersion;
    if (covers > synced) t.true(registry.persistedFrontier < covers, `the frontier waits for the sync: ${registry.persistedFrontier} ${covers} ${synced}`);
    real(fd);
    syncs++;
    synced = covers;
  };
  const ahead: bigint[] = [];
  registry.onPersisted((version) => {
    if (version > synced) ahead.push(version);
  });
  await new Promise((resolve) => setImmediate(resolve)); // (attach's own writes)
  syncs = 0;
  for (let turn = 0; turn < 5; turn++) {
    let nextTurn = false;
    setImmediate(() => (nextTurn = true));
    for (let i = 0; i < 3; i++) {
      a.value = turn * 3 + i;
      registry.makeVersion(v(turn * 3 + i), hlc(turn * 3 + i + 1));
    }
    await registry.whenPersisted(v(turn * 3 + 2));
    t.false(nextTurn, 'persisted before the event loop turned');
  }
  t.is(syncs, 5, 'one fdatasync per turn');
  t.deepEqual(ahead, [], 'no frontier ran ahead of a completed fdatasync');
  wal.fdatasyncSync = () => {
    throw new Error('EIO: i/o error, fdatasync');
  };
  a.value = 100;
  registry.makeVersion(v(100), hlc(200));
  await t.throwsAsync(registry.whenPersisted(v(100)), { message: /EIO/ });
  t.is(registry.persistedFrontier, v(14));
});

test('durable, walSync "pool": the persisted frontier never moves before the log fdatasync that covers it completed', async (t) => {
  const store = PersistenceStore.open({ dataDir: tempDir(t, 'wal-frontier'), syncMode: 'durable', writeAheadLog: true, walSync: 'pool' });
  const registry = store.registry('Wal/0/0');
  const a = registry.attach('a', new Persistent(() => 0));
  // Hold every fdatasync of the log: it completes only when the test releases it, and then covers
  // what had been written when it started.
  const held: { covers: bigint; release: () => void }[] = [];
  let synced: bigint = VERSION_NONE;
  let holding = true;
  internals(store).wal.fdatasync = (fd, done) => {
    const covers = registry.latestVersion;
    const release = () => fdatasync(fd, (error) => { if (!error && covers > synced) synced = covers; done(error); });
    if (holding) held.push({ covers, release });
    else release();
  };
  t.teardown(() => {
    holding = false;
    for (const h of held.splice(0)) h.release();
    return store.close();
  });
  const ahead: bigint[] = [];
  registry.onPersisted((version) => {
    if (version > synced) ahead.push(version);
  });
  a.value = 1;
  registry.makeVersion(v(0), hlc(1));
  a.value = 2;
  registry.makeVersion(v(1), hlc(2));
  for (let i = 0; i < 40 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(held.length, 1, 'one fdatasync for the turn');
  t.is(registry.persistedFrontier, VERSION_NONE, 'written to the log but not synced: not persisted');
  t.is(a.get(v(1)), 2);
  held.shift()!.release();
  // v0 went in its own frame, synced at once (the log was idle); v1, written while that sync ran,
  // waits for the next one, and the turn's frontier (v1) with it.
  for (let i = 0; i < 40 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  t.is(held.length, 1, 'the next fdatasync covers v1');
  t.is(registry.persistedFrontier, VERSION_NONE, 'v1 is not persisted before its own fdatasync');
  held.shift()!.release();
  await registry.whenPersisted(v(1));
  a.value = 3;
  registry.makeVersion(v(2), hlc(3));
  for (let i = 0; i < 40 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.is(registry.persistedFrontier, v(1), 'the next turn waits for its own fdatasync');
  for (const h of held.splice(0)) h.release();
  await registry.whenPersisted(v(2));
  t.deepEqual(ahead, [], 'no frontier ran ahead of a completed fdatasync');
});

test('durable: opening replays the log frames LMDB lacks (with or without the log on), and a clean close leaves no log to replay', async (t) => {
  const { dataDir, store } = await logOnlyStore(t, 'wal-replay', [120]);
  const copy = crashCopy(t, dataDir, 'wal-replay-copy');
  await store.close();

  // Opened 'buffered' (nosync): refused, the log stays for a durable open.
  t.throws(() => PersistenceStore.open({ dataDir: copy, syncMode: 'buffered' }), { instanceOf: WalReplayNotDurableError, message: /holds a write-ahead log.*Fix: start this node once with persistence\.sync = "durable"/s });
  t.true(walFiles(copy).length > 0);
  // Opened without the log: one left in the data dir is replayed all the same.
  const reopened = PersistenceStore.open({ dataDir: copy, syncMode: 'durable' });
  t.true(reopened.walStats.replayedFrames > 30, `${reopened.walStats.replayedFrames} frames replayed`);
  t.is(reopened.walStats.tornTails, 0);
  const again = reopened.registry('Wal/0/0');
  const f = attach(again);
  check(t, f, 120);
  t.is(again.persistedFrontier, v(119));
  // The replayed writes are in LMDB, and the log is gone.
  await write(again, f, 120, 30);
  await reopened.close();
  t.deepEqual(walFiles(copy), [], 'a clean close deletes the log');
  const third = PersistenceStore.open({ dataDir: copy, syncMode: 'durable', writeAheadLog: true });
  t.is(third.walStats.replayedFrames, 0);
  check(t, attach(third.registry('Wal/0/0')), 150);
  await third.close();
});

test('durable: a torn last log frame is dropped and counted; a damaged earlier frame is WalCorruptError', async (t) => {
  const lastTurn = 60; // version 60 alone: the last turn, the last frame
  const { dataDir, store } = await logOnlyStore(t, 'wal-torn', [lastTurn, 1]);
  const torn = crashCopy(t, dataDir, 'wal-torn-copy');
  const damaged = crashCopy(t, dataDir, 'wal-damaged-copy');
  await store.close();

  // The last frame cut in half, as a crash during its write (before its fdatasync) leaves it.
  const [file] = walFiles(torn);
  const path = join(torn, file!);
  const bytes = readFileSync(path);
  const { bodies, end } = frameBodies(bytes);
  const last = bodies.at(-1)!;
  const lastStart = end - FRAME_HEADER_BYTES - last.byteLength;
  bytes.fill(0, lastStart + Math.floor((end - lastStart) / 2), end);
  writeFileSync(path, bytes);
  const reopened = PersistenceStore.open({ dataDir: torn, syncMode: 'durable', writeAheadLog: true });
  t.is(reopened.walStats.tornTails, 1);
  t.is(reopened.walStats.replayedFrames, bodies.length - 1);
  check(t, attach(reopened.registry('Wal/0/0')), lastTurn);
  await reopened.close();

  // A byte flipped in the first frame, with whole frames after it: damage, not a torn write.
  const damagedPath = join(damaged, walFiles(damaged)[0]!);
  const damagedBytes = readFileSync(damagedPath);
  damagedBytes[FRAME_HEADER_BYTES + 3]! ^= 0xff;
  writeFileSync(damagedPath, damagedBytes);
  t.throws(() => PersistenceStore.open({ dataDir: damaged, syncMode: 'durable', writeAheadLog: true }), { instanceOf: WalCorruptError, message: /corrupt at byte 0.*restore this node/s });
});

test('durable: log files are deleted only once LMDB reported everything in them synced', async (t) => {
  const dataDir = tempDir(t, 'wal-trim');
  const store = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true, walFileBytes: 4096 });
  const registry = store.registry('Wal/0/0');
  const fields = attach(registry);
  // Hold lmdb-js's "synced" answers (flushed) until released.
  const root = internals(store).root;
  const realFlushed = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(root), 'flushed') ?? Object.getOwnPropertyDescriptor(root, 'flushed')!;
  let holding = true;
  const held: (() => void)[] = [];
  Object.defineProperty(root, 'flushed', {
    configurable: true,
    get() {
      const real = (realFlushed.get ? realFlushed.get.call(root) : realFlushed.value) as PromiseLike<unknown>;
      return {
        then(onDone: (v: unknown) => unknown, onFail: (e: unknown) => unknown) {
          return new Promise<void>((resolve, reject) => {
            const release = () => real.then(() => resolve(), reject);
            if (holding) held.push(release);
            else release();
          }).then(onDone, onFail);
        },
      };
    },
  });
  await write(registry, fields, 0, 200);
  const stats = store.walStats!;
  t.true(stats.rotations > 3, `${stats.rotations} log files started`);
  t.is(stats.deletedFiles, 0, 'nothing deleted while LMDB has not reported a sync');
  t.is(walFiles(dataDir).length, stats.rotations);
  holding = false;
  for (const release of held.splice(0)) release();
  for (let i = 0; i < 100 && walFiles(dataDir).length > 1; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  t.is(walFiles(dataDir).length, 1, 'every file but the one being written was deleted');
  t.is(store.walStats.deletedFiles, stats.rotations - 1);
  await write(registry, fields, 200, 20);
  delete (root as { flushed?: unknown }).flushed;
  await store.close();
  const reopened = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true, walFileBytes: 4096 });
  check(t, attach(reopened.registry('Wal/0/0')), 220);
  await reopened.close();
});

test('durable: a tail segment that grew is logged as its new bytes only (an extend), not the whole segment every turn', async (t) => {
  const { store } = await logOnlyStore(t, 'wal-extend', []);
  t.teardown(() => store.close());
  const registry = store.registry('Wal/0/1');
  const map = registry.attach('map', new Persistent(() => new PersistentMap<string, string>(), { delta: PersistentMap.codec() }));
  await new Promise((resolve) => setImmediate(resolve)); // (attach's own writes)
  const before = store.walStats;
  const turns = 96; // three segments of 32 records, one record per turn
  for (let i = 0; i < turns; i++) {
    map.value.set(`key-${String(i).padStart(12, '0')}`, 'v'.repeat(64));
    registry.makeVersion(v(i), hlc(i + 1));
    await registry.whenPersisted(v(i));
  }
  const after = store.walStats;
  const perTurn = (after.frameBytes - before.frameBytes) / (after.frames - before.frames);
  // One ~130-byte record and the frame's and write's headers; a whole tail segment would average
  // ~16 records (~2 KiB).
  t.true(after.frames - before.frames >= turns, `${after.frames - before.frames} frames`);
  t.true(perTurn < 400, `${perTurn.toFixed(0)} bytes logged per one-record turn`);
});

test('durable: replaying extends over an LMDB that already holds later writes of the same segments ends in the logged values', async (t) => {
  const dataDir = tempDir(t, 'wal-extend-replay');
  const store = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true, lmdbBatchMs: 0, walFileBytes: 4096 });
  const registry = store.registry('Wal/0/0');
  const fields = attach(registry);
  // Versions 0..69 reach LMDB and the log files they filled are deleted: the oldest file left
  // starts with extends of segments whose first bytes were logged in a deleted file, and LMDB
  // holds those segments longer (their state after 69) than each extend's base.
  await write(registry, fields, 0, 70);
  await store.whenInLmdb();
  for (let i = 0; i < 200 && walFiles(dataDir).length > 1; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  t.is(walFiles(dataDir).length, 1, 'the files LMDB holds were deleted');
  // Then LMDB gets nothing more (as if killed after the log's syncs), and no file goes.
  withoutLmdb(store);
  internals(store).wal.lmdbDurable = () => undefined;
  await write(registry, fields, 70, 50);
  const copy = crashCopy(t, dataDir, 'wal-extend-replay-copy');
  await store.close();
  const reopened = PersistenceStore.open({ dataDir: copy, syncMode: 'durable', writeAheadLog: true });
  t.true(reopened.walStats.replayedFrames > 20, `${reopened.walStats.replayedFrames} frames replayed`);
  check(t, attach(reopened.registry('Wal/0/0')), 120);
  await reopened.close();
});

test('durable: LMDB gets a turn\'s writes only after the log\'s fdatasync covering them completed (a machine crash never leaves LMDB ahead of the log)', async (t) => {
  const { store, registry, a, held } = await heldSyncStore(t, 'wal-lmdb-after-sync', { lmdbBatchMs: 0 });
  let lmdbPuts = 0;
  for (const db of internals(store).dbs.values()) {
    const put = db.put as (...args: unknown[]) => unknown;
    db.put = (...args: unknown[]) => {
      lmdbPuts++;
      return put.apply(db, args);
    };
  }
  a.value = 1;
  registry.makeVersion(v(0), hlc(1));
  for (let i = 0; i < 40 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 100)); // several lmdbBatchMs
  t.is(held.length, 1, 'the log\'s fdatasync is held');
  t.is(lmdbPuts, 0, 'LMDB got nothing the log has not made durable');
  t.is(a.get(v(0)), 1, 'the version reads meanwhile');
  for (const release of held.splice(0)) release();
  await registry.whenPersisted(v(0));
  await store.whenInLmdb();
  t.true(lmdbPuts > 0, 'after the sync, LMDB gets the batch');
});

test('durable, walSync "pool": with the log idle, a version\'s frame is written and its fdatasync started inside makeVersion; while one runs, the turn\'s later versions share one frame', async (t) => {
  const { store, registry, a, held } = await heldSyncStore(t, 'wal-early', { walSync: 'pool' });
  t.is(held.length, 0);
  const frames = store.walStats.frames;
  a.value = 1;
  registry.makeVersion(v(0), hlc(1));
  t.is(held.length, 1, 'the fdatasync started inside makeVersion');
  t.is(store.walStats.frames, frames + 1, 'its frame was written inside makeVersion');
  a.value = 2;
  registry.makeVersion(v(1), hlc(2));
  a.value = 3;
  registry.makeVersion(v(2), hlc(3));
  t.is(store.walStats.frames, frames + 1, 'with a sync running, later versions wait for the turn');
  await new Promise((resolve) => setImmediate(resolve));
  t.is(store.walStats.frames, frames + 2, 'the turn\'s later versions in one frame');
  t.is(registry.persistedFrontier, VERSION_NONE, 'nothing persisted while the sync is held');
  held.shift()!();
  for (let i = 0; i < 40 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  t.is(held.length, 1, 'the next fdatasync covers the turn\'s frame');
  t.is(registry.persistedFrontier, VERSION_NONE, 'the turn\'s frontier (v2) waits for it');
  for (const release of held.splice(0)) release();
  await registry.whenPersisted(v(2));
  t.is(a.get(v(2)), 3);
});
