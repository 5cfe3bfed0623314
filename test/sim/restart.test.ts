// The total restart's decision (src/membership/restart.ts) under the deterministic simulator:
// every node crashed; they come back in random orders and subsets, the restart leader crashes
// after its prepares, part-way through its accepts or part-way through telling the chosen
// decision (then the nodes it reached crash too), with loss, duplication and partitions. Checks
// that every node adopts the same decision, only a chosen one, no acknowledged write is lost and
// the replicas of each shard reconcile to one log (see restart-sim.ts); with newer view records
// (`newer=minority|majority|chain`, `newerLeads`), also that no decision restarts from before a
// view that delivered; with a membership log of view changes that each removed nearly half
// (`history=scenario|shrink`, restart-log.ts), that the restart waits for the log's voters and
// restarts from the newest view the most up-to-date log seals, and that the records-only rule
// (`mutation=noLogRule`) is caught skipping a view that delivered; with logs whose last round
// diverged (`history=diverge`: two leaders' uncommitted suffixes seal two views with one id),
// that one decision is chosen, and that dropping the tentative accept quorum
// (`mutation=noTentative`) is caught choosing two.
// Longer runs: npm run sim -- restart --seeds 5000 [--flag newer=...|history=...].
import test, { type ExecutionContext } from 'ava';
import { runSeed } from './restart-sim.js';

/** The seeds in 1..`seeds` on which `flags` fail with `violation` (any other failure fails the test). */
function caughtOn(t: ExecutionContext, seeds: number, flags: Record<string, string | boolean>, violation: RegExp): number[] {
  const caught = [];
  for (let seed = 1; seed <= seeds; seed++) {
    try {
      runSeed(seed, { flags });
    } catch (error) {
      t.regex(String(error), violation);
      caught.push(seed);
    }
  }
  return caught;
}

test('total restart under faults: 60 seeds agree on one decision and reconcile every shard', (t) => {
  const profiles = new Set<string>();
  let leaderCrashes = 0;
  let reproposed = 0;
  for (let seed = 1; seed <= 60; seed++) {
    const result = runSeed(seed);
    profiles.add(/profile (\w+)/.exec(result.summary)![1]!);
    leaderCrashes += Number(/leader crashes (\d+)/.exec(result.summary)![1]);
    reproposed += Number(/re-proposed (\d+)/.exec(result.summary)![1]);
  }
  t.deepEqual([...profiles].sort(), ['afterPrepare', 'midAccept', 'midChosen', 'none']);
  t.true(leaderCrashes >= 10, `the leader crashed mid-decision ${leaderCrashes} times`);
  // A later ballot found a decision a crashed leader got accepted, and proposed it again.
  t.true(reproposed >= 5, `re-proposed ${reproposed}`);
});

test('the single-phase decision (before ballots) is caught disagreeing', (t) => {
  const caught = caughtOn(t, 20, { mutation: 'singlePhase' }, /restart agreement/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('newer view records: 90 seeds of a minority-recorded, a majority-recorded and a chained newer view agree', (t) => {
  const decidedFrom = new Map<string, Set<number>>();
  for (const newer of ['minority', 'majority', 'chain']) {
    for (let seed = 1; seed <= 30; seed++) {
      const flags: Record<string, string | boolean> = seed % 2 === 0 ? { newer, newerLeads: true } : { newer };
      const result = runSeed(seed, { flags });
      const from = /decided (\d+)\//.exec(result.summary)![1]!;
      decidedFrom.set(newer, (decidedFrom.get(newer) ?? new Set()).add(Number(from) - 1));
    }
  }
  // Restarts from view 7 (R) and from the newer record both occur where they may.
  t.deepEqual([...decidedFrom.get('minority')!].sort(), [7, 8]);
  t.deepEqual([...decidedFrom.get('majority')!].sort(), [8], 'view 8 delivered: never a restart from view 7');
  t.true(decidedFrom.get('chain')!.has(9), 'a restart from the chain\'s last record');
});

test('the earlier acceptor, which started over in each newer instance, is caught disagreeing', (t) => {
  const caught = caughtOn(t, 30, { newer: 'minority', newerLeads: true, mutation: 'perInstance' }, /restart agreement/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('a restart that ignores newer records is caught skipping a view that delivered', (t) => {
  const caught = caughtOn(t, 10, { newer: 'majority', mutation: 'ignoreNewer' }, /delivered view skipped/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('membership-log histories: 60 seeds of the hole and of random shrinking views restart from every delivered view', (t) => {
  let fromLog = 0;
  let logWaits = 0;
  const decided = new Set<number>();
  for (const history of ['scenario', 'shrink']) {
    for (let seed = 1; seed <= 30; seed++) {
      const result = runSeed(seed, { flags: { history } });
      fromLog += Number(/restarts from a log's view (\d+)/.exec(result.summary)![1]) > 0 ? 1 : 0;
      logWaits += Number(/log waits (\d+)/.exec(result.summary)![1]) > 0 ? 1 : 0;
      if (history === 'scenario') decided.add(Number(/decided (\d+)\//.exec(result.summary)![1]));
    }
  }
  t.deepEqual([...decided], [10], 'the scenario always restarts from view 9 (R + 2), which delivered');
  t.true(fromLog >= 20 && logWaits >= 10, `seeds restarting from a view a log sealed: ${fromLog}, waiting for the log's voters: ${logWaits}`);
});

test('the records-only restart (no membership-log rule) is caught skipping a view that delivered', (t) => {
  const caught = caughtOn(t, 12, { history: 'scenario', mutation: 'noLogRule' }, /delivered view skipped/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('divergent membership logs: 40 seeds of two seals of one view id agree, from either side', (t) => {
  const sides = new Set<string>();
  let tentative = 0;
  for (let seed = 1; seed <= 40; seed++) {
    const result = runSeed(seed, { flags: { history: 'diverge' } });
    sides.add(/from side (\w+)/.exec(result.summary)![1]!);
    tentative += Number(/\(tentative (\d+)\)/.exec(result.summary)![1]) > 0 ? 1 : 0;
  }
  t.deepEqual([...sides].sort(), ['a', 'b', 'neither'], 'decisions from side a\'s view, side b\'s and their predecessor');
  t.true(tentative >= 20, `seeds moving to a tentative view: ${tentative}`);
});

test('without the tentative accept quorum, two seals of one view id are caught choosing two decisions', (t) => {
  const caught = caughtOn(t, 30, { history: 'diverge', mutation: 'noTentative' }, /two decisions chosen/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('a node that stays in the first seal of a view id it heard of is caught stalling', (t) => {
  const caught = caughtOn(t, 15, { history: 'diverge', mutation: 'firstSeal' }, /liveness/);
  t.true(caught.length >= 2, `caught on seeds [${caught}]`);
});

test('a restart seed replays to the same trace hash', (t) => {
  t.is(runSeed(7).traceHash, runSeed(7).traceHash);
  t.not(runSeed(7).traceHash, runSeed(8).traceHash);
});
