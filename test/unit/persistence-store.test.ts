// Proves state transfer (chunked suffix between two stores gives identical reads), temporal
// queries at exact/between/out-of-range times and the stability frontier, the field hooks
// contract, and the named errors: foreign and corrupt data dirs, a full map, version order.
import test from 'ava';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { open } from 'lmdb';
import { Packr } from 'msgpackr';
import { hlc, HLC_MAX } from '../../src/core/hlc.js';
import { ConfigError } from '../../src/core/errors.js';
import { makeVersion, viewId, VERSION_NONE } from '../../src/core/ids.js';
import { FIELD_HOOKS, fieldHooksOf } from '../../decorators/field-hooks.js';
import {
  CorruptDataDirError,
  ForeignDataDirError,
  MapFullError,
  memoryRegistry,
  msgpackCodec,
  Persistent,
  PersistenceStore,
  PersistentMap,
  TimeNotStableError,
  VersionNotFoundError,
  VersionOrderError,
  VersionTrimmedError,
} from '../../persistence/index.js';
import {
  attachAll,
  makeFields,
  Scenario,
  sortedEntries,
  tempDir,
} from '../support/persistence-harness.js';
import type { Fields } from '../support/persistence-harness.js';

/** The store's LMDB environment, whose synchronous transactions the turn tests watch or break. */
function lmdbRoot(store: PersistenceStore): { transactionSync(fn: () => unknown, flags?: number): unknown } {
  return (store as unknown as { root: { transactionSync(fn: () => unknown, flags?: number): unknown } }).root;
}

/** A buffered store's registry with one number field `a`, and its LMDB environment. */
function bufferedField(t: import('ava').ExecutionContext, label: string) {
  const store = PersistenceStore.open({ dataDir: tempDir(t, label), syncMode: 'buffered' });
  t.teardown(() => store.close());
  const registry = store.registry('Turn/0/0');
  return { registry, a: registry.attach('a', new Persistent(() => 0)), root: lmdbRoot(store) };
}

/** A read's result, with "no version there" the same whether trimmed here or never received. */
function outcome(read: () => bigint): string {
  try {
    return String(read());
  } catch (error) {
    const name = (error as Error).name;
    return name === 'VersionTrimmedError' || name === 'VersionNotFoundError' ? 'missing' : name;
  }
}

function sameReads(t: import('ava').ExecutionContext, a: Fields, b: Fields): void {
  for (const name of ['doc', 'map', 'plainMap'] as const) {
    const fa = a[name] as Persistent<unknown>;
    const fb = b[name] as Persistent<unknown>;
    const view = (v: unknown) =>
      v instanceof Map || v instanceof PersistentMap ? sortedEntries(v as Map<string, number>) : v;
    t.is(fb.count(), fa.count(), `${name} count`);
    for (let i = 0; i < fa.count(); i++) {
      t.deepEqual(fb.infoByIndex(i), fa.infoByIndex(i), `${name} info ${i}`);
      t.deepEqual(view(fb.getByIndex(i)), view(fa.getByIndex(i)), `${name} value ${i}`);
      const time = fa.infoByIndex(i).time;
      const expected = outcome(() => fa.versionAtTime(time));
      t.is(outcome(() => fb.versionAtTime(time)), expected, `${name} time ${i}`);
    }
    t.deepEqual(view(fb.value), view(fa.value), `${name} current`);
  }
}

