/** Measurement helpers shared by the benchmark suites. */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The p-th percentile (0–100) of ascending samples. */
export function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

/** p50 of write(4 KiB) + fdatasync on this run's temp disk, µs: the floor of one durable round. */
export function fdatasyncP50(n: number): number {
  const dir = mkdtempSync(join(tmpdir(), 'squall-bench-fsync-'));
  const fd = openSync(join(dir, 'f'), 'w');
  const block = new Uint8Array(4096);
  const lat: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t0 = process.hrtime.bigint();
      writeSync(fd, block, 0, block.length, (i % 16) * 4096);
      fdatasyncSync(fd);
      lat.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  return percentile(lat.sort((x, y) => x - y), 50);
}

/** µs of each of `count` calls made one at a time (call i gets i), in call order. */
export async function sequentialLatencies(count: number, call: (i: number) => Promise<unknown>): Promise<number[]> {
  const lat: number[] = [];
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint();
    await call(i);
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return lat;
}

/** Calls per second with `outstanding` calls in flight until `total` have completed. */
export async function closedLoopRate(total: number, outstanding: number, call: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: outstanding }, async () => {
    while (next < total) await call(++next);
  }));
  return total / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/**
 * CPU time of this process's main thread so far, µs: the event loop, where transport, Raft, LMDB
 * and the application run (Linux schedstat, ns on a CPU). process.cpuUsage() counts every
 * thread, and over a few hundred calls V8's GC and JIT threads finishing a warm-up's work
 * outweighed the calls themselves.
 */
export function mainThreadCpuUs(): number {
  return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1000;
}
