/**
 * RaftDriver: runs one RaftCore over a Transport, a RaftStorage and real timers. It is the only
 * Raft code with I/O. Its loop does the duties of src/raft/README.md in order, for each Ready:
 *
 *   1. persist hard state, snapshot and entries, and await the flush (durable);
 *   2. only then send the Ready's messages (one transport call per peer, all messages batched);
 *   3. restore a received snapshot, then apply committed entries, in order;
 *   4. advance() the core.
 *
 * While a flush is in flight, incoming messages, ticks and proposals keep stepping the core and
 * accumulate into the next Ready, so one fsync covers every proposal that arrived meanwhile.
 * Messages are one-way requests (type RAFT_REQUEST_TYPE) whose response is empty; Raft tolerates
 * their loss, duplication and reordering, so send errors are only counted.
 */
import { randomInt } from 'node:crypto';
import { TimeoutError } from '../core/errors.js';
import { SeededRandom } from '../core/random.js';
import { RaftCore, type RaftConfig } from '../raft/raft-core.js';
import { decodeMessages, encodeMessages } from '../raft/codec.js';
import { RaftProposalError } from '../raft/errors.js';
import { bufferReady, loadInitialState, readyNeedsPersist, type RaftStorage } from '../raft/storage.js';
import type { ConfChange, Entry, Message, Ready, Snapshot, SoftState } from '../raft/types.js';
import type { Transport, TransportAddress, TransportSession } from '../transport/transport.js';

/** The request type Raft registers on the transport. */
export const RAFT_REQUEST_TYPE = 40;

export interface StateMachine {
  /** Applies one committed entry (Normal entries with data; no-ops and conf changes are skipped). */
  apply(entry: Entry): void;
  /** Replaces the whole state with a snapshot's data (received from the leader). */
  restore(snapshot: Snapshot): void;
  /** The state as bytes, for compaction. */
  snapshot(): Uint8Array;
}

export interface RaftDriverOptions {
  id: number;
  /** Every node that may ever be a member, by Raft id → transport address. */
  peers: ReadonlyMap<number, TransportAddress>;
  /** Founding voters (used only when storage is empty); a joining node passes []. */
  voters: readonly number[];
  transport: Transport;
  storage: RaftStorage;
  stateMachine: StateMachine;
  /** Length of one tick in ms (default 10); election timeout = electionTicks × tickMs. */
  tickMs?: number;
  /** Compact the log when this many entries were applied since the last snapshot (default 10,000). */
  compactEvery?: number;
  /** Core options (timeouts in ticks, windows, pre-vote, check-quorum). */
  core?: Partial<Omit<RaftConfig, 'id' | 'random'>>;
  /** Called when leadership or role changes. */
  onSoftState?: (s: SoftState) => void;
}

