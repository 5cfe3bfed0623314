/**
 * The generic deterministic simulator. It owns time (an event queue of simulated milliseconds),
 * the network, every node's disk, crashes and restarts, and one seeded PRNG from which every
 * random choice is forked. A protocol plugs in by implementing `SimNode<M>` (see README.md) and
 * a factory that builds a node from a `NodeContext<M>`; the node's protocol core is the real
 * production code, driven the way a production driver would drive it.
 *
 * Each executed event is one step. After every step the checkers run; the first one that throws
 * stops the run with a SimFailure naming the seed, the step, the simulated time and the last
 * events, so `SIM_SEED=<seed>` replays it exactly.
 */
import { SeededRandom } from '../../src/core/random.js';
import { SimDisk } from './disk.js';
import { EventQueue } from './event-queue.js';
import { SimNetwork, type NetworkOptions } from './network.js';
import type { SeedResult } from './protocol.js';
import { TraceHash } from './trace.js';

/** What the simulator calls on a node. A crash simply drops the object; restart builds a new one. */
export interface SimNode<M> {
  /** A message from `from` arrived. */
  deliver(from: number, message: M): void;
  /** Called every `tickMs` of simulated time (with a small per-node drift). */
  tick(): void;
  /** The disk batch `token` (from ctx.disk.sync()) and every earlier one are durable. */
  diskSynced(token: number): void;
  /**
   * With `portUnreachable` on: a message this node sent reached `to` while `to` was down, over a
   * working link, and its host answered "port unreachable" (the transport's ICMP signal,
   * src/transport/README.md, "Failure"; the answer travels back with its own delay and may be
   * lost). A crashed host would answer nothing; the simulator models a process crash.
   */
  unreachable?(to: number): void;
}

/** What a node may use. It is the node's only way to touch the outside world. */
export interface NodeContext<M> {
  readonly id: number;
  /** 0 for the first start, +1 for every restart. */
  readonly incarnation: number;
  /** This incarnation's own stream, forked from the run's seed. */
  readonly random: SeededRandom;
  /** Survives crashes; see SimDisk for what a crash loses. disk.sync() schedules durability. */
  readonly disk: NodeDisk;
  nowMs(): number;
  /** Hands a message to the network (it may be delayed, lost, duplicated or cut). */
  send(to: number, message: M): void;
  /** Mixes a record into the trace hash and the recent-events log. */
  trace(record: string): void;
}

/** The node's view of its SimDisk. sync() closes the batch; diskSynced(token) reports it. */
export interface NodeDisk {
  get<T>(key: string): T | undefined;
  has(key: string): boolean;
  put(key: string, value: unknown): void;
  del(key: string): void;
  keys(prefix?: string): string[];
  sync(): number;
}

export type Checker<M, N extends SimNode<M>> = (sim: Simulation<M, N>) => void;

/** Thrown by a checker when an invariant is broken. */
export class InvariantViolation extends Error {
  constructor(readonly invariant: string, detail: string) {
    super(`${invariant}: ${detail}`);
    this.name = 'InvariantViolation';
  }
}

/** A failed run: carries the seed so it can be replayed with SIM_SEED=<seed>. */
export class SimFailure extends Error {
  constructor(
    readonly seed: number,
    readonly step: number,
    readonly atMs: number,
    readonly error: unknown,
    readonly recent: readonly string[],
  ) {
    const what = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    super(
      `seed ${seed} failed at step ${step} (t=${atMs} ms): ${what}\n` +
        `replay: SIM_SEED=${seed}\nlast events:\n  ${recent.join('\n  ')}`,
    );
    this.name = 'SimFailure';
  }
}

export interface FaultOptions {
  /** No new faults at or after this simulated time; the simulator then heals everything. */
  untilMs: number;
  /** Mean time between faults (exponentially distributed). */
  meanIntervalMs: number;
  /** At most this many nodes down at once. */
  crashedMax: number;
  /** Upper bounds for the loss and duplication rates a "lossy" fault may set. */
  lossRateMax: number;
  duplicateRateMax: number;
  /** Relative weights of fault kinds; a missing kind has weight 0. */
  weights: Partial<Record<FaultKind, number>>;
}

export type FaultKind = 'crash' | 'restart' | 'partition' | 'isolate' | 'oneWay' | 'heal' | 'lossy';

