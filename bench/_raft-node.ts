/**
 * One Raft node of the raft benchmark's default mode (a child process: the fields as JSON in
 * argv[2], messages over IPC) or its `--threads` mode (a worker thread: workerData). Either way
 * it has its own event loop, native endpoint and LMDB env in `dir` (or MemoryStorage with
 * `memory`). Posts {address}; then takes {peers} and starts. Node 1 campaigns and, once leader,
 * warms up (pipelined proposals, then one at a time, then the echoes), then measures the commit
 * latency in blocks interleaved with blocks of the raw round trip to node 2, to node 3 and to both
 * at once (an echo of the same 80-byte payload between the same processes or threads: the
 * floor), then the throughput, and posts {result}. "close" stops it.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { LmdbStorage } from '../src/raft/lmdb-storage.js';
import { LogFileStorage } from '../src/raft/log-file-storage.js';
import { MemoryStorage, type RaftStorage } from '../src/raft/storage.js';
import { RaftDriver } from '../src/runtime/raft-driver.js';
import { Endpoint } from '../src/transport/native-transport.js';
import { closedLoopRate, mainThreadCpuUs, percentile, sequentialLatencies } from './_measure.js';

interface Channel {
  postMessage(message: unknown): void;
  on(event: 'message', listener: (m: any) => void): void;
}
const port: Channel = parentPort ?? {
  postMessage: (message) => process.send!(message),
  on: (event, listener) => void process.on(event, listener),
};
const { id, dir, fsync, memory, file, latencyOps, throughputOps, warmupOps, sequentialWarmupOps, profileDir } = (parentPort ? workerData : JSON.parse(process.argv[2]!)) as {
  id: number; dir: string; fsync: boolean; memory?: boolean; file?: boolean; latencyOps: number; throughputOps: number; warmupOps: number;
  sequentialWarmupOps: number; profileDir?: string;
};
/**
 * The commit-latency phase runs in this many blocks, each followed by a block of each echo, so
 * the commits and the floor see the same placement of the three processes on the vCPUs (it
 * drifts within a run: see bench/raft.ts, "The floor").
 */
const BLOCKS = 10;
/**
 * `--profile <dir>`: a CPU profile (100 µs sampling) and a sampling heap profile (every 1 KiB
 * allocated on average) of this node over the commit-latency phase only (from the first marker
 * to the last, the echo blocks between included), written to <dir>/node<id>.cpuprofile and
 * .heapprofile (open in Chrome DevTools).
 */
const inspector = profileDir !== undefined ? new Session() : undefined;
function profileMark(n: number): void {
  const s = inspector!;
  if (n === 1) {
    s.connect();
    s.post('Profiler.enable');
    s.post('Profiler.setSamplingInterval', { interval: 100 });
    s.post('Profiler.start');
    s.post('HeapProfiler.enable');
    s.post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
  } else if (n === 2 * BLOCKS) {
    s.post('Profiler.stop', (_e, r) => writeFileSync(join(profileDir!, `node${id}.cpuprofile`), JSON.stringify(r.profile)));
    s.post('HeapProfiler.stopSampling', (_e, r) => writeFileSync(join(profileDir!, `node${id}.heapprofile`), JSON.stringify(r.profile)));
  }
}
const endpoint = await Endpoint.create({ host: '127.0.0.1', port: 0 });
const ECHO_TYPE = 99;
endpoint.handle(ECHO_TYPE, () => new Uint8Array(0));
// `memory`: MemoryStorage, no LMDB (what the log writes cost inside the fsync-off figure);
// `file`: LogFileStorage (the log as one append-only file) instead of LMDB.
const storage: RaftStorage = memory === true ? new MemoryStorage()
  : file === true ? new LogFileStorage({ path: dir, durable: fsync }) : new LmdbStorage({ path: dir, durable: fsync });
let driver: RaftDriver | undefined;
/**
 * Marker entries (byte 79 = MARK; a benchmark payload's is 0) bracket each block of the
 * commit-latency phase: each node notes its main thread's CPU time when it applies one, so the
 * followers' CPU per commit covers the same commits as the leader's (each block's closing marker
 * included), and none of the echo blocks between.
 */
const MARK = 0xff;
const marks: number[] = [];
/** CPU per commit over the marked blocks (processes only: a worker thread's is not measured). */
function cpuPerCommitUs(): number | undefined {
  if (parentPort || marks.length < 2 * BLOCKS) return undefined;
  let us = 0;
  for (let b = 0; b < BLOCKS; b++) us += marks[2 * b + 1]! - marks[2 * b]!;
  return Number((us / (latencyOps + BLOCKS)).toFixed(1));
}
const machine = {
  apply(e: { data: Uint8Array }): void {
    if (e.data.byteLength !== 80 || e.data[79] !== MARK) return;
    marks.push(mainThreadCpuUs());
    if (profileDir !== undefined) profileMark(marks.length);
  },
  restore(): void {}, snapshot: () => new Uint8Array(8),
};

