/**
 * `npm run bench -- raft [--quick] [--in-process | --threads] [--transport native|memory]
 * [--storage LmdbStorage|LogFileStorage|MemoryStorage] [--fsync on|off] [--profile <dir>]
 * [--pin <cpu>,<cpu>,<cpu>] [--sched-batch <node>,...]`: a
 * 3-node Raft group, proposals of a 16-byte key + 64-byte value, measured at the leader from
 * propose() to applied:
 *   - commit latency p50/p99 with one proposal outstanding,
 *   - throughput with 64 outstanding,
 * with fsync on and off, for each on-disk log ("storage" in every line: LmdbStorage, and
 * LogFileStorage, the append-only file raft shards use), and beside them the raw round trip of the
 * same transport between the same nodes (the floor: a commit needs one round trip to a majority).
 * A last group on MemoryStorage ("storage":"MemoryStorage", no disk) shows how much of the
 * fsync-off figures is the log writes and how much the rest (transport, codec, core, event loop).
 *
 * Where the nodes run ("placement" in every line):
 *   - `processes` (the default since 2026-11-22): each node in its own child process
 *     (bench/_raft-node.ts), as a deployment runs them (one node per process, normally per
 *     machine). The floor is the round trip between the leader's and a follower's process.
 *     Each hop wakes another process, and the followers write their logs in parallel.
 *   - `--in-process` (the default until 2026-11-22): all three nodes and the client in one
 *     process and one thread. Its floor (a round trip within one thread, no wake-up) has nothing
 *     to do with a deployment, and its commit latency includes both followers' whole append,
 *     write and ack in series on that thread, the second follower's too, though the commit does
 *     not need it. It stays useful for CPU per commit (`cpuPerCommitUs`, all three nodes on one
 *     thread) and runs over either transport.
 *   - `--threads`: each node on its own worker thread (leader with the client); floor: the
 *     round trip between two of those threads.
 * In the processes placement each node also reports its CPU per commit over the commit-latency
 * phase (`leaderCpuPerCommitUs`, `followerCpuPerCommitUs`: main thread, schedstat, between two
 * marker entries every node applies), and `--profile <dir>` has each node write a CPU profile and
 * a sampling heap profile of that phase (node<id>.cpuprofile / .heapprofile). `--storage` and
 * `--fsync` run only the rows named.
 *
 * Warm-up (every placement): 10,000 pipelined proposals, then 5,000 one at a time (the path the
 * latency phase measures; until 2026-11-22 it was not warmed: the first 1,000 of 15,000
 * sequential commits had a p50 of ~89 µs, the 2nd ~67, the 3rd ~51, the last five ~30, with the
 * three processes pinned; the 3,000 measured then were mostly warm-up), then 1,000 of each echo.
 *
 * The floor (processes and threads), measured between blocks of the commit-latency phase (ten
 * blocks of each, alternating), after the same warm-up: `transport_rtt_p50_between_nodes`, the
 * echo from the leader to node 2 (what this bench has always reported), and
 * `transport_rtt_p50_nearer_follower`, in each block the echo to whichever follower answered
 * sooner (lower p50) in that block, node 2 or node 3 (a commit needs the nearer one's ack). On
 * this 2-vCPU VM a round trip between two processes on one vCPU takes ~14 µs, between the two
 * vCPUs ~80 µs (the other vCPU idles halted, with no guest halt-polling, and each message wakes
 * it: `cpuidle_haltpoll` with `guest_halt_poll_ns=0`), and the kernel moves the processes: that
 * was the "bimodal" floor (20 vs 72-82 µs run to run). With node 3 on the leader's vCPU and node
 * 2 on the other, the node-2 echo took ~85 µs while the commits took ~40-70 µs (ratio < 1): a
 * floor that flattered Raft; the nearer follower's echo sees what the commit sees. (An echo to
 * both at once, done at the first answer, is reported too: it depended on which follower came
 * first in the transport's batch, 18.7 vs 32.7 µs.) `--pin 0,0,1` (Linux `taskset`, all threads
 * of each node process; processes placement only) fixes the placement for a comparison with
 * less variance; the line then names it ("pin"). `--sched-batch 2,3` (Linux `chrt -b`, all threads
 * of the nodes named; processes placement only) runs those nodes under SCHED_BATCH: their
 * wake-ups no longer preempt the process that woke them (CFS wake-up preemption), so a
 * follower's append does not interrupt the leader between its two sends and its own write, and
 * with three processes on one vCPU the second follower's work stops landing inside every
 * commit. It changes the scheduling, not the code: a comparison of placements (the line names
 * it, "schedBatch"), not the default measurement (2026-11-22, raftwake: see src/raft/README.md).
 * `--transport native` runs over the native UDP transport on loopback (src/transport/
 * native-transport.ts, loaded dynamically so this file also builds where it is absent);
 * `--transport memory` over MemoryTransport (in-process only, setImmediate delivery). The default
 * is native when it loads, else memory (and then in-process). Every line names the transport.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { LmdbStorage } from '../src/raft/lmdb-storage.js';
import { LogFileStorage } from '../src/raft/log-file-storage.js';
import { MemoryStorage, type RaftStorage } from '../src/raft/storage.js';
import type { Entry, Snapshot } from '../src/raft/types.js';
import { RaftDriver, type StateMachine } from '../src/runtime/raft-driver.js';
import { MemoryNetwork } from '../src/transport/memory-transport.js';
import type { Transport } from '../src/transport/transport.js';
import { closedLoopRate, fdatasyncP50, mainThreadCpuUs, percentile, sequentialLatencies } from './_measure.js';
import { allUs, report } from './_report.js';

class CountingMachine implements StateMachine {
  count = 0;
  apply(_e: Entry): void {
    this.count++;
  }
  restore(_s: Snapshot): void {}
  snapshot(): Uint8Array {
    return new Uint8Array(8);
  }
}


function payload(i: number): Uint8Array {
  const out = new Uint8Array(80); // 16-byte key + 64-byte value
  new DataView(out.buffer).setUint32(0, i);
  return out;
}

type Factory = () => Promise<Transport>;

interface NativeModule {
  Endpoint: { create(options: { host?: string; port?: number }): Promise<Transport> };
}

/** The transport factory for `name`, or undefined if it is not available in this build. */
async function transportFactory(name: string): Promise<Factory | undefined> {
  if (name === 'memory') {
    const net = new MemoryNetwork();
    return async () => net.endpoint();
  }
  const path = '../src/transport/native-transport.js'; // not a literal: may be absent
  try {
    const mod = (await import(path)) as NativeModule;
    return () => mod.Endpoint.create({ host: '127.0.0.1', port: 0 });
  } catch {
    return undefined;
  }
}