test('chunked suffix transfer between two LMDB stores gives identical reads', async (t) => {
  const source = PersistenceStore.open({ dataDir: tempDir(t, 'src'), syncMode: 'buffered' });
  const target = PersistenceStore.open({ dataDir: tempDir(t, 'dst'), syncMode: 'buffered' });
  t.teardown(async () => {
    await source.close();
    await target.close();
  });
  const from = source.registry('Kv/0/0');
  const scenario = new Scenario(5, from, makeFields(4), false);
  attachAll(from, scenario.fields);
  for (let i = 0; i < 150; i++) scenario.step();
  const middle = scenario.lastVersion;
  for (let i = 0; i < 150; i++) scenario.step();
  // A delta that becomes the first record must be rewritten as a full one.
  await from.trim(scenario.models.doc.entries[10]!.version);

  // A joiner with nothing: the whole log, in small chunks.
  const to = target.registry('Kv/0/0');
  const fields = makeFields(4);
  attachAll(to, fields);
  let chunks = 0;
  for (const chunk of from.serializeSuffix(-1n, 2048)) {
    t.true(chunk.byteLength < 2048 + 1024, 'chunks stay near the limit');
    to.applyChunk(chunk);
    chunks += 1;
  }
  t.true(chunks > 5, `only ${chunks} chunks`);
  await to.whenPersisted(to.latestVersion);
  sameReads(t, scenario.fields, fields);

  // A member that has the prefix up to `middle` receives only the rest; re-applying is harmless.
  const partial = memoryRegistry('Kv/0/0');
  const partialFields = makeFields(4);
  attachAll(partial, partialFields);
  for (const chunk of from.serializeSuffix(-1n)) partial.applyChunk(chunk);
  await partial.truncate(middle);
  const suffix = [...from.serializeSuffix(middle, 4096)];
  for (const chunk of suffix) partial.applyChunk(chunk);
  for (const chunk of suffix) partial.applyChunk(chunk);
  sameReads(t, scenario.fields, partialFields);
});

test('temporal queries: exact, between, before the first, beyond the stability frontier', (t) => {
  const registry = memoryRegistry('Time/0/0');
  const field = registry.attach('x', new Persistent(() => 0));
  const times = [100, 200, 200, 350];
  times.forEach((micros, i) => {
    field.value = i + 1;
    registry.makeVersion(makeVersion(viewId(1), i), hlc(micros, i === 2 ? 5 : 0));
  });
  t.throws(() => field.getByTime(hlc(150)), { instanceOf: TimeNotStableError });
  registry.setStabilityFrontier(hlc(300));
  t.is(field.getByTime(hlc(100)), 1, 'exact');
  t.is(field.getByTime(hlc(150)), 1, 'between');
  t.is(field.getByTime(hlc(200)), 2, 'same micros, lower logical');
  t.is(field.getByTime(hlc(200, 5)), 3, 'same micros, equal logical');
  t.is(field.getByTime(hlc(300)), 3, 'at the frontier');
  t.is(field.indexAtTime(hlc(300)), 2);
  t.throws(() => field.getByTime(hlc(50)), { instanceOf: VersionNotFoundError });
  const error = t.throws(() => field.getByTime(hlc(301)), { instanceOf: TimeNotStableError });
  t.regex(error!.message, /Fix:/);
  registry.setStabilityFrontier(hlc(10)); // the frontier never moves back
  t.is(registry.stabilityFrontier.micros, 300);
  registry.setStabilityFrontier(hlc(1000));
  t.is(field.getByTime(hlc(400)), 4, 'after the latest version');
  t.is(field.versionAtTime(hlc(400)), makeVersion(viewId(1), 3));
});

test('temporal query before the first version, after trim, and a Date argument', (t) => {
  const registry = memoryRegistry('Time/0/1');
  registry.setStabilityFrontier(HLC_MAX);
  const field = registry.attach('x', new Persistent(() => 0));
  for (let i = 0; i < 10; i++) {
    field.value = i + 1;
    registry.makeVersion(makeVersion(viewId(1), i), hlc(1_000_000 * (i + 1)));
  }
  t.throws(() => field.getByTime(hlc(10)), { instanceOf: VersionNotFoundError });
  t.is(field.getByTime(new Date(3500)), 3, 'a Date means at or before its millisecond');
  t.is(field.getByTime(3_000_000), 3, 'a number is epoch microseconds');
  void registry.trim(hlc(5_500_000));
  t.is(field.earliestVersion(), makeVersion(viewId(1), 4));
  t.throws(() => field.getByTime(hlc(3_000_000)), { instanceOf: VersionTrimmedError });
  t.throws(() => field.get(makeVersion(viewId(1), 2)), { instanceOf: VersionTrimmedError });
  t.is(field.getByTime(hlc(5_500_000)), 5);
});

