// persistence.write_ahead_log reaches every node's store (three nodes in this process on
// loopback, sync "durable"): while the group runs each data dir holds a write-ahead log, calls
// resolve persisted() on every member, a clean close folds the log into LMDB and deletes it, and
// each store, opened again without a log, holds every value.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Group, Persistent, PersistentMap, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { PersistenceStore } from '../../persistence/index.js';
import { walFileNames } from '../../persistence/wal.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { KvStore } from '../../examples/kv-store/app.js';

const layout = { KvStore: oneSubgroup(fixedEvenShards(1, 3)) };

test('write_ahead_log: every node logs durable writes, folds the log into LMDB at close, where every value is', async (t) => {
  const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-wal-'));
  t.teardown(() => rmSync(dataRoot, { recursive: true, force: true }));
  const configs = await localGroupConfigs(3, { dataRoot, sync: 'durable', writeAheadLog: true });
  t.true(configs.every((c) => c.persistence.write_ahead_log));
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout })));
  try {
    const kv = groups[0]!.subgroup(KvStore);
    for (let i = 0; i < 40; i++) await kv.ordered.put(`key-${i}`, `value-${i}`).persisted();
    for (let i = 0; i < 3; i++) t.true(walFileNames(join(dataRoot, `node${i}`)).length > 0, `node ${i} writes a log`);
  } finally {
    await Promise.all(groups.map((g) => g.close()));
  }
  for (let i = 0; i < 3; i++) t.deepEqual(walFileNames(join(dataRoot, `node${i}`)), [], `node ${i}'s clean close deleted its log`);

  // Every value is in LMDB alone now: open each node's store without a log and read the map.
  for (let i = 0; i < 3; i++) {
    const store = PersistenceStore.open({ dataDir: join(dataRoot, `node${i}`), syncMode: 'buffered' });
    try {
      const entries = store.registry('KvStore/0/0').attach('entries', new Persistent(() => new PersistentMap<string, string>(), { delta: PersistentMap.codec<string, string>() }));
      t.is(entries.value.size, 40, `node ${i}`);
      t.is(entries.value.get('key-39'), 'value-39');
    } finally {
      await store.close();
    }
  }
});
