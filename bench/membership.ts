/**
 * `npm run bench -- membership [--quick] [--reps N] [--state-mb M]`: 5 member processes on
 * loopback (native endpoints, one MembershipDriver each, test/support/membership-child.ts), every
 * member multicasting a small message every 10 ms. Measured:
 *   - kill -9 of a shard member, then of the membership log's Raft leader: time to the next view
 *     installed on every survivor, and to the first ordered message delivered in it (any
 *     survivor), with the default timeouts (the configuration's: heartbeat 50 ms, failure timeout
 *     1000 ms, transport peer-failure timeout 2000 ms) and aggressive ones (10 ms, 50 ms). A
 *     killed process's port is closed and the host answers datagrams to it with ICMP port
 *     unreachable: the transport fails its sessions on that (src/transport/README.md, "Failure"),
 *     well before either timeout. Each line carries the signal's counts over the survivors
 *     (ICMP reports read, sessions failed by them, the failure detectors' suspicions by cause);
 *   - the same failures as SIGSTOP with the default timeouts: the process stops with its port
 *     still bound, so no ICMP comes and only the failure detector's timeout finds it -- what a
 *     crashed host, a cut cable or a hung process costs (the baseline the kill lines beat);
 *   - a join into a group whose shards hold M MB (default 100) of state: start to member, and to
 *     the state transferred.
 * Baselines from the same run: the transport's round trip (p50 of 200 calls between two
 * endpoints in this process) and the configured failure timeout; the 1-minute load average is
 * recorded with every line. A run in which a live member was suspected before the fault (an
 * event-loop stall longer than an aggressive timeout) is discarded and counted (falseSuspicions).
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { TimeoutsSection, TransportSection } from '../src/config/schema.js';
import { Endpoint } from '../src/transport/native-transport.js';
import {
  forkNodes, foundersOf, nowMs, startGroup, startJoiner, stopAll, type NodeProcess, type NodeStatus, type Timeouts,
} from '../test/support/membership-cluster.js';
import { report } from './_report.js';

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const env = (): Record<string, unknown> => ({ load1: Number(loadavg()[0]!.toFixed(2)) });
const PEER_FAILURE_TIMEOUT_MS = new TransportSection().peer_failure_timeout_ms;

async function transportRttUs(): Promise<number> {
  const a = await Endpoint.create({ host: '127.0.0.1', port: 0, seed: 1 });
  const b = await Endpoint.create({ host: '127.0.0.1', port: 0, seed: 2 });
  b.handle(60, () => new Uint8Array(8));
  const session = await a.connect(b.address);
  const times: number[] = [];
  for (let i = 0; i < 220; i++) {
    const t0 = performance.now();
    await session.call(60, new Uint8Array(32));
    if (i >= 20) times.push((performance.now() - t0) * 1000);
  }
  await a.close();
  await b.close();
  return median(times);
}

/** How a member fails: kill -9 (its port closes) or SIGSTOP (its port stays bound, silent). */
type Fault = 'kill' | 'stop';

/** The failure signal over the survivors, for one failure (counters after minus before). */
interface Signal {
  portUnreachable: number;
  peerFailuresUnreachable: number;
  suspicionsTransport: number;
  suspicionsTimeout: number;
}

interface Step {
  viewMs: number;
  deliveryMs: number;
  signal: Signal;
}

interface FailoverRun {
  member: Step;
  leader: Step;
}

function signalOf(statuses: NodeStatus[]): Signal {
  const sum = (f: (s: NodeStatus) => number): number => statuses.reduce((a, s) => a + f(s), 0);
  return {
    portUnreachable: sum((s) => s.transport['udpPortUnreachable'] ?? 0),
    peerFailuresUnreachable: sum((s) => s.transport['peerFailuresUnreachable'] ?? 0),
    suspicionsTransport: sum((s) => s.suspicions.transport),
    suspicionsTimeout: sum((s) => s.suspicions.timeout),
  };
}

