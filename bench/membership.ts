/**
 * `npm run bench -- membership [--quick] [--reps N] [--state-mb M]`: 5 member processes on
 * loopback (native endpoints, one MembershipDriver each, test/support/membership-child.ts), every
 * member multicasting a small message every 10 ms. Measured:
 *   - kill -9 of a shard member, then of the membership log's Raft leader: time to the next view
 *     installed on every survivor, and to the first ordered message delivered in it (any
 *     survivor), with the default timeouts (heartbeat 50 ms, failure timeout 500 ms) and
 *     aggressive ones (10 ms, 50 ms);
 *   - a join into a group whose shards hold M MB (default 100) of state: start to member, and to
 *     the state transferred.
 * Baselines from the same run: the transport's round trip (p50 of 200 calls between two
 * endpoints in this process) and the configured failure timeout; the 1-minute load average is
 * recorded with every line. A run in which a live member was suspected before the kill (an
 * event-loop stall longer than an aggressive timeout) is discarded and counted (falseSuspicions).
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Endpoint } from '../src/transport/native-transport.js';
import {
  forkNodes, foundersOf, nowMs, startGroup, startJoiner, stopAll, type NodeProcess, type NodeStatus, type Timeouts,
} from '../test/support/membership-cluster.js';
import { report } from './_report.js';

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const env = (): Record<string, unknown> => ({ load1: Number(loadavg()[0]!.toFixed(2)) });

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

interface FailoverRun {
  memberViewMs: number;
  memberDeliveryMs: number;
  leaderViewMs: number;
  leaderDeliveryMs: number;
}

/**
 * One run; undefined if a live member was suspected before the kill (with a 50 ms timeout on a
 * loaded 2-vCPU machine an event-loop stall can look like a failure): the caller counts it.
 */
async function failover(timeouts: Timeouts): Promise<FailoverRun | undefined> {
  const nodes = await forkNodes([1, 2, 3, 4, 5]);
  try {
    await startGroup(nodes, timeouts);
    for (const n of nodes) await n.request({ cmd: 'load', everyMs: 10 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    if ((await Promise.all(nodes.map((n) => n.status()))).some((s) => s.viewId !== 0)) return undefined;
    const live = (): NodeProcess[] => nodes.filter((n) => n.alive);
    const after = async (killedAt: number, viewId: number): Promise<[number, number]> => {
      const views = await Promise.all(live().map((n) => n.request<{ atMs: number }>({ cmd: 'waitView', atLeast: viewId, timeoutMs: 20_000 })));
      const deliveries = await Promise.all(live().map((n) => n.request<{ atMs: number }>({ cmd: 'waitDelivery', viewAtLeast: viewId, timeoutMs: 20_000 })));
      return [Math.max(...views.map((v) => v.atMs)) - killedAt, Math.min(...deliveries.map((d) => d.atMs)) - killedAt];
    };
    const [memberViewMs, memberDeliveryMs] = await after(nodes[4]!.kill(), 1);
    const statuses = await Promise.all(live().map(async (n) => ({ n, s: await n.status() })));
    const leader = statuses.find((x) => x.s.leader)!.n;
    const next = Math.max(...statuses.map((x) => x.s.viewId)) + 1;
    const [leaderViewMs, leaderDeliveryMs] = await after(leader.kill(), next);
    return { memberViewMs, memberDeliveryMs, leaderViewMs, leaderDeliveryMs };
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
  const settings: [string, Timeouts][] = [
    ['default', { heartbeatMs: 50, failureTimeoutMs: 500 }],
    ['aggressive', { heartbeatMs: 10, failureTimeoutMs: 50 }],
  ];
  for (const [name, timeouts] of settings) {
    const runs: FailoverRun[] = [];
    let falseSuspicions = 0;
    while (runs.length < reps && falseSuspicions < 3 * reps) {
      const r = await failover(timeouts);
      if (r === undefined) falseSuspicions++;
      else runs.push(r);
    }
    const baselines = { failure_timeout_ms: timeouts.failureTimeoutMs, transport_rtt_ms: Number((rttUs / 1000).toFixed(3)) };
    const line = (what: string, values: number[]): void => report({
      suite: 'membership', case: `${what}-${name}`, value: Math.round(median(values)), unit: 'ms',
      runs: values.map(Math.round), heartbeatMs: timeouts.heartbeatMs, failureTimeoutMs: timeouts.failureTimeoutMs,
      // Runs discarded because a live member was suspected (and removed) before the kill.
      falseSuspicions,
      baselines, ...env(),
    });
    line('member-kill-to-view', runs.map((r) => r.memberViewMs));
    line('member-kill-to-delivery', runs.map((r) => r.memberDeliveryMs));
    line('leader-kill-to-view', runs.map((r) => r.leaderViewMs));
    line('leader-kill-to-delivery', runs.map((r) => r.leaderDeliveryMs));
  }
  const j = await join(stateMb, settings[0]![1]);
  report({ suite: 'membership', case: `join-${stateMb}mb-to-member`, value: Math.round(j.memberMs), unit: 'ms', ...env() });
  report({
    suite: 'membership', case: `join-${stateMb}mb-to-state`, value: Math.round(j.stateMs), unit: 'ms', chunks: j.chunks,
    mbPerSecond: Number((stateMb / (j.stateMs / 1000)).toFixed(1)), baselines: { transport_rtt_ms: Number((rttUs / 1000).toFixed(3)) }, ...env(),
  });
}
