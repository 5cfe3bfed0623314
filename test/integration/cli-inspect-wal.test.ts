// Proves `squall inspect` reads a running node's store without touching it: with the write-ahead
// log on and versions that so far exist only in the log (LMDB has none of them, as between the
// log's fdatasync and LMDB's batch), and with LMDB holding the older versions and the log the
// newer ones, it lists every version and reads values from the log's part; the node's log files
// and LMDB stay as they were (the store here stays open, as a running node's would).
import test from 'ava';
import { execFile } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hlc, HLC_MAX } from '../../src/core/hlc.js';
import { makeVersion, viewId } from '../../src/core/ids.js';
import { Persistent, PersistenceStore, PersistentMap } from '../../persistence/index.js';
import { walFileNames } from '../../persistence/wal.js';
import { tempDir } from '../support/persistence-harness.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cli = join(root, 'dist/src/cli/main.js');
const app = join(root, 'dist/examples/kv-store/app.js');

function squall(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [cli, ...args], { timeout: 60_000 }, (error, out, err) => {
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, out, err });
    });
  });
}

/** Names and sizes of the files in `dir` (what a read must leave alone). */
const files = (dir: string): string => readdirSync(dir).sort().map((f) => `${f}:${statSync(join(dir, f)).size}`).join(' ');

/** The kv app's object as a node writes it: KvStore/0/0, field `entries`, versions 1:0.. of puts k<i> = v<i>. */
async function writeVersions(store: PersistenceStore, from: number, count: number): Promise<void> {
  const registry = store.registry('KvStore/0/0');
  const entries = registry.attach('entries', new Persistent(() => new PersistentMap<string, string>(), { delta: PersistentMap.codec<string, string>() }));
  registry.setStabilityFrontier(HLC_MAX);
  for (let i = from; i < from + count; i++) {
    entries.update((m) => { m.set(`k${i}`, `v${i}`); });
    registry.makeVersion(makeVersion(viewId(1), i), hlc(1_000 + i));
    if (i % 3 === 2) await new Promise((r) => setImmediate(r)); // several turns, several frames
  }
  await registry.whenPersisted(makeVersion(viewId(1), from + count - 1));
}

/** Keeps LMDB from getting the log's batches (held for a minute): the versions live in the log only. */
const logOnly = { lmdbBatchMs: 60_000 };

test('squall inspect reads a running node\'s write-ahead log over its LMDB snapshot, changing nothing', async (t) => {
  const dataDir = tempDir(t, 'inspect-wal');
  const store = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true, ...logOnly });
  t.teardown(() => store.close());
  await writeVersions(store, 0, 12);
  t.true(walFileNames(dataDir).length > 0, 'the log holds the versions');
  const before = files(dataDir);

  const listing = await squall(['inspect', '--data', dataDir, '--app', app]);
  t.is(listing.code, 0, listing.err);
  t.regex(listing.out, /holds a write-ahead log \(squall\.wal\.\d+\): its \d+ frame\(s\) replayed over the snapshot/);
  t.regex(listing.out, /KvStore\/0\/0 \(class KvStore v1\)\n {2}entries: 12 version\(s\), 1:0 \(\d+\) … 1:11 \(\d+\)/);
  const at = await squall(['inspect', '--data', dataDir, '--app', app, '--field', 'entries', '--version', '1:4']);
  t.is(at.code, 0, at.err);
  t.regex(at.out, /entries at version 1:4 \(\d+\): Map\(5\) \{ 'k0' => 'v0', 'k1' => 'v1', 'k2' => 'v2', 'k3' => 'v3', 'k4' => 'v4' \}/);
  t.is(files(dataDir), before, 'the node\'s files are as they were');
});

test('squall inspect: LMDB holding the older versions and the log the newer, the listing has both', async (t) => {
  const dataDir = tempDir(t, 'inspect-wal-mixed');
  const first = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true });
  await writeVersions(first, 0, 6);
  await first.close(); // a clean close folds the log into LMDB
  t.is(walFileNames(dataDir).length, 0);
  const store = PersistenceStore.open({ dataDir, syncMode: 'durable', writeAheadLog: true, ...logOnly });
  t.teardown(() => store.close());
  await writeVersions(store, 6, 5);
  const listing = await squall(['inspect', '--data', dataDir, '--app', app, '--field', 'entries', '--index', '-1']);
  t.is(listing.code, 0, listing.err);
  t.regex(listing.out, /entries: 11 version\(s\), 1:0 \(\d+\) … 1:10 \(\d+\)/);
  t.regex(listing.out, /entries at index -1, version 1:10 \(\d+\): Map\(11\)/);
});
