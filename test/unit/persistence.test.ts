// Proves every read path of Persistent<T>/Volatile<T> (by version, index, time, bounds,
// previous/next, count) matches a reference model over seeded random histories with trims and
// truncates, in memory and in LMDB; and that delta mode answers exactly like full mode.
import test from 'ava';
import { hlc, HLC_MAX } from '../../src/core/hlc.js';
import { makeVersion, viewId } from '../../src/core/ids.js';
import { Persistent, PersistenceStore, PersistentMap, memoryRegistry } from '../../persistence/index.js';
import { CHECKPOINT_BYTES_MIN } from '../../persistence/persistent.js';
import { RECORD_FULL, recordKind, recordPayload } from '../../persistence/record.js';
import { SeededRandom } from '../../src/core/random.js';
import {
  attachAll,
  makeFields,
  Scenario,
  sortedEntries,
  tempDir,
} from '../support/persistence-harness.js';

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];
const STEPS = 160;

for (const seed of SEEDS) {
  test(`memory registry: every read matches the model (seed ${seed})`, (t) => {
    const registry = memoryRegistry(`Model/${seed}`);
    const fields = makeFields(1 + (seed % 7));
    attachAll(registry, fields);
    const scenario = new Scenario(seed, registry, fields);
    for (let step = 0; step < STEPS; step++) {
      scenario.step();
      if (step % 20 === 19) scenario.check(t, 6);
    }
    scenario.check(t, 20);
  });
}

for (const seed of SEEDS.slice(0, 4)) {
  test(`LMDB store: every read matches the model, also before commit (seed ${seed})`, async (t) => {
    const store = PersistenceStore.open({ dataDir: tempDir(t, 'prop'), syncMode: 'buffered' });
    t.teardown(() => store.close());
    const registry = store.registry(`Model/${seed}`);
    const fields = makeFields(1 + (seed % 7));
    attachAll(registry, fields);
    const scenario = new Scenario(seed * 101, registry, fields);
    for (let step = 0; step < STEPS; step++) {
      scenario.step();
      // Check some states while writes are still uncommitted, some after the commit.
      if (step % 20 === 9) scenario.check(t, 6);
      if (step % 20 === 19) {
        await registry.whenPersisted(registry.latestVersion);
        scenario.check(t, 6);
      }
    }
    await registry.whenPersisted(registry.latestVersion);
    scenario.check(t, 20);
  });
}

test('delta mode equals full mode at every version and index of one history', (t) => {
  const registry = memoryRegistry('Delta/0');
  const fields = makeFields(5);
  attachAll(registry, fields);
  const scenario = new Scenario(99, registry, fields);
  for (let step = 0; step < 400; step++) scenario.step();
  const { map, plainMap } = fields;
  t.is(map.count(), plainMap.count());
  t.true(map.count() > 20, `only ${map.count()} versions kept`);
  for (let index = 0; index < map.count(); index++) {
    t.is(map.versionOfIndex(index), plainMap.versionOfIndex(index));
    t.deepEqual(sortedEntries(map.getByIndex(index)), sortedEntries(plainMap.getByIndex(index)));
    const version = map.versionOfIndex(index);
    t.deepEqual(sortedEntries(map.get(version)), sortedEntries(plainMap.get(version)));
  }
});

/** A buffered store in `dataDir` with one delta-mode PersistentMap field, all times stable. */
function openMapField(dataDir: string, registryName: string) {
  const store = PersistenceStore.open({ dataDir, syncMode: 'buffered' });
  const registry = store.registry(registryName);
  registry.setStabilityFrontier(HLC_MAX);
  const field = registry.attach('map', new Persistent(() => new PersistentMap<string, string>(), {
    delta: PersistentMap.codec<string, string>(),
  }));
  return { store, registry, field };
}

