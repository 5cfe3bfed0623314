// A shard replica's memory of relayed calls (src/group/replica.ts): replies are kept for the
// ids the replicated table can still recognise as retries, and a client the table drops takes
// its replies with it, so a long-running shard serving many short-lived clients stays bounded.
// Also the replica's input checks: a delivery that is not an ordered call is dropped and counted;
// a @persistent field without a Persistent fails the replica at start, naming the field.
import 'reflect-metadata';
import test from 'ava';
import { encodeArguments } from '../../decorators/codec.js';
import { replicatedClassInfo } from '../../decorators/metadata.js';
import { memoryRegistry } from '../../persistence/index.js';
import { encodeOrderedCall } from '../../src/group/wire.js';
import { hlc } from '../../src/core/hlc.js';
import { makeVersion, nodeId, shardIndex, subgroupId, viewId, type Version } from '../../src/core/ids.js';
import { RELAY_CLIENTS_MAX, RELAY_EVICT_BATCH, RELAY_WINDOW } from '../../src/group/relay-table.js';
import { ShardReplica } from '../../src/group/replica.js';
import { Persistent, ordered, persistent, replicated } from '../../src/index.js';
import type { View } from '../../src/membership/view.js';

@replicated({ name: 'ReplicaRelayCounter' })
class Counter {
  @persistent() n = new Persistent(() => 0);
  @ordered() inc(): number {
    this.n.update((v) => v + 1);
    return this.n.value;
  }
}

function replicaOf(name: string) {
  const info = replicatedClassInfo(Counter);
  const replies: Uint8Array[] = [];
  const replica = new ShardReplica(
    info, 0, subgroupId(0), shardIndex(0), [nodeId(1)], memoryRegistry(name), nodeId(1),
    { current: () => undefined as unknown as View, onView: () => undefined },
    (_caller, _callId, reply) => replies.push(reply),
    'persistent',
  );
  const method = info.ordered.get('inc') ?? [...info.ordered.values()].find((m) => m.methodName === 'inc')!;
  const args = encodeArguments(method, []);
  let position = 0;
  const deliver = (clientId: string, requestId: number): void => {
    replica.deliver({
      sender: nodeId(1),
      version: makeVersion(viewId(1), position) as Version,
      timestamp: hlc(1000 + position, 0),
      payload: encodeOrderedCall(position++, method.wireName, args, [clientId, requestId]),
    });
  };
  return { replica, deliver, replies };
}

test('one client: replies below the window are dropped, a retry inside it is answered without running again', (t) => {
  const { replica, deliver, replies } = replicaOf('ReplicaRelay/0');
  const calls = 3 * RELAY_WINDOW;
  for (let id = 1; id <= calls; id++) deliver('a', id);
  t.is(replica.relayedHeld().replies, RELAY_WINDOW, 'exactly the window of replies is kept');
  t.is((replica.object as Counter).n.value, calls);
  deliver('a', calls - 5); // a retry inside the window
  t.is((replica.object as Counter).n.value, calls, 'the retry did not run');
  t.deepEqual(replies.at(-1), replies[calls - 6], 'it was answered with the first reply');
});

test('many clients: the table and the replies stay bounded, and a dropped client takes its replies', (t) => {
  const { replica, deliver } = replicaOf('ReplicaRelay/1');
  const clients = RELAY_CLIENTS_MAX + 2 * RELAY_EVICT_BATCH;
  for (let c = 0; c < clients; c++) {
    deliver(`client-${c}`, 1);
    deliver(`client-${c}`, 2);
  }
  const held = replica.relayedHeld();
  t.true(held.clients <= RELAY_CLIENTS_MAX, `held ${held.clients} clients`);
  t.is(held.replies, 2 * held.clients);
  // The newest client is remembered; the first ones were dropped, so their id 1 runs as new.
  const before = (replica.object as Counter).n.value;
  deliver(`client-${clients - 1}`, 1);
  t.is((replica.object as Counter).n.value, before);
  deliver('client-0', 1);
  t.is((replica.object as Counter).n.value, before + 1);
});

test('a delivery that is not an ordered call is dropped and counted alike on every replica; the next call runs', (t) => {
  const { replica, deliver, replies } = replicaOf('ReplicaRelay/2');
  deliver('a', 1);
  for (const garbage of [new Uint8Array(0), Uint8Array.from([0xff, 0x00, 0x13]), new TextEncoder().encode('not a call')]) {
    replica.deliver({ sender: nodeId(1), version: makeVersion(viewId(1), 100 + garbage.length) as Version, timestamp: hlc(5000, 0), payload: garbage });
  }
  t.is(replica.counters.malformed, 3);
  t.is(replica.counters.delivered, 1);
  t.is(replies.length, 1, 'nothing answered for the dropped ones');
  t.is((replica.object as Counter).n.value, 1);
  deliver('a', 2);
  t.is((replica.object as Counter).n.value, 2);
  t.is(replica.counters.delivered, 2);
});

@replicated({ name: 'ReplicaPlainField' })
class PlainField {
  @persistent() n = 0 as unknown as Persistent<number>;
  @ordered() inc(): void {}
}

test('a @persistent field that holds no Persistent after construction fails the replica at start, naming the field and the fix', (t) => {
  const info = replicatedClassInfo(PlainField);
  const error = t.throws(() => new ShardReplica(
    info, 0, subgroupId(0), shardIndex(0), [nodeId(1)], memoryRegistry('ReplicaPlain/0'), nodeId(1),
    { current: () => undefined as unknown as View, onView: () => undefined }, () => undefined, 'persistent',
  ));
  t.is(error?.name, 'DecoratorUsageError');
  t.regex(error?.message ?? '', /PlainField\.n is @persistent but does not hold a Persistent<T> or Volatile<T> after construction\. Fix: initialise it/);
});