interface PendingProposal {
  term: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class RaftDriver {
  readonly core: RaftCore;
  private readonly sessions = new Map<number, Promise<TransportSession>>();
  private readonly proposals = new Map<number, PendingProposal>();
  private readonly reads = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private readonly readsAwaitingApply: Array<{ index: number; resolve: () => void }> = [];
  /** Random start: ids must not repeat across restarts, or a late answer to a read of an
   *  earlier run of this node could satisfy a new read. */
  private readIdNext = randomInt(2 ** 47);
  private running = false;
  private scheduled = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private failure: Error | undefined;
  readonly counters = { readies: 0, flushes: 0, sends: 0, sendErrors: 0, decodeErrors: 0, applied: 0 };

  private constructor(private readonly options: RaftDriverOptions, core: RaftCore) {
    this.core = core;
  }

  /** Loads state from storage, registers the transport handler and starts ticking. */
  static async start(options: RaftDriverOptions): Promise<RaftDriver> {
    const state = await loadInitialState(options.storage);
    const random = new SeededRandom(randomInt(2 ** 32 - 1));
    const core = new RaftCore({ ...options.core, id: options.id, random }, state, options.voters);
    const driver = new RaftDriver(options, core);
    if (state.snapshot) options.stateMachine.restore(state.snapshot);
    options.transport.handle(RAFT_REQUEST_TYPE, (request) => {
      driver.receive(request);
      return EMPTY;
    });
    driver.timer = setInterval(() => driver.onTick(), options.tickMs ?? 10);
    driver.schedule();
    return driver;
  }

  /** Proposes data; resolves with its index once it is committed and applied here. Rejects with
   *  RaftProposalError if this node is not the leader or the entry was superseded. */
  propose(data: Uint8Array): Promise<number> {
    return this.track(() => this.core.propose(data));
  }

  proposeConfChange(cc: ConfChange): Promise<number> {
    return this.track(() => this.core.proposeConfChange(cc));
  }

  /** Resolves once this node's state machine reflects every write committed before the call. */
  readBarrier(timeoutMs = 5000): Promise<void> {
    this.checkUsable();
    const id = this.readIdNext++;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.reads.delete(id);
        reject(new RaftProposalError('not-leader', this.core.lead, `read ${id} not confirmed within ${timeoutMs} ms`));
      }, timeoutMs);
      this.reads.set(id, {
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      try {
        this.core.readIndex(id);
      } catch (e) {
        this.reads.delete(id);
        clearTimeout(timer);
        reject(e as Error);
        return;
      }
      this.schedule();
    });
  }

  transferLeadership(target: number): void {
    this.checkUsable();
    this.core.transferLeadership(target);
    this.schedule();
  }

  /** Stops timers and fails pending proposals; does not close transport or storage (the owner does). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    const error = new RaftProposalError('not-leader', 0, 'the raft driver was closed');
    for (const p of this.proposals.values()) p.reject(error);
    for (const r of this.reads.values()) r.reject(error);
    this.proposals.clear();
    this.reads.clear();
    for (const s of this.sessions.values()) s.then((x) => x.close(), () => undefined);
    while (this.running) await new Promise((r) => setTimeout(r, 1));
  }

  private track(fn: () => { index: number; term: number }): Promise<number> {
    this.checkUsable();
    let r: { index: number; term: number };
    try {
      r = fn();
    } catch (e) {
      return Promise.reject(e);
    }
    this.schedule();
    return new Promise<number>((resolve, reject) => {
      this.proposals.set(r.index, { term: r.term, resolve: () => resolve(r.index), reject });
    });
  }

  private checkUsable(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new RaftProposalError('not-leader', 0, 'the raft driver is closed');
  }

  private receive(request: Uint8Array): void {
    if (this.closed) return;
    let messages: Message[];
    try {
      messages = decodeMessages(request);
    } catch {
      this.counters.decodeErrors++;
      return;
    }
    for (const m of messages) this.core.step(m);
    this.schedule();
  }

  private onTick(): void {
    if (this.closed) return;
    this.core.tick();
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.running || this.closed) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      void this.loop();
    });
  }

  private async loop(): Promise<void> {
    if (this.running || this.closed) return;
    this.running = true;
    try {
      while (!this.closed && this.core.hasReady()) {
        const rd = this.core.ready();
        this.counters.readies++;
        this.send(rd.messagesNow); // a leader's appends go out while it writes its own log
        if (readyNeedsPersist(rd)) {
          // Duty 1, persist before send (Raft §5.1 / thesis §3.8): a vote, a term or an
          // acknowledged entry must be durable before any message that reveals it leaves.
          bufferReady(this.options.storage, rd);
          this.counters.flushes++;
          if (rd.mustSync) {
            await this.options.storage.flush();
          } else {
            // Only the commit index changed: write it in the background (README, duty 2).
            this.options.storage.flush().catch((e: unknown) => this.fail(e));
          }
        }
        this.send(rd.messages); // duty 2
        this.apply(rd); // duty 3
        this.core.advance(); // duty 4
        this.maybeCompact();
      }
    } catch (e) {
      this.fail(e);
    } finally {
      this.running = false;
    }
    if (!this.closed && this.core.hasReady()) this.schedule();
  }

  /** A failed flush leaves the disk state unknown: stop this node rather than diverge. */
  private fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e instanceof Error ? e : new Error(String(e));
    void this.close(); // not awaited: close() waits for the loop to finish
  }

  private send(messages: readonly Message[]): void {
    if (messages.length === 0) return;
    const byPeer = new Map<number, Message[]>();
    for (const m of messages) {
      const list = byPeer.get(m.to);
      if (list) list.push(m);
      else byPeer.set(m.to, [m]);
    }
    for (const [to, list] of byPeer) {
      const session = this.session(to);
      if (session === undefined) continue;
      const bytes = encodeMessages(list);
      this.counters.sends++;
      session
        // A deadline so a lost message's call does not stay pending forever (Raft resends).
        .then((s) => s.call(RAFT_REQUEST_TYPE, bytes, { timeoutMs: SEND_TIMEOUT_MS }))
        .catch((e: unknown) => {
          this.counters.sendErrors++;
          if (e instanceof TimeoutError) return; // lost: Raft resends what matters
          // The session is broken: drop it and reconnect on the next send.
          if (this.sessions.get(to) === session) this.sessions.delete(to);
          session.then((x) => x.close(), () => undefined);
        });
    }
  }

  private session(to: number): Promise<TransportSession> | undefined {
    let s = this.sessions.get(to);
    if (s === undefined) {
      const address = this.options.peers.get(to);
      if (address === undefined) return undefined;
      s = this.options.transport.connect(address);
      s.catch(() => this.sessions.delete(to));
      this.sessions.set(to, s);
    }
    return s;
  }

  private apply(rd: Ready): void {
    const sm = this.options.stateMachine;
    if (rd.snapshot) sm.restore(rd.snapshot);
    for (const e of rd.committed) {
      if (e.type === 0 && e.data.length > 0) sm.apply(e);
      this.counters.applied++;
      const p = this.proposals.get(e.index);
      if (p) {
        this.proposals.delete(e.index);
        if (p.term === e.term) p.resolve();
        else p.reject(new RaftProposalError('not-leader', this.core.lead, `entry ${e.index} was superseded by a later leader`));
      }
    }
    if (rd.snapshot) {
      // Proposals at or below the snapshot were decided by others: we cannot tell their fate.
      for (const [index, p] of this.proposals) {
        if (index <= rd.snapshot.meta.index) {
          this.proposals.delete(index);
          p.reject(new RaftProposalError('not-leader', this.core.lead, `entry ${index} outcome unknown (snapshot installed)`));
        }
      }
    }
    for (const rs of rd.readStates) {
      const r = this.reads.get(rs.id);
      if (r) {
        this.reads.delete(rs.id);
        this.readsAwaitingApply.push({ index: rs.index, resolve: r.resolve });
      }
    }
    const applied = rd.committed.length ? rd.committed[rd.committed.length - 1]!.index : rd.snapshot?.meta.index ?? -1;
    const appliedNow = Math.max(applied, this.core.applied);
    for (let i = this.readsAwaitingApply.length - 1; i >= 0; i--) {
      const r = this.readsAwaitingApply[i]!;
      if (r.index <= appliedNow) {
        this.readsAwaitingApply.splice(i, 1);
        r.resolve();
      }
    }
    if (rd.softState) this.options.onSoftState?.(rd.softState);
  }

  private maybeCompact(): void {
    const every = this.options.compactEvery ?? 10_000;
    if (this.core.applied - this.core.log.snapIndex >= every) {
      this.core.compact(this.core.applied, this.options.stateMachine.snapshot());
    }
  }
}

const EMPTY = new Uint8Array(0);
const SEND_TIMEOUT_MS = 2000;