test('delta mode checkpoints by bytes: a full copy once the deltas reach its size, also after a restart', async (t) => {
  const dataDir = tempDir(t, 'budget');
  const version = (i: number) => makeVersion(viewId(1), i);
  const model = new Map<string, string>();
  const open = () => openMapField(dataDir, 'Budget/0/0');
  const write = async (node: ReturnType<typeof open>, from: number, to: number) => {
    for (let i = from; i < to; i++) {
      // 300 keys at first (one version), then one changed key per version.
      const keys = i === 0 ? Array.from({ length: 300 }, (_, k) => k) : [i % 300];
      node.field.update((map) => { for (const k of keys) map.set(`key-${k}`, `value-${i}-${k}`); });
      for (const k of keys) model.set(`key-${k}`, `value-${i}-${k}`);
      node.registry.makeVersion(version(i), hlc(1_000 + i));
    }
    await node.registry.whenPersisted(version(to - 1));
  };
  // Between two full records the deltas stay within the first one's budget, and reach it
  // (less one delta) before the next full record: not too late (slow reads), not too early.
  const checkSpacing = (node: ReturnType<typeof open>) => {
    const log = node.field.log;
    let budget = 0;
    let deltas = 0;
    let fulls = 0;
    let lastDelta = 0;
    for (let seq = log.firstSeq; seq <= log.lastSeq; seq++) {
      const record = log.record(seq);
      const bytes = recordPayload(record).byteLength;
      if (recordKind(record) === RECORD_FULL) {
        if (fulls > 0) t.true(deltas + lastDelta > budget, `full record ${seq} came early: ${deltas} delta bytes of ${budget}`);
        budget = Math.max(bytes, CHECKPOINT_BYTES_MIN);
        deltas = 0;
        fulls += 1;
      } else {
        deltas += bytes;
        lastDelta = bytes;
        t.true(deltas <= budget, `record ${seq}: ${deltas} delta bytes since the last full record, budget ${budget}`);
      }
    }
    return fulls;
  };
  let node = open();
  await write(node, 0, 1500);
  const fullsBefore = checkSpacing(node);
  t.true(fullsBefore >= 3 && fullsBefore < 100, `${fullsBefore} full records in 1,500 versions`);
  await node.store.close();
  node = open(); // restart: the byte count since the last full record is measured again
  await write(node, 1500, 3000);
  t.true(checkSpacing(node) > fullsBefore);
  t.deepEqual(sortedEntries(node.field.value), sortedEntries(model));
  t.deepEqual(node.field.get(version(1499)).get('key-299'), 'value-1499-299');
  t.deepEqual(node.field.get(version(2)).get('key-2'), 'value-2-2');
  await node.store.close();
});

test('map codec: a checkpoint (the map in its order) and a snapshot (sorted pairs) both decode to the map, keys of any type', (t) => {
  const codec = PersistentMap.codec<unknown, unknown>();
  const map = new PersistentMap<unknown, unknown>([['b', { x: [1, 2] }], [3, 'three'], ['a', new Map([[1, 'one']])]]);
  const checkpoint = codec.decode(codec.encodeCheckpoint!(map));
  t.deepEqual([...checkpoint], [...map], 'a checkpoint keeps entries and order');
  const snapshot = codec.decode(codec.encode(map));
  t.deepEqual([...snapshot], [[3, 'three'], ['a', new Map([[1, 'one']])], ['b', { x: [1, 2] }]]);
  // A decoded map records changes from then on (the first delta after decode holds only them).
  checkpoint.set('c', 1);
  t.deepEqual(codec.decode(codec.encodeCheckpoint!(checkpoint)).get('c'), 1);
  const delta = codec.takeDelta(checkpoint)!;
  const applied = codec.decode(codec.encode(map));
  codec.applyDelta(applied, delta);
  t.is(applied.size, 4);
  t.is(codec.takeDelta(checkpoint), null);
});

