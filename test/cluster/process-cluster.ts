/**
 * Real node processes under a fault harness: start, SIGKILL, SIGSTOP/SIGCONT, restart, and a
 * record of every exit, so a run can tell the processes it killed from the ones that crashed.
 *
 * Every child is spawned in its own process group (`detached`) and killed by group, so nothing a
 * node spawns outlives the run. A process-wide exit hook kills whatever is still alive if the
 * harness itself fails or is interrupted, which keeps a crashed test from leaking nodes into the
 * next one. Output is kept as the last `outputLinesMax` lines per process for the failure report.
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface ProcessSpec {
  /** A short name for reports ("node-2"). */
  name: string;
  command: string;
  args: readonly string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Run inside this network namespace (`ip netns exec`, which execs: the pid is the node's). */
  netns?: string;
}

export interface ExitRecord {
  name: string;
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when the harness caused it (kill, stop) and false when the process died on its own. */
  expected: boolean;
  /** The last lines the process printed, for the report. */
  tail: string[];
}

export class HarnessError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HarnessError';
  }
}

const outputLinesMax = 200;
const live = new Set<ManagedProcess>();
let exitHookInstalled = false;

/** Kills every child still alive; synchronous, so it works from process.on('exit'). */
function killAllLive(): void {
  for (const p of live) p.killGroupNow('SIGKILL');
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', killAllLive);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killAllLive();
      process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
    });
  }
}

export class ManagedProcess {
  private child: ChildProcess | null = null;
  private lines: string[] = [];
  private lineWaiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  private lineListeners: ((line: string) => void)[] = [];
  private exitWaiters: ((r: ExitRecord) => void)[] = [];
  private killRequested = false;
  private paused = false;
  /** Every exit of every incarnation, in order. */
  readonly exits: ExitRecord[] = [];
  incarnation = 0;

  constructor(readonly spec: ProcessSpec) {}

  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** The last lines printed (stdout and stderr interleaved as they arrived), each cut to 300 characters. */
  tail(count = 30): string[] {
    return this.lines.slice(-count).map((l) => (l.length > 300 ? `${l.slice(0, 300)}… (${l.length} chars)` : l));
  }

