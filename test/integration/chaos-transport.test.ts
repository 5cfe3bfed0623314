// The short, fixed chaos run that `npm test` includes (`npm run chaos -- --minutes N` runs more):
// three real transport nodes under kill -9/restart, SIGSTOP past the failure timeout, packet loss
// and (as root) namespace partitions, then at-most-once, exactly-once-if-acknowledged, liveness
// and no-crash checks. A node broken on purpose shows the checks can fail.
import test from 'ava';
import { transportRpc } from '../cluster/scenarios/transport-rpc.js';

test.serial('transport chaos: a fixed seed passes every check with faults injected, every packet sealed', async (t) => {
  const report = await transportRpc.run(4242, { faultMs: 3000, log: (l) => t.log(l), encryption: 'on' });
  t.true(report.encrypted);
  t.deepEqual(report.violations, []);
  t.true(report.passed);
  const injected = Object.entries(report.faults).filter(([kind]) => kind !== 'quiet');
  t.true(injected.length > 0, `faults injected: ${JSON.stringify(report.faults)}`);
  t.true(report.operations > 500, `${report.operations} acknowledged calls checked`);
});

test.serial('transport chaos: a node that handles some requests twice is caught', async (t) => {
  const report = await transportRpc.run(7, {
    faultMs: 500,
    log: () => undefined,
    nodeEnv: { RPC_NODE_MUTATION: 'double-handle' },
  });
  t.false(report.passed);
  t.true(report.violations.some((v) => v.startsWith('at-most-once:')), report.violations.join('\n'));
  t.true(report.violations.some((v) => v.startsWith('exactly-once-if-acked:')), report.violations.join('\n'));
});
