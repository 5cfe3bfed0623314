/**
 * `npm run bench -- multicast [--quick]`: a 3-member shard in 3 processes on loopback, each
 * member a MulticastDriver over its own native Endpoint (test/support/multicast-driver-child.ts),
 * with the default [multicast] limits except max_payload_size (17 MiB, for the 16 MiB case).
 *   - ordered, all members sending: delivered messages/s and MB/s per member for 100 B, 1 KB,
 *     10 KB, 1 MiB (and 16 MiB unless --quick); the value is the slowest member's;
 *   - send->delivery latency p50/p99 of a member's own messages at moderate load (100 B);
 *   - one sender vs all senders (100 B); ordered vs raw (100 B and 1 MiB);
 *   - beside them, the raw transport's one-way rate from one member to the 2 others (the
 *     ceiling: total bytes/s leaving the sender), at 100 B and 1 MiB, each measured just before
 *     the ordered case it is the baseline of (the machine's load drifts within a run).
 * `--mib N` runs only the 1 MiB ceiling and the ordered 1 MiB case, N rounds on the same members
 * (for before/after comparisons of the large-message path; each line carries its own ceiling);
 * `--mib N --no-ceiling` skips the ceilings (to profile the ordered case alone with perf).
 * Warm-up: before the first measured 1 MiB ceiling and ordered case on a set of member processes,
 * both run unmeasured on those same processes: the ceiling (plain, then lent, below) for
 * `WARMUP_CEILING_SECONDS` each, the ordered case in rounds of the measured case's size until each member has sent `--warmup M`
 * messages (default 1,800, i.e. ~5,400 deliveries per member; `--quick`: 240; `--warmup 0`:
 * none, the cold figure). Without it the full suite's single 1 MiB round measured V8's tier-up of
 * the large-message path: a member's CPU per delivered message fell for ~5-7 rounds of 120
 * messages per sender at load 6-11 (e.g. 2,230 -> ~1,400 µs summed over the members, 2026-11-22),
 * and on a quiet machine went on falling until ~1,600 messages per member (`--mib 20
 * --no-ceiling`, 13:25 UTC, load 0.4: the slowest member's 505 µs per message after 720, 419-466
 * up to 1,200, 326-376 from 1,440 on, flat from 1,680 to 3,000 at 315-400 with the rate at
 * 1.62-1.89 GB/s; the first default, 720, measured mid-way). The ceiling's few lines of JS were
 * warm within its first second. Each line of a warmed case records it
 * (`warmupMessages`: per member, sent before the case on these processes at 1 MiB;
 * `warmupCeilingSeconds` on the ceiling lines: each kind's). Only the 1 MiB cases get it (the 16 MiB case
 * follows them on the same processes; the small cases are thousands of messages each).
 * Lent ceiling: the 1 MiB ceiling's sender calls call(), and the transport copies each request
 * (into its call and then its send batch: ~40 % of that sender's CPU in perf, 2026-11-22), while
 * the members lend their large blocks (callLent: sent from the sender's bytes). So beside the
 * ceiling (the target's baseline, as defined since the issue) the 1 MiB line carries the
 * ceiling with lent payloads too (`transport_ceiling_lent_MBps`, measured right after it with
 * a 48-byte head, the multicast's frame and block header; not in the 40 ms RTO set): the ratio
 * to it is the stricter one.
 * Members hand received large frames back to their transport once used (the driver's
 * releaseReceived, Transport.release; the ceiling's receivers likewise), so the transport
 * reuses their memory at once instead of when V8 collects them (`MC_RELEASE=0`: left to V8;
 * each line says which, `receivedFramesReleased`).
 * Senders reuse the payloads their driver released (onPayloadReleased) and, as the digest is off,
 * write only each message's header into a reused one, as the ceiling's sender sends one buffer
 * filled once: the fill of a fresh MiB per message was the sender's, not the multicast's, cost.
 * A member counts for a case the deliveries it made before its own 'run' command arrived (the
 * others' first messages; until 2026-11-22 they were lost, and that member waited out the
 * 60 s timeout: the rare rounds with a tiny rate and a huge CPU per message).
 * Then the large cases again on fresh member processes whose endpoints start with a 40 ms
 * retransmission timeout instead of the transport's 10 ms default, ceiling included (the
 * timeout adapts to the measured round trips from the first sample on, with a 5 ms floor; an
 * expiry resends one packet, a probe). Both sets are reported; neither replaces the other.
 * Each line carries the 1-minute load average, the CPU time each member's process spent per
 * delivered message (user + system, all threads: it moves much less with the load than the
 * rates do, which on this shared 2-core VM follow what the other tenants run), and the transport
 * retransmissions during the case (rtoProbes + rollbacks: a retransmission timeout first resends
 * one packet, a probe, and rolls the window back only if the answers then stop partway).
 * Each line also carries each member's CPU per delivered message (`cpuPerMember`: their sum is
 * the whole cost of one message, to set beside the ceiling line's `cpuUsPerMessage` +
 * `receiversCpuUsPerMessage`, the cost of moving one message once; `systemCpuPerMember`: the
 * kernel's part of it, system time), the fast retransmits, the
 * datagrams the members' kernels dropped for want of receive buffer (`kernelDrops`), the most
 * page faults any member's process took per delivered message (`faultsPerMessage`, from /proc:
 * at 1 MiB, freshly faulted pages were once the largest CPU cost) and the RDMC repairs the members made during the case (`rdmcRepairs`; each resends a
 * whole message, and a busy machine must not trigger them).
 */
