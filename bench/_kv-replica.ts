/**
 * One replica of `npm run bench -- kv --mode raft`, in its own process: a native endpoint, a Raft
 * log (fsync'd or not; argv[4]: `file` LogFileStorage, `lmdb` LmdbStorage) and a RaftShardDriver
 * in front of a key-value map. Driven over IPC:
 *   {cmd:'init'} → {address};  {cmd:'start', peers, campaign} → {started}
 *   {cmd:'rtt', to, n} → {p50}: raw transport round trips to another replica (the floor)
 *   {cmd:'warm', warmupOps, outstanding} → {}: JIT warm-up calls from here
 *   {cmd:'latency', latencyOps} → {lat: µs[]}: calls from here, one outstanding
 *   {cmd:'rate', throughputOps, outstanding} → {rate}: calls from here, `outstanding` at once
 *   {cmd:'cpu'} → {us, raft}: this process's main thread's CPU time so far, µs (mainThreadCpuUs),
 *                  and its Raft driver's counters (readies, flushes, sends, ...)
 *   {cmd:'role'} → {role};  {cmd:'close'} → {closed}
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LmdbStorage } from '../src/raft/lmdb-storage.js';
import { LogFileStorage } from '../src/raft/log-file-storage.js';
import { RaftShardDriver, type ShardApplication } from '../src/runtime/raft-shard-driver.js';
import { Endpoint } from '../src/transport/native-transport.js';
import { closedLoopRate, mainThreadCpuUs, percentile, sequentialLatencies } from './_measure.js';

const id = Number(process.argv[2]);
const durable = process.argv[3] === 'durable';
const ECHO_TYPE = 99;
const OK = Uint8Array.of(1);

/** 16-byte keys, 64-byte values: put(key, value) → OK. */
class KvMap implements ShardApplication {
  private readonly map = new Map<string, Uint8Array>();
  execute(payload: Uint8Array): Uint8Array {
    this.map.set(Buffer.from(payload.subarray(0, 16)).toString('latin1'), payload.slice(16));
    return OK;
  }
  snapshot(): Uint8Array {
    return new Uint8Array(8); // the benchmark never restores: compaction only needs bytes
  }
  restore(): void {}
}

const dir = mkdtempSync(join(tmpdir(), `squall-bench-kv-${id}-`));
const storage = process.argv[4] === 'lmdb' ? new LmdbStorage({ path: dir, durable }) : new LogFileStorage({ path: dir, durable });
const endpoint = await Endpoint.create({ host: '127.0.0.1', port: 0 });
endpoint.handle(ECHO_TYPE, () => OK);
let shard: RaftShardDriver | undefined;
let peers = new Map<number, string>();

function put(i: number): Uint8Array {
  const out = new Uint8Array(80);
  new DataView(out.buffer).setUint32(12, i); // key: 12 zero bytes + i
  out.fill(7, 16);
  return out;
}


async function handle(m: Record<string, any>): Promise<Record<string, unknown>> {
  switch (m.cmd) {
    case 'init':
      return { address: endpoint.address };
    case 'start':
      peers = new Map(m.peers as [number, string][]);
      shard = await RaftShardDriver.start({
        id, peers, voters: [...peers.keys()], transport: endpoint, storage, application: new KvMap(),
        tickMs: 10, compactEvery: 100_000, core: { electionTicks: 30, heartbeatTicks: 3, inflightMax: 256 },
        callTimeoutMs: 10_000,
      });
      if (m.campaign) {
        shard.raft.core.campaign();
        while (shard.raft.core.role !== 'leader') await new Promise((r) => setTimeout(r, 5));
      }
      return { started: true };
    case 'role':
      return { role: shard!.raft.core.role };
    case 'rtt': {
      const session = await endpoint.connect(peers.get(m.to)!);
      const lat = await sequentialLatencies(m.n, (i) => session.call(ECHO_TYPE, put(i)));
      await session.close();
      return { p50: percentile(lat.sort((a, b) => a - b), 50) };
    }
    case 'warm':
      // Warm up: the session, and the JIT. 100 sequential calls left the hot path half
      // optimized: the latency p50 measured right after was 2-3x the one measured after the
      // throughput run (530 vs 160-250 µs from the leader, load 9-15, 2026-11-22).
      for (let i = 0; i < 100; i++) await shard!.call(put(i));
      await closedLoopRate(m.warmupOps ?? 5000, m.outstanding, (i) => shard!.call(put(i)));
      return {};
    case 'latency':
      return { lat: await sequentialLatencies(m.latencyOps, (i) => shard!.call(put(i))) };
    case 'rate':
      return { rate: await closedLoopRate(m.throughputOps, m.outstanding, (i) => shard!.call(put(i))) };
    case 'cpu':
      return { us: mainThreadCpuUs(), raft: shard ? { ...shard.raft.counters } : undefined };
    case 'close':
      await shard?.close();
      await endpoint.close();
      await storage.close();
      rmSync(dir, { recursive: true, force: true });
      return { closed: true };
    default:
      throw new Error(`unknown command ${m.cmd}`);
  }
}

process.on('message', (m: Record<string, unknown>) => {
  handle(m).then(
    (answer) => process.send!(answer, () => (m.cmd === 'close' ? process.exit(0) : undefined)),
    (error: unknown) => process.send!({ error: String((error as Error).stack ?? error) }),
  );
});