const p50 = (samples: readonly number[]): number => percentile([...samples].sort((a, b) => a - b), 50);

function payload(i: number): Uint8Array {
  const out = new Uint8Array(80);
  new DataView(out.buffer).setUint32(0, i);
  return out;
}

port.on('message', async (m: { peers?: Array<[number, string]>; close?: boolean }) => {
  if (m.close) {
    await driver?.close();
    await endpoint.close();
    await storage.close();
    // This node's CPU per commit over the marked blocks (processes only, as the leader's).
    port.postMessage({ closed: true, cpuPerCommitUs: cpuPerCommitUs() });
    if (!parentPort) setImmediate(() => process.exit(0));
    return;
  }
  const ids = m.peers!.map(([i]) => i);
  driver = await RaftDriver.start({
    id, peers: new Map(m.peers!), voters: ids, transport: endpoint, storage, stateMachine: machine,
    tickMs: 10, compactEvery: 50_000, core: { electionTicks: 30, heartbeatTicks: 3, inflightMax: 256 },
  });
  if (id !== 1) return;
  // Campaign first: anything measured before it could, under load, outlast a follower's election
  // timeout; a follower then led, and node 1's campaign was refused (pre-vote, check-quorum) while
  // this waited for it forever.
  driver.core.campaign();
  for (let waited = 0; driver.core.role !== 'leader'; waited += 5) {
    if (waited > 10_000) throw new Error(`node 1 is not the leader 10 s after its campaign (leader ${driver.core.lead})`);
    await new Promise((r) => setTimeout(r, 5));
  }
  for (let i = 0; i < 50; i++) await driver.propose(payload(i));
  const leader = driver;
  await closedLoopRate(warmupOps, 64, (i) => leader.propose(payload(i))); // warm-up (JIT), as bench/raft.ts
  // And one at a time, the path measured below: after the pipelined warm-up alone, the first
  // 1,000 of 15,000 sequential commits had a p50 of ~89 µs, the second ~67, the third ~51, the
  // last five ~30 (one run, processes pinned; bench/raft.ts, "Warm-up").
  await sequentialLatencies(sequentialWarmupOps, (i) => leader.propose(payload(i)));
  // The floor: the echo to node 2 (the round trip this bench has always reported), to node 3,
  // and to both at once, done when the first answers (a commit's shape: one request to each
  // follower, the first answer). Warmed up as the commits were, then measured in blocks between
  // the commit blocks (see BLOCKS). The nearer follower's round trip takes, block by block, the
  // echoes of the follower whose p50 was lower in that block: a commit needs the nearer one's
  // ack only. (Until 2026-11-22 only node 2's, unwarmed, half before and half after the commits.)
  const address = (n: number): string => m.peers!.find(([i]) => i === n)![1];
  const to2 = await endpoint.connect(address(2));
  const to3 = await endpoint.connect(address(3));
  const echo2 = (i: number): Promise<Uint8Array> => to2.call(ECHO_TYPE, payload(i));
  const echo3 = (i: number): Promise<Uint8Array> => to3.call(ECHO_TYPE, payload(i));
  const echoBoth = (i: number): Promise<Uint8Array> => Promise.race([echo2(i), echo3(i)]);
  for (const echo of [echo2, echo3, echoBoth]) await sequentialLatencies(1000, echo);
  const rttCalls = Math.max(100, latencyOps >> 1) / BLOCKS;
  const rtt: { node2: number[]; node3: number[]; both: number[]; nearer: number[] } = { node2: [], node3: [], both: [], nearer: [] };
  const lat: number[] = [];
  const marker = payload(0);
  marker[79] = MARK;
  for (let b = 0; b < BLOCKS; b++) {
    await leader.propose(marker);
    lat.push(...await sequentialLatencies(latencyOps / BLOCKS, (i) => leader.propose(payload(i))));
    await leader.propose(marker);
    const node2 = await sequentialLatencies(rttCalls, echo2);
    const node3 = await sequentialLatencies(rttCalls, echo3);
    rtt.both.push(...await sequentialLatencies(rttCalls, echoBoth));
    rtt.node2.push(...node2);
    rtt.node3.push(...node3);
    rtt.nearer.push(...(p50(node2) <= p50(node3) ? node2 : node3));
  }
  await to2.close();
  await to3.close();
  const [rttP50, rttP50ToNode3, rttP50ToBoth, rttP50ToNearer] = [rtt.node2, rtt.node3, rtt.both, rtt.nearer].map(p50);
  const rate = await closedLoopRate(throughputOps, 64, (i) => leader.propose(payload(i)));
  port.postMessage({ result: { lat, rate, rttP50, rttP50ToNode3, rttP50ToBoth, rttP50ToNearer, cpuPerCommitUs: cpuPerCommitUs() } });
});
port.postMessage({ address: endpoint.address });
