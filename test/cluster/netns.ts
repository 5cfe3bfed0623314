/**
 * Nodes in their own network namespaces on one Linux bridge, so a fault run can cut links the way
 * a real network partitions: silently, in one or both directions, between chosen sets of nodes.
 *
 *   root namespace: bridge <p>br (10.<a>.<b>.254/24), one veth end <p>h<i> per node
 *   namespace <p>n<i>: the other end, renamed eth0, 10.<a>.<b>.<i>/24, plus lo
 *
 * `isolate(i)` takes node i's bridge port down (nothing in or out). `partition(sides)` installs, in
 * each receiver's namespace, a policy rule `from <sender> iif eth0 blackhole` for every sender on
 * another side: the packet crosses the wire and is dropped on arrival, so the sender's sendto
 * succeeds exactly as in a real partition (a blackhole *route* at the sender would return EINVAL,
 * and this kernel has no tc drop action). `heal()` removes the rules. The harness process reaches every node through
 * the bridge address.
 *
 * Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2. `NetLab.available()` says whether
 * this machine qualifies and why not. Everything a lab creates is named with a prefix holding the
 * creator's pid and thread, removed by `close()`, by a process exit hook, and by the next `create()` if a
 * crashed run left it behind.
 */
import { execFileSync } from 'node:child_process';
import { threadId } from 'node:worker_threads';
import { HarnessError } from './process-cluster.js';

/** `sq<pid base 36>x<thread id base 36>`: unique per worker thread, short enough for ifnames. */
const ownPrefix = `sq${process.pid.toString(36)}x${threadId.toString(36)}`;
const prefixPattern = /^sq([0-9a-z]+)x[0-9a-z]+(?=[nbhp])/;

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function run(command: string, args: string[]): void {
  try {
    execFileSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim() ?? '';
    throw new HarnessError(`${command} ${args.join(' ')} failed: ${stderr || (error as Error).message}`);
  }
}

function tryRun(command: string, args: string[]): void {
  try {
    execFileSync(command, args, { stdio: 'ignore' });
  } catch {
    // Cleanup of something already gone.
  }
}

const labs = new Set<NetLab>();
const partitionRulePref = 10;
const localRulePref = 100;
let hookInstalled = false;

export interface NetLabOptions {
  /** Nodes 1..count. At most 200. */
  count: number;
  /** The second and third octets of the lab's 10.x.y.0/24 subnet; default from the pid. */
  subnet?: [number, number];
}

export class NetLab {
  private closed = false;
  /** [receiving node, rule arguments] for every partition rule installed. */
  private readonly partitionRules: [number, string[]][] = [];

  private constructor(
    readonly prefix: string,
    readonly count: number,
    private readonly subnet: string,
  ) {}