export interface SimulationOptions<M, N extends SimNode<M>> {
  seed: number;
  /** Every node that may ever run; `startIds` (default: all) start at time 0. */
  nodeIds: readonly number[];
  startIds?: readonly number[];
  createNode: (ctx: NodeContext<M>) => N;
  network?: Partial<NetworkOptions>;
  tickMs?: number;
  /** Bounds of one disk sync's latency in ms; completions per node are in order. */
  diskLatencyMs?: readonly [number, number];
  /** On a crash, probability that each written-but-unreported batch survives (in order). */
  keepUnreportedRate?: number;
  /** One line per message for the trace hash and failure reports. */
  describeMessage?: (message: M) => string;
  checkers?: readonly Checker<M, N>[];
  faults?: FaultOptions;
  /** Called once when faults stop and the simulator has healed everything. */
  onQuiesce?: (sim: Simulation<M, N>) => void;
  /** How many recent events a failure report shows. */
  recentMax?: number;
  /** Tell senders of messages that reach a down node (SimNode.unreachable). Default off. */
  portUnreachable?: boolean;
}

interface Slot<N> {
  node: N | undefined;
  incarnation: number;
  disk: SimDisk;
}

export class Simulation<M, N extends SimNode<M>> {
  readonly seed: number;
  readonly network: SimNetwork;
  /** For the protocol's workload (proposals, client operations); forked from the seed. */
  readonly random: SeededRandom;
  readonly nodeIds: readonly number[];
  private readonly queue = new EventQueue();
  private readonly trace = new TraceHash();
  private readonly slots = new Map<number, Slot<N>>();
  private readonly faultRandom: SeededRandom;
  private readonly diskRandom: SeededRandom;
  private readonly nodeRandom: SeededRandom;
  private readonly recent: string[] = [];
  private now = 0;
  private stepCount = 0;
  private quiesced = false;
  private readonly tickMs: number;
  private readonly describe: (m: M) => string;
  readonly stats = { crashes: 0, restarts: 0, partitions: 0, faults: 0, unreachable: 0 };

  constructor(private readonly options: SimulationOptions<M, N>) {
    this.seed = options.seed;
    const master = new SeededRandom(options.seed);
    this.network = new SimNetwork(master.fork(), options.network);
    this.faultRandom = master.fork();
    this.diskRandom = master.fork();
    this.nodeRandom = master.fork();
    this.random = master.fork();
    this.nodeIds = [...options.nodeIds];
    this.tickMs = options.tickMs ?? 10;
    this.describe = options.describeMessage ?? ((m) => JSON.stringify(m));
    for (const id of this.nodeIds) this.slots.set(id, { node: undefined, incarnation: -1, disk: new SimDisk() });
    for (const id of options.startIds ?? this.nodeIds) this.start(id);
    if (options.faults) this.scheduleFault(options.faults);
  }

  get nowMs(): number {
    return this.now;
  }
  get steps(): number {
    return this.stepCount;
  }
  get isQuiesced(): boolean {
    return this.quiesced;
  }
  traceHash(): string {
    return this.trace.hex();
  }

  /** The live node with this id, or undefined if it is down (or never started). */
  node(id: number): N | undefined {
    return this.slot(id).node;
  }
  isUp(id: number): boolean {
    return this.slot(id).node !== undefined;
  }
  upIds(): number[] {
    return this.nodeIds.filter((id) => this.isUp(id));
  }
  incarnation(id: number): number {
    return this.slot(id).incarnation;
  }
  disk(id: number): SimDisk {
    return this.slot(id).disk;
  }

  /** Records a line in the trace hash and the recent-events log. */
  note(record: string): void {
    const line = `${this.now} ${record}`;
    this.trace.mix(line);
    this.recent.push(line);
    if (this.recent.length > (this.options.recentMax ?? 60)) this.recent.shift();
  }

  /** Runs fn at now + delayMs as one step (for workloads and scripted faults). */
  schedule(delayMs: number, label: string, fn: () => void): void {
    this.queue.push(this.now + delayMs, () => {
      this.note(label);
      fn();
    });
  }

  /** Starts (or restarts) a node from its disk. */
  start(id: number): void {
    const slot = this.slot(id);
    if (slot.node !== undefined) return;
    slot.incarnation++;
    const incarnation = slot.incarnation;
    const random = this.nodeRandom.fork();
    const ctx: NodeContext<M> = {
      id,
      incarnation,
      random,
      disk: {
        get: (key) => slot.disk.get(key),
        has: (key) => slot.disk.has(key),
        put: (key, value) => slot.disk.put(key, value),
        del: (key) => slot.disk.del(key),
        keys: (prefix) => slot.disk.keys(prefix),
        sync: () => this.sync(id),
      },
      nowMs: () => this.now,
      send: (to, message) => this.send(id, to, message),
      trace: (record) => this.note(`n${id} ${record}`),
    };
    this.note(`start n${id}#${incarnation}`);
    slot.node = this.options.createNode(ctx);
    // A fixed per-incarnation drift (±10 %) and phase, so nodes' clocks do not tick in lockstep.
    const period = Math.max(1, Math.round(this.tickMs * (0.9 + 0.2 * random.next())));
    const tick = (): void => {
      if (slot.incarnation !== incarnation || slot.node === undefined) return;
      slot.node.tick();
      this.queue.push(this.now + period, tick);
    };
    this.queue.push(this.now + 1 + random.int(period), tick);
  }