test('field hooks: writeCount grows, snapshots are deterministic and restore', (t) => {
  const registry = memoryRegistry('Hooks/0/0');
  const map = registry.attach('m', new Persistent(() => new PersistentMap<string, number>(), {
    delta: PersistentMap.codec(),
  }));
  const hooks = fieldHooksOf(map)!;
  t.is(hooks, map[FIELD_HOOKS]);
  const before = hooks.writeCount;
  map.value.set('b', 2);
  map.value.set('a', 1);
  t.true(hooks.writeCount > before);
  const other = new Persistent(() => new PersistentMap<string, number>(), {
    delta: PersistentMap.codec(),
  });
  other.value.set('a', 1);
  other.value.set('b', 2);
  const snapshot = fieldHooksOf(other)!.snapshotCurrent();
  t.deepEqual(snapshot, hooks.snapshotCurrent(), 'insertion order does not matter');
  const count = fieldHooksOf(other)!.writeCount;
  fieldHooksOf(other)!.restoreCurrent(hooks.snapshotCurrent());
  t.true(fieldHooksOf(other)!.writeCount > count);
  const plain = new Persistent(() => ({ n: 1 }));
  const plainCount = fieldHooksOf(plain)!.writeCount;
  plain.update((v) => void (v.n = 2));
  t.true(fieldHooksOf(plain)!.writeCount > plainCount);
});

test('makeVersion refuses versions that do not increase', (t) => {
  const registry = memoryRegistry('Order/0/0');
  registry.attach('x', new Persistent(() => 0));
  registry.makeVersion(makeVersion(viewId(2), 5), hlc(1));
  const error = t.throws(() => registry.makeVersion(makeVersion(viewId(2), 5), hlc(2)), {
    instanceOf: VersionOrderError,
  });
  t.regex(error!.message, /Fix:/);
});

test('a data dir written by something else is refused as foreign', async (t) => {
  const dataDir = tempDir(t, 'foreign');
  const env = open({ path: join(dataDir, 'squall.mdb') });
  await env.put('someone', 'else');
  await env.close();
  const error = t.throws(() => PersistenceStore.open({ dataDir }), {
    instanceOf: ForeignDataDirError,
  });
  t.regex(error!.message, /Fix: .*reset: true/);
  // reset wipes it and opens cleanly.
  const store = PersistenceStore.open({ dataDir, reset: true });
  await store.close();
  await t.notThrowsAsync(async () => (await PersistenceStore.open({ dataDir })).close());
});

test('a store of another format version is refused as foreign, naming both markers', async (t) => {
  const dataDir = tempDir(t, 'future');
  await (await PersistenceStore.open({ dataDir })).close();
  const env = open({ path: join(dataDir, 'squall.mdb'), maxDbs: 4 });
  const meta = env.openDB('squall.meta', {});
  await meta.put('format', { magic: 'squall-persistence', formatVersion: 2 });
  await env.close();
  const error = t.throws(() => PersistenceStore.open({ dataDir }), { instanceOf: ForeignDataDirError });
  t.regex(error!.message, /marker \{"magic":"squall-persistence","formatVersion":2\}, expected \{"magic":"squall-persistence","formatVersion":1\}/);
});

test('bad store options are refused together, each by its key, before anything is opened', (t) => {
  const error = t.throws(() => PersistenceStore.open({
    dataDir: '', mapSizeBytes: 1000, walSync: 'later' as never, syncMode: 'maybe' as never, lmdbBatchMs: -1, walFileBytes: 100,
  }), { instanceOf: ConfigError });
  t.deepEqual(error!.problems.map((p) => p.key), [
    'persistence.dataDir', 'persistence.mapSizeBytes', 'persistence.walSync', 'persistence.syncMode', 'persistence.lmdbBatchMs', 'persistence.walFileBytes',
  ]);
});

test('a corrupt data file is refused with CorruptDataDirError', (t) => {
  const dataDir = tempDir(t, 'corrupt');
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(join(dataDir, 'squall.mdb'), Buffer.alloc(64 * 1024, 0x5a));
  const error = t.throws(() => PersistenceStore.open({ dataDir }), {
    instanceOf: CorruptDataDirError,
  });
  t.regex(error!.message, /Fix:/);
});

