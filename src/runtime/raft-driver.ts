/**
 * RaftDriver: runs one RaftCore over a Transport, a RaftStorage and real timers. It is the only
 * Raft code with I/O. Its loop does the duties of src/raft/README.md in order, for each Ready:
 *
 *   1. persist hard state, snapshot and entries, and await the flush (durable; a storage that
 *      writes synchronously returns no promise, and the loop goes on in the same turn); a hard
 *      state that moves only the commit index is written at the next tick (bufferWrites);
 *   2. only then send the Ready's messages (one transport call per peer, all messages batched);
 *   3. restore a received snapshot, then apply committed entries, in order (those already durable
 *      here may be applied while an asynchronous flush is in flight);
 *   4. advance() the core.
 *
 * While a flush is in flight, incoming messages, ticks and proposals keep stepping the core and
 * accumulate into the next Ready, so one fsync covers every proposal that arrived meanwhile.
 * Messages travel as requests (type RAFT_REQUEST_TYPE unless `requestType` says otherwise); the
 * response to a request carries what the receiver sends back to that peer next (an append's ack
 * rides on the append's response), or nothing. Raft tolerates loss, duplication and reordering,
 * so send errors are only counted.
 *
 * Several Raft groups share one endpoint and one request type (the membership log is group 0,
 * each raft-ordered shard its own `groupId`): every batch carries its group id in the codec's
 * header and a RequestMux (request-mux.ts) on the transport hands it to that group's driver.
 */
import { randomInt } from 'node:crypto';
import { TimeoutError } from '../core/errors.js';
import { SeededRandom } from '../core/random.js';
import { RaftCore, type RaftConfig } from '../raft/raft-core.js';
import { batchGroup, decodeMessages, encodeMessages } from '../raft/codec.js';
import { RaftProposalError } from '../raft/errors.js';
import { bufferReady, loadInitialState, readyNeedsPersist, type RaftStorage } from '../raft/storage.js';
import { NONE, type ConfChange, type Entry, type HardState, type Message, type Ready, type Snapshot, type SoftState } from '../raft/types.js';
import {
  DEFERRED, type DeferredResponse, type RequestContext, type RequestType, type Transport, type TransportAddress, type TransportSession,
} from '../transport/transport.js';
import { ProposalQueue } from './raft-proposals.js';
import { RequestMux } from './request-mux.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

/** The request type Raft registers on the transport. */
export const RAFT_REQUEST_TYPE = REQUEST_TYPES.raft;

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
  /**
   * This Raft group's id on the shared endpoint (default 0, the membership log). Every member of
   * a group uses the same id; groups on one endpoint use different ids.
   */
  groupId?: number;
  /** The request type its batches travel as (default RAFT_REQUEST_TYPE, shared by every group). */
  requestType?: RequestType;
  /** Length of one tick in ms (default 10); election timeout = electionTicks × tickMs. */
  tickMs?: number;
  /** Compact the log when this many entries were applied since the last snapshot (default 10,000). */
  compactEvery?: number;
  /** Core options (timeouts in ticks, windows, pre-vote, check-quorum). */
  core?: Partial<Omit<RaftConfig, 'id' | 'random'>>;
  /** Called when leadership or role changes. */
  onSoftState?: (s: SoftState) => void;
}

/**
 * Told a proposal's outcome: no error once its entry is committed and applied here (at `index`),
 * or the RaftProposalError that refused or superseded it.
 */
export type ProposalCallback = (error: Error | undefined, index: number) => void;

interface PendingProposal {
  index: number;
  term: number;
  done: ProposalCallback;
}

