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