async function rawRoundTrip(make: Factory, n: number): Promise<number> {
  const a = await make();
  const b = await make();
  b.handle(1, () => new Uint8Array(0));
  const s = await a.connect(b.address);
  const req = payload(0);
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await s.call(1, req);
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  await a.close();
  await b.close();
  return percentile(lat.sort((x, y) => x - y), 50);
}


/** Which RaftStorage each node keeps its log in ("storage" in every line). */
type StorageKind = 'LmdbStorage' | 'LogFileStorage' | 'MemoryStorage';
/** A group's storage, and whether it fsyncs (MemoryStorage: never). */
interface Persist { storage: StorageKind; fsync: boolean }

/**
 * The cases every placement runs, in order: LMDB without and with fsync, the log file
 * (LogFileStorage: one append-only file, one fdatasync per flush) without and with, then
 * MemoryStorage, a floor for the fsync-off figures: the same group without any log write, to show
 * what the writes cost next to the rest (transport, codec, core, event loop).
 */
const CASES: readonly Persist[] = [
  { storage: 'LmdbStorage', fsync: false }, { storage: 'LmdbStorage', fsync: true },
  { storage: 'LogFileStorage', fsync: false }, { storage: 'LogFileStorage', fsync: true },
  { storage: 'MemoryStorage', fsync: false },
];

function openStorage(p: Persist, path: string): RaftStorage {
  if (p.storage === 'MemoryStorage') return new MemoryStorage();
  if (p.storage === 'LogFileStorage') return new LogFileStorage({ path, durable: p.fsync });
  return new LmdbStorage({ path, durable: p.fsync });
}

/** What a node process or thread (bench/_raft-node.ts) is told about its storage. */
function nodeStorage(p: Persist): { fsync: boolean; memory: boolean; file: boolean } {
  return { fsync: p.fsync, memory: p.storage === 'MemoryStorage', file: p.storage === 'LogFileStorage' };
}