export class RaftDriver {
  readonly core: RaftCore;
  private readonly sessions = new Map<number, Promise<TransportSession>>();
  /** The sessions of `sessions` that are connected, to call without a promise hop. */
  private readonly connected = new Map<number, TransportSession>();
  /**
   * Per peer, the response to its latest request while it is open (see receive), else
   * undefined: a peer's key stays once set, as a Map's table was reallocated every few dozen
   * set/delete pairs, one pair per request.
   */
  private readonly replies = new Map<number, DeferredResponse | undefined>();
  /** How many of `replies` are open. */
  private openReplies = 0;
  /**
   * Plain heartbeats (no read round: ctx 0) held until the end of this event-loop turn, per
   * peer. The core sends one to every caught-up follower after each commit (its commit notice)
   * and at each heartbeat tick; an append or heartbeat sent to that peer meanwhile carries the
   * same commit index and resets its election timer too, so the held one is dropped. Under
   * load the next append always comes first and the notices cost nothing (sent at once, they
   * were one more transport call per follower per commit: the raft bench's commits/s fell by
   * about a third); idle, the notice leaves one turn later.
   */
  private readonly heldHeartbeats = new Map<number, Message | undefined>();
  /**
   * How many of `heldHeartbeats` hold one: a peer's key stays once set (undefined when none is
   * held), as its set and delete on every commit made the Map rehash (allocate) every few
   * dozen commits (about 1.6 % of what a leader allocated per commit, in the raft bench).
   */
  private heldCount = 0;
  private heldHeartbeatsTimer: ReturnType<typeof setImmediate> | undefined;
  /** A call's response (run by the transport synchronously with callWith: must not throw). */
  private readonly onReply = (response: Uint8Array): void => {
    try {
      this.receiveReply(response);
    } catch (e) {
      this.fail(e);
    }
  };
  /** The sender of the batch stepBatch() last stepped, or NONE. */
  private batchFrom = NONE;
  /** stepBatch's decoded messages, one array kept for every batch (not re-entrant: step() never
   *  calls back into the driver). */
  private readonly decoded: Message[] = [];
  /** Per peer, the rejection handler of its calls and the session it is for (see sendNow). */
  private readonly sendFailures = new Map<number, { session: Promise<TransportSession>; failed: (e: unknown) => void }>();
  /** The proposals waiting to be applied, by index (a queue in index order: raft-proposals.ts). */
  private readonly proposals = new ProposalQueue<PendingProposal>();
  private readonly reads = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private readonly readsAwaitingApply: Array<{ index: number; resolve: () => void }> = [];
  /** Random start: ids must not repeat across restarts, or a late answer to a read of an
   *  earlier run of this node could satisfy a new read. */
  private readIdNext = randomInt(2 ** 47);
  private running = false;
  private scheduled = false;
  /** The local log is durable up to here (what storage held at start, then each flush). */
  private durableIndex = 0;
  /** A background flush (persistInBackground) is in flight. */
  private backgroundFlushing = false;
  /** persistAsync writes are buffered for the next background flush; the last entry among them. */
  private backgroundDirty = false;
  private backgroundLast: Entry | undefined;
  /** The term and vote of the hard state last buffered for storage. */
  private storedTerm = 0;
  private storedVote = 0;
  /**
   * A hard state that moved only the commit index since storedTerm/storedVote, not yet buffered:
   * the next tick writes it in a transaction of its own (see bufferWrites).
   */
  private lazyHardState: HardState | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private failure: Error | undefined;
  private readonly groupId: number;
  private readonly requestType: RequestType;
  /** The transport's flush (Transport.flush), where it has one. */
  private readonly flushTransport: (() => void) | undefined;
  private unregister: (() => void) | undefined;
  readonly counters = { readies: 0, flushes: 0, backgroundFlushes: 0, sends: 0, replies: 0, sendErrors: 0, decodeErrors: 0, applied: 0 };

  private constructor(private readonly options: RaftDriverOptions, core: RaftCore) {
    this.core = core;
    this.groupId = options.groupId ?? 0;
    this.requestType = options.requestType ?? RAFT_REQUEST_TYPE;
    this.flushTransport = options.transport.flush?.bind(options.transport);
  }

  /** Loads state from storage, registers the transport handler and starts ticking. */
  static async start(options: RaftDriverOptions): Promise<RaftDriver> {
    const state = await loadInitialState(options.storage);
    const random = new SeededRandom(randomInt(2 ** 32 - 1));
    const core = new RaftCore({ ...options.core, id: options.id, random }, state, options.voters);
    const driver = new RaftDriver(options, core);
    driver.durableIndex = core.log.lastIndex(); // loaded from storage: durable
    driver.storedTerm = state.hardState.term;
    driver.storedVote = state.hardState.vote;
    if (state.snapshot) options.stateMachine.restore(state.snapshot);
    driver.unregister = RequestMux.on(options.transport, driver.requestType, batchGroup)
      .register(driver.groupId, (request, context) => driver.receive(request, context));
    driver.timer = setInterval(() => driver.onTick(), options.tickMs ?? 10);
    driver.schedule();
    return driver;
  }

