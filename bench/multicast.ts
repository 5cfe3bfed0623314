/**
 * `npm run bench -- multicast [--quick]`: a 3-member shard in 3 processes on loopback, each
 * member a MulticastDriver over its own native Endpoint (test/support/multicast-driver-child.ts).
 *   - ordered, all members sending: delivered messages/s and MB/s per member for 100 B, 1 KB,
 *     10 KB, 1 MiB (and 16 MiB unless --quick); the value is the slowest member's;
 *   - send->delivery latency p50/p99 of a member's own messages at moderate load (100 B);
 *   - one sender vs all senders (100 B); ordered vs raw (100 B and 1 MiB);
 *   - beside them, the raw transport's one-way rate from one member to the 2 others (the
 *     ceiling: total bytes/s leaving the sender), at 100 B and 1 MiB.
 * Each line carries the 1-minute load average: the VM is shared and the numbers are noisy.
 */
import { loadavg } from 'node:os';
import { report } from './_report.js';
import { startMembers, startShard, stopMembers, type MemberProcess, type RunResult } from '../test/support/multicast-driver-cluster.js';

const load = (): number => Number(loadavg()[0]!.toFixed(2));
const MIB = 1024 * 1024;

const LIMITS = {
  payloadBytesMax: 17 * MIB,
  smcPayloadBytesMax: 10 * 1024,
  blockBytes: MIB,
  windowSize: 4096,
  sendQueueCountMax: 8192,
  packetBytesMax: 64 * 1024,
};

const ORDERED = 1;
const RAW = 2;

async function phase(
  members: MemberProcess[],
  shard: number,
  size: number,
  perSender: number,
  senders: number,
  ratePerSec: number,
  timeoutMs: number,
): Promise<RunResult[]> {
  const total = perSender * senders;
  return Promise.all(
    members.map((m, i) =>
      m.request<RunResult>(
        {
          cmd: 'run', shard, plan: { count: i < senders ? perSender : 0, sizes: [size], ratePerSec },
          expect: total, digest: 'none', timeoutMs,
        },
        timeoutMs + 10_000,
      ),
    ),
  );
}

function throughput(results: RunResult[]): { rate: number; mbps: number; timedOut: boolean; perMember: number[] } {
  const perMember = results.map((r) => (r.delivered / r.elapsedMs) * 1000);
  const slowest = results.reduce((a, b) => (a.delivered / a.elapsedMs <= b.delivered / b.elapsedMs ? a : b));
  return {
    rate: Math.min(...perMember),
    mbps: (slowest.bytes / slowest.elapsedMs) * 1000 / 1e6,
    timedOut: results.some((r) => r.timedOut),
    perMember: perMember.map((x) => Math.round(x)),
  };
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const timeoutMs = quick ? 20_000 : 60_000;
  const members = await startMembers(3);
  try {
    const driverOptions = process.env.MC_DRIVER ? JSON.parse(process.env.MC_DRIVER) as object : undefined;
    await startShard(members, ORDERED, { mode: 'ordered', limits: LIMITS, driverOptions });
    await startShard(members, RAW, { mode: 'raw', limits: LIMITS, driverOptions });
    const peersOf1 = [members[1]!.address, members[2]!.address];

    // The ceiling: raw transport calls from member 1 to the two others.
    const ceilingSeconds = quick ? 1.5 : 3;
    const ceilSmall = await members[0]!.request<{ messages: number; bytes: number; elapsedMs: number }>(
      { cmd: 'ceiling', peers: peersOf1, size: 100, seconds: ceilingSeconds, outstanding: 64 }, 30_000);
    const ceilSmallRate = (ceilSmall.messages / ceilSmall.elapsedMs) * 1000;
    report({ suite: 'multicast', case: 'transport one-way 100 B to 2 peers (ceiling)', value: Math.round(ceilSmallRate), unit: 'msg/s', load: load() });
    const ceilBig = await members[0]!.request<{ messages: number; bytes: number; elapsedMs: number }>(
      { cmd: 'ceiling', peers: peersOf1, size: MIB, seconds: ceilingSeconds, outstanding: 4 }, 30_000);
    const ceilBigMBps = (ceilBig.bytes / ceilBig.elapsedMs) * 1000 / 1e6;
    report({ suite: 'multicast', case: 'transport one-way 1 MiB to 2 peers (ceiling)', value: Number(ceilBigMBps.toFixed(1)), unit: 'MB/s', load: load() });

    // Ordered, all senders, by size.
    const sizes: [number, string, number][] = [
      [100, '100 B', quick ? 20_000 : 60_000],
      [1000, '1 KB', quick ? 10_000 : 30_000],
      [10_000, '10 KB', quick ? 2_000 : 6_000],
      [MIB, '1 MiB', quick ? 40 : 120],
    ];
    if (!quick) sizes.push([16 * MIB, '16 MiB', 8]);
    const ordered = new Map<number, ReturnType<typeof throughput>>();
    for (const [size, label, count] of sizes) {
      const t = throughput(await phase(members, ORDERED, size, count, 3, 0, timeoutMs));
      ordered.set(size, t);
      const baselines: Record<string, number> = size === 100 ? { transport_ceiling_msgs: Math.round(ceilSmallRate) } : {};
      report({ suite: 'multicast', case: `ordered all senders ${label}: delivered per member`, value: Math.round(t.rate), unit: 'msg/s', baselines, perMember: t.perMember, timedOut: t.timedOut, load: load() });
      report({
        suite: 'multicast', case: `ordered all senders ${label}: delivered MB/s per member`, value: Number(t.mbps.toFixed(2)), unit: 'MB/s',
        baselines: size >= MIB ? { transport_ceiling_MBps: Number(ceilBigMBps.toFixed(1)) } : {}, timedOut: t.timedOut, load: load(),
      });
    }

    // One sender vs all senders (100 B).
    const one = throughput(await phase(members, ORDERED, 100, quick ? 20_000 : 60_000, 1, 0, timeoutMs));
    report({ suite: 'multicast', case: 'ordered one sender 100 B: delivered per member', value: Math.round(one.rate), unit: 'msg/s', baselines: { all_senders: Math.round(ordered.get(100)!.rate) }, timedOut: one.timedOut, load: load() });

    // Ordered vs raw.
    for (const [size, label, count] of [[100, '100 B', quick ? 20_000 : 60_000], [MIB, '1 MiB', quick ? 40 : 120]] as const) {
      const raw = throughput(await phase(members, RAW, size, count, 3, 0, timeoutMs));
      report({ suite: 'multicast', case: `raw all senders ${label}: delivered per member`, value: Math.round(raw.rate), unit: 'msg/s', baselines: { ordered: Math.round(ordered.get(size)!.rate) }, mbps: Number(raw.mbps.toFixed(2)), timedOut: raw.timedOut, load: load() });
    }

    // Latency at moderate load: every member sends 100 B at 1,000 msg/s.
    const latency = await phase(members, ORDERED, 100, quick ? 1500 : 4000, 3, 1000, timeoutMs);
    const p50 = latency.map((r) => r.latency.p50).sort((a, b) => a - b)[1]!;
    const p99 = Math.max(...latency.map((r) => r.latency.p99));
    report({ suite: 'multicast', case: 'ordered send->delivery latency p50, 3 x 1,000 msg/s of 100 B', value: Number((p50 * 1000).toFixed(0)), unit: 'us', load: load() });
    report({ suite: 'multicast', case: 'ordered send->delivery latency p99, 3 x 1,000 msg/s of 100 B', value: Number((p99 * 1000).toFixed(0)), unit: 'us', load: load() });
  } finally {
    await stopMembers(members);
  }
}
