// A member whose view-change effect fails (here: its `persist` hook throws while it delivers up
// to the ragged trim) stops as removed and says why, instead of staying in its old view with its
// wedge report missing: the `removed` event carries the cause, and the others, hearing no more
// heartbeats from it, install a view without it. Before, the failure went to a process warning
// only and the node went on serving in a view the group had left.
import test from 'ava';
import { createFounders, kill, waitFor, type LocalNode } from '../support/membership-local.js';

test.serial('a member whose persist hook fails in a view change stops, says why, and is removed', async (t) => {
  t.timeout(40_000);
  let broken = false;
  const { nodes } = await createFounders(1300, 5, (id) => (id === 4 ? {
    persist: async () => {
      if (broken) throw new Error('disk full (injected)');
    },
  } : {}));
  const live = (): LocalNode[] => nodes.filter((n) => n.alive && n.removed === undefined);
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    broken = true;
    await kill(nodes[4]!); // a view change: node 4 persists before the next view, and fails
    await waitFor('node 4 stops', () => nodes[3]!.removed !== undefined, 15_000);
    t.regex(nodes[3]!.removed!.message, /internal error: disk full \(injected\)/);
    t.regex(nodes[3]!.removed!.message, /Fix: start the node again/);
    await waitFor('a view of nodes 1-3', () => live().every((n) => String(n.driver.current().memberIds) === '1,2,3'), 20_000);
    for (const n of live()) t.deepEqual(n.driver.current().memberIds, [1, 2, 3]);
    t.true(Number(nodes[3]!.driver.current().id) < Number(nodes[0]!.driver.current().id), 'node 4 installed none of the later views');
  } finally {
    for (const n of nodes) if (n.alive) await kill(n);
  }
});
