/**
 * RaftShardDriver: a raft-ordered shard (issue #12) over a Transport. Every member runs a
 * RaftDriver whose state machine is a ShardMachine (src/raft/shard-core.ts) in front of the
 * application; calls commit on a majority, so one failed member of three does not stall the shard.
 *
 *   call(payload)  from any member: forwarded to the leader (request type SHARD_FORWARD_TYPE),
 *                  stamped and proposed there, answered once applied there, with the reply,
 *                  version and timestamp. On a leader change, lost packet or timeout the caller
 *                  retries the same (client, seq) at the new leader; the session cache answers a
 *                  retry of a call that already ran, so it runs at most once.
 *   read()         a ReadIndex barrier: once it resolves, this member's application state reflects
 *                  every call committed before read() was called (linearizable p2p reads).
 *
 * Each member is a client of the shard under one session, registered through the log on its first
 * call. A session the shard evicted (too many clients) fails the call with ShardSessionExpiredError:
 * the call may or may not have run, and the next call registers again.
 */
import { SquallError, TimeoutError } from '../core/errors.js';
import { decodeMessage, encodeMessage } from '../core/codec.js';
import { SystemClock, type Clock } from '../core/clock.js';
import { HybridLogicalClock, type Hlc } from '../core/hlc.js';
import type { Version } from '../core/ids.js';
import { RaftProposalError } from '../raft/errors.js';
import { ShardMachine, encodeRegister, type ShardApplied, type ShardCall, type ShardMachineConfig } from '../raft/shard-core.js';
import type { Entry, Snapshot } from '../raft/types.js';
import type { TransportSession } from '../transport/transport.js';
import { RaftDriver, type RaftDriverOptions, type StateMachine } from './raft-driver.js';
import { GROUP_PREFIX_BYTES, prefixedGroup, prefixGroup, RequestMux } from './request-mux.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

/**
 * The request type for calls forwarded to a raft shard's leader; every shard on an endpoint shares
 * it, each request starting with the shard's Raft group id (request-mux.ts).
 */
export const SHARD_FORWARD_TYPE = REQUEST_TYPES.shardForward;

/** The application behind a raft shard: deterministic, so every member computes the same. */
export interface ShardApplication {
  /** Runs one ordered call and returns its reply bytes. */
  execute(payload: Uint8Array, meta: ShardCallMeta): Uint8Array;
  snapshot(): Uint8Array;
  restore(bytes: Uint8Array): void;
}

export interface ShardCallMeta {
  readonly index: number;
  readonly version: Version;
  readonly timestamp: Hlc;
}

export interface ShardReply {
  readonly reply: Uint8Array;
  /** undefined when the reply came from the session cache of an earlier run (a retry). */
  readonly version: Version | undefined;
  readonly timestamp: Hlc | undefined;
}

export interface RaftShardDriverOptions extends Omit<RaftDriverOptions, 'stateMachine'> {
  application: ShardApplication;
  machine?: ShardMachineConfig;
  /** For the HLC the leader stamps calls with (default: the system clock). */
  clock?: Clock;
  /** How long call() keeps retrying before TimeoutError (default 5000 ms). */
  callTimeoutMs?: number;
  /** How long one attempt at one member may take before trying again (default 1000 ms). */
  attemptTimeoutMs?: number;
}

/** The shard forgot this member's session (evicted): the call may or may not have run. */
export class ShardSessionExpiredError extends SquallError {
  constructor(reason: string) {
    super(
      `the raft shard refused the call: ${reason}. It may or may not have run before. ` +
        'Fix: treat the outcome as unknown (re-read the state); the next call opens a new session, ' +
        'or raise the shard\'s clientsMax if sessions are evicted under normal load.',
      'SHARD_SESSION_EXPIRED',
    );
  }
}

interface ClientSession {
  id: number;
  seq: number;
  /** Calls in flight, by seq. */
  open: Set<number>;
  /** No seq below this is in flight (advanced lazily). */
  lowestOpen: number;
}

type Forward =
  | { k: 'register' }
  | { k: 'call'; client: number; seq: number; ackedBelow: number; payload: Uint8Array };

type ForwardAnswer =
  | { s: 'ok'; reply: Uint8Array; version?: bigint; micros?: number; logical?: number }
  | { s: 'registered'; client: number }
  | { s: 'expired'; reason: string }
  | { s: 'not-leader'; leader: number };

