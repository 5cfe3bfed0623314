import test from 'ava';
import { AssertionError } from '../../src/core/errors.js';
import { compareHlc, hlc } from '../../src/core/hlc.js';
import { makeVersion, viewId } from '../../src/core/ids.js';
import { ShardMachine, decodeShardEntry, encodeCall, encodeRegister, type ShardCall } from '../../src/raft/shard-core.js';
import type { Entry } from '../../src/raft/types.js';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const entry = (index: number, data: Uint8Array, term = 1): Entry => ({ index, term, type: 0, data });
const call = (client: number, seq: number, ackedBelow = 1, payload = `c${client}s${seq}`): ShardCall => ({
  client, seq, ackedBelow, payload: bytes(payload),
});

test('a call runs once; its retry gets the cached reply; acknowledged replies are forgotten', (t) => {
  const m = new ShardMachine();
  t.deepEqual(m.apply(entry(1, encodeRegister())), { kind: 'registered', index: 1, client: 1 });
  const first = m.apply(entry(2, encodeCall(call(1, 1), hlc(10)), 3));
  t.is(first.kind, 'call');
  if (first.kind !== 'call') return;
  t.is(first.version, makeVersion(viewId(3), 2));
  t.deepEqual(first.timestamp, hlc(10));
  t.deepEqual(first.call.payload, bytes('c1s1'));
  m.completed(bytes('reply-1'));
  const retry = m.apply(entry(3, encodeCall(call(1, 1), hlc(11))));
  t.deepEqual(retry, { kind: 'duplicate', index: 3, call: { ...call(1, 1), payload: retry.kind === 'duplicate' ? retry.call.payload : bytes('') }, reply: bytes('reply-1') });
  // seq 2 acknowledges seq 1: its reply is dropped, and a late retry of seq 1 is refused.
  t.is(m.apply(entry(4, encodeCall(call(1, 2, 2), hlc(12)))).kind, 'call');
  m.completed(bytes('reply-2'));
  const late = m.apply(entry(5, encodeCall(call(1, 1), hlc(13))));
  t.is(late.kind, 'expired');
  t.regex(late.kind === 'expired' ? late.reason : '', /already acknowledged/);
});

test('unknown and evicted clients are refused, least recently applied first', (t) => {
  const m = new ShardMachine({ clientsMax: 2 });
  t.is(m.apply(entry(1, encodeCall(call(9, 1), hlc(1)))).kind, 'expired');
  m.apply(entry(2, encodeRegister())); // client 2
  m.apply(entry(3, encodeRegister())); // client 3
  t.is(m.apply(entry(4, encodeCall(call(2, 1), hlc(2)))).kind, 'call'); // client 2 now most recent
  m.completed(bytes('x'));
  m.apply(entry(5, encodeRegister())); // client 5 evicts client 3
  t.is(m.clients, 2);
  t.is(m.apply(entry(6, encodeCall(call(3, 1), hlc(3)))).kind, 'expired');
  t.is(m.apply(entry(7, encodeCall(call(2, 2), hlc(4)))).kind, 'call');
});

test('unacknowledged replies per client are bounded', (t) => {
  const m = new ShardMachine({ repliesPerClientMax: 2 });
  m.apply(entry(1, encodeRegister()));
  for (let seq = 1; seq <= 2; seq++) {
    t.is(m.apply(entry(1 + seq, encodeCall(call(1, seq), hlc(seq)))).kind, 'call');
    m.completed(bytes(`r${seq}`));
  }
  const third = m.apply(entry(4, encodeCall(call(1, 3), hlc(3))));
  t.is(third.kind, 'expired');
  t.regex(third.kind === 'expired' ? third.reason : '', /2 unacknowledged replies \(limit 2\)/);
});

test('snapshot and restore give a machine that answers the same', (t) => {
  const a = new ShardMachine();
  a.apply(entry(1, encodeRegister()));
  a.apply(entry(2, encodeCall(call(1, 1), hlc(5))));
  a.completed(bytes('one'));
  a.apply(entry(3, new Uint8Array(0)));
  const b = new ShardMachine();
  b.restore(a.snapshot());
  t.is(b.applied, 3);
  t.deepEqual(b.snapshot(), a.snapshot());
  const retry = b.apply(entry(4, encodeCall(call(1, 1), hlc(6))));
  t.is(retry.kind, 'duplicate');
  t.deepEqual(retry.kind === 'duplicate' ? retry.reply : undefined, bytes('one'));
  // The restored machine stamps after the snapshot's latest time.
  const { timestamp } = b.stamp(call(1, 2), hlc(1));
  t.true(compareHlc(timestamp, hlc(6)) > 0);
});

test('stamps never go back along the log, whatever the leader clock says', (t) => {
  const follower = new ShardMachine();
  follower.observeAppended([entry(1, encodeCall(call(1, 1), hlc(1000, 7)))]);
  const { timestamp, data } = follower.stamp(call(1, 2), hlc(10));
  t.deepEqual(timestamp, hlc(1000, 8));
  const decoded = decodeShardEntry(data);
  t.deepEqual(decoded?.kind === 'call' ? decoded.timestamp : undefined, hlc(1000, 8));
  t.deepEqual(follower.stamp(call(1, 3), hlc(2000)).timestamp, hlc(2000));
});

test('misuse is an assertion, not silent corruption', (t) => {
  const m = new ShardMachine();
  m.apply(entry(2, encodeRegister()));
  t.throws(() => m.apply(entry(2, encodeRegister())), { instanceOf: AssertionError, message: /in log order: 2 after 2/ });
  m.apply(entry(3, encodeCall(call(2, 1), hlc(1))));
  t.throws(() => m.apply(entry(4, encodeRegister())), { instanceOf: AssertionError, message: /never completed/ });
  t.throws(() => encodeCall(call(1, 0), hlc(1)), { instanceOf: AssertionError, message: /seq 0 must be ≥ 1/ });
  t.throws(() => encodeCall(call(-1, 1), hlc(1)), { instanceOf: AssertionError, message: /client must be a uint32, got -1/ });
  t.throws(() => encodeCall(call(1, 2 ** 32), hlc(1)), { instanceOf: AssertionError, message: /seq must be a uint32/ });
  t.throws(() => encodeCall(call(1, 2, 1.5), hlc(1)), { instanceOf: AssertionError, message: /ackedBelow must be a uint32, got 1.5/ });
  t.throws(() => decodeShardEntry(Uint8Array.of(9, 9)), { instanceOf: AssertionError, message: /not a shard entry/ });
  t.throws(() => new ShardMachine({ clientsMax: 0 }), { instanceOf: AssertionError });
});