  start(): void {
    if (this.child) throw new HarnessError(`${this.spec.name} is already running (pid ${this.child.pid})`);
    installExitHook();
    const { command, args, netns } = this.spec;
    const argv = netns ? ['netns', 'exec', netns, command, ...args] : [...args];
    const child = spawn(netns ? 'ip' : command, argv, {
      cwd: this.spec.cwd,
      env: { ...process.env, ...this.spec.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    this.child = child;
    this.killRequested = false;
    this.paused = false;
    this.lines = [];
    this.incarnation += 1;
    live.add(this);
    const onData = (stream: NodeJS.ReadableStream): void => {
      let pending = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        pending += chunk;
        let newline: number;
        while ((newline = pending.indexOf('\n')) >= 0) {
          this.addLine(pending.slice(0, newline));
          pending = pending.slice(newline + 1);
        }
      });
      stream.on('end', () => {
        if (pending !== '') this.addLine(pending);
        pending = '';
      });
    };
    child.stdin!.on('error', () => undefined); // EPIPE when it dies first: the exit record tells.
    onData(child.stdout!);
    onData(child.stderr!);
    child.on('error', (error) => this.addLine(`[harness] spawn error: ${error.message}`));
    // 'close', not 'exit': by then stdout and stderr are drained, so the tail holds the last words.
    child.on('close', (code, signal) => {
      const record: ExitRecord = {
        name: this.spec.name,
        pid: child.pid ?? -1,
        code,
        signal,
        expected: this.killRequested,
        tail: this.tail(),
      };
      this.exits.push(record);
      if (this.child === child) this.child = null;
      this.paused = false;
      live.delete(this);
      const waiters = this.exitWaiters;
      this.exitWaiters = [];
      for (const w of waiters) w(record);
    });
  }

  /** Calls `listener` with every line any incarnation prints from now on (whole, not cut). */
  onLine(listener: (line: string) => void): void {
    this.lineListeners.push(listener);
  }

  private addLine(line: string): void {
    for (const listener of this.lineListeners) listener(line);
    this.lines.push(line);
    if (this.lines.length > outputLinesMax) this.lines.shift();
    const still: typeof this.lineWaiters = [];
    for (const w of this.lineWaiters) {
      const m = line.match(w.re);
      if (m) w.resolve(m);
      else still.push(w);
    }
    this.lineWaiters = still;
  }

  /** Resolves with the first line (already printed by this incarnation or later) matching `re`. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(re);
      if (m) return Promise.resolve(m);
    }
    return this.waitForNextLine(re, timeoutMs);
  }

  /** Resolves with the first line printed from now on matching `re` (for command answers). */
  waitForNextLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const waiter = {
        re,
        resolve: (m: RegExpMatchArray) => {
          clearTimeout(timer);
          resolve(m);
        },
      };
      const timer = setTimeout(() => {
        this.lineWaiters = this.lineWaiters.filter((w) => w !== waiter);
        reject(
          new HarnessError(
            `${this.spec.name}: no line matching ${re} within ${timeoutMs} ms; last lines:\n  ` +
              this.tail(10).join('\n  '),
          ),
        );
      }, timeoutMs);
      this.lineWaiters.push(waiter);
    });
  }

  /** Writes one line to the process's stdin (its command channel); false if it is not running. */
  send(line: string): boolean {
    const stdin = this.child?.stdin;
    if (!stdin || stdin.destroyed) return false;
    stdin.write(line + '\n');
    return true;
  }

  /** Sends `signal` to the whole process group now (no waiting); safe if already gone. */
  killGroupNow(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    if (signal === 'SIGKILL' || signal === 'SIGTERM') this.killRequested = true;
    try {
      process.kill(-pid, signal);
    } catch {
      // Already gone: the exit event will (or did) record it.
    }
  }

  /** Marks the coming exit of this incarnation as asked for (e.g. after a `stop` command). */
  expectExit(): void {
    this.killRequested = true;
  }

  /** SIGKILL (or another terminating signal) and wait until the exit is recorded. */
  async kill(signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 10_000): Promise<ExitRecord | null> {
    if (!this.child) return null;
    const exited = this.waitForExit(timeoutMs);
    if (this.paused && signal !== 'SIGKILL') this.killGroupNow('SIGCONT');
    this.killGroupNow(signal);
    return exited;
  }

  /** SIGSTOP: the process keeps its sockets but runs nothing, like a long GC pause or a hung VM. */
  pause(): void {
    if (!this.child) throw new HarnessError(`${this.spec.name} is not running; cannot pause it`);
    this.killGroupNow('SIGSTOP');
    this.paused = true;
  }

  resume(): void {
    if (!this.child) throw new HarnessError(`${this.spec.name} is not running; cannot resume it`);
    this.killGroupNow('SIGCONT');
    this.paused = false;
  }

  /** Kill (if running) and start again with the same spec, as a restart from disk would. */
  async restart(): Promise<void> {
    await this.kill();
    this.start();
  }

  waitForExit(timeoutMs: number): Promise<ExitRecord> {
    if (!this.child) {
      const last = this.exits.at(-1);
      if (last) return Promise.resolve(last);
      return Promise.reject(new HarnessError(`${this.spec.name} was never started`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new HarnessError(`${this.spec.name} did not exit within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.exitWaiters.push((record) => {
        clearTimeout(timer);
        resolve(record);
      });
    });
  }
}

/**
 * A set of managed processes with one deadline. `close()` kills them all and is safe to call
 * twice; `unexpectedExits()` lists the deaths the harness did not cause (the "no process crashed
 * except those killed" check).
 */
export class ProcessCluster {
  readonly processes: ManagedProcess[] = [];

  add(spec: ProcessSpec): ManagedProcess {
    if (this.processes.some((p) => p.spec.name === spec.name)) {
      throw new HarnessError(`a process named ${spec.name} is already in this cluster`);
    }
    const p = new ManagedProcess(spec);
    this.processes.push(p);
    return p;
  }

  get(name: string): ManagedProcess {
    const p = this.processes.find((q) => q.spec.name === name);
    if (!p) throw new HarnessError(`no process named ${name} in this cluster`);
    return p;
  }

  unexpectedExits(): ExitRecord[] {
    return this.processes.flatMap((p) => p.exits.filter((e) => !e.expected));
  }

  async close(): Promise<void> {
    await Promise.all(
      this.processes.map(async (p) => {
        if (!p.running) return;
        if (p.isPaused) p.resume();
        await p.kill('SIGKILL').catch(() => undefined);
      }),
    );
  }
}
