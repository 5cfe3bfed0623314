/**
 * `npm run bench -- kv --mode raft [--quick] [--storage lmdb]`: the eRPC paper's replicated
 * key-value workload on a raft-ordered shard (issue #12): 3 replicas in separate processes over
 * the native transport on loopback, one caller, puts of a 16-byte key and a 64-byte value,
 * committed by a majority:
 *   - latency p50/p99 with one call outstanding, from the leader's process and from a follower's
 *     (a follower forwards to the leader: one more hop);
 *   - throughput with 64 outstanding (from the leader's process);
 * with the Raft log fsync'd (durable) and not. Beside them, in the same run: the raw transport
 * round trip between the same processes, and the disk's write+fdatasync latency. The log is a
 * LogFileStorage, as a raft shard's (src/group/raft-shard.ts); `--storage lmdb` measures
 * LmdbStorage instead ("storage" in every line).
 * `--mode ordered` runs the same workload through the group API on SMC (bench/group.ts): nosync
 * and durable with encryption (the group default), durable with the write-ahead log
 * (persistence.write_ahead_log), then nosync in plaintext.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fdatasyncP50, percentile } from './_measure.js';
import { allUs, report } from './_report.js';

const here = dirname(fileURLToPath(import.meta.url));



class Replica {
  readonly child: ChildProcess;
  constructor(readonly id: number, durable: boolean, storage: 'file' | 'lmdb') {
    this.child = fork(join(here, '_kv-replica.js'), [String(id), durable ? 'durable' : 'volatile', storage], { stdio: 'inherit' });
  }
  ask<T = Record<string, any>>(message: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) => {
      const onExit = (code: number | null): void => reject(new Error(`replica ${this.id} exited with ${code}`));
      this.child.once('exit', onExit);
      this.child.once('message', (answer: Record<string, unknown>) => {
        this.child.off('exit', onExit);
        if (answer.error) reject(new Error(`replica ${this.id}: ${String(answer.error)}`));
        else resolve(answer as T);
      });
      this.child.send(message);
    });
  }
}

export async function run(args: string[]): Promise<void> {
  const modeAt = args.indexOf('--mode');
  const mode = modeAt >= 0 ? args[modeAt + 1] : 'raft';
  if (mode === 'ordered') {
    // The same workload through the public group API on SMC: bench/group.ts, both sync modes
    // with encryption (the group default), and nosync without it (what sealing costs).
    const group = (await import('./group.js')) as { run(args: string[]): Promise<void> };
    const rest = args.filter((a, i) => i !== modeAt && i !== modeAt + 1);
    await group.run(rest);
    await group.run([...rest, '--durable']);
    await group.run([...rest, '--durable', '--wal']);
    await group.run([...rest, '--plaintext']);
    return;
  }
  if (mode !== 'raft') {
    throw new Error(`--mode ${mode}: only "raft" is measured by this suite so far; the SMC (ordered) mode is measured through the group API`);
  }
  const quick = args.includes('--quick');
  const latencyOps = quick ? 300 : 3000;
  const throughputOps = quick ? 5000 : 40_000;
  const fsyncP50 = fdatasyncP50(quick ? 200 : 1000);
  const storageAt = args.indexOf('--storage');
  const storageArg = storageAt >= 0 ? args[storageAt + 1] : 'file';
  if (storageArg !== 'file' && storageArg !== 'lmdb') {
    throw new Error(`bench kv: --storage takes file or lmdb, not ${storageArg ?? 'nothing'}`);
  }
  const storage: 'file' | 'lmdb' = storageArg;
  const env = { mode, replicas: 3, keyBytes: 16, valueBytes: 64, storage: storage === 'lmdb' ? 'LmdbStorage' : 'LogFileStorage', load1: Number(loadavg()[0]!.toFixed(2)), quick };
  report({ suite: 'kv', case: 'disk-fdatasync-p50', value: Number(fsyncP50.toFixed(1)), unit: 'us', ...env });
  for (const durable of [false, true]) {
    const replicas = [1, 2, 3].map((id) => new Replica(id, durable, storage));
    try {
      const addresses = await Promise.all(replicas.map((r) => r.ask<{ address: string }>({ cmd: 'init' })));
      const peers = addresses.map((a, i) => [i + 1, a.address]);
      await Promise.all(replicas.map((r) => r.ask({ cmd: 'start', peers, campaign: r.id === 1 })));
      const { p50: rtt } = await replicas[0]!.ask<{ p50: number }>({ cmd: 'rtt', to: 2, n: quick ? 2000 : 10_000 });
      const baselines: Record<string, number> = { transport_rtt_p50: Number(rtt.toFixed(1)) };
      if (durable) baselines.disk_fdatasync_p50 = Number(fsyncP50.toFixed(1));
      const denv = { ...env, durable, load1: Number(loadavg()[0]!.toFixed(2)) };
      report({ suite: 'kv', case: 'transport-rtt-p50', value: Number(rtt.toFixed(1)), unit: 'us', ...denv });
      const cpu = async (): Promise<number[]> => (await Promise.all(replicas.map((r) => r.ask<{ us: number }>({ cmd: 'cpu' })))).map((c) => c.us);
      for (const [from, who] of [[0, 'leader'], [1, 'follower']] as const) {
        const caller = replicas[from]!;
        await caller.ask({ cmd: 'warm', outstanding: 64, warmupOps: quick ? 3000 : 10_000 });
        const cpuBefore = await cpu();
        const { lat } = await caller.ask<{ lat: number[] }>({ cmd: 'latency', latencyOps });
        // CPU time of each replica's main thread per put during the one-outstanding run (the
        // IPC asking for it included: two messages per run), leader first.
        const cpuPerPutUs = (await cpu()).map((us, i) => Number(((us - cpuBefore[i]!) / latencyOps).toFixed(1)));
        lat.sort((a, b) => a - b);
        report({ suite: 'kv', case: `put-latency-p50-from-${who}`, value: Number(percentile(lat, 50).toFixed(1)), unit: 'us', baselines, cpuPerPutUs, ...denv });
        report({ suite: 'kv', case: `put-latency-p99-from-${who}`, value: Number(percentile(lat, 99).toFixed(1)), unit: 'us', ...denv });
        const { rate } = await caller.ask<{ rate: number }>({ cmd: 'rate', throughputOps: from === 0 ? throughputOps : 1000, outstanding: 64 });
        if (from === 0) {
          report({ suite: 'kv', case: 'put-throughput-64-outstanding', value: Math.round(rate), unit: 'puts/s', baselines, baselineUnits: allUs(baselines), ...denv });
        }
      }
    } finally {
      await Promise.all(replicas.map((r) => r.ask({ cmd: 'close' }).catch(() => r.child.kill('SIGKILL'))));
    }
  }
}
