// Proves the ordered-call bookkeeping the group layer keeps per call: QueryResults makes each
// member's reply promise (and decodes its bytes) only when asked, with the same outcome as doing
// it at once (values, per-member RemoteError, failures before and after the ask, no unhandled
// rejections, iteration in member order, `complete`); the frontier waits resolve with the
// version once numbered; FrontierWaiters resolves exactly the waiters the frontier passed, in
// version order, whatever order they came in, and keeps working across its compaction.
import test from 'ava';
import { encodeApplicationError, encodeResult } from '../../decorators/codec.js';
import { RemoteError } from '../../decorators/errors.js';
import { hlc } from '../../src/core/hlc.js';
import { nodeId, type NodeId, type Version } from '../../src/core/ids.js';
import { QueryResults, type OrderedReceipt, type ShardFrontierWaits } from '../../src/group/query-results.js';
import { FrontierWaiters } from '../../src/group/wire.js';

const members = [nodeId(0), nodeId(1), nodeId(2)];
const v = (n: number): Version => BigInt(n) as Version;

function waitsOver(delivered: FrontierWaiters, persisted: FrontierWaiters): ShardFrontierWaits {
  return {
    whenDelivered: (version) => delivered.wait(version),
    whenLocalPersisted: (version) => persisted.wait(version),
    whenPersisted: (version) => persisted.wait(version),
  };
}

function results(sent: Promise<OrderedReceipt>, waits?: ShardFrontierWaits): QueryResults<number> {
  const none = new FrontierWaiters(v(-1));
  return new QueryResults<number>('T.m', members, sent, waits ?? waitsOver(none, none));
}

const receipt = (n: number): OrderedReceipt => ({ version: v(n), timestamp: hlc(1000 + n, 0) });

