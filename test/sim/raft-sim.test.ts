// The Raft simulation suite under the CI budget. Checks, after every simulated step, election
// safety, leader append-only, log matching, leader completeness, state-machine safety, committed
// entries being final and ReadIndex linearizability, and liveness once faults stop (see
// raft-sim.ts). Also proves the harness itself: a seed replays to the same trace hash, and a
// deliberately broken rule is caught within the budget (so a green run means something).
import test from 'ava';
import { runSeed } from './raft-sim.js';
import { SimFailure } from './simulation.js';

const SEEDS = Number(process.env['RAFT_SIM_SEEDS'] ?? 2500);

test(`raft: ${SEEDS} seeds with crashes, partitions, loss, duplication, membership changes`, (t) => {
  const failures: string[] = [];
  let steps = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    try {
      steps += runSeed(seed).steps;
    } catch (error) {
      failures.push(error instanceof Error ? error.message.split('\n').slice(0, 2).join(' ') : String(error));
    }
  }
  t.deepEqual(failures, []);
  t.log(`${SEEDS} seeds, ${steps} steps`);
});

test('one seed gives the same trace hash twice; another seed a different one', (t) => {
  const a = runSeed(4242);
  const b = runSeed(4242);
  t.is(a.traceHash, b.traceHash);
  t.is(a.steps, b.steps);
  t.not(runSeed(4243).traceHash, a.traceHash);
});

function firstFailure(mutation: string, seedsMax: number): SimFailure | undefined {
  for (let seed = 1; seed <= seedsMax; seed++) {
    try {
      runSeed(seed, { flags: { mutation } });
    } catch (error) {
      if (error instanceof SimFailure) return error;
      throw error;
    }
  }
  return undefined;
}

test('mutation: committing a previous-term entry by counting (Figure 8) is caught', (t) => {
  const failure = firstFailure('commitPreviousTerm', SEEDS);
  t.truthy(failure, `the simulator missed the broken commit rule in ${SEEDS} seeds`);
  t.regex(failure!.message, /leader completeness|committed is final|state-machine safety/);
  t.log(`caught at seed ${failure!.seed}: ${failure!.message.split('\n')[0]}`);
  // The failing seed replays to the same failure at the same step.
  const again = t.throws(() => runSeed(failure!.seed, { flags: { mutation: 'commitPreviousTerm' } }), { instanceOf: SimFailure });
  t.is(again!.step, failure!.step);
});

test('mutation: granting votes without the up-to-date log check is caught', (t) => {
  const failure = firstFailure('voteWithoutLogCheck', 200);
  t.truthy(failure);
  t.log(`caught at seed ${failure!.seed}: ${failure!.message.split('\n')[0]}`);
});

test('mutation: sending votes and acknowledgements before they are durable is caught (the disk model matters)', (t) => {
  const failure = firstFailure('sendBeforePersist', SEEDS);
  t.truthy(failure, `the simulator missed persist-before-send in ${SEEDS} seeds`);
  t.log(`caught at seed ${failure!.seed}: ${failure!.message.split('\n')[0]}`);
});