import { loadavg } from 'node:os';
import { readFileSync } from 'node:fs';
import { report } from './_report.js';
import { DEFAULT_MULTICAST_LIMITS } from '../src/multicast/config.js';
import {
  startMembers, startShard, stopMembers, type MemberProcess, type RunResult,
} from '../test/support/multicast-driver-cluster.js';

const load = (): number => Number(loadavg()[0]!.toFixed(2));
/** The members hand received frames back to the transport (test/support/multicast-driver-child.ts). */
const RELEASED = process.env.MC_RELEASE !== '0';
const MIB = 1024 * 1024;
const LIMITS = { ...DEFAULT_MULTICAST_LIMITS, payloadBytesMax: 17 * MIB };

const ORDERED = 1;
const RAW = 2;
/** Seconds the 1 MiB ceiling runs unmeasured before its first measured line (header: Warm-up). */
const WARMUP_CEILING_SECONDS = 1;

/** What ran unmeasured before a case on the same member processes (header: Warm-up). */
interface Warmup {
  /** 1 MiB messages each member sent in ordered warm-up rounds. */
  readonly messages: number;
  /** Seconds the 1 MiB ceiling ran unmeasured (0: not run). */
  readonly ceilingSeconds: number;
}

interface Ceiling {
  readonly rate: number;
  readonly mbps: number;
  readonly cpuUsPerMessage: number;
}

interface Throughput {
  readonly rate: number;
  readonly mbps: number;
  readonly timedOut: boolean;
  readonly perMember: number[];
  readonly cpuUsPerMessage: number;
  readonly retransmissions: number;
  readonly rtoProbes: number;
  readonly rollbacks: number;
  /** Minor page faults of the slowest-CPU member's process per delivered message. */
  readonly faultsPerMessage: number;
  readonly rdmcRepairs: number;
  /** CPU µs per delivered message of each member's process. */
  readonly cpuPerMember: number[];
  /** The kernel's part of cpuPerMember (system time). */
  readonly systemCpuPerMember: number[];
  readonly fastRetransmits: number;
  /** Datagrams the members' kernels dropped for want of socket receive buffer (SO_RXQ_OVFL). */
  readonly kernelDrops: number;
}

