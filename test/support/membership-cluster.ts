/**
 * The parent side of membership-child.ts: forks one process per node, starts the founders of a
 * group (nodes 1..n, voters 1..3), starts joiners, and kills with SIGKILL.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const nowMs = (): number => performance.timeOrigin + performance.now();

export interface NodeStatus {
  viewId: number;
  members: number[];
  failed: number[];
  digests: Record<string, string>;
  awaiting: boolean;
  stateChunks: number;
  removed: string | null;
  leader: boolean;
  /** The membership driver's suspicions by cause (counters.suspicionsTransport / Timeout). */
  suspicions: { transport: number; timeout: number };
  /** Transport counters: peerFailures, peerFailuresUnreachable, udpPortUnreachable, ... */
  transport: Record<string, number>;
  atMs: number;
}

export interface Timeouts {
  heartbeatMs: number;
  failureTimeoutMs: number;
}

export class NodeProcess {
  readonly child: ChildProcess;
  private readonly waiting = new Map<number, (message: Record<string, unknown>) => void>();
  private nextId = 1;
  address = '';
  alive = true;

  constructor(readonly id: number) {
    this.child = fork(join(here, 'membership-child.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    // One command at a time per child keeps answers in order: the child answers in order too.
    this.child.on('message', (message) => {
      const first = this.waiting.keys().next();
      if (first.done) return;
      const w = this.waiting.get(first.value)!;
      this.waiting.delete(first.value);
      w(message as Record<string, unknown>);
    });
    this.child.on('exit', () => {
      this.alive = false;
      for (const w of this.waiting.values()) w({ error: `node ${id} exited` });
      this.waiting.clear();
    });
  }

  request<T = Record<string, unknown>>(message: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const key = this.nextId++;
      const timer = setTimeout(() => {
        this.waiting.delete(key);
        reject(new Error(`node ${this.id}: no answer to ${String(message['cmd'])} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(key, (answer) => {
        clearTimeout(timer);
        if (answer['error'] !== undefined) reject(new Error(String(answer['error'])));
        else resolve(answer as T);
      });
      this.child.send(message);
    });
  }

  status(): Promise<NodeStatus> {
    return this.request<NodeStatus>({ cmd: 'status' });
  }

  /**
   * SIGSTOP: the process stops but keeps its port bound (as a hung or descheduled process, or,
   * to its peers, a host that crashed: no ICMP answers). Returns the time; resume() undoes it.
   */
  stop(): number {
    const at = nowMs();
    if (this.child.exitCode === null) this.child.kill('SIGSTOP');
    return at;
  }

  resume(): void {
    if (this.child.exitCode === null) this.child.kill('SIGCONT');
  }

  /** kill -9: the process and its endpoint vanish without a word. Returns the time. */
  kill(): number {
    const at = nowMs();
    if (process.env['MEMBERSHIP_LOG']) console.error(`${at.toFixed(1)} kill -9 n${this.id}`);
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
    this.alive = false;
    return at;
  }
}

/**
 * Forks and initializes `ids`, returning them with their addresses. `peerFailureTimeoutMs` is
 * the transport's silence timeout (the child's default: 1000 ms).
 */
export async function forkNodes(ids: number[], options: { peerFailureTimeoutMs?: number } = {}): Promise<NodeProcess[]> {
  const nodes = ids.map((id) => new NodeProcess(id));
  try {
    await Promise.all(nodes.map(async (n) => {
      n.address = (await n.request<{ address: string }>({ cmd: 'init', seed: n.id * 7919, ...options })).address;
    }));
  } catch (error) {
    for (const n of nodes) n.kill();
    throw error;
  }
  return nodes;
}

export function foundersOf(nodes: NodeProcess[]): [number, string][] {
  return nodes.map((n) => [n.id, n.address]);
}

/** Starts a new group: every founder installs view 0. */
export async function startGroup(nodes: NodeProcess[], timeouts: Timeouts, state?: { records: number; recordBytes: number }): Promise<void> {
  const founders = foundersOf(nodes);
  await Promise.all(nodes.map((n) => n.request({
    cmd: 'start', self: n.id, founders, found: true, ...timeouts,
    ...(state ? { stateRecords: state.records, recordBytes: state.recordBytes } : {}),
  })));
}

/** Starts `joiner` against the group of `founders`; resolves once it is a member. */
export function startJoiner(joiner: NodeProcess, founders: [number, string][], seeds: string[], timeouts: Timeouts, timeoutMs = 60_000): Promise<unknown> {
  return joiner.request({ cmd: 'start', self: joiner.id, founders, found: false, seeds, ...timeouts }, timeoutMs);
}

export async function stopAll(nodes: NodeProcess[]): Promise<void> {
  for (const n of nodes) n.kill();
  await Promise.all(nodes.map((n) => (n.child.exitCode !== null || n.child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => n.child.once('exit', resolve)))));
}