  /** Whether namespaces can be made here; `reason` says what is missing when not. */
  static available(): { ok: boolean; reason: string } {
    if (process.platform !== 'linux') return { ok: false, reason: 'network namespaces are Linux-only' };
    if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)' };
    try {
      ip(['-V']);
      execFileSync('tc', ['-V'], { stdio: 'ignore' });
    } catch {
      return { ok: false, reason: 'needs iproute2 (ip and tc)' };
    }
    const probe = `${ownPrefix}probe`;
    try {
      ip(['netns', 'add', probe]);
      ip(['netns', 'del', probe]);
    } catch (error) {
      return { ok: false, reason: `ip netns add failed: ${(error as Error).message.split('\n')[0]}` };
    }
    return { ok: true, reason: '' };
  }

  /** Removes namespaces and links of labs whose creating process is gone. */
  static sweepStale(): void {
    const stale = (name: string): boolean => {
      const m = prefixPattern.exec(name);
      return m !== null && !processAlive(parseInt(m[1]!, 36));
    };
    for (const line of ip(['netns', 'list']).split('\n')) {
      const ns = line.split(' ')[0]!;
      if (stale(ns)) tryRun('ip', ['netns', 'del', ns]);
    }
    for (const line of ip(['-o', 'link', 'show']).split('\n')) {
      const name = /^\d+:\s+([^:@]+)/.exec(line)?.[1];
      if (name !== undefined && stale(name)) tryRun('ip', ['link', 'del', name]);
    }
  }

  static create(options: NetLabOptions): NetLab {
    const { ok, reason } = NetLab.available();
    if (!ok) throw new HarnessError(`network namespaces are not available here: ${reason}`);
    if (!Number.isInteger(options.count) || options.count < 1 || options.count > 200) {
      throw new HarnessError(`NetLab count must be an integer in 1..200, got ${options.count}`);
    }
    NetLab.sweepStale();
    const prefix = ownPrefix;
    for (const existing of labs) {
      if (!existing.closed) throw new HarnessError('one NetLab per thread at a time: close the previous one first');
    }
    const [a, b] = options.subnet ?? [100 + (process.pid % 100), (threadId * 37 + Math.floor(process.pid / 100)) % 256];
    const lab = new NetLab(prefix, options.count, `10.${a}.${b}`);
    labs.add(lab);
    if (!hookInstalled) {
      hookInstalled = true;
      process.on('exit', () => {
        for (const l of labs) l.close();
      });
    }
    try {
      lab.build();
    } catch (error) {
      lab.close();
      throw error;
    }
    return lab;
  }

  private get bridge(): string {
    return `${this.prefix}br`;
  }

  netns(node: number): string {
    this.checkNode(node);
    return `${this.prefix}n${node}`;
  }

  /** The node's address inside its namespace. */
  address(node: number): string {
    this.checkNode(node);
    return `${this.subnet}.${node}`;
  }

  /** The harness's own address on the bridge, reachable from every node. */
  get hostAddress(): string {
    return `${this.subnet}.254`;
  }

  private hostPort(node: number): string {
    return `${this.prefix}h${node}`;
  }

  private checkNode(node: number): void {
    if (!Number.isInteger(node) || node < 1 || node > this.count) {
      throw new HarnessError(`no node ${node} in this lab (nodes are 1..${this.count})`);
    }
  }

  private build(): void {
    run('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
    run('ip', ['addr', 'add', `${this.hostAddress}/24`, 'dev', this.bridge]);
    run('ip', ['link', 'set', this.bridge, 'up']);
    for (let node = 1; node <= this.count; node++) {
      const ns = this.netns(node);
      const host = this.hostPort(node);
      const peer = `${this.prefix}p${node}`;
      run('ip', ['netns', 'add', ns]);
      run('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer]);
      run('ip', ['link', 'set', peer, 'netns', ns]);
      run('ip', ['link', 'set', host, 'master', this.bridge]);
      run('ip', ['link', 'set', host, 'up']);
      run('ip', ['-n', ns, 'link', 'set', peer, 'name', 'eth0']);
      run('ip', ['-n', ns, 'addr', 'add', `${this.address(node)}/24`, 'dev', 'eth0']);
      run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      // Local delivery is decided by the `local` table at rule 0, before any rule we could add;
      // move it behind the partition rules so they see incoming packets first.
      run('ip', ['-n', ns, 'rule', 'add', 'pref', String(localRulePref), 'lookup', 'local']);
      run('ip', ['-n', ns, 'rule', 'del', 'pref', '0']);
    }
  }

  /** Cuts node `node` off from everything (its bridge port goes down). */
  isolate(node: number): void {
    run('ip', ['link', 'set', this.hostPort(node), 'down']);
  }

  /** Undoes `isolate`. */
  rejoin(node: number): void {
    run('ip', ['link', 'set', this.hostPort(node), 'up']);
  }

  /**
   * Splits the nodes into sides that cannot reach each other (the harness still reaches all).
   * Nodes not named form a side of their own. Replaces any earlier partition. With
   * `oneWay: true`, only traffic from the first side to the others is dropped.
   */
  partition(sides: readonly (readonly number[])[], options: { oneWay?: boolean } = {}): void {
    this.heal();
    const sideOf = new Map<number, number>();
    sides.forEach((side, s) =>
      side.forEach((node) => {
        this.checkNode(node);
        if (sideOf.has(node)) throw new HarnessError(`node ${node} is on two sides of the partition`);
        sideOf.set(node, s);
      }),
    );
    for (let node = 1; node <= this.count; node++) if (!sideOf.has(node)) sideOf.set(node, sides.length);
    for (let from = 1; from <= this.count; from++) {
      if (options.oneWay && sideOf.get(from) !== 0) continue;
      for (let to = 1; to <= this.count; to++) {
        if (sideOf.get(to) === sideOf.get(from)) continue;
        const rule = ['pref', String(partitionRulePref), 'from', `${this.address(from)}/32`, 'iif', 'eth0', 'blackhole'];
        run('ip', ['-n', this.netns(to), 'rule', 'add', ...rule]);
        this.partitionRules.push([to, rule]);
      }
    }
  }

  /** Removes every partition rule (isolated nodes stay isolated until `rejoin`). */
  heal(): void {
    for (const [node, rule] of this.partitionRules) tryRun('ip', ['-n', this.netns(node), 'rule', 'del', ...rule]);
    this.partitionRules.length = 0;
  }

  /** Deletes the namespaces and the bridge; idempotent and synchronous (usable at exit). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (let node = 1; node <= this.count; node++) {
      tryRun('ip', ['netns', 'del', `${this.prefix}n${node}`]);
      tryRun('ip', ['link', 'del', this.hostPort(node)]);
    }
    tryRun('ip', ['link', 'del', this.bridge]);
    labs.delete(this);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