test('map checkpoints: every historical read is the live map of that version, entries and order, also after a restart and a state transfer', async (t) => {
  // Checkpoints encode the map in its own order (not sorted): a wrong, missing or reordered
  // entry in any full record, or a delta applied on the wrong base, shows up as a read below.
  const version = (i: number) => makeVersion(viewId(1), i);
  const open = (dataDir: string) => openMapField(dataDir, 'Order/0/0');
  const dataDir = tempDir(t, 'order');
  const node = open(dataDir);
  const random = new SeededRandom(7);
  const live: [string, string][][] = []; // the live map's entries, in its order, at version i
  const VERSIONS = 1200;
  for (let i = 0; i < VERSIONS; i++) {
    node.field.update((map) => {
      // Keys come in scrambled order, are deleted and come back (moving to the end), and once
      // the whole map is cleared: a sorted copy would read in another order.
      map.set(`k${(random.int(150) * 37) % 150}`, `v${i}`);
      if (random.int(4) === 0) map.delete(`k${random.int(150)}`);
      if (i === 700) map.clear();
    });
    node.registry.makeVersion(version(i), hlc(10_000 + i));
    live.push([...node.field.value]);
  }
  await node.registry.whenPersisted(version(VERSIONS - 1));
  const log = node.field.log;
  let fulls = 0;
  for (let seq = log.firstSeq; seq <= log.lastSeq; seq++) if (recordKind(log.record(seq)) === RECORD_FULL) fulls += 1;
  t.true(fulls >= 10, `only ${fulls} full records: the test would not cover checkpoints`);
  const wrongReads = (field: Persistent<PersistentMap<string, string>>, from: number): string[] => {
    const wrong: string[] = [];
    const same = (label: string, got: PersistentMap<string, string>, i: number) => {
      if (JSON.stringify([...got]) !== JSON.stringify(live[i])) wrong.push(`${label} ${i}`);
    };
    for (let i = from; i < VERSIONS; i++) {
      same('version', field.get(version(i)), i);
      same('index', field.getByIndex(i - from), i);
      same('time', field.getByTime(hlc(10_000 + i)), i);
    }
    return wrong;
  };
  t.deepEqual(wrongReads(node.field, 0), []);
  await node.store.close();

  const restarted = open(dataDir);
  t.deepEqual([...restarted.field.value], live[VERSIONS - 1], 'the current value after a restart, in order');
  t.deepEqual(wrongReads(restarted.field, 0), []);
  // State transfer of the suffix after version 399: its first record is a full one.
  const target = open(tempDir(t, 'order-target'));
  for (const chunk of restarted.registry.serializeSuffix(version(399), 4096)) target.registry.applyChunk(chunk);
  await target.registry.whenPersisted(version(VERSIONS - 1));
  t.deepEqual(wrongReads(target.field, 400), []);
  t.deepEqual([...target.field.value], live[VERSIONS - 1], 'the current value after a transfer, in order');
  await restarted.store.close();
  await target.store.close();
});

test('long log: fence table survives a trim of 1,000+ fences and a truncate (LMDB)', async (t) => {
  const store = PersistenceStore.open({ dataDir: tempDir(t, 'long'), syncMode: 'buffered' });
  t.teardown(() => store.close());
  const registry = store.registry('Long/0/0');
  registry.setStabilityFrontier(HLC_MAX);
  const field = registry.attach('n', new Persistent(() => -1));
  const count = 40_000;
  const version = (i: number) => makeVersion(viewId(1 + Math.floor(i / 1000)), (i % 1000) * 3);
  for (let i = 0; i < count; i++) {
    field.value = i;
    registry.makeVersion(version(i), hlc(1_000_000 + i * 10));
    if (i % 4096 === 0) await registry.whenPersisted(version(i));
  }
  await registry.trim(version(35_000));
  await registry.truncate(version(39_000));
  const check = () => {
    t.is(field.count(), 4001);
    t.is(field.earliestVersion(), version(35_000));
    for (const i of [35_000, 35_031, 35_032, 36_500, 38_999, 39_000]) {
      t.is(field.get(version(i)), i);
      if (i < 39_000) t.is(field.get(version(i) + 1n), i, 'between versions');
      t.is(field.getByTime(hlc(1_000_000 + i * 10 + 5)), i);
      t.is(field.getByIndex(i - 35_000), i);
    }
    t.throws(() => field.get(version(34_999)), { name: 'VersionTrimmedError' });
    t.throws(() => field.get(version(39_001)), { name: 'VersionBeyondLatestError' });
  };
  check();
  await registry.whenPersisted(registry.latestVersion);
  check();
});