  /** Crashes a node: it stops at once, and its disk keeps only what a real crash would keep. */
  crash(id: number): void {
    const slot = this.slot(id);
    if (slot.node === undefined) return;
    this.stats.crashes++;
    slot.node = undefined;
    const rate = this.options.keepUnreportedRate ?? 0.5;
    slot.disk.crash(() => this.diskRandom.next() < rate);
    this.note(`crash n${id}`);
  }

  restart(id: number): void {
    if (this.isUp(id)) return;
    this.stats.restarts++;
    this.start(id);
  }

  /** Schedules the completion of disk batch `token` of node `id` (in order per node). */
  private scheduleSync(id: number, token: number): void {
    const slot = this.slot(id);
    const incarnation = slot.incarnation;
    const [lo, hi] = this.options.diskLatencyMs ?? [1, 5];
    const at = this.now + lo + this.diskRandom.int(hi - lo + 1);
    const last = this.lastSyncAt.get(id) ?? 0;
    const when = Math.max(at, last);
    this.lastSyncAt.set(id, when);
    this.queue.push(when, () => {
      if (slot.incarnation !== incarnation || slot.node === undefined) return;
      if (!slot.disk.completeSync(token)) return;
      this.note(`synced n${id} ${token}`);
      slot.node.diskSynced(token);
    });
  }
  private readonly lastSyncAt = new Map<number, number>();

  /** Closes the node's current disk batch and schedules its durability; returns the token. */
  private sync(id: number): number {
    const token = this.slot(id).disk.sync();
    this.scheduleSync(id, token);
    return token;
  }

  private send(from: number, to: number, message: M): void {
    if (!this.slots.has(to)) return;
    const text = this.describe(message);
    const delays = this.network.plan();
    this.note(`send ${from}>${to} ${text}${delays.length === 0 ? ' LOST' : delays.length > 1 ? ' DUP' : ''}`);
    const senderIncarnation = this.slot(from).incarnation;
    for (const delay of delays) {
      this.queue.push(this.now + delay, () => {
        const target = this.slots.get(to)!.node;
        if (target === undefined) {
          if (this.options.portUnreachable) this.answerUnreachable(from, senderIncarnation, to);
          return;
        }
        if (!this.network.canDeliver(from, to)) {
          this.network.stats.cut++;
          return;
        }
        this.network.stats.delivered++;
        this.note(`recv ${from}>${to} ${text}`);
        target.deliver(from, message);
      });
    }
  }

  /** The down node's host answers `from`'s message: back over the link, if it is up. */
  private answerUnreachable(from: number, incarnation: number, to: number): void {
    // A node that never ran had no session with anyone: the transport ignores such answers
    // (connecting sessions are never failed by them).
    if (this.slot(to).incarnation < 0) return;
    if (!this.network.canDeliver(from, to) || !this.network.canDeliver(to, from)) return;
    for (const delay of this.network.plan().slice(0, 1)) {
      this.queue.push(this.now + delay, () => {
        const sender = this.slot(from);
        if (sender.node?.unreachable === undefined || sender.incarnation !== incarnation) return;
        if (!this.network.canDeliver(to, from)) return;
        this.stats.unreachable++;
        this.note(`unreachable ${to}>${from}`);
        sender.node.unreachable(to);
      });
    }
  }

  /**
   * Runs until simulated time passes `untilMs`, `stepsMax` steps have run, or `stopWhen` returns
   * true (checked after each step). Throws SimFailure if a checker or a node throws.
   */
  run(limits: { untilMs?: number; stepsMax?: number; stopWhen?: () => boolean }): void {
    const untilMs = limits.untilMs ?? Infinity;
    const stepsMax = limits.stepsMax ?? Infinity;
    let ran = 0;
    let timeUp = false;
    while (ran < stepsMax) {
      const at = this.queue.peekTimeMs();
      if (at === undefined || at > untilMs) {
        timeUp = true;
        break;
      }
      const event = this.queue.pop()!;
      this.now = event.atMs;
      this.stepCount++;
      ran++;
      try {
        event.run();
        for (const check of this.options.checkers ?? []) check(this);
      } catch (error) {
        throw new SimFailure(this.seed, this.stepCount, this.now, error, [...this.recent]);
      }
      if (limits.stopWhen?.()) break;
    }
    if (timeUp && untilMs !== Infinity && this.now < untilMs) this.now = untilMs;
  }