async function group(make: Factory, persist: Persist): Promise<{ drivers: RaftDriver[]; close: () => Promise<void> }> {
  const ids = [1, 2, 3];
  const transports = [await make(), await make(), await make()];
  const dirs = ids.map(() => mkdtempSync(join(tmpdir(), 'squall-bench-raft-')));
  const storages: RaftStorage[] = dirs.map((path) => openStorage(persist, path));
  const peers = new Map(ids.map((id) => [id, transports[id - 1]!.address]));
  const drivers: RaftDriver[] = [];
  for (const id of ids) {
    drivers.push(await RaftDriver.start({
      id, peers, voters: ids, transport: transports[id - 1]!, storage: storages[id - 1]!,
      stateMachine: new CountingMachine(), tickMs: 10, compactEvery: 50_000,
      core: { electionTicks: 30, heartbeatTicks: 3, inflightMax: 256 },
    }));
  }
  drivers[0]!.core.campaign();
  return {
    drivers,
    close: async () => {
      for (const d of drivers) await d.close();
      for (const t of transports) await t.close();
      for (const s of storages) await s.close();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}

/** How many proposals each warm-up makes (see the header: Warm-up). */
interface Ops { latencyOps: number; throughputOps: number; warmupOps: number; sequentialWarmupOps: number }

/** What node 1 of bench/_raft-node.ts reports. */
interface NodeResult {
  lat: number[]; rate: number; rttP50: number; rttP50ToNode3: number; rttP50ToBoth: number; rttP50ToNearer: number;
  cpuPerCommitUs?: number; followerCpuPerCommitUs?: number[];
}

/** `--threads`: each node on its own worker thread (own event loop, own endpoint). */
async function threadedGroup(persist: Persist, ops: Ops): Promise<NodeResult> {
  const here = dirname(fileURLToPath(import.meta.url));
  const dirs = [1, 2, 3].map(() => mkdtempSync(join(tmpdir(), 'squall-bench-raft-')));
  const workers = [1, 2, 3].map((id) => new Worker(join(here, '_raft-node.js'),
    { workerData: { id, dir: dirs[id - 1], ...nodeStorage(persist), ...ops } }));
  const next = (w: Worker): Promise<any> => new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  try {
    const addresses = await Promise.all(workers.map((w) => next(w)));
    const peers = addresses.map((a, i) => [i + 1, a.address]);
    const result = next(workers[0]!);
    for (const w of workers) w.postMessage({ peers });
    return (await result).result;
  } finally {
    for (const w of workers) {
      const closed = next(w);
      w.postMessage({ close: true });
      await closed;
      await w.terminate();
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** The default placement (also `--processes`): each node in its own child process (bench/_raft-node.ts over IPC). */
async function processGroup(persist: Persist, ops: Ops, profileDir?: string, pin?: string[], schedBatch?: number[]): Promise<NodeResult> {
  const here = dirname(fileURLToPath(import.meta.url));
  const dirs = [1, 2, 3].map(() => mkdtempSync(join(tmpdir(), 'squall-bench-raft-')));
  const children = [1, 2, 3].map((id) => fork(join(here, '_raft-node.js'),
    [JSON.stringify({ id, dir: dirs[id - 1], ...nodeStorage(persist), ...ops, profileDir })], { stdio: 'inherit' }));
  // `--pin`: every thread of node i on CPU pin[i-1] (threads started later inherit it).
  pin?.forEach((cpu, i) => execFileSync('taskset', ['-a', '-p', '-c', cpu, String(children[i]!.pid)], { stdio: 'ignore' }));
  // `--sched-batch`: every thread of those nodes under SCHED_BATCH (see the header).
  schedBatch?.forEach((node) => execFileSync('chrt', ['-b', '-a', '-p', '0', String(children[node - 1]!.pid)], { stdio: 'ignore' }));
  const next = (c: ChildProcess): Promise<any> => new Promise((resolve, reject) => {
    c.once('message', resolve);
    c.once('exit', (code) => reject(new Error(`raft node exited with ${code}`)));
  });
  const closing = new Set<ChildProcess>();
  try {
    const addresses = await Promise.all(children.map((c) => next(c)));
    const peers = addresses.map((a, i) => [i + 1, a.address]);
    const result = next(children[0]!);
    for (const c of children) c.send({ peers });
    const r = (await result).result;
    // The followers' CPU per commit over the same commits as the leader's (bench/_raft-node.ts).
    const followerCpuPerCommitUs: number[] = [];
    for (const c of children.slice(1)) {
      const closed = next(c);
      c.send({ close: true });
      closing.add(c);
      const cpu = (await closed).cpuPerCommitUs;
      if (typeof cpu === 'number') followerCpuPerCommitUs.push(cpu);
    }
    return { ...r, followerCpuPerCommitUs };
  } finally {
    for (const c of children) {
      if (c.exitCode !== null) continue;
      const exited = new Promise((resolve) => c.once('exit', resolve));
      // (Not twice: a follower told already may be disconnecting, and a send then fails.)
      if (!closing.has(c)) c.send({ close: true });
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      c.kill('SIGKILL');
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
}

async function leaderOf(drivers: RaftDriver[]): Promise<RaftDriver> {
  for (let i = 0; i < 1000; i++) {
    const l = drivers.find((d) => d.core.role === 'leader');
    if (l) return l;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('no leader elected within 5 s');
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const at = args.indexOf('--transport');
  const asked = at >= 0 ? args[at + 1]! : undefined;
  let transport = asked ?? 'native';
  let make = await transportFactory(transport);
  if (make === undefined && asked === undefined) {
    transport = 'memory';
    make = await transportFactory(transport);
  }
  if (make === undefined) throw new Error(`transport "${transport}" is not available in this build`);
  // `--storage <LmdbStorage|LogFileStorage|MemoryStorage>` and `--fsync <on|off>` run only those rows.
  const storageAt = args.indexOf('--storage');
  const fsyncAt = args.indexOf('--fsync');
  const cases = CASES.filter((c) => (storageAt < 0 || c.storage === args[storageAt + 1]) &&
    (fsyncAt < 0 || c.fsync === (args[fsyncAt + 1] === 'on')));
  if (cases.length === 0) throw new Error(`no raft bench rows match ${args.join(' ')}: --storage takes LmdbStorage, LogFileStorage or MemoryStorage, --fsync on or off`);
  // `--profile <dir>`: each node process writes a CPU and a heap profile of the commit-latency
  // phase there (bench/_raft-node.ts; one row at a time, or the last row's overwrite the others).
  const profileAt = args.indexOf('--profile');
  const profileDir = profileAt >= 0 ? args[profileAt + 1] : undefined;
  // `--pin a,b,c`: node i's process on CPU a, b, c (processes only; see the header).
  const pinAt = args.indexOf('--pin');
  const pin = pinAt >= 0 ? args[pinAt + 1]?.split(',') : undefined;
  if (pin !== undefined && (pin.length !== 3 || pin.some((c) => !/^\d+$/.test(c)))) {
    throw new Error(`--pin takes three CPU numbers, one per node, like --pin 0,0,1 (got ${args[pinAt + 1]})`);
  }
  const latencyOps = quick ? 300 : 3000;
  const throughputOps = quick ? 5000 : 50_000;
  const warmupOps = quick ? 3000 : 10_000;
  const sequentialWarmupOps = quick ? 1000 : 5000;
  const env = { transport, nodes: 3, payloadBytes: 80, load1: Number(loadavg()[0]!.toFixed(2)), quick };
  const rttP50 = await rawRoundTrip(make, quick ? 2000 : 20_000);
  // Within one thread (both endpoints in this process): the in-process placement's floor.
  report({ suite: 'raft', case: 'transport-rtt-p50', value: Number(rttP50.toFixed(1)), unit: 'us', rttWithin: 'one thread', ...env });
  const fsyncP50 = fdatasyncP50(quick ? 200 : 1000);
  report({ suite: 'raft', case: 'disk-fdatasync-p50', value: Number(fsyncP50.toFixed(1)), unit: 'us', ...env });

  if (transport !== 'native' && (args.includes('--threads') || args.includes('--processes'))) {
    throw new Error(`--threads and --processes need the native transport (this run has "${transport}"); use --in-process`);
  }
  const placement = args.includes('--in-process') || transport !== 'native' ? 'in-process'
    : args.includes('--threads') ? 'threads' : 'processes';
  if (pin !== undefined && placement !== 'processes') throw new Error('--pin applies to the processes placement only');
  // `--sched-batch 2,3`: those nodes' processes under SCHED_BATCH (processes only; see the header).
  const batchAt = args.indexOf('--sched-batch');
  const schedBatch = batchAt >= 0 ? args[batchAt + 1]?.split(',').map(Number) : undefined;
  if (schedBatch !== undefined && (schedBatch.length === 0 || schedBatch.some((n) => ![1, 2, 3].includes(n)))) {
    throw new Error(`--sched-batch takes node numbers 1 to 3, like --sched-batch 2,3 (got ${args[batchAt + 1]})`);
  }
  if (schedBatch !== undefined && placement !== 'processes') throw new Error('--sched-batch applies to the processes placement only');
  if (placement !== 'in-process') {
    // (`--processes` is accepted too: it is the default.)
    const ops = { latencyOps, throughputOps, warmupOps, sequentialWarmupOps };
    for (const persist of cases) {
      const r = placement === 'threads' ? await threadedGroup(persist, ops) : await processGroup(persist, ops, profileDir, pin, schedBatch);
      const { fsync, storage } = persist;
      const genv = { ...env, placement, storage, fsync, load1: Number(loadavg()[0]!.toFixed(2)), ...(pin ? { pin: pin.join(',') } : {}),
        ...(schedBatch ? { schedBatch: schedBatch.join(',') } : {}) };
      const lat = r.lat.sort((a, b) => a - b);
      // The floor here is the round trip between these processes (threads), measured by node 1
      // between the blocks of the commit-latency phase (bench/_raft-node.ts; the header: The
      // floor), not the one within one thread above: every hop wakes another. Node 3's alone
      // and the echo to both at once are reported beside (rttToNode3P50Us,
      // rttToBothFirstAnswerP50Us), not as baselines.
      const baselines: Record<string, number> = {
        transport_rtt_p50_between_nodes: Number(r.rttP50.toFixed(1)),
        transport_rtt_p50_nearer_follower: Number(r.rttP50ToNearer.toFixed(1)),
      };
      if (fsync) baselines.disk_fdatasync_p50 = Number(fsyncP50.toFixed(1));
      // The leader's main-thread CPU per commit, and each follower's over the same commits
      // (processes only: a worker's is not measured).
      report({
        suite: 'raft', case: 'commit-latency-p50', value: Number(percentile(lat, 50).toFixed(1)), unit: 'us', baselines,
        rttToNode3P50Us: Number(r.rttP50ToNode3.toFixed(1)), rttToBothFirstAnswerP50Us: Number(r.rttP50ToBoth.toFixed(1)),
        leaderCpuPerCommitUs: r.cpuPerCommitUs,
        followerCpuPerCommitUs: r.followerCpuPerCommitUs, ...genv,
      });
      report({ suite: 'raft', case: 'commit-latency-p99', value: Number(percentile(lat, 99).toFixed(1)), unit: 'us', ...genv });
      // (The round trips and fdatasync stand beside a rate as context: no ratio of commits/s to µs.)
      report({ suite: 'raft', case: 'throughput-64-outstanding', value: Math.round(r.rate), unit: 'commits/s', baselines, baselineUnits: allUs(baselines), ...genv });
    }
    return;
  }
  const ienv = { ...env, placement };
  for (const persist of cases) {
    const g = await group(make, persist);
    const { fsync: durable, storage } = persist;
    try {
      const leader = await leaderOf(g.drivers);
      // Warm-up: 50 sequential proposals, then a pipelined run, so the JIT has optimized the hot
      // path before anything is timed (with only the 50, the kv suite's first latency figure
      // was 2-3x its figure after a throughput run; see bench/_kv-replica.ts).
      for (let i = 0; i < 50; i++) await leader.propose(payload(i));
      await closedLoopRate(warmupOps, 64, (i) => leader.propose(payload(i)));
      await sequentialLatencies(sequentialWarmupOps, (i) => leader.propose(payload(i))); // as the other placements
      const cpu0 = mainThreadCpuUs();
      const lat = await sequentialLatencies(latencyOps, (i) => leader.propose(payload(i)));
      // The one thread's CPU per commit (all three nodes and the client), one outstanding.
      const cpuPerCommitUs = Number(((mainThreadCpuUs() - cpu0) / latencyOps).toFixed(1));
      lat.sort((a, b) => a - b);
      const p50 = percentile(lat, 50);
      const p99 = percentile(lat, 99);
      report({ suite: 'raft', case: 'commit-latency-p50', value: Number(p50.toFixed(1)), unit: 'us', fsync: durable, storage, cpuPerCommitUs,
        baselines: durable ? { transport_rtt_p50: Number(rttP50.toFixed(1)), disk_fdatasync_p50: Number(fsyncP50.toFixed(1)) }
          : { transport_rtt_p50: Number(rttP50.toFixed(1)) }, ...ienv });
      report({ suite: 'raft', case: 'commit-latency-p99', value: Number(p99.toFixed(1)), unit: 'us', fsync: durable, storage, ...ienv });

      const rate = await closedLoopRate(throughputOps, 64, (i) => leader.propose(payload(i)));
      report({ suite: 'raft', case: 'throughput-64-outstanding', value: Math.round(rate), unit: 'commits/s',
        fsync: durable, storage, baselines: durable ? { disk_fdatasync_p50: Number(fsyncP50.toFixed(1)), transport_rtt_p50: Number(rttP50.toFixed(1)) }
          : { transport_rtt_p50: Number(rttP50.toFixed(1)) },
        baselineUnits: { disk_fdatasync_p50: 'us', transport_rtt_p50: 'us' },
        leaderFlushesTotal: leader.counters.flushes, ...ienv });
    } finally {
      await g.close();
    }
  }
}
