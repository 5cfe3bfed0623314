// Fast failure with the default timeouts (src/transport/README.md, "Failure"): 5 member
// processes on loopback with the configuration's defaults (heartbeat 50 ms, failure timeout
// 1000 ms, transport peer-failure timeout 2000 ms). kill -9 of a member, then of the membership
// log's leader: the survivors' transport sessions to the dead process fail by ICMP port
// unreachable (its port is closed, the host is up), the failure detector suspects it through
// that transport signal, and one next view without it is installed everywhere. The assertions
// are about the signal (transport counters and the drivers' suspicions by cause), not about
// time: how long it takes is `npm run bench -- membership`.
import test from 'ava';
import { TimeoutsSection, TransportSection } from '../../src/config/schema.js';
import {
  forkNodes, startGroup, stopAll, type NodeProcess, type NodeStatus,
} from '../support/membership-cluster.js';

const sum = (statuses: NodeStatus[], f: (s: NodeStatus) => number): number => statuses.reduce((a, s) => a + f(s), 0);

test.serial('kill -9 with default timeouts: the view change is driven by the port-unreachable signal', async (t) => {
  t.timeout(120_000);
  const defaults = new TimeoutsSection();
  const timeouts = { heartbeatMs: defaults.heartbeat_ms, failureTimeoutMs: defaults.failure_timeout_ms };
  const nodes = await forkNodes([1, 2, 3, 4, 5], { peerFailureTimeoutMs: new TransportSection().peer_failure_timeout_ms });
  try {
    await startGroup(nodes, timeouts);
    for (const n of nodes) await n.request({ cmd: 'load', everyMs: 10 });
    const live = (): NodeProcess[] => nodes.filter((n) => n.alive);
    const before = await Promise.all(live().map((n) => n.status()));
    const killed = async (victim: NodeProcess, viewId: number): Promise<NodeStatus[]> => {
      const at = victim.kill();
      const views = await Promise.all(live().map((n) => n.request<NodeStatus & { atMs: number }>({ cmd: 'waitView', atLeast: viewId, timeoutMs: 30_000 })));
      const statuses = await Promise.all(live().map((n) => n.status()));
      t.true(statuses.every((s) => s.viewId === viewId && !s.members.includes(victim.id)),
        `every survivor installed view ${viewId} without node ${victim.id}: ${JSON.stringify(statuses.map((s) => [s.viewId, s.members]))}`);
      t.is(new Set(statuses.map((s) => `${s.members}`)).size, 1, 'with the same members');
      t.log(`kill -9 of node ${victim.id} → view ${viewId} everywhere: ${(Math.max(...views.map((v) => v.atMs)) - at).toFixed(0)} ms ` +
        `(suspicions by transport ${sum(statuses, (s) => s.suspicions.transport)}, by timeout ${sum(statuses, (s) => s.suspicions.timeout)})`);
      return statuses;
    };
    t.is(sum(before, (s) => s.transport['peerFailures']!), 0, 'no session failed while the group formed');
    const v1 = await killed(nodes[4]!, 1);
    // The signal: the dead process's port bounced datagrams, sessions failed on it, and the
    // failure detectors suspected node 5 through the transport.
    t.true(sum(v1, (s) => s.transport['peerFailuresUnreachable']!) >= 1, JSON.stringify(v1.map((s) => s.transport)));
    t.true(sum(v1, (s) => s.transport['udpPortUnreachable']!) >= 2);
    t.true(sum(v1, (s) => s.suspicions.transport) >= 1, JSON.stringify(v1.map((s) => s.suspicions)));
    const leader = nodes.find((n) => n.alive && v1[live().indexOf(n)]?.leader);
    t.truthy(leader, 'a voter leads the membership log');
    const v2 = await killed(leader!, 2);
    t.true(sum(v2, (s) => s.transport['peerFailuresUnreachable']!) > sum(v1, (s) => s.transport['peerFailuresUnreachable']!),
      'the leader\'s sessions failed by port unreachable too');
    t.true(sum(v2, (s) => s.suspicions.transport) > sum(v1, (s) => s.suspicions.transport));
  } finally {
    await stopAll(nodes);
  }
});
