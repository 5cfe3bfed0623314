// The raft-ordered shard under the CI budget (`npm run sim -- raft-shard --seeds N` runs more):
// at-most-once across retries, identical replies for duplicates, linearizable key-value history
// (ordered calls and ReadIndex reads), ordered timestamps, replica agreement and liveness, under
// crashes, partitions and loss, across a view change that replaces member 3 by member 4 in the
// Raft configuration. All three deliberate breaks must be caught.
import test from 'ava';
import { runSeed } from './raft-shard-sim.js';
import { SimFailure } from './simulation.js';

const SEEDS = Number(process.env['RAFT_SHARD_SIM_SEEDS'] ?? 200);

test(`raft shard: ${SEEDS} seeds of retried calls and reads under faults`, (t) => {
  const failures: string[] = [];
  let duplicates = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    try {
      const result = runSeed(seed);
      duplicates += Number(/duplicates answered (\d+)/.exec(result.summary)?.[1] ?? 0);
    } catch (error) {
      failures.push(error instanceof Error ? error.message.split('\n').slice(0, 2).join(' ') : String(error));
    }
  }
  t.deepEqual(failures, []);
  // The retry path was exercised, not just the happy path.
  t.true(duplicates > SEEDS, `${duplicates} retries answered from session caches`);
});

test('raft shard: a seed replays to the same trace', (t) => {
  t.is(runSeed(77).traceHash, runSeed(77).traceHash);
});

for (const [mutation, invariant] of [['noDedup', 'at most once'], ['localReads', 'linearizability'], ['noReconfigure', 'reconfigured']] as const) {
  test(`raft shard: the break "${mutation}" is caught as ${invariant}`, (t) => {
    let caught: SimFailure | undefined;
    for (let seed = 1; seed <= 50 && !caught; seed++) {
      try {
        runSeed(seed, { flags: { mutation } });
      } catch (error) {
        if (!(error instanceof SimFailure)) throw error;
        caught = error;
      }
    }
    t.truthy(caught, `no seed of 50 caught ${mutation}`);
    t.regex(caught!.message, new RegExp(invariant));
  });
}