const minus = (a: Signal, b: Signal): Signal => ({
  portUnreachable: a.portUnreachable - b.portUnreachable,
  peerFailuresUnreachable: a.peerFailuresUnreachable - b.peerFailuresUnreachable,
  suspicionsTransport: a.suspicionsTransport - b.suspicionsTransport,
  suspicionsTimeout: a.suspicionsTimeout - b.suspicionsTimeout,
});

/**
 * One run; undefined if a live member was suspected before the fault (with a 50 ms timeout on a
 * loaded 2-vCPU machine an event-loop stall can look like a failure): the caller counts it.
 */
async function failover(timeouts: Timeouts, fault: Fault): Promise<FailoverRun | undefined> {
  const nodes = await forkNodes([1, 2, 3, 4, 5], { peerFailureTimeoutMs: PEER_FAILURE_TIMEOUT_MS });
  const failed = new Set<NodeProcess>();
  try {
    await startGroup(nodes, timeouts);
    for (const n of nodes) await n.request({ cmd: 'load', everyMs: 10 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    if ((await Promise.all(nodes.map((n) => n.status()))).some((s) => s.viewId !== 0)) return undefined;
    const live = (): NodeProcess[] => nodes.filter((n) => n.alive && !failed.has(n));
    const fail = (n: NodeProcess): number => {
      failed.add(n);
      return fault === 'kill' ? n.kill() : n.stop();
    };
    const after = async (victim: NodeProcess, viewId: number): Promise<Step> => {
      // Survivors only, before and after: the victim's counters are gone (or frozen) with it.
      const before = signalOf(await Promise.all(live().filter((n) => n !== victim).map((n) => n.status())));
      const failedAt = fail(victim);
      const views = await Promise.all(live().map((n) => n.request<{ atMs: number }>({ cmd: 'waitView', atLeast: viewId, timeoutMs: 20_000 })));
      const deliveries = await Promise.all(live().map((n) => n.request<{ atMs: number }>({ cmd: 'waitDelivery', viewAtLeast: viewId, timeoutMs: 20_000 })));
      const signal = minus(signalOf(await Promise.all(live().map((n) => n.status()))), before);
      return {
        viewMs: Math.max(...views.map((v) => v.atMs)) - failedAt,
        deliveryMs: Math.min(...deliveries.map((d) => d.atMs)) - failedAt,
        signal,
      };
    };
    const member = await after(nodes[4]!, 1);
    const statuses = await Promise.all(live().map(async (n) => ({ n, s: await n.status() })));
    const leader = statuses.find((x) => x.s.leader)!.n;
    const next = Math.max(...statuses.map((x) => x.s.viewId)) + 1;
    return { member, leader: await after(leader, next) };
  } finally {
    await stopAll(nodes);
  }
}

async function join(stateMb: number, timeouts: Timeouts): Promise<{ memberMs: number; stateMs: number; chunks: number }> {
  const nodes = await forkNodes([1, 2, 3, 4, 5]);
  // Five founders fill both shards to their maximum (3 and 2): the joiner enters shard 1.
  try {
    const recordBytes = 1 << 20;
    await startGroup(nodes.slice(0, 4), timeouts, { records: stateMb, recordBytes });
    const joiner = nodes[4]!;
    const t0 = nowMs();
    await startJoiner(joiner, foundersOf(nodes.slice(0, 4)), nodes.slice(0, 4).map((n) => n.address), timeouts, 120_000);
    const memberMs = nowMs() - t0;
    let status: NodeStatus;
    do {
      status = await joiner.status();
      if (status.awaiting) await new Promise((resolve) => setTimeout(resolve, 10));
    } while (status.awaiting);
    return { memberMs, stateMs: status.atMs - t0, chunks: status.stateChunks };
  } finally {
    await stopAll(nodes);
  }
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { quick: { type: 'boolean' }, reps: { type: 'string' }, 'state-mb': { type: 'string' } } });
  const reps = Number(values.reps ?? (values.quick ? 1 : 3));
  const stateMb = Number(values['state-mb'] ?? (values.quick ? 20 : 100));
  const rttUs = await transportRttUs();
  report({ suite: 'membership', case: 'transport-rtt-p50', value: Number(rttUs.toFixed(1)), unit: 'us', ...env() });
  const defaults = new TimeoutsSection();
  const settings: [string, Timeouts, Fault][] = [
    ['default', { heartbeatMs: defaults.heartbeat_ms, failureTimeoutMs: defaults.failure_timeout_ms }, 'kill'],
    ['aggressive', { heartbeatMs: 10, failureTimeoutMs: 50 }, 'kill'],
    ['default', { heartbeatMs: defaults.heartbeat_ms, failureTimeoutMs: defaults.failure_timeout_ms }, 'stop'],
  ];
  for (const [name, timeouts, fault] of settings) {
    const runs: FailoverRun[] = [];
    let falseSuspicions = 0;
    let failedRuns = 0;
    while (runs.length < reps && falseSuspicions + failedRuns < 3 * reps) {
      try {
        const r = await failover(timeouts, fault);
        if (r === undefined) falseSuspicions++;
        else runs.push(r);
      } catch (error) {
        // E.g. a survivor that never installed the next view (removed by a false suspicion
        // after the fault, with an aggressive timeout under load): counted, not measured.
        failedRuns++;
        console.error(`membership ${fault}-${name}: run failed: ${String(error)}`);
      }
    }
    if (runs.length === 0) continue;
    const baselines = { failure_timeout_ms: timeouts.failureTimeoutMs, transport_rtt_ms: Number((rttUs / 1000).toFixed(3)) };
    const line = (what: string, steps: Step[], value: (s: Step) => number): void => report({
      suite: 'membership', case: `${what}-${name}`, value: Math.round(median(steps.map(value))), unit: 'ms',
      runs: steps.map((s) => Math.round(value(s))), heartbeatMs: timeouts.heartbeatMs, failureTimeoutMs: timeouts.failureTimeoutMs,
      peerFailureTimeoutMs: PEER_FAILURE_TIMEOUT_MS,
      // Per run, summed over the survivors: ICMP port-unreachable reports read, sessions failed
      // by them, and the failure detectors' suspicions by cause.
      icmpPortUnreachable: steps.map((s) => s.signal.portUnreachable),
      peerFailuresUnreachable: steps.map((s) => s.signal.peerFailuresUnreachable),
      suspicionsTransport: steps.map((s) => s.signal.suspicionsTransport),
      suspicionsTimeout: steps.map((s) => s.signal.suspicionsTimeout),
      // Runs discarded because a live member was suspected (and removed) before the fault.
      falseSuspicions,
      // Runs that failed after the fault (a survivor missed the next view within 20 s).
      failedRuns,
      baselines, ...env(),
    });
    line(`member-${fault}-to-view`, runs.map((r) => r.member), (s) => s.viewMs);
    line(`member-${fault}-to-delivery`, runs.map((r) => r.member), (s) => s.deliveryMs);
    line(`leader-${fault}-to-view`, runs.map((r) => r.leader), (s) => s.viewMs);
    line(`leader-${fault}-to-delivery`, runs.map((r) => r.leader), (s) => s.deliveryMs);
  }
  const j = await join(stateMb, settings[0]![1]);
  report({ suite: 'membership', case: `join-${stateMb}mb-to-member`, value: Math.round(j.memberMs), unit: 'ms', ...env() });
  report({
    suite: 'membership', case: `join-${stateMb}mb-to-state`, value: Math.round(j.stateMs), unit: 'ms', chunks: j.chunks,
    mbPerSecond: Number((stateMb / (j.stateMs / 1000)).toFixed(1)), baselines: { transport_rtt_ms: Number((rttUs / 1000).toFixed(3)) }, ...env(),
  });
}
