// The short, fixed key-value chaos run that `npm test` includes (`npm run chaos -- --scenario kv
// --minutes N` runs more): five real node processes on the membership service under a fixed
// seed's faults and a total restart from disk, then linearizability, p2p reads against the total order, acknowledged writes,
// identical replicas and version histories, temporal reads, partition safety and no-crash
// checks; once more with the nodes' persistence durable through the write-ahead log (replayed
// after each kill -9 and at the total restart). A node broken on purpose (compare-and-set that ignores its expected value, alike on
// every replica, so only the history can tell) shows the checks can fail.
import test from 'ava';
import { NetLab } from '../cluster/netns.js';
import { kvChaos } from '../cluster/scenarios/kv.js';

test.serial('kv chaos: a fixed seed passes every check with faults injected', async (t) => {
  t.timeout(240_000);
  // Seed 4's schedule starts with a kill -9 of a member (then a replacement joins); at the end
  // every node is killed and restarted over its data, and every acknowledged write checked again.
  const report = await kvChaos.run(4, { faultMs: 2500, log: (l) => t.log(l), encryption: 'on', network: 'loopback', restartCheck: true });
  t.deepEqual(report.violations, []);
  t.true(report.passed);
  const injected = Object.entries(report.faults).filter(([kind]) => kind !== 'quiet');
  t.true(injected.length > 0, `faults injected: ${JSON.stringify(report.faults)}`);
  t.true(report.operations > 200, `${report.operations} operations checked`);
  t.is(report.faults['total-restart'], 1);
});

test.serial('kv chaos: the same faults with durable persistence through the write-ahead log (kill -9 and the total restart replay it)', async (t) => {
  t.timeout(240_000);
  const report = await kvChaos.run(4, {
    faultMs: 2500, log: (l) => t.log(l), encryption: 'on', network: 'loopback', restartCheck: true, persistence: 'wal',
  });
  t.deepEqual(report.violations, []);
  t.true(report.passed);
  t.is(report.persistence, 'wal');
  t.true(report.operations > 200, `${report.operations} operations checked`);
  t.is(report.faults['total-restart'], 1);
});

test.serial('kv chaos: a compare-and-set that ignores its expected value is caught by the linearizability check', async (t) => {
  t.timeout(240_000);
  const report = await kvChaos.run(5, {
    faultMs: 0,
    log: (l) => t.log(l),
    network: 'loopback',
    nodeEnv: { KV_NODE_MUTATION: 'cas-ignores-expected' },
  });
  t.false(report.passed);
  t.true(report.violations.some((v) => v.startsWith('linearizability:')), report.violations.join('\n'));
});

test.serial('kv chaos: nodes that lose their data at a total restart are caught by the restart check', async (t) => {
  t.timeout(240_000);
  const report = await kvChaos.run(6, {
    faultMs: 0,
    log: (l) => t.log(l),
    network: 'loopback',
    restartCheck: true,
    nodeEnv: { KV_NODE_MUTATION: 'forget-on-restart' },
  });
  t.false(report.passed);
  t.true(report.violations.some((v) => v.startsWith('restart-lost-write:')), report.violations.join('\n'));
});

test.serial('kv chaos: a node that answers ordered reads locally when the shard stalls is caught by the partition check', async (t) => {
  t.timeout(240_000);
  const netns = NetLab.available();
  if (!netns.ok) {
    // Partitions need namespaces (root, iproute2): the scenario must refuse the fault by name.
    await t.throwsAsync(
      kvChaos.run(7, { faultMs: 1, log: () => undefined, faultKinds: ['partition'], network: 'loopback' }),
      { message: /partition fault needs network namespaces/ },
    );
    t.log(`namespaces unavailable (${netns.reason}); checked the refusal only`);
    return;
  }
  // One fault: a node (half the time the membership leader) cut off past the failure timeout.
  // The planted stale read needs an ordered read issued on the cut-off node while it is cut off;
  // at load 10+ a run sometimes issues none there (its clients' calls time out around the cut),
  // so a second seed gets one more chance; if neither run's partition check reports it, the test fails.
  const seen: string[] = [];
  for (const seed of [7, 17]) {
    const report = await kvChaos.run(seed, {
      faultMs: 1,
      log: (l) => t.log(l),
      network: 'netns',
      faultKinds: ['partition'],
      nodeEnv: { KV_NODE_MUTATION: 'read-local-when-stalled' },
    });
    t.is(report.faults['partition'], 1);
    seen.push(`seed ${seed}: ${report.violations.join(' | ')}`);
    if (report.violations.some((v) => v.startsWith('partition:'))) return;
  }
  t.fail(`no run's partition check caught the planted stale reads:\n${seen.join('\n')}`);
});

test.serial('kv chaos: clean leaves keep every check passing', async (t) => {
  t.timeout(240_000);
  const report = await kvChaos.run(8, { faultMs: 3000, log: (l) => t.log(l), network: 'loopback', faultKinds: ['leave'] });
  t.deepEqual(report.violations, []);
  t.true(report.passed);
  t.true((report.faults['leave'] ?? 0) >= 1, JSON.stringify(report.faults));
  t.is(report.faults['leave'], report.faults['replacement-join']);
});
