/**
 * One Raft node of the raft benchmark's default mode (a child process: the fields as JSON in
 * argv[2], messages over IPC) or its `--threads` mode (a worker thread: workerData). Either way
 * it has its own event loop, native endpoint and LMDB env in `dir` (or MemoryStorage with
 * `memory`). Posts {address}; then takes {peers} and starts. Node 1 campaigns and, once leader,
 * warms up, then measures the commit latency between two halves of the raw round trip to node 2
 * (an echo of the same 80-byte payload between the same processes or threads: the floor), then
 * the throughput, and posts {result}. "close" stops it.
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
const { id, dir, fsync, memory, file, latencyOps, throughputOps, warmupOps, profileDir } = (parentPort ? workerData : JSON.parse(process.argv[2]!)) as {
  id: number; dir: string; fsync: boolean; memory?: boolean; file?: boolean; latencyOps: number; throughputOps: number; warmupOps: number;
  profileDir?: string;
};
/**
 * `--profile <dir>`: a CPU profile (100 µs sampling) and a sampling heap profile (every 1 KiB
 * allocated on average) of this node over the commit-latency phase only (between the markers),
 * written to <dir>/node<id>.cpuprofile and .heapprofile (open in Chrome DevTools).
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
  } else if (n === 2) {
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
 * A marker entry (byte 79 = MARK; a benchmark payload's is 0) brackets the commit-latency phase:
 * each node notes its main thread's CPU time when it applies one, so the followers' CPU per
 * commit covers the same commits as the leader's (the one after the phase included).
 */
const MARK = 0xff;
const marks: number[] = [];
const machine = {
  apply(e: { data: Uint8Array }): void {
    if (e.data.byteLength !== 80 || e.data[79] !== MARK) return;
    marks.push(mainThreadCpuUs());
    if (profileDir !== undefined) profileMark(marks.length);
  },
  restore(): void {}, snapshot: () => new Uint8Array(8),
};

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
    // This node's CPU per commit between the two markers (processes only, as the leader's).
    const cpuPerCommitUs = !parentPort && marks.length >= 2 ? Number(((marks[1]! - marks[0]!) / (latencyOps + 1)).toFixed(1)) : undefined;
    port.postMessage({ closed: true, cpuPerCommitUs });
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
  // The floor is measured in the same state as the commits: after the warm-up, half just before
  // the commit-latency phase and half just after it. (Until 2026-11-22 it was measured once,
  // before the warm-up, right after the election: ~10 % higher then, 22.4-23.0 µs against
  // 19.7-20.6 µs after the warm-up in four runs of one probe at load 7, which flattered the ratio.)
  const echo = await endpoint.connect(m.peers!.find(([i]) => i === 2)![1]);
  const rttCalls = Math.max(1000, latencyOps >> 1);
  const rtt = await sequentialLatencies(rttCalls, (i) => echo.call(ECHO_TYPE, payload(i)));
  const marker = payload(0);
  marker[79] = MARK;
  await leader.propose(marker);
  const lat = await sequentialLatencies(latencyOps, (i) => leader.propose(payload(i)));
  await leader.propose(marker);
  // This leader's CPU per commit (a process's main thread: not measured on a worker thread).
  const cpuPerCommitUs = parentPort || marks.length < 2 ? undefined : Number(((marks[1]! - marks[0]!) / (latencyOps + 1)).toFixed(1));
  rtt.push(...await sequentialLatencies(rttCalls, (i) => echo.call(ECHO_TYPE, payload(i))));
  await echo.close();
  const rttP50 = percentile(rtt.sort((a, b) => a - b), 50);
  const rate = await closedLoopRate(throughputOps, 64, (i) => leader.propose(payload(i)));
  port.postMessage({ result: { lat, rate, rttP50, cpuPerCommitUs } });
});
port.postMessage({ address: endpoint.address });