const RETRY_PAUSE_MS = 10;

interface Waiter {
  resolve: (a: ForwardAnswer) => void;
  /** Date.now() after which the attempt gives up (the call's caller retries). */
  deadline: number;
}

export class RaftShardDriver {
  readonly raft: RaftDriver;
  private readonly machine: ShardMachine;
  private readonly hlc: HybridLogicalClock;
  /** Calls proposed at this member (as leader), waiting for their apply outcome. */
  private readonly waiters = new Map<string, Waiter[]>();
  /**
   * Answers waiters whose attempt ran out (see sweepWaiters); runs while any wait. One timer
   * for all of them: a timer per call cost a setTimeout and a clearTimeout on every put.
   */
  private sweeper: ReturnType<typeof setInterval> | undefined;
  private readonly sessions = new Map<number, Promise<TransportSession>>();
  private client: ClientSession | undefined;
  private registering: Promise<void> | undefined;
  /** Highest log index whose entry the machine has observed for stamping. */
  private observedIndex = 0;
  private closed = false;
  private unregister: (() => void) | undefined;
  readonly counters = { forwarded: 0, served: 0, retries: 0, duplicates: 0, expired: 0, badRequests: 0 };

  private constructor(
    private readonly options: RaftShardDriverOptions,
    machine: ShardMachine,
    raft: RaftDriver,
  ) {
    this.machine = machine;
    this.raft = raft;
    this.hlc = new HybridLogicalClock(options.clock ?? SystemClock);
  }

  static async start(options: RaftShardDriverOptions): Promise<RaftShardDriver> {
    let driver: RaftShardDriver | undefined;
    const machine = new ShardMachine(options.machine);
    const { application } = options;
    // Raft may restore a snapshot and replay entries before start() returns: those calls run
    // the same way; nobody is waiting for their answers yet.
    const stateMachine: StateMachine = {
      apply: (entry: Entry) => {
        const outcome = machine.apply(entry);
        let reply: Uint8Array | undefined;
        if (outcome.kind === 'call') {
          reply = application.execute(outcome.call.payload, outcome);
          machine.completed(reply);
        }
        driver?.applied(outcome, reply);
      },
      restore: (snapshot: Snapshot) => {
        const { machineBytes, appBytes } = splitSnapshot(snapshot.data);
        machine.restore(machineBytes);
        application.restore(appBytes);
      },
      snapshot: () => joinSnapshot(machine.snapshot(), application.snapshot()),
    };
    const raft = await RaftDriver.start({ ...options, stateMachine });
    driver = new RaftShardDriver(options, machine, raft);
    const self = driver;
    const mux = RequestMux.on(options.transport, SHARD_FORWARD_TYPE, prefixedGroup);
    driver.unregister = mux.register(options.groupId ?? 0, async (request) => {
      let forward: Forward;
      try {
        forward = decodeMessage<Forward>(request.subarray(GROUP_PREFIX_BYTES));
      } catch {
        self.counters.badRequests++;
        return encodeMessage({ s: 'not-leader', leader: 0 } satisfies ForwardAnswer);
      }
      self.counters.served++;
      return encodeMessage(await self.decide(forward, Date.now() + self.attemptTimeoutMs));
    });
    return driver;
  }

  /** Runs an ordered call on the shard; resolves with its reply once applied at the leader. */
  async call(payload: Uint8Array): Promise<ShardReply> {
    this.checkOpen();
    const deadline = Date.now() + (this.options.callTimeoutMs ?? 5000);
    const client = this.client ?? await this.session(deadline);
    const seq = ++client.seq;
    client.open.add(seq);
    try {
      // Every seq below the lowest still open has its outcome here: the shard may forget them.
      while (client.lowestOpen < seq && !client.open.has(client.lowestOpen)) client.lowestOpen++;
      const call: Forward = { k: 'call', client: client.id, seq, ackedBelow: client.lowestOpen, payload };
      const answer = await this.submit(call, deadline, `ordered call ${client.id}:${seq}`);
      if (answer.s === 'expired') {
        this.counters.expired++;
        if (this.client === client) this.client = undefined;
        throw new ShardSessionExpiredError(answer.reason);
      }
      if (answer.s !== 'ok') throw new Error(`unexpected answer ${answer.s} to a call`);
      return {
        reply: answer.reply,
        version: answer.version === undefined ? undefined : (answer.version as Version),
        timestamp: answer.micros === undefined ? undefined : { micros: answer.micros, logical: answer.logical! },
      };
    } finally {
      client.open.delete(seq);
    }
  }

