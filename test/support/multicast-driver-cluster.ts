/**
 * The parent side of multicast-driver-child.ts: forks one process per member, exchanges their
 * addresses and sends them commands (one outstanding command per child at a time).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export interface RunResult {
  timedOut: boolean;
  delivered: number;
  bytes: number;
  /** Of `delivered`, how many arrived before this member's run began (the others started first). */
  earlyDeliveries?: number;
  elapsedMs: number;
  /** CPU time (user + system) this member's process used during the run, in µs. */
  cpuMicros: number;
  /** The system (kernel) part of cpuMicros. */
  systemMicros?: number;
  /** The change in this member's transport counters (TransportStats) during the run. */
  transport: Record<string, number>;
  digest: string | null;
  latency: { p50: number; p99: number; samples: number };
  counters: Record<string, number>;
  /** Sends (all runs so far) that took a fresh payload buffer vs one the driver had released. */
  payloads?: { allocated: number; reused: number };
  core: Record<string, number> | null;
  /** Only on a timeout: the driver's diagnostics() and the endpoint's stats. */
  diagnostics?: Record<string, unknown>;
}

export class MemberProcess {
  readonly child: ChildProcess;
  private waiting: ((message: Record<string, unknown>) => void) | null = null;
  address = '';

  constructor(readonly node: number) {
    this.child = fork(join(here, 'multicast-driver-child.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (message) => {
      const w = this.waiting;
      this.waiting = null;
      w?.(message as Record<string, unknown>);
    });
    this.child.on('exit', (code) => {
      const w = this.waiting;
      this.waiting = null;
      w?.({ error: `member ${node} exited with ${code}` });
    });
  }

  /** Sends a command and waits for its answer, failing after `timeoutMs`. */
  request<T = Record<string, unknown>>(message: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`member ${this.node}: no answer to ${String(message.cmd)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = (answer) => {
        clearTimeout(timer);
        if (answer.error !== undefined) reject(new Error(String(answer.error)));
        else resolve(answer as T);
      };
      this.child.send(message);
    });
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

/** Forks `count` members (nodes 1..count) and returns them with their addresses. */
export async function startMembers(count: number): Promise<MemberProcess[]> {
  const members = Array.from({ length: count }, (_, i) => new MemberProcess(i + 1));
  try {
    await Promise.all(
      members.map(async (m) => {
        const { address } = await m.request<{ address: string }>({ cmd: 'init', seed: m.node * 7919 });
        m.address = address;
      }),
    );
  } catch (error) {
    for (const m of members) m.kill();
    throw error;
  }
  return members;
}

/** Starts a shard on every member: members 1..n in rank order. */
export async function startShard(
  members: MemberProcess[],
  shard: number,
  options: { mode: 'ordered' | 'raw'; limits: object; senders?: number[]; viewId?: number; driverOptions?: object },
): Promise<void> {
  const nodes = members.map((m) => m.node);
  const addresses = members.map((m) => [m.node, m.address]);
  await Promise.all(
    members.map((m) =>
      m.request({
        cmd: 'start', shard, self: m.node, viewId: options.viewId ?? 1, members: nodes,
        senders: options.senders ?? nodes, addresses, mode: options.mode, limits: options.limits, driverOptions: options.driverOptions,
      }),
    ),
  );
}

export async function stopMembers(members: MemberProcess[]): Promise<void> {
  await Promise.all(
    members.map(async (m) => {
      try {
        m.child.send({ cmd: 'exit' });
      } catch {
        // already gone
      }
      await Promise.race([
        new Promise((resolve) => m.child.once('exit', resolve)),
        new Promise((resolve) => setTimeout(resolve, 3000)),
      ]);
      m.kill();
    }),
  );
}
