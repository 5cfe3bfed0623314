// The membership protocol with the real cores composed (Raft membership log, failure detector,
// view-change manager, multicast per shard) under the deterministic simulator: crashes and
// restarts, joins, clean leaves, partitions, loss, duplication, reordering. Checks same views,
// total order, virtual synchrony, nothing delivered missing at survivors, exactly once, versions,
// state digests, minority silence and liveness (see membership-sim.ts); odd seeds with the
// transport's port-unreachable signal for crashed processes (suspicion within a message delay).
// Longer runs:
// npm run sim -- membership --seeds 1000.
import test from 'ava';
import { runSeed } from './membership-sim.js';

test('membership under faults: 8 seeds keep every invariant and recover', (t) => {
  let views = 0;
  let unreachable = 0;
  for (let seed = 1; seed <= 8; seed++) {
    const result = runSeed(seed);
    views += Number(/^(\d+) views/.exec(result.summary)?.[1] ?? 0);
    unreachable += Number(/port-unreachable answers (\d+)/.exec(result.summary)?.[1] ?? 0);
  }
  t.true(views >= 30, `the budget exercised view changes (${views})`);
  // Odd seeds model the transport's port-unreachable signal for crashed processes.
  t.true(unreachable > 0, `crashed nodes' hosts answered port unreachable (${unreachable})`);
});

test('the trim-agreement mutation is caught', (t) => {
  const caught = [1, 2, 3].filter((seed) => {
    try {
      runSeed(seed, { flags: { mutation: 'skipTrimAgreement' } });
      return false;
    } catch (error) {
      return /virtual synchrony|total order|no delivery missing|state digest/.test(String(error));
    }
  });
  t.true(caught.length >= 2, `caught on seeds ${caught}`);
});

test('a membership seed replays to the same trace hash', (t) => {
  t.is(runSeed(4).traceHash, runSeed(4).traceHash);
  t.not(runSeed(4).traceHash, runSeed(5).traceHash);
});