/** Lets pending promise reactions run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('replies asked for before and after they arrive give the same values, in member order', async (t) => {
  const r = results(Promise.resolve(receipt(1)));
  const early = r.replies.get(nodeId(0))!;
  r.settleReply(nodeId(0), encodeResult(10));
  r.settleReply(nodeId(2), encodeResult(12));
  r.settleReply(nodeId(1), encodeResult(11));
  r.settleReply(nodeId(1), encodeResult(99)); // a duplicate is ignored
  t.is(await early, 10);
  t.is(r.replies.get(nodeId(0)), early, 'one promise per member');
  t.deepEqual([...r.replies.keys()], members);
  t.deepEqual(await Promise.all(r.replies.values()), [10, 11, 12]);
  t.deepEqual([...(await r)], [[nodeId(0), 10], [nodeId(1), 11], [nodeId(2), 12]]);
  t.true(r.complete);
  t.is(r.replies.size, 3);
  t.true(r.replies.has(nodeId(2)));
  t.false(r.replies.has(nodeId(7)));
  const seen: NodeId[] = [];
  r.replies.forEach((_, node) => seen.push(node));
  t.deepEqual(seen, members);
  t.deepEqual([...r.rawReplies.keys()].sort(), members);
});

test('an application error is that member\'s RemoteError only, asked for before or after', async (t) => {
  const r = results(Promise.resolve(receipt(2)));
  const before = r.replies.get(nodeId(1))!;
  r.settleReply(nodeId(0), encodeResult(1));
  r.settleReply(nodeId(1), encodeApplicationError(new RangeError('bad')));
  r.settleReply(nodeId(2), encodeApplicationError(new TypeError('worse')));
  const one = await t.throwsAsync(before, { instanceOf: RemoteError });
  t.is(one?.remoteName, 'RangeError');
  t.is(one?.nodeId, nodeId(1));
  const two = await t.throwsAsync(r.replies.get(nodeId(2))!, { instanceOf: RemoteError });
  t.is(two?.remoteName, 'TypeError');
  t.is(two?.nodeId, nodeId(2));
  t.is(await r.replies.get(nodeId(0)), 1);
  await t.throwsAsync(Promise.resolve(r), { instanceOf: RemoteError }, 'awaiting the map rejects');
});

test('failures reach the members still waiting, whether or not anyone asked yet', async (t) => {
  const r = results(Promise.resolve(receipt(3)));
  const asked = r.replies.get(nodeId(2))!;
  r.settleReply(nodeId(0), encodeResult(5));
  r.failMembersWhere((node) => node !== nodeId(1), (node) => new Error(`gone ${node}`));
  t.false(r.complete);
  await t.throwsAsync(asked, { message: 'gone 2' });
  t.is(await r.replies.get(nodeId(0)), 5, 'a reply that had arrived stays');
  r.failAll(new Error('closed'));
  t.true(r.complete);
  await t.throwsAsync(r.replies.get(nodeId(1))!, { message: 'closed' });
  await t.throwsAsync(r.replies.get(nodeId(2))!, { message: 'gone 2' }, 'the first failure stays');
});

test('a failed send fails every reply, the version and every frontier wait; nothing unhandled', async (t) => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    const r = results(Promise.reject(new Error('not sent')));
    const ignored = results(Promise.reject(new Error('nobody looks'))); // never awaited
    await settle();
    t.true(r.complete);
    t.true(ignored.complete);
    await t.throwsAsync(r.replies.get(nodeId(0))!, { message: 'not sent' });
    await t.throwsAsync(r.version, { message: 'not sent' });
    await t.throwsAsync(r.timestamp, { message: 'not sent' });
    await t.throwsAsync(r.delivered(), { message: 'not sent' });
    await t.throwsAsync(r.persisted(), { message: 'not sent' });
    void ignored.version; // made lazily after the failure: observed, not unhandled
    await settle();
    await settle();
    t.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});

test('the frontier waits resolve with the version, before and after it is numbered', async (t) => {
  const delivered = new FrontierWaiters(v(0));
  const persisted = new FrontierWaiters(v(0));
  let sent!: (r: OrderedReceipt) => void;
  const r = results(new Promise((resolve) => (sent = resolve)), waitsOver(delivered, persisted));
  const early = r.delivered();
  let done = false;
  void early.then(() => (done = true));
  // The send receipt's number is not final (a trim may cut the call off and re-send it): the
  // version is the one the call is delivered at on this node.
  sent(receipt(5));
  let versioned = false;
  void r.version.then(() => (versioned = true));
  await settle();
  t.false(versioned, 'the send receipt alone does not number the call');
  r.numbered(v(7));
  t.is(await r.version, v(7));
  t.deepEqual(await r.timestamp, hlc(1005, 0), "the timestamp is the send's");
  delivered.advance(v(6));
  await settle();
  t.false(done, 'not before the frontier reaches the version');
  delivered.advance(v(7));
  t.is(await early, v(7));
  t.is(await r.delivered(), v(7), 'asked after numbering');
  const late = r.persisted();
  persisted.advance(v(9));
  t.is(await late, v(7));
});

test('FrontierWaiters resolves exactly the waiters passed, in version order, any insert order', async (t) => {
  const w = new FrontierWaiters(v(10));
  const order: number[] = [];
  const wait = (n: number): Promise<void> => w.wait(v(n)).then(() => void order.push(n));
  const all = [15, 12, 20, 12, 11, 30, 14].map(wait);
  t.is(w.waitingCount, 7);
  await wait(9); // at or below the frontier: at once
  w.advance(v(12));
  await settle();
  t.deepEqual(order, [9, 11, 12, 12]);
  w.advance(v(11)); // never moves back
  t.is(w.current, v(12));
  w.advance(v(20));
  await settle();
  t.deepEqual(order, [9, 11, 12, 12, 14, 15, 20]);
  t.is(w.waitingCount, 1);
  w.failAll(new Error('closed'));
  await t.throwsAsync(all[5]!, { message: 'closed' });
  await t.throwsAsync(w.wait(v(40)), { message: 'closed' });
  t.is(w.waitingCount, 0);
});

test('FrontierWaiters keeps its order across the compaction of resolved slots', async (t) => {
  const w = new FrontierWaiters(v(0));
  const resolved: number[] = [];
  // More than the compaction threshold, resolved in steps, with new waiters added in between.
  for (let n = 1; n <= 3000; n++) void w.wait(v(n)).then(() => void resolved.push(n));
  for (let step = 1; step <= 30; step++) {
    w.advance(v(step * 100));
    for (let k = 0; k < 10; k++) void w.wait(v(3000 + step * 10 + k)).then(() => void resolved.push(3000 + step * 10 + k));
  }
  w.advance(v(3400));
  await settle();
  t.is(resolved.length, 3300);
  t.true(resolved.every((n, i) => i === 0 || n > resolved[i - 1]!), 'resolved in version order');
  t.is(w.waitingCount, 0);
});
