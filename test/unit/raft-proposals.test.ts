// Proves the RaftDriver's queue of waiting proposals (src/runtime/raft-proposals.ts) keeps the
// contract of the Map it replaced: taken by exact index, in index order, a waiter at an index
// proposed again replaced, out-of-order indexes placed in order, across the ring's wrap and growth.
import test from 'ava';
import { ProposalQueue } from '../../src/runtime/raft-proposals.js';

interface W { index: number; tag: string }
const w = (index: number, tag = `p${index}`): W => ({ index, tag });

test('one at a time, as a leader with one proposal outstanding: added at the back, taken from the front', (t) => {
  const q = new ProposalQueue<W>();
  for (let i = 1; i <= 100; i++) {
    q.set(w(i));
    t.is(q.take(i - 1), undefined); // nothing waits at an index applied already
    t.is(q.take(i)?.tag, `p${i}`);
    t.is(q.size, 0);
  }
});

test('many waiting across the ring\'s wrap and growth, taken in order; an index without a waiter is skipped', (t) => {
  const q = new ProposalQueue<W>();
  let next = 1;
  let taken = 1;
  // Keep 5..40 waiting while the ring (16 slots at first) wraps and doubles.
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 3 + round; i++) q.set(w((next += 2))); // odd... every other index
    for (let i = 0; i < 2 + round; i++) {
      t.is(q.take(taken + 1), undefined, 'no waiter at the even index between');
      const p = q.take((taken += 2));
      t.is(p?.index, taken);
    }
  }
  t.is(q.size, 20);
  t.deepEqual(q.takeAll().map((p) => p.index), Array.from({ length: 20 }, (_, i) => taken + 2 * (i + 1)));
  t.is(q.size, 0);
});

test('an index proposed again replaces its waiter; a lower index is placed in order; takeUpTo and takeAll in index order', (t) => {
  const q = new ProposalQueue<W>();
  for (const i of [10, 11, 12, 14]) q.set(w(i));
  q.set(w(12, 'again')); // replaced, not added
  q.set(w(13)); // between 12 and 14
  q.set(w(5)); // before the front
  t.is(q.size, 6);
  t.is(q.take(12)?.tag, 'again', 'behind the front: found by search');
  t.deepEqual(q.takeUpTo(11).map((p) => p.index), [5, 10, 11]);
  t.is(q.take(13)?.tag, 'p13');
  t.deepEqual(q.takeAll().map((p) => p.tag), ['p14']);
  t.is(q.take(14), undefined);
});