  /** Linearizable read barrier (ReadIndex): afterwards local state reflects all earlier commits. */
  read(timeoutMs = this.options.callTimeoutMs ?? 5000): Promise<void> {
    this.checkOpen();
    return this.raft.readBarrier(timeoutMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unregister?.();
    if (this.sweeper) clearInterval(this.sweeper);
    for (const list of this.waiters.values()) for (const w of list) w.resolve({ s: 'not-leader', leader: 0 });
    this.waiters.clear();
    for (const s of this.sessions.values()) s.then((x) => x.close(), () => undefined);
    await this.raft.close();
  }

  private get attemptTimeoutMs(): number {
    return this.options.attemptTimeoutMs ?? 1000;
  }

  private checkOpen(): void {
    if (this.closed) throw new RaftProposalError('not-leader', 0, 'the raft shard driver is closed');
  }

  private async session(deadline: number): Promise<ClientSession> {
    while (this.client === undefined) {
      this.registering ??= this.submit({ k: 'register' }, deadline, 'session registration').then((answer) => {
        if (answer.s !== 'registered') throw new Error(`unexpected answer ${answer.s} to a registration`);
        this.client = { id: answer.client, seq: 0, open: new Set(), lowestOpen: 1 };
      }).finally(() => {
        this.registering = undefined;
      });
      await this.registering;
    }
    return this.client;
  }

  /** Sends to the leader (itself included), following redirects and retrying until the deadline. */
  private async submit(request: Forward, deadline: number, what: string): Promise<ForwardAnswer> {
    let target = this.raft.core.lead || this.options.id;
    for (let attempt = 0; ; attempt++) {
      this.checkOpen();
      if (Date.now() >= deadline) throw new TimeoutError(`${what} on raft shard (last tried member ${target})`, this.options.callTimeoutMs ?? 5000);
      if (attempt > 0) this.counters.retries++;
      let answer: ForwardAnswer | undefined;
      try {
        // Our own timer on both paths: with only the transport's deadline, a call to a peer whose
        // endpoint had closed failed after ~2 s (the transport's peer-failure timeout) instead
        // of the attempt's 300 ms in test/integration/group-raft.test.ts.
        const attemptMs = Math.min(this.attemptTimeoutMs, deadline - Date.now());
        answer = target === this.options.id
          ? await this.decide(request, Date.now() + attemptMs) // its waiter is swept at that time
          : await withTimeout(this.forward(target, request, deadline), attemptMs);
      } catch {
        answer = undefined; // lost, timed out, or the member is down: try another
      }
      if (answer !== undefined && answer.s !== 'not-leader') return answer;
      const hint = answer?.s === 'not-leader' ? answer.leader : 0;
      if (hint !== 0 && hint !== target) {
        target = hint;
      } else {
        const members = [...this.options.peers.keys()].sort((a, b) => a - b); // (only on a retry)
        target = members[(members.indexOf(target) + 1) % members.length]!;
      }
      await new Promise((r) => setTimeout(r, RETRY_PAUSE_MS));
    }
  }

  private async forward(to: number, request: Forward, deadline: number): Promise<ForwardAnswer> {
    let s = this.sessions.get(to);
    if (s === undefined) {
      s = this.options.transport.connect(this.options.peers.get(to)!);
      s.catch(() => this.sessions.delete(to));
      this.sessions.set(to, s);
    }
    this.counters.forwarded++;
    const timeoutMs = Math.max(1, Math.min(this.attemptTimeoutMs, deadline - Date.now()));
    try {
      const bytes = await (await s).call(SHARD_FORWARD_TYPE, prefixGroup(this.options.groupId ?? 0, encodeMessage(request)), { timeoutMs });
      return decodeMessage<ForwardAnswer>(bytes);
    } catch (error) {
      this.sessions.delete(to);
      throw error;
    }
  }

  /**
   * Leader side: proposes a forwarded (or local) request and answers once it is applied here,
   * or with not-leader if it was refused or superseded, or after `deadline` (the caller then
   * retries the same seq: the session cache keeps it at most once).
   */
  private decide(request: Forward, deadline: number): Promise<ForwardAnswer> {
    const notLeader = (): ForwardAnswer => ({ s: 'not-leader', leader: this.raft.core.lead });
    if (this.closed || this.raft.core.role !== 'leader') return Promise.resolve(notLeader());
    if (request.k === 'register') {
      // Rare (once per member): its own timer.
      return withTimeout(this.raft.propose(encodeRegister()), deadline - Date.now())
        .then((client): ForwardAnswer => ({ s: 'registered', client }), notLeader);
    }
    const call: ShardCall = { client: request.client, seq: request.seq, ackedBelow: request.ackedBelow, payload: request.payload };
    const key = `${call.client}:${call.seq}`;
    const answered = new Promise<ForwardAnswer>((resolve) => {
      const list = this.waiters.get(key);
      if (list) list.push({ resolve, deadline });
      else this.waiters.set(key, [{ resolve, deadline }]);
    });
    this.sweeper ??= setInterval(() => this.sweepWaiters(), Math.max(5, this.attemptTimeoutMs / 4));
    this.observeLog();
    const { data } = this.machine.stamp(call, this.hlc.now());
    // Success is answered by applied(); only a refusal or a superseded entry is answered here
    // (no promise per proposal: the waiter above is this call's only one).
    this.raft.proposeWith(data, (error) => {
      if (error !== undefined) this.answer(key, notLeader());
    });
    return answered;
  }

  /** Gives up on waiters past their deadline; stops the sweeper once none wait. */
  private sweepWaiters(): void {
    const now = Date.now();
    for (const [key, list] of this.waiters) {
      const kept = list.filter((w) => {
        if (w.deadline > now) return true;
        w.resolve({ s: 'not-leader', leader: this.raft.core.lead });
        return false;
      });
      if (kept.length === 0) this.waiters.delete(key);
      else if (kept.length < list.length) this.waiters.set(key, kept);
    }
    if (this.waiters.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
  }

  /** Lets the machine see every entry in the local log, so its stamps come after all of them. */
  private observeLog(): void {
    const log = this.raft.core.log;
    const lo = Math.max(this.observedIndex + 1, log.firstIndex());
    const hi = log.lastIndex();
    if (hi >= lo) this.machine.observeAppended(log.slice(lo, hi + 1));
    this.observedIndex = hi;
  }

  /** An entry was applied (and, for a call, executed): answer whoever waits for it here. */
  private applied(outcome: ShardApplied, reply: Uint8Array | undefined): void {
    switch (outcome.kind) {
      case 'call': {
        this.hlc.observe(outcome.timestamp);
        const { micros, logical } = outcome.timestamp;
        this.answer(`${outcome.call.client}:${outcome.call.seq}`, { s: 'ok', reply: reply!, version: outcome.version, micros, logical });
        break;
      }
      case 'duplicate':
        this.counters.duplicates++;
        this.answer(`${outcome.call.client}:${outcome.call.seq}`, { s: 'ok', reply: outcome.reply });
        break;
      case 'expired':
        this.answer(`${outcome.call.client}:${outcome.call.seq}`, { s: 'expired', reason: outcome.reason });
        break;
      case 'registered':
      case 'none':
        break;
    }
  }

  private answer(key: string, a: ForwardAnswer): void {
    const list = this.waiters.get(key);
    if (list === undefined) return;
    this.waiters.delete(key);
    for (const w of list) w.resolve(a);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TimeoutError('local raft shard proposal', ms)), Math.max(1, ms));
    promise.then(
      (v) => { clearTimeout(timer); resolve(v); },
      (e: unknown) => { clearTimeout(timer); reject(e as Error); },
    );
  });
}

function joinSnapshot(machineBytes: Uint8Array, appBytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + machineBytes.length + appBytes.length);
  new DataView(out.buffer).setUint32(0, machineBytes.length);
  out.set(machineBytes, 4);
  out.set(appBytes, 4 + machineBytes.length);
  return out;
}

function splitSnapshot(bytes: Uint8Array): { machineBytes: Uint8Array; appBytes: Uint8Array } {
  const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(0);
  return { machineBytes: bytes.subarray(4, 4 + length), appBytes: bytes.subarray(4 + length) };
}