test('a full map refuses new versions with MapFullError', async (t) => {
  const store = PersistenceStore.open({
    dataDir: tempDir(t, 'full'),
    mapSizeBytes: 2 * 1024 * 1024,
    syncMode: 'buffered',
  });
  t.teardown(() => store.close());
  const registry = store.registry('Full/0/0');
  const field = registry.attach('blob', new Persistent(() => ''));
  let error: unknown;
  for (let i = 0; i < 2000 && !error; i++) {
    try {
      field.value = `${i}`.padEnd(16 * 1024, 'z');
      registry.makeVersion(makeVersion(viewId(1), i), hlc(i + 1));
    } catch (caught) {
      error = caught;
    }
    await registry.whenPersisted(registry.latestVersion);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  t.true(error instanceof MapFullError, `got ${String(error)}`);
  t.regex((error as Error).message, /Fix: raise persistence mapSizeBytes/);
});

test('the default codec writes a Uint8Array exactly as msgpackr does, at every size class', (t) => {
  // msgpackCodec builds Uint8Array bytes itself (the append fast path); stored data must not
  // depend on which path wrote it. Sizes straddle ext8 / ext16 / ext32.
  const packr = new Packr({ moreTypes: true });
  const codec = msgpackCodec<unknown>();
  for (const size of [0, 1, 64, 253, 254, 255, 256, 65533, 65534, 65535, 65536, 70_000]) {
    const value = new Uint8Array(size).map((_, i) => (i * 7 + size) & 0xff);
    const bytes = codec.encode(value);
    t.deepEqual(Buffer.from(bytes), packr.pack(value), `size ${size}`);
    const back = codec.decode(bytes) as Uint8Array;
    t.is(back.constructor, Uint8Array);
    t.deepEqual(back, value);
  }
  // Other byte-like values keep msgpackr's own encodings.
  for (const value of [Buffer.from([1, 2, 3]), new Uint16Array([1, 2]), { a: new Uint8Array(2) }]) {
    t.deepEqual(Buffer.from(codec.encode(value)), packr.pack(value));
  }
});

for (const syncMode of ['buffered'] as const) {
  test(`${syncMode}: one synchronous LMDB transaction per event turn, and the frontier moves only after it returned`, async (t) => {
    const store = PersistenceStore.open({ dataDir: tempDir(t, `turn-${syncMode}`), syncMode });
    t.teardown(() => store.close());
    const registry = store.registry('Turn/0/0');
    const a = registry.attach('a', new Persistent(() => 0));
    const b = registry.attach('b', new Persistent(() => ''));
    const root = lmdbRoot(store);
    const original = root.transactionSync.bind(root);
    const commits: { frontierBefore: bigint; frontierAfter: bigint }[] = [];
    root.transactionSync = (fn, flags) => {
      const frontierBefore = registry.persistedFrontier;
      const result = original(fn, flags);
      commits.push({ frontierBefore, frontierAfter: registry.persistedFrontier });
      return result;
    };
    const seen: bigint[] = [];
    registry.onPersisted((version) => seen.push(version));
    // Three versions of two fields in one turn: one transaction.
    for (let i = 0; i < 3; i++) {
      a.value = i + 1;
      b.value = `v${i}`;
      registry.makeVersion(makeVersion(viewId(1), i), hlc(i + 1));
    }
    t.is(registry.persistedFrontier, VERSION_NONE, 'nothing is durable before the turn commits');
    await registry.whenPersisted(makeVersion(viewId(1), 2));
    t.is(commits.length, 1, 'one transaction for the turn');
    t.is(commits[0]!.frontierAfter, commits[0]!.frontierBefore, 'the frontier did not move during the commit');
    t.deepEqual(seen, [makeVersion(viewId(1), 2)]);
    // The next turn is the next transaction; reads see everything.
    a.value = 10;
    registry.makeVersion(makeVersion(viewId(1), 3), hlc(10));
    await registry.whenPersisted(makeVersion(viewId(1), 3));
    t.is(commits.length, 2);
    t.is(a.get(makeVersion(viewId(1), 1)), 2);
    t.is(b.get(makeVersion(viewId(1), 2)), 'v2');
  });
}

test('a turn whose first version changes no field still waits for the commit that a later version of the turn needs', async (t) => {
  const { registry, a, root } = bufferedField(t, 'turn-unchanged');
  const original = root.transactionSync.bind(root);
  const frontierAtCommit: bigint[] = [];
  root.transactionSync = (fn, flags) => {
    frontierAtCommit.push(registry.persistedFrontier);
    return original(fn, flags);
  };
  registry.makeVersion(makeVersion(viewId(1), 0), hlc(1)); // `a` unchanged: no record, no write
  a.value = 7;
  registry.makeVersion(makeVersion(viewId(1), 1), hlc(2));
  await registry.whenPersisted(makeVersion(viewId(1), 1));
  t.deepEqual(frontierAtCommit, [VERSION_NONE], 'the frontier moved only after the turn committed');
});

test('a failed turn commit fails the registry with the error, and whenPersisted rejects', async (t) => {
  const { registry, a, root } = bufferedField(t, 'turn-fail');
  root.transactionSync = () => {
    throw new Error('disk on fire');
  };
  a.value = 1;
  registry.makeVersion(makeVersion(viewId(1), 0), hlc(1));
  await t.throwsAsync(registry.whenPersisted(makeVersion(viewId(1), 0)), { message: 'disk on fire' });
  t.is(registry.persistedFrontier, VERSION_NONE);
});

test('durable without the write-ahead log: the persisted frontier never moves before the LMDB sync that covers it completed', async (t) => {
  const store = PersistenceStore.open({ dataDir: tempDir(t, 'turn-durable'), syncMode: 'durable', writeAheadLog: false });
  t.teardown(() => store.close());
  const registry = store.registry('Durable/0/0');
  const a = registry.attach('a', new Persistent(() => 0));
  // lmdb-js reports a completed sync through `flushed`. Hold its answers back: each one resolves
  // only when the test releases it, and counts as a completed sync of what was committed when
  // it was asked for (lmdb-js: everything written before it was taken).
  const root = (store as unknown as { root: { flushed: PromiseLike<unknown> } }).root;
  const realFlushed = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(root), 'flushed')
    ?? Object.getOwnPropertyDescriptor(root, 'flushed')!;
  const held: { covers: bigint; release: () => void }[] = [];
  let synced: bigint = VERSION_NONE;
  Object.defineProperty(root, 'flushed', {
    configurable: true,
    get() {
      const real = (realFlushed.get ? realFlushed.get.call(root) : realFlushed.value) as PromiseLike<unknown>;
      const covers = registry.latestVersion;
      return {
        then(onDone: (v: unknown) => unknown, onFail: (e: unknown) => unknown) {
          return new Promise<void>((resolve, reject) => {
            held.push({
              covers,
              release: () => real.then(() => { if (covers > synced) synced = covers; resolve(); }, reject),
            });
          }).then(onDone, onFail);
        },
      };
    },
  });
  const ahead: bigint[] = [];
  registry.onPersisted((version) => {
    if (version > synced) ahead.push(version);
  });
  a.value = 1;
  registry.makeVersion(makeVersion(viewId(1), 0), hlc(1));
  a.value = 2;
  registry.makeVersion(makeVersion(viewId(1), 1), hlc(2));
  // Let lmdb-js commit the turn (visible to reads) while its sync report is held back.
  for (let i = 0; i < 20 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.true(held.length > 0, 'the registry waits on lmdb-js flushed');
  t.is(registry.persistedFrontier, VERSION_NONE, 'committed but not synced: not persisted');
  for (const h of held.splice(0)) h.release();
  await registry.whenPersisted(makeVersion(viewId(1), 1));
  a.value = 3;
  registry.makeVersion(makeVersion(viewId(1), 2), hlc(3));
  for (let i = 0; i < 20 && held.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.is(registry.persistedFrontier, makeVersion(viewId(1), 1), 'the next turn waits for its own sync');
  for (const h of held.splice(0)) h.release();
  await registry.whenPersisted(makeVersion(viewId(1), 2));
  t.deepEqual(ahead, [], 'no frontier ran ahead of a completed sync');
  delete (root as { flushed?: unknown }).flushed;
});
