/**
 * Child process for the crash test: `node persistence-crash-child.js <dataDir> <run> [mode]`.
 * Modes: '' (LMDB's own durable commit), 'wal' (the write-ahead log, walSync 'inline'),
 * 'wal-lag-lmdb' (the log, walSync 'pool', and every write reaches LMDB ~100 ms after the turn
 * that made it, so a kill lands with versions reported persisted that only the log holds).
 * Appends versions in a loop (a burst per event turn) and prints each new persisted frontier on
 * stdout as "frontier <version>". The parent SIGKILLs it at random points.
 *
 * The i-th version ever written has contents that depend only on i, so the parent can check
 * every kept version: doc = { i, pad } and the delta map sets key k(i % 37) to i.
 */
import { hlc } from '../../src/core/hlc.js';
import { makeVersion, viewId } from '../../src/core/ids.js';
import { Persistent, PersistenceStore, PersistentMap } from '../../persistence/index.js';

export interface CrashDoc {
  i: number;
  pad: string;
}

export function crashFields(): {
  doc: Persistent<CrashDoc>;
  map: Persistent<PersistentMap<string, number>>;
} {
  return {
    doc: new Persistent<CrashDoc>(() => ({ i: -1, pad: '' })),
    map: new Persistent(() => new PersistentMap<string, number>(), {
      delta: PersistentMap.codec(),
      checkpointEvery: 16,
    }),
  };
}

export const crashTime = (i: number) => hlc(1_700_000_000_000_000 + i * 10, i % 3);
export const crashPad = (i: number) => 'x'.repeat(i % 200);

async function main(): Promise<void> {
  const [dataDir, runText, mode] = process.argv.slice(2);
  const run = Number(runText);
  const store = PersistenceStore.open({
    dataDir: dataDir!,
    syncMode: 'durable',
    writeAheadLog: mode === 'wal' || mode === 'wal-lag-lmdb',
    walSync: mode === 'wal' ? 'inline' : 'pool',
  });
  const registry = store.registry('Crash/0/0');
  const { doc, map } = crashFields();
  registry.attach('doc', doc);
  registry.attach('map', map);
  if (mode === 'wal-lag-lmdb') lagLmdb(store);
  registry.onPersisted((version) => process.stdout.write(`frontier ${version}\n`));
  // The i of the next version: one past the newest kept (trim removes old ones, not the count).
  let i = doc.count() === 0 ? 0 : doc.getByIndex(-1).i + 1;
  let position = 0;
  process.stdout.write(`start ${i}\n`);
  for (;;) {
    const burst = 1 + (i % 7);
    for (let b = 0; b < burst; b++, i++) {
      doc.value = { i, pad: crashPad(i) };
      map.value.set(`k${i % 37}`, i);
      registry.makeVersion(makeVersion(viewId(run), position++), crashTime(i));
      // Trim now and then, so kills also land on trims (which must be all-or-nothing).
      if (i % 1000 === 999) void registry.trim(doc.versionOfIndex(-300));
    }
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Hands every write to LMDB 100 ms late, in order (timers of one delay run in order). */
function lagLmdb(store: PersistenceStore): void {
  const inside = store as unknown as {
    dbs: Map<string, { put(k: unknown, v: unknown): Promise<unknown>; remove(k: unknown): Promise<unknown> }>;
    lastWrite: Promise<unknown>;
    root: { flushed: PromiseLike<unknown> };
    lmdbFlushed(): Promise<void>;
  };
  const later = <T>(write: () => Promise<T>): Promise<T> => new Promise((resolve, reject) => setTimeout(() => write().then(resolve, reject), 100));
  for (const db of inside.dbs.values()) {
    const put = db.put.bind(db);
    const remove = db.remove.bind(db);
    db.put = (k, v) => later(() => put(k, v));
    db.remove = (k) => later(() => remove(k));
  }
  // LMDB's sync report, taken once the late write was handed over and committed.
  inside.lmdbFlushed = () => inside.lastWrite.then(() => inside.root.flushed).then(() => undefined);
}

if (process.argv[1]?.endsWith('persistence-crash-child.js')) await main();