/** A member process's minor page faults so far (/proc/<pid>/stat, field 10); 0 if unreadable. */
function minorFaults(member: MemberProcess): number {
  try {
    const fields = readFileSync(`/proc/${member.child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return Number(fields[7]);
  } catch {
    return 0;
  }
}

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
  const faultsBefore = members.map(minorFaults);
  const results = await Promise.all(
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
  return results.map((r, i) => {
    // The core's counters count from the view's start: keep the case's share.
    const repairs = r.core?.rdmcRepairs ?? 0;
    const key = `${members[i]!.child.pid}/${shard}`;
    const repairsDuring = repairs - (repairsSeen.get(key) ?? 0);
    repairsSeen.set(key, repairs);
    return { ...r, faults: minorFaults(members[i]!) - faultsBefore[i]!, repairsDuring };
  });
}

/** RDMC repairs each member's core had counted at the end of the last case, by pid/shard. */
const repairsSeen = new Map<string, number>();

const sumCounter = (results: RunResult[], key: string): number =>
  results.reduce((n, r) => n + (r.transport[key] ?? 0), 0);

function throughput(results: RunResult[]): Throughput {
  const perMember = results.map((r) => (r.delivered / r.elapsedMs) * 1000);
  const slowest = results.reduce((a, b) => (a.delivered / a.elapsedMs <= b.delivered / b.elapsedMs ? a : b));
  return {
    rate: Math.min(...perMember),
    mbps: (slowest.bytes / slowest.elapsedMs) * 1000 / 1e6,
    timedOut: results.some((r) => r.timedOut),
    perMember: perMember.map((x) => Math.round(x)),
    cpuUsPerMessage: Math.max(...results.map((r) => r.cpuMicros / Math.max(1, r.delivered))),
    retransmissions: sumCounter(results, 'retransmissions'),
    rtoProbes: sumCounter(results, 'rtoProbes'),
    rollbacks: sumCounter(results, 'rollbacks'),
    rdmcRepairs: results.reduce((n, r) => n + ((r as RunResult & { repairsDuring?: number }).repairsDuring ?? 0), 0),
    cpuPerMember: results.map((r) => Math.round(r.cpuMicros / Math.max(1, r.delivered))),
    systemCpuPerMember: results.map((r) => Math.round((r.systemMicros ?? 0) / Math.max(1, r.delivered))),
    fastRetransmits: sumCounter(results, 'fastRetransmits'),
    kernelDrops: sumCounter(results, 'udpKernelDrops'),
    faultsPerMessage: Math.max(...results.map((r) => ((r as RunResult & { faults?: number }).faults ?? 0) / Math.max(1, r.delivered))),
  };
}

/**
 * The raw transport's one-way rate from member 0 to the 2 others for `seconds`, reported with
 * `extra` on its line; `measured` false runs it as a warm-up only (no line). `lent`: the calls
 * lend their payload (callLent, a 48-byte head), as the multicast driver sends its large blocks,
 * instead of call(), whose request the transport copies (header: "lent ceiling").
 */
async function ceiling(
  members: MemberProcess[], size: number, seconds: number, note = '', extra: Record<string, unknown> = {}, measured = true,
  lent = false,
): Promise<Ceiling> {
  const peers = [members[1]!.address, members[2]!.address];
  const receiverCpu = (): Promise<number[]> =>
    Promise.all(members.slice(1).map(async (m) => (await m.request<{ cpuMicros: number }>({ cmd: 'cpu' })).cpuMicros));
  const receiversBefore = await receiverCpu();
  const c = await members[0]!.request<{ messages: number; bytes: number; elapsedMs: number; cpuMicros: number }>(
    { cmd: 'ceiling', peers, size, seconds, outstanding: size >= MIB ? 4 : 64, lent }, 30_000);
  const receiversAfter = await receiverCpu();
  const receiversMicros = receiversAfter.reduce((n, x, i) => n + x - receiversBefore[i]!, 0);
  const label = size >= MIB ? '1 MiB' : `${size} B`;
  const result = {
    rate: (c.messages / c.elapsedMs) * 1000,
    mbps: (c.bytes / c.elapsedMs) * 1000 / 1e6,
    cpuUsPerMessage: c.cpuMicros / Math.max(1, c.messages),
  };
  if (!measured) return result;
  report({
    suite: 'multicast', case: `transport one-way ${label} to 2 peers (ceiling${lent ? ', lent' : ''})${note}`,
    value: size >= MIB ? Number(result.mbps.toFixed(1)) : Math.round(result.rate), unit: size >= MIB ? 'MB/s' : 'msg/s',
    cpuUsPerMessage: Number(result.cpuUsPerMessage.toFixed(2)),
    // Both receivers' CPU per message sent (each message reaches one of them): with the sender's,
    // the whole cost of moving one message, to set beside the multicast members' sum.
    receiversCpuUsPerMessage: Number((receiversMicros / Math.max(1, c.messages)).toFixed(2)), ...extra, load: load(),
  });
  return result;
}

/**
 * The 1 MiB ceiling for `ceilingSeconds` (0: skipped) and ordered 1 MiB rounds of `perRound`
 * messages per sender until each member sent `messages`, all unmeasured, on `members`
 * (header: Warm-up). Returns what ran.
 */
async function warmUp(
  members: MemberProcess[], shard: number, messages: number, perRound: number, ceilingSeconds: number, timeoutMs: number,
): Promise<Warmup> {
  if (ceilingSeconds > 0) {
    await ceiling(members, MIB, ceilingSeconds, '', {}, false);
    await ceiling(members, MIB, ceilingSeconds, '', {}, false, true);
  }
  let sent = 0;
  while (sent < messages) {
    const count = Math.min(perRound, messages - sent);
    const results = await phase(members, shard, MIB, count, 3, 0, timeoutMs);
    // Said, not hidden: the measured case that follows shows whether the members recovered.
    if (results.some((r) => r.timedOut)) console.error(`multicast bench: a 1 MiB warm-up round timed out (after ${sent} sent)`);
    sent += count;
  }
  return { messages: sent, ceilingSeconds };
}

/**
 * The 1 MiB ordered line's baselines: the ceiling (the target's, 0.3x) and the lent ceiling
 * beside it (header: "lent ceiling").
 */
const mibBaselines = (c: Ceiling, lent: Ceiling | null): Record<string, number> => ({
  transport_ceiling_MBps: Number(c.mbps.toFixed(1)),
  ...(lent === null ? {} : { transport_ceiling_lent_MBps: Number(lent.mbps.toFixed(1)) }),
});

/** The fields a warmed case's lines carry (header: Warm-up). */
const warmupFields = (w: Warmup | null): Record<string, number> => ({ warmupMessages: w?.messages ?? 0 });
const ceilingWarmupFields = (w: Warmup | null): Record<string, number> => ({ warmupCeilingSeconds: w?.ceilingSeconds ?? 0 });

/** The figures every throughput line carries besides its value. */
const details = (t: Throughput): Record<string, unknown> => ({
  perMember: t.perMember, cpuUsPerMessage: Number(t.cpuUsPerMessage.toFixed(2)), cpuPerMember: t.cpuPerMember, systemCpuPerMember: t.systemCpuPerMember,
  retransmissions: t.retransmissions, rtoProbes: t.rtoProbes, rollbacks: t.rollbacks,
  fastRetransmits: t.fastRetransmits, kernelDrops: t.kernelDrops,
  faultsPerMessage: Number(t.faultsPerMessage.toFixed(1)), rdmcRepairs: t.rdmcRepairs,
  timedOut: t.timedOut, receivedFramesReleased: RELEASED, load: load(),
});

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const timeoutMs = quick ? 20_000 : 60_000;
  const ceilingSeconds = quick ? 1.5 : 3;
  const warmupAt = args.indexOf('--warmup');
  const warmupMessages = warmupAt >= 0 ? Number(args[warmupAt + 1]) : quick ? 240 : 1800;
  if (!Number.isInteger(warmupMessages) || warmupMessages < 0) throw new Error('--warmup takes a whole number of messages per member (0: none)');
  const mibAt = args.indexOf('--mib');
  if (mibAt >= 0) {
    return mibRounds(Number(args[mibAt + 1] ?? 3), timeoutMs, args.includes('--no-ceiling') ? 0 : ceilingSeconds, warmupMessages);
  }
  const members = await startMembers(3);
  try {
    const driverOptions = process.env.MC_DRIVER ? JSON.parse(process.env.MC_DRIVER) as object : undefined;
    await startShard(members, ORDERED, { mode: 'ordered', limits: LIMITS, driverOptions });
    await startShard(members, RAW, { mode: 'raw', limits: LIMITS, driverOptions });

    // Ordered, all senders, by size; the ceilings right before the cases they bound.
    const sizes: [number, string, number][] = [
      [100, '100 B', quick ? 20_000 : 60_000],
      [1000, '1 KB', quick ? 10_000 : 30_000],
      [10_000, '10 KB', quick ? 2_000 : 6_000],
      [MIB, '1 MiB', quick ? 40 : 120],
    ];
    if (!quick) sizes.push([16 * MIB, '16 MiB', 8]);
    const ordered = new Map<number, Throughput>();
    let ceilBig: Ceiling | null = null;
    let ceilLent: Ceiling | null = null;
    for (const [size, label, count] of sizes) {
      let baselines: Record<string, number> = {};
      if (size === 100) {
        const c = await ceiling(members, 100, ceilingSeconds);
        baselines = { transport_ceiling_msgs: Math.round(c.rate) };
      }
      let warmed: Record<string, number> = {};
      if (size === MIB) {
        const w = await warmUp(members, ORDERED, warmupMessages, count, WARMUP_CEILING_SECONDS, timeoutMs);
        ceilBig = await ceiling(members, MIB, ceilingSeconds, '', ceilingWarmupFields(w));
        ceilLent = await ceiling(members, MIB, ceilingSeconds, '', ceilingWarmupFields(w), true, true);
        warmed = warmupFields(w);
      }
      const t = throughput(await phase(members, ORDERED, size, count, 3, 0, timeoutMs));
      ordered.set(size, t);
      report({ suite: 'multicast', case: `ordered all senders ${label}: delivered per member`, value: Math.round(t.rate), unit: 'msg/s', baselines, ...warmed, ...details(t) });
      report({
        suite: 'multicast', case: `ordered all senders ${label}: delivered MB/s per member`, value: Number(t.mbps.toFixed(2)), unit: 'MB/s',
        baselines: size >= MIB && ceilBig !== null ? mibBaselines(ceilBig, ceilLent) : {}, ...warmed, ...details(t),
      });
    }

    // One sender vs all senders (100 B).
    const one = throughput(await phase(members, ORDERED, 100, quick ? 20_000 : 60_000, 1, 0, timeoutMs));
    report({ suite: 'multicast', case: 'ordered one sender 100 B: delivered per member', value: Math.round(one.rate), unit: 'msg/s', baselines: { all_senders: Math.round(ordered.get(100)!.rate) }, ...details(one) });

    // Ordered vs raw.
    for (const [size, label, count] of [[100, '100 B', quick ? 20_000 : 60_000], [MIB, '1 MiB', quick ? 40 : 120]] as const) {
      const raw = throughput(await phase(members, RAW, size, count, 3, 0, timeoutMs));
      report({ suite: 'multicast', case: `raw all senders ${label}: delivered per member`, value: Math.round(raw.rate), unit: 'msg/s', baselines: { ordered: Math.round(ordered.get(size)!.rate) }, mbps: Number(raw.mbps.toFixed(2)), ...details(raw) });
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
  await largeWithSlowerRetransmission(quick, timeoutMs, ceilingSeconds, warmupMessages);
}

/**
 * `--mib N`: the warm-up (header), then the 1 MiB ceiling (unless ceilingSeconds is 0) and
 * ordered 1 MiB case, N times. Rounds after the first count the earlier rounds as warm-up too.
 */
async function mibRounds(rounds: number, timeoutMs: number, ceilingSeconds: number, warmupMessages: number): Promise<void> {
  const members = await startMembers(3);
  try {
    const driverOptions = process.env.MC_DRIVER ? JSON.parse(process.env.MC_DRIVER) as object : undefined;
    await startShard(members, ORDERED, { mode: 'ordered', limits: LIMITS, driverOptions });
    const perRound = 120;
    const w = await warmUp(members, ORDERED, warmupMessages, perRound, ceilingSeconds > 0 ? WARMUP_CEILING_SECONDS : 0, timeoutMs);
    for (let round = 0; round < rounds; round++) {
      const before = { messages: w.messages + round * perRound, ceilingSeconds: w.ceilingSeconds + round * ceilingSeconds };
      const c = ceilingSeconds > 0 ? await ceiling(members, MIB, ceilingSeconds, '', ceilingWarmupFields(before)) : null;
      const lent = ceilingSeconds > 0 ? await ceiling(members, MIB, ceilingSeconds, '', ceilingWarmupFields(before), true, true) : null;
      const t = throughput(await phase(members, ORDERED, MIB, perRound, 3, 0, timeoutMs));
      report({
        suite: 'multicast', case: 'ordered all senders 1 MiB: delivered MB/s per member', value: Number(t.mbps.toFixed(2)), unit: 'MB/s',
        baselines: c === null ? {} : mibBaselines(c, lent), ...warmupFields(before), ...details(t),
      });
    }
  } finally {
    await stopMembers(members);
  }
}

/** The 1 MiB (and 16 MiB) cases on endpoints with a 40 ms retransmission timeout. */
async function largeWithSlowerRetransmission(
  quick: boolean, timeoutMs: number, ceilingSeconds: number, warmupMessages: number,
): Promise<void> {
  const previous = process.env.MC_ENDPOINT;
  process.env.MC_ENDPOINT = JSON.stringify({ retransmitTimeoutMs: 40 });
  const members = await startMembers(3);
  if (previous === undefined) delete process.env.MC_ENDPOINT;
  else process.env.MC_ENDPOINT = previous;
  try {
    await startShard(members, ORDERED, { mode: 'ordered', limits: LIMITS });
    const mibCount = quick ? 40 : 120;
    // Fresh processes: warmed up like the first set's (header: Warm-up).
    const w = await warmUp(members, ORDERED, warmupMessages, mibCount, WARMUP_CEILING_SECONDS, timeoutMs);
    const c = await ceiling(members, MIB, ceilingSeconds, ', 40 ms RTO', ceilingWarmupFields(w));
    const cases: [number, string, number][] = [[MIB, '1 MiB', mibCount]];
    if (!quick) cases.push([16 * MIB, '16 MiB', 8]);
    for (const [size, label, count] of cases) {
      const t = throughput(await phase(members, ORDERED, size, count, 3, 0, timeoutMs));
      report({
        suite: 'multicast', case: `ordered all senders ${label}, 40 ms RTO: delivered MB/s per member`, value: Number(t.mbps.toFixed(2)), unit: 'MB/s',
        baselines: { transport_ceiling_MBps: Number(c.mbps.toFixed(1)) }, ...(size === MIB ? warmupFields(w) : {}), ...details(t),
      });
    }
  } finally {
    await stopMembers(members);
  }
}