  /** Proposes data; resolves with its index once it is committed and applied here. Rejects with
   *  RaftProposalError if this node is not the leader or the entry was superseded. */
  propose(data: Uint8Array): Promise<number> {
    return this.track(() => this.core.propose(data));
  }

  /**
   * propose() without a promise: `done` is called once, with no error when the entry is applied
   * here, or with the refusal (also when the proposal is refused at once: then before this
   * returns). For callers that already hold their own waiter per call (a raft shard's leader):
   * a promise and its reaction per proposal were two more allocations and a microtask hop on
   * every call's path.
   */
  proposeWith(data: Uint8Array, done: ProposalCallback): void {
    let r: { index: number; term: number };
    try {
      this.checkUsable();
      r = this.core.propose(data);
    } catch (e) {
      done(e as Error, 0);
      return;
    }
    this.proposals.set({ index: r.index, term: r.term, done });
    this.schedule();
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
    this.unregister?.();
    const error = new RaftProposalError('not-leader', 0, 'the raft driver was closed');
    for (const p of this.proposals.takeAll()) p.done(error, p.index);
    for (const r of this.reads.values()) r.reject(error);
    this.reads.clear();
    for (const s of this.sessions.values()) s.then((x) => x.close(), () => undefined);
    this.closeReplies();
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
      this.proposals.set({ index: r.index, term: r.term, done: (error) => (error === undefined ? resolve(r.index) : reject(error)) });
    });
  }

  private checkUsable(): void {
    if (this.failure) throw this.failure;
    if (this.closed) throw new RaftProposalError('not-leader', 0, 'the raft driver is closed');
  }

  /**
   * A request from a peer. Its response carries what this node sends to that peer next (usually
   * the ack of what the request carried, after it is durable), so an append and its ack cost one
   * transport round trip instead of two calls, each with an empty response. Raft tolerates a
   * lost or empty response: the leader resends. The response is deferred through the transport
   * (RequestContext.defer) where it can, else a promise.
   */
  private receive(request: Uint8Array, context: RequestContext): Uint8Array | Promise<Uint8Array> {
    if (this.closed || !this.stepBatch(request)) return EMPTY;
    const from = this.batchFrom;
    if (from === NONE) return EMPTY;
    this.takeReply(from)?.respond(EMPTY); // an older request's answer rides on this one
    const later = context.defer?.();
    if (later !== undefined) {
      this.openReply(from, later);
      return DEFERRED;
    }
    return new Promise<Uint8Array>((resolve) => this.openReply(from, { respond: resolve }));
  }

  private openReply(from: number, reply: DeferredResponse): void {
    this.replies.set(from, reply);
    this.openReplies++;
  }

  /** The open response to `from`'s latest request, now closed here (the caller answers it). */
  private takeReply(from: number): DeferredResponse | undefined {
    const reply = this.replies.get(from);
    if (reply === undefined) return undefined;
    this.replies.set(from, undefined);
    this.openReplies--;
    return reply;
  }

  /** A response to one of our calls: the messages the peer had for us (see receive). */
  private receiveReply(response: Uint8Array): void {
    if (this.closed || response.byteLength === 0) return;
    this.stepBatch(response);
  }

  /**
   * Decodes and steps a batch; false if malformed (counted). Sets batchFrom to the sender if
   * every message came from one node addressed to this one, else NONE (no reply slot then).
   */
  private stepBatch(bytes: Uint8Array): boolean {
    const messages = this.decoded; // empty: cleared after every batch
    try {
      decodeMessages(bytes, messages);
    } catch {
      clearMessages(messages);
      this.counters.decodeErrors++;
      return false;
    }
    const n = messages.length;
    let from = n > 0 ? messages[0]!.from : NONE;
    try {
      for (let i = 0; i < n; i++) {
        const m = messages[i]!;
        if (m.from !== from || m.to !== this.core.id) from = NONE;
        this.core.step(m);
      }
    } finally {
      clearMessages(messages); // holds nothing between batches
    }
    this.batchFrom = from;
    this.schedule();
    return true;
  }

  /** Answers every open request with nothing (the loop went idle, or the driver closed). */
  private closeReplies(): void {
    if (this.openReplies === 0) return;
    const open: DeferredResponse[] = [];
    for (const from of this.replies.keys()) {
      const reply = this.takeReply(from);
      if (reply !== undefined) open.push(reply);
    }
    for (const reply of open) reply.respond(EMPTY);
  }

  private onTick(): void {
    if (this.closed) return;
    const lazy = this.lazyHardState;
    if (lazy !== undefined) {
      this.lazyHardState = undefined;
      this.options.storage.setHardState(lazy);
      this.counters.flushes++;
      flushed(this.options.storage).catch((e: unknown) => this.fail(e));
    }
    this.core.tick();
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.running || this.closed) return;
    this.scheduled = true;
    // A reaction on a settled promise rather than queueMicrotask(): Node wraps each
    // queueMicrotask callback (runMicrotask, an async resource, a bound function), which was
    // ~5 % of a follower's busy time in the raft bench's profile; this runs once or twice per
    // message.
    void DONE.then(this.runLoop);
  }

  private readonly runLoop = (): void => {
    this.scheduled = false;
    this.loop();
  };

  /**
   * Runs Readies while the core has them. Synchronous as long as no Ready has to wait; the first
   * that does (a leader's yield before its own write, or a flush that returns a promise) is
   * finished by finishAfterWait, which then comes back here. `running` stays true until the
   * last Ready is done. (An async function here cost its promise and frame on every call, two or
   * three per commit on the leader, though most calls never awaited.)
   */
  private loop(): void {
    if (this.running || this.closed) return;
    this.running = true;
    try {
      while (!this.closed && this.core.hasReady()) {
        const rd = this.core.ready();
        this.counters.readies++;
        this.send(rd.messagesNow); // a leader's appends go out while it writes its own log
        if (rd.persistAsync && rd.mustSync && this.options.storage.slowFlush === true) {
          // A leader's own log write on a slow (fsync'd) disk: start it and go on (Ready.
          // persistAsync, thesis §10.2.1). Proposals that arrive meanwhile are replicated at once
          // instead of waiting behind this fsync; their writes queue behind it and share its
          // disk round. The core counts this node toward commit only at persisted().
          this.persistInBackground(rd);
          this.send(rd.messages); // empty for such a Ready
          this.apply(rd, 0);
          this.core.advance({ persisted: false });
          this.maybeCompact();
          continue;
        }
        if (readyNeedsPersist(rd) && rd.mustSync && rd.messagesNow.length > 0) {
          // The appends just queued must leave before this node's own write below holds the
          // thread: the transport sends them now (Transport.flush), or, without flush(), the
          // loop yields once to let the transport's own flush (a microtask) put them on the
          // wire. (The yield was an async function, its promise and two microtasks on every
          // commit of a leader.)
          if (this.flushTransport === undefined) {
            void this.finishAfterWait(rd, undefined);
            return;
          }
          this.flushTransport();
        }
        if (readyNeedsPersist(rd) && rd.mustSync) {
          // Duty 1, persist before send (Raft §5.1 / thesis §3.8): a vote, a term or an
          // acknowledged entry must be durable before any message that reveals it leaves.
          const flushing = this.persist(rd);
          if (flushing !== undefined) {
            void this.finishAfterWait(rd, flushing);
            return;
          }
          this.persisted(rd);
        } else if (readyNeedsPersist(rd)) {
          this.bufferWrites(rd); // only the commit index changed: bufferWrites leaves it for the next tick
        }
        this.finishReady(rd, 0);
      }
    } catch (e) {
      this.fail(e);
    }
    this.running = false;
    this.loopEnded();
  }

  /**
   * The rest of `rd` after a wait: the yield before its writes (flushing undefined), then its
   * flush; committed entries already durable here are applied while the flush is in flight.
   * Then the loop goes on.
   */
  private async finishAfterWait(rd: Ready, flushing: Promise<void> | undefined): Promise<void> {
    try {
      if (flushing === undefined) {
        await undefined;
        flushing = this.persist(rd);
      }
      let early = 0; // how many of rd.committed were applied while its write was in flight
      if (flushing !== undefined) {
        // Committed entries already durable here need not wait for this write: apply them
        // while it is in flight (appliableBeforePersist), so a commit costs no extra flush, and
        // the await below covers whatever the apply throws too.
        try {
          early = this.appliableBeforePersist(rd);
          this.applyEntries(rd.committed, 0, early);
        } finally {
          await flushing;
        }
      }
      this.persisted(rd);
      this.finishReady(rd, early);
    } catch (e) {
      this.fail(e);
    }
    this.running = false;
    if (this.closed) this.loopEnded();
    else this.loop();
  }

  /**
   * Buffers rd's writes and flushes them (a Ready that must sync). Flushes resolve in order
   * (RaftStorage.flush), so this one also waits for any background write still in flight:
   * persisted() then declares all of them durable. A storage that wrote synchronously returns
   * no promise: the loop then sends at once and applies (a follower's ack waits for its write
   * only, not for its state machine).
   */
  private persist(rd: Ready): Promise<void> | undefined {
    this.bufferWrites(rd);
    this.counters.flushes++;
    return this.options.storage.flush();
  }

  /** rd's writes are durable. */
  private persisted(rd: Ready): void {
    if (rd.snapshot) this.durableIndex = rd.snapshot.meta.index;
    if (rd.entries.length > 0) this.durableIndex = rd.entries[rd.entries.length - 1]!.index;
  }

  /** Duties 2-4 for rd, whose first `appliedEarly` committed entries were applied already. */
  private finishReady(rd: Ready, appliedEarly: number): void {
    this.send(rd.messages); // duty 2: acks and votes go before the apply below
    this.apply(rd, appliedEarly); // duty 3
    this.core.advance(); // duty 4
    this.maybeCompact();
  }

  /** After the loop: more to do (it arrived during the last Ready), or answer the open requests. */
  private loopEnded(): void {
    if (!this.closed && this.core.hasReady()) this.schedule();
    else this.closeReplies(); // nothing more will be sent to them in answer
  }

  /**
   * Buffers a persistAsync Ready's writes; one background flush at a time takes everything
   * buffered, so a leader under load costs one fsync per disk round, not one per Ready (with
   * one per Ready, the leader's fsyncs queued up behind each other on the disk the followers
   * share: the raft bench's durable commits/s halved).
   */
  private persistInBackground(rd: Ready): void {
    this.bufferWrites(rd);
    this.backgroundDirty = true;
    if (rd.entries.length > 0) this.backgroundLast = rd.entries[rd.entries.length - 1]!;
    if (!this.backgroundFlushing) this.flushInBackground();
  }

  /**
   * Buffers rd's writes (bufferReady), except a hard state whose term and vote are those already
   * stored: it moves only the commit index, a fact about a majority's logs rather than a promise
   * this node made (README, duty 2), so it waits for the next tick, which writes it in a
   * transaction of its own (a crash before then only means learning the commit index again).
   * The writes on every commit's path, a follower's append and the leader's, then touch the log
   * alone: with the commit index beside them, each was one more LMDB put (another B-tree), ~1 of
   * the ~3.5 µs CPU of a one-entry noSync commit. A snapshot keeps its hard state beside it.
   */
  private bufferWrites(rd: Ready): void {
    const hs = rd.hardState;
    if (hs !== undefined && hs.term === this.storedTerm && hs.vote === this.storedVote && rd.snapshot === undefined) {
      this.lazyHardState = hs;
      bufferReady(this.options.storage, rd, false);
      return;
    }
    bufferReady(this.options.storage, rd);
    if (hs !== undefined) {
      this.storedTerm = hs.term;
      this.storedVote = hs.vote;
      this.lazyHardState = undefined; // hs carries the latest commit index
    }
  }

  private flushInBackground(): void {
    this.backgroundFlushing = true;
    this.backgroundDirty = false;
    const last = this.backgroundLast;
    this.backgroundLast = undefined;
    this.counters.flushes++;
    this.counters.backgroundFlushes++;
    flushed(this.options.storage).then(() => {
      this.backgroundFlushing = false;
      if (this.closed) return;
      if (last !== undefined && this.core.log.term(last.index) === last.term) {
        // (Unless overwritten since: a later flush, still in flight, then carries the new entry.)
        this.durableIndex = Math.max(this.durableIndex, last.index);
        this.core.persisted(last.index, last.term);
      }
      if (this.backgroundDirty) this.flushInBackground();
      this.schedule();
    }, (e: unknown) => this.fail(e));
  }

  /** A failed flush leaves the disk state unknown: stop this node rather than diverge. */
  private fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e instanceof Error ? e : new Error(String(e));
    void this.close(); // not awaited: close() waits for the loop to finish
  }

  /**
   * Sends messages, one batch per peer, each peer's in the order given. Most Readies address each
   * peer once (a leader's appends, a follower's ack), so the batches are gathered by a scan over
   * the few messages rather than a Map of arrays per call.
   */
  private send(messages: readonly Message[]): void {
    const n = messages.length;
    if (n === 0) return;
    if (n === 1) {
      this.sendToPeer(messages[0]!.to, messages);
      return;
    }
    for (let i = 0; i < n; i++) {
      const to = messages[i]!.to;
      let seen = false;
      for (let j = 0; j < i && !seen; j++) seen = messages[j]!.to === to;
      if (seen) continue; // sent with the first message to that peer
      let list: Message[] | undefined;
      for (let j = i + 1; j < n; j++) {
        if (messages[j]!.to !== to) continue;
        list ??= [messages[i]!];
        list.push(messages[j]!);
      }
      this.sendToPeer(to, list ?? [messages[i]!]);
    }
  }

  /** Sends one peer's batch, or holds it if it is only plain heartbeats (see heldHeartbeats). */
  private sendToPeer(to: number, list: readonly Message[]): void {
    if (this.replies.get(to) === undefined && list.every(isPlainHeartbeat)) {
      // Held: nothing is waiting on this peer's answer to carry it for free (see heldHeartbeats).
      if (this.heldHeartbeats.get(to) === undefined) this.heldCount++;
      this.heldHeartbeats.set(to, list[list.length - 1]!);
      this.heldHeartbeatsTimer ??= setImmediate(this.sendHeldHeartbeats);
      return;
    }
    if (this.heldCount > 0 && list.some(carriesCommit) && this.heldHeartbeats.get(to) !== undefined) {
      this.heldHeartbeats.set(to, undefined);
      if (--this.heldCount === 0) {
        // Nothing held any more: drop the turn's immediate too. Under one proposal at a time the
        // next append always replaces the commit notices, and the immediate cost the leader one
        // more event-loop turn per commit (~1-3 % of its CPU in the raft bench's profile).
        clearImmediate(this.heldHeartbeatsTimer);
        this.heldHeartbeatsTimer = undefined;
      }
    }
    this.sendNow(to, list);
  }

  private readonly sendHeldHeartbeats = (): void => {
    this.heldHeartbeatsTimer = undefined;
    if (this.closed) return;
    const held: Array<[number, Message]> = [];
    for (const [to, m] of this.heldHeartbeats) {
      if (m === undefined) continue;
      held.push([to, m]);
      this.heldHeartbeats.set(to, undefined);
    }
    this.heldCount = 0;
    for (const [to, m] of held) this.sendNow(to, [m]);
  };

  private sendNow(to: number, list: readonly Message[]): void {
    const session = this.session(to);
    if (session === undefined) return;
    const bytes = encodeMessages(list, this.groupId);
    const reply = this.takeReply(to);
    if (reply !== undefined) {
      // The peer is waiting for the response to its request: answer with these.
      this.counters.replies++;
      reply.respond(bytes);
      return;
    }
    this.counters.sends++;
    const failed = this.sendFailed(to, session);
    // A deadline so a lost message's call does not stay pending forever (Raft resends).
    const open = this.connected.get(to);
    if (open !== undefined) {
      // Connected: call now, so the request is queued on the transport in this microtask
      // (the loop yields once after sending messagesNow to let it leave before persisting).
      try {
        // callWith where the transport has it: no promise and reaction per call.
        if (open.callWith !== undefined) open.callWith(this.requestType, bytes, SEND_OPTIONS, this.onReply, failed);
        else open.call(this.requestType, bytes, SEND_OPTIONS).then(this.onReply, failed);
      } catch (e) {
        failed(e); // as the promise path would: a send error never stops the node
      }
    } else {
      session.then((s) => s.call(this.requestType, bytes, SEND_OPTIONS)).then(this.onReply, failed);
    }
  }

  /**
   * The rejection handler of calls to `to` over `session`: kept per peer and session, as a
   * closure per send was one more allocation on every commit's path.
   */
  private sendFailed(to: number, session: Promise<TransportSession>): (e: unknown) => void {
    const kept = this.sendFailures.get(to);
    if (kept !== undefined && kept.session === session) return kept.failed;
    const failed = (e: unknown): void => {
      this.counters.sendErrors++;
      if (e instanceof TimeoutError) return; // lost: Raft resends what matters
      // The session is broken: drop it and reconnect on the next send.
      if (this.sessions.get(to) === session) {
        this.sessions.delete(to);
        this.connected.delete(to);
      }
      session.then((x) => x.close(), () => undefined);
    };
    this.sendFailures.set(to, { session, failed });
    return failed;
  }

  private session(to: number): Promise<TransportSession> | undefined {
    let s = this.sessions.get(to);
    if (s === undefined) {
      const address = this.options.peers.get(to);
      if (address === undefined) return undefined;
      const promise = this.options.transport.connect(address);
      s = promise;
      promise.then(
        (session) => {
          if (this.sessions.get(to) === promise) this.connected.set(to, session);
        },
        () => {
          if (this.sessions.get(to) === promise) this.sessions.delete(to);
        },
      );
      this.sessions.set(to, promise);
    }
    return s;
  }

  /**
   * How many of rd.committed may be applied before this Ready's writes are durable: those whose
   * entry is already durable in the local log (at or below durableIndex, and not about to be
   * overwritten by this Ready's entries). They are committed, so durable on a majority, and
   * durable here, so a crash right after applying them replays them from the local log: the
   * same guarantees as applying after the flush, one flush sooner. Without this, with
   * proposals streaming in, every commit would wait for the next batch's fsync before it is
   * applied. A leader's committed entries are always durable here (it counts itself toward a
   * quorum only after advance()); a follower may learn a commit before its copy is durable.
   */
  private appliableBeforePersist(rd: Ready): number {
    if (rd.snapshot || rd.committed.length === 0) return 0;
    let limit = this.durableIndex;
    if (rd.entries.length > 0) limit = Math.min(limit, rd.entries[0]!.index - 1);
    let n = 0;
    while (n < rd.committed.length && rd.committed[n]!.index <= limit) n++;
    return n;
  }

  private applyEntries(committed: readonly Entry[], from: number, to: number): void {
    const sm = this.options.stateMachine;
    for (let i = from; i < to; i++) {
      const e = committed[i]!;
      if (e.type === 0 && e.data.length > 0) sm.apply(e);
      this.counters.applied++;
      const p = this.proposals.take(e.index);
      if (p !== undefined) {
        if (p.term === e.term) p.done(undefined, e.index);
        else p.done(new RaftProposalError('not-leader', this.core.lead, `entry ${e.index} was superseded by a later leader`), e.index);
      }
    }
  }

  /** Duty 3 for rd, whose first `appliedEarly` committed entries were applied already. */
  private apply(rd: Ready, appliedEarly: number): void {
    const sm = this.options.stateMachine;
    if (rd.snapshot) sm.restore(rd.snapshot);
    this.applyEntries(rd.committed, appliedEarly, rd.committed.length);
    if (rd.snapshot) {
      // Proposals at or below the snapshot were decided by others: we cannot tell their fate.
      for (const p of this.proposals.takeUpTo(rd.snapshot.meta.index)) {
        p.done(new RaftProposalError('not-leader', this.core.lead, `entry ${p.index} outcome unknown (snapshot installed)`), p.index);
      }
    }
    for (let i = 0; i < rd.readStates.length; i++) {
      const rs = rd.readStates[i]!;
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
const SEND_OPTIONS = { timeoutMs: SEND_TIMEOUT_MS } as const;
const DONE = Promise.resolve();

/** storage.flush() as a promise, whether it wrote synchronously (or threw) or not. */
function flushed(storage: RaftStorage): Promise<void> {
  try {
    return storage.flush() ?? DONE;
  } catch (e) {
    return Promise.reject(e as Error);
  }
}

/**
 * Empties a kept array by popping: a store to its length is a runtime call (two per batch were
 * ~1 % of a leader's samples in the raft bench) and let V8 drop its backing store, which the
 * next batch's push then allocated again.
 */
function clearMessages(messages: Message[]): void {
  while (messages.length > 0) messages.pop();
}

/** A heartbeat without a read round: safe to hold briefly or to drop for a later message. */
function isPlainHeartbeat(m: Message): boolean {
  return m.type === 'heartbeat' && m.ctx === 0;
}

/** Messages that tell a follower the leader's commit index and reset its election timer. */
function carriesCommit(m: Message): boolean {
  return m.type === 'append' || m.type === 'heartbeat';
}