  /** This run's SeedResult (seed, trace hash, steps, simulated time) with `summary`. */
  result(summary: string): SeedResult {
    return { seed: this.seed, traceHash: this.traceHash(), steps: this.steps, simulatedMs: this.nowMs, summary };
  }

  /** A SimFailure for a check made outside the step loop (e.g. liveness at the end of a run). */
  failure(error: unknown): SimFailure {
    return new SimFailure(this.seed, this.stepCount, this.now, error, [...this.recent]);
  }

  /** Stops fault injection now: heals the network, zeroes loss and duplication, restarts all. */
  quiesce(): void {
    if (this.quiesced) return;
    this.quiesced = true;
    this.network.heal();
    this.network.options = { ...this.network.options, lossRate: 0, duplicateRate: 0 };
    this.note('quiesce');
    for (const id of this.nodeIds) {
      if (this.slot(id).incarnation >= 0 && !this.isUp(id)) this.restart(id);
    }
    this.options.onQuiesce?.(this);
  }

  private scheduleFault(f: FaultOptions): void {
    const gap = Math.max(1, Math.round(-Math.log(1 - this.faultRandom.next()) * f.meanIntervalMs));
    const at = this.now + gap;
    if (at >= f.untilMs) {
      this.queue.push(f.untilMs, () => this.quiesce());
      return;
    }
    this.queue.push(at, () => {
      if (this.quiesced) return;
      this.injectFault(f);
      this.scheduleFault(f);
    });
  }

  private injectFault(f: FaultOptions): void {
    const r = this.faultRandom;
    const kinds = (Object.keys(f.weights) as FaultKind[]).sort();
    const total = kinds.reduce((s, k) => s + (f.weights[k] ?? 0), 0);
    let pick = r.next() * total;
    let kind: FaultKind = kinds[0]!;
    for (const k of kinds) {
      pick -= f.weights[k] ?? 0;
      if (pick < 0) {
        kind = k;
        break;
      }
    }
    this.stats.faults++;
    const started = this.nodeIds.filter((id) => this.slot(id).incarnation >= 0);
    const up = started.filter((id) => this.isUp(id));
    const down = started.filter((id) => !this.isUp(id));
    const any = (list: number[]): number | undefined => (list.length ? list[r.int(list.length)] : undefined);
    switch (kind) {
      case 'crash': {
        const id = any(up);
        if (id !== undefined && down.length < f.crashedMax) this.crash(id);
        break;
      }
      case 'restart': {
        const id = any(down);
        if (id !== undefined) this.restart(id);
        break;
      }
      case 'partition': {
        const shuffled = this.nodeIds.map((id) => ({ id, k: r.next() }));
        shuffled.sort((a, b) => a.k - b.k);
        const cut = 1 + r.int(Math.max(1, this.nodeIds.length - 1));
        const ids = shuffled.map((s) => s.id);
        this.network.partition([ids.slice(0, cut), ids.slice(cut)]);
        this.stats.partitions++;
        this.note(`partition ${this.network.describe()}`);
        break;
      }
      case 'isolate': {
        const id = any([...this.nodeIds]);
        if (id !== undefined) this.network.isolate(id, this.nodeIds);
        this.stats.partitions++;
        this.note(`partition ${this.network.describe()}`);
        break;
      }
      case 'oneWay': {
        const a = any([...this.nodeIds])!;
        const b = any(this.nodeIds.filter((x) => x !== a));
        if (b !== undefined) this.network.blockOneWay(a, b);
        this.note(`partition ${this.network.describe()}`);
        break;
      }
      case 'heal':
        this.network.heal();
        this.note('heal');
        break;
      case 'lossy': {
        const lossRate = r.next() * f.lossRateMax;
        const duplicateRate = r.next() * f.duplicateRateMax;
        this.network.options = { ...this.network.options, lossRate, duplicateRate };
        this.note(`lossy loss=${lossRate.toFixed(3)} dup=${duplicateRate.toFixed(3)}`);
        break;
      }
    }
  }

  private slot(id: number): Slot<N> {
    const slot = this.slots.get(id);
    if (slot === undefined) throw new Error(`no simulated node ${id}`);
    return slot;
  }
}

/** The seeds to run: SIM_SEED=<n> (replay one) if set, else `count` seeds from `first`. */
export function seedsToRun(count: number, first = 1): number[] {
  const env = process.env['SIM_SEED'];
  if (env !== undefined && env !== '') return [Number(env)];
  return Array.from({ length: count }, (_, i) => first + i);
}
