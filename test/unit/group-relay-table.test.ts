// The relayed-call table (src/group/relay-table.ts): a sliding window of request ids per client,
// kept as a versioned Persistent field so that it travels with state transfer and restarts.
import test from 'ava';
import { hlc } from '../../src/core/hlc.js';
import { makeVersion, viewId } from '../../src/core/ids.js';
import { memoryRegistry } from '../../persistence/index.js';
import { RELAY_TABLE_FIELD, RELAY_WINDOW, RelayTable } from '../../src/group/relay-table.js';

test('a pair is known once added; the window slides with the newest id; clients are separate', (t) => {
  const table = new RelayTable(memoryRegistry('Relay/0'));
  t.false(table.has('a', 1));
  table.add('a', 1);
  table.add('a', 3);
  t.true(table.has('a', 1));
  t.false(table.has('a', 2), 'a gap stays unknown');
  t.true(table.has('a', 3));
  t.false(table.has('b', 1), 'another client');
  table.add('a', 2); // late, inside the window
  t.true(table.has('a', 2));
  table.add('a', RELAY_WINDOW + 1); // slides: the window is now 2 .. RELAY_WINDOW + 1
  t.false(table.has('a', 1), 'slid out of the window');
  t.true(table.has('a', 2));
  t.true(table.has('a', 3));
  t.true(table.has('a', RELAY_WINDOW + 1));
  table.add('a', 1); // below the window: nothing to remember it by
  t.false(table.has('a', 1));
  table.add('a', 10 * RELAY_WINDOW); // a jump clears the old window
  t.false(table.has('a', 3));
  t.true(table.has('a', 10 * RELAY_WINDOW));
});

test('the table is a versioned field of the registry: each change is a version another replica can be given', (t) => {
  const registry = memoryRegistry('Relay/1');
  const table = new RelayTable(registry);
  t.deepEqual(registry.fieldNames(), [RELAY_TABLE_FIELD]);
  table.add('c', 5);
  registry.makeVersion(makeVersion(viewId(1), 0), hlc(10, 0));
  registry.makeVersion(makeVersion(viewId(1), 1), hlc(11, 0)); // no change: no record
  table.add('c', 6);
  registry.makeVersion(makeVersion(viewId(1), 2), hlc(12, 0));
  t.is(registry.field(RELAY_TABLE_FIELD)!.count(), 2);

  // A second replica fed the first one's state (as a joiner is) knows the same pairs.
  const joiner = memoryRegistry('Relay/1');
  const copy = new RelayTable(joiner);
  for (const chunk of registry.serializeSuffix(-1n)) joiner.applyChunk(chunk);
  t.true(copy.has('c', 5));
  t.true(copy.has('c', 6));
  t.false(copy.has('c', 7));
});

test('past its bound the table drops the least recently used clients, the same ones on a replica given the state', (t) => {
  const registry = memoryRegistry('Relay/2');
  const table = new RelayTable(registry, 8, 3);
  let position = 0;
  const commit = (): void => registry.makeVersion(makeVersion(viewId(1), position++), hlc(10 + position, 0));
  for (let c = 0; c < 8; c++) {
    t.deepEqual(table.add(`c${c}`, 1), []);
    commit();
  }
  table.add('c0', 2); // c0 is now the most recent; c1, c2, c3 the least
  commit();
  t.is(table.clients, 8);

  // A replica fed this state (the map comes back sorted by key, not in order of use).
  const joiner = memoryRegistry('Relay/2');
  const copy = new RelayTable(joiner, 8, 3);
  for (const chunk of registry.serializeSuffix(-1n)) joiner.applyChunk(chunk);

  t.deepEqual(table.add('new', 1), ['c1', 'c2', 'c3']);
  t.deepEqual(copy.add('new', 1), ['c1', 'c2', 'c3'], 'the replica drops the same clients');
  t.is(table.clients, 6);
  t.false(table.has('c1', 1), 'a dropped client is forgotten');
  t.true(table.has('c0', 1));
  t.true(table.has('c0', 2));
  t.true(table.has('c4', 1));
  t.deepEqual(table.add('c4', 2), [], 'a known client does not evict');
  t.deepEqual(table.add('c1', 5), [], 'room again below the bound');
  t.deepEqual(table.add('c2', 1), [], 'the table is full again');
  t.deepEqual(table.add('c3', 1), ['c5', 'c6', 'c7']);
});

test('a window written before the last-use counter (no counter) still answers and counts as least recent', (t) => {
  const registry = memoryRegistry('Relay/3');
  const table = new RelayTable(registry, 2, 1);
  table.add('new', 7);
  // The old layout: 8 bytes of base id, then the bitmap.
  const old = new Uint8Array(8 + RELAY_WINDOW / 8);
  new DataView(old.buffer).setFloat64(0, 40, true);
  old[8 + 0] = 0b101; // ids 40 and 42
  (registry.field(RELAY_TABLE_FIELD) as unknown as { update(f: (m: Map<string, Uint8Array>) => void): void }).update((m) => {
    m.set('old', old);
  });
  t.true(table.has('old', 40));
  t.false(table.has('old', 41));
  t.true(table.has('old', 42));
  table.add('old', 43); // rewritten in the new layout, keeping its ids
  t.true(table.has('old', 40) && table.has('old', 42) && table.has('old', 43));
  t.false(table.has('old', 41));
  t.deepEqual(table.add('third', 1), ['new'], 'the rewritten window is now the most recent');
});
