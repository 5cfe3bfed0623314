// Proves every read path of Persistent<T>/Volatile<T> (by version, index, time, bounds,
// previous/next, count) matches a reference model over seeded random histories with trims and
// truncates, in memory and in LMDB; and that delta mode answers exactly like full mode.
import test from 'ava';
import { PersistenceStore, memoryRegistry } from '../../persistence/index.js';
import { attachAll, makeFields, Scenario, sortedEntries, tempDir } from '../support/persistence-harness.js';

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
