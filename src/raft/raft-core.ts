/**
 * RaftCore: Raft (Ongaro & Ousterhout 2014; Ongaro's thesis 2014) as a pure, synchronous state
 * machine in the style of etcd's raft. Inputs: tick(), step(message), propose(), proposeConfChange(),
 * transferLeadership(), readIndex(), compact(). Output: ready() hands the driver what to persist,
 * send, apply; advance() tells the core that all of it was done (in particular: persisted).
 *
 * No I/O, clock or randomness of its own: time is ticks and randomness an injected Random, so the
 * simulator runs this exact code under any schedule. `send()` only appends to an outbox. Role
 * behaviour is a table of step functions (STEP below). Assertions stay on.
 */
import { assert } from '../core/assert.js';
import type { Random } from '../core/random.js';
import { RaftProposalError } from './errors.js';
import { RaftLog } from './log.js';
import { Progress } from './progress.js';
import {
  encodeConfChange, EMPTY_CONF, EntryType, NONE, withConfChanges,
  type ConfChange, type ConfState, type Entry, type HardState, type Message, type ReadState,
  type Ready, type Role, type Snapshot, type SoftState,
} from './types.js';

/** Test-only rule breaks, used to prove the simulator catches a broken protocol. */
export type RaftMutation = 'commitPreviousTerm' | 'voteWithoutLogCheck' | 'sendBeforePersist';

export interface RaftConfig {
  id: number;
  /** Seeded in tests; any uniform source in production (election timeouts only). */
  random: Random;
  /** Election timeout in ticks; randomized per election in [electionTicks, 2·electionTicks). */
  electionTicks?: number;
  heartbeatTicks?: number;
  /** Pre-vote (thesis §9.6): a candidate first asks whether it could win, without raising terms. */
  preVote?: boolean;
  /** Check-quorum (thesis §6.2): a leader that has not heard from a majority for an election
   *  timeout steps down, and voters that recently heard a leader ignore vote requests. */
  checkQuorum?: boolean;
  /** Appends in flight per follower in replicate state (the pipelining window). */
  inflightMax?: number;
  entriesPerMessageMax?: number;
  bytesPerMessageMax?: number;
  snapshotChunkBytes?: number;
  /** Proposals that may sit uncommitted in the leader's log before propose() refuses more. */
  uncommittedEntriesMax?: number;
  unsafeMutation?: RaftMutation;
}

/** What storage gives a core at start-up (see storage.ts: Storage.initialState()). */
export interface RaftInitialState {
  hardState: HardState;
  snapshot: Snapshot | undefined;
  /** The log after the snapshot (contiguous). */
  entries: readonly Entry[];
}

export const EMPTY_STATE: RaftInitialState = {
  hardState: { term: 0, vote: NONE, commit: 0 },
  snapshot: undefined,
  entries: [],
};

interface IncomingSnapshot {
  index: number;
  term: number;
  from: number;
  chunks: Uint8Array[];
  offset: number;
}

interface PendingRead {
  id: number;
  index: number;
  ctx: number;
  /** Who asked: this node, or a follower that forwarded it. */
  from: number;
}

type StepFn = (core: RaftCore, m: Message) => void;

export class RaftCore {
  readonly id: number;
  private readonly random: Random;
  private readonly electionTicks: number;
  private readonly heartbeatTicks: number;
  private readonly preVote: boolean;
  private readonly checkQuorum: boolean;
  private readonly inflightMax: number;
  private readonly entriesPerMessageMax: number;
  private readonly bytesPerMessageMax: number;
  private readonly snapshotChunkBytes: number;
  private readonly uncommittedEntriesMax: number;
  private readonly mutation: RaftMutation | undefined;

  // Persistent state (Figure 2), mirrored to storage through Ready.
  term = 0;
  vote = NONE;
  commit = 0;
  readonly log: RaftLog;
  private snapshot: Snapshot | undefined;

  // Volatile state.
  role: Role = 'follower';
  lead = NONE;
  conf: ConfState = EMPTY_CONF;
  private confBase: ConfState;
  applied: number;
  private votes = new Map<number, boolean>();
  private progress = new Map<number, Progress>();
  private electionElapsed = 0;
  private heartbeatElapsed = 0;
  private electionTimeout = 0;
  private leadTransferee = NONE;
  private transferElapsed = 0;
  /** Index of the latest conf change in the leader's log; one at a time until committed. */
  private pendingConfIndex = 0;
  private step_: StepFn = stepFollower;

  // Snapshot being received (follower).
  private incoming: IncomingSnapshot | undefined;

  // ReadIndex (thesis §6.4).
  private readCtx = 0;
  private pendingReads: PendingRead[] = [];
  private readsAwaitingCommit: Array<{ id: number; from: number }> = [];
  private readStates: ReadState[] = [];

  // Ready bookkeeping.
  private outbox: Message[] = [];
  /** maybeCommit's working array (the voters' matches), kept to allocate nothing per ack. */
  private readonly matchScratch: number[] = [];
  private unstableFrom: number;
  /** Entries up to here are durable (reported by advance()). */
  stableIndex: number;
  private prevHardState: HardState;
  /** The highest term known to be on disk (messages of this term need not wait for a flush). */
  private durableTerm: number;
  private prevSoftState: SoftState = { lead: NONE, role: 'follower' };
  private pendingInstall: Snapshot | undefined;
  private pendingCompacted: Snapshot | undefined;
  private broadcastNeeded = false;
  private inProgress: { stableTo: number; appliedTo: number; term: number; persistAsync: boolean; mustSync: boolean } | undefined;

  /**
   * Restarts from `state`, or bootstraps a new group when state is empty and `voters` is given:
   * the log then starts with one addVoter ConfChange per voter at term 1, committed (every
   * founding member writes the same entries). A node joining later starts empty with no voters.
   */
  constructor(config: RaftConfig, state: RaftInitialState = EMPTY_STATE, voters: readonly number[] = []) {
    assert(Number.isInteger(config.id) && config.id > 0, `raft id must be a positive integer, got ${config.id}`);
    this.id = config.id;
    this.random = config.random;
    this.electionTicks = config.electionTicks ?? 10;
    this.heartbeatTicks = config.heartbeatTicks ?? 1;
    assert(this.heartbeatTicks < this.electionTicks, 'heartbeatTicks must be below electionTicks');
    this.preVote = config.preVote ?? true;
    this.checkQuorum = config.checkQuorum ?? true;
    this.inflightMax = config.inflightMax ?? 64;
    this.entriesPerMessageMax = config.entriesPerMessageMax ?? 512;
    this.bytesPerMessageMax = config.bytesPerMessageMax ?? 1 << 20;
    this.snapshotChunkBytes = config.snapshotChunkBytes ?? 64 * 1024;
    this.uncommittedEntriesMax = config.uncommittedEntriesMax ?? 100_000;
    this.mutation = config.unsafeMutation;

    const snap = state.snapshot;
    this.snapshot = snap;
    this.log = new RaftLog(snap?.meta.index ?? 0, snap?.meta.term ?? 0, state.entries);
    this.confBase = snap?.meta.conf ?? EMPTY_CONF;
    this.term = state.hardState.term;
    this.vote = state.hardState.vote;
    this.commit = Math.max(state.hardState.commit, this.log.snapIndex);
    assert(this.commit <= this.log.lastIndex(), 'hard state commit beyond the log');
    this.applied = this.log.snapIndex;
    this.stableIndex = this.log.lastIndex();
    this.unstableFrom = this.log.lastIndex() + 1;
    this.prevHardState = { term: this.term, vote: this.vote, commit: this.commit };
    this.durableTerm = this.term;

    const empty = this.term === 0 && this.log.lastIndex() === 0 && snap === undefined;
    if (empty && voters.length > 0) {
      const sorted = [...voters].sort((a, b) => a - b);
      const entries = sorted.map((node, i): Entry => ({
        index: i + 1, term: 1, type: EntryType.ConfChange, data: encodeConfChange({ op: 'addVoter', node }),
      }));
      this.log.append(entries);
      this.term = 1;
      this.commit = entries.length;
    }
    this.recomputeConf();
    this.becomeFollower(this.term, NONE);
  }

  // ---------------------------------------------------------------------------------------------
  // Inputs

  /** One unit of logical time. The driver calls it at a fixed rate (e.g. every 10 ms). */
  tick(): void {
    if (this.role === 'leader') this.tickLeader();
    else this.tickElection();
  }

  /** A message from a peer (or forwarded locally). Never throws for stale or unknown peers. */
  step(m: Message): void {
    if (m.to !== this.id) return; // misrouted: not ours to act on
    if (!this.stepTerm(m)) return;
    switch (m.type) {
      case 'vote':
      case 'prevote':
        this.handleVoteRequest(m);
        return;
      default:
        this.step_(this, m);
    }
  }

  /**
   * Appends application data to the leader's log and returns its index. Throws RaftProposalError
   * on a follower (with the leader to retry at), during a leader transfer, or when too much is
   * uncommitted. A returned index commits only if this leader's term survives: compare the
   * committed entry's term with the returned term.
   */
  propose(data: Uint8Array): { index: number; term: number } {
    this.checkCanPropose();
    return this.appendLocal(EntryType.Normal, data);
  }

  /**
   * One-server membership change (thesis §4.1). It takes effect on every server as soon as it is in
   * its log; the next may be proposed once this one is committed. A new server should be added as
   * a learner first and promoted (addVoter) once it has caught up.
   */
  proposeConfChange(cc: ConfChange): { index: number; term: number } {
    this.checkCanPropose();
    if (this.pendingConfIndex > this.commit) {
      throw new RaftProposalError('conf-change-pending', this.lead,
        `the membership change at index ${this.pendingConfIndex} is not committed yet; retry after it commits`);
    }
    const isVoter = this.conf.voters.includes(cc.node);
    const isLearner = this.conf.learners.includes(cc.node);
    const bad =
      !(Number.isInteger(cc.node) && cc.node > 0) ||
      (cc.op === 'addVoter' && isVoter) ||
      (cc.op === 'addLearner' && (isVoter || isLearner)) ||
      (cc.op === 'remove' && !isVoter && !isLearner) ||
      (cc.op === 'remove' && isVoter && this.conf.voters.length === 1);
    if (bad) {
      throw new RaftProposalError('bad-conf-change', this.lead,
        `${cc.op} ${cc.node} does not apply to voters [${this.conf.voters}] learners [${this.conf.learners}]`);
    }
    const r = this.appendLocal(EntryType.ConfChange, encodeConfChange(cc));
    this.pendingConfIndex = r.index;
    return r;
  }

  /** Thesis §3.10: hands leadership to `target` once its log is up to date (TimeoutNow). */
  transferLeadership(target: number): void {
    if (this.role !== 'leader') {
      throw new RaftProposalError('not-leader', this.lead, 'only the leader can transfer leadership');
    }
    if (target === this.id || !this.conf.voters.includes(target)) {
      throw new RaftProposalError('bad-conf-change', this.lead, `${target} is not another voter`);
    }
    this.leadTransferee = target;
    this.transferElapsed = 0;
    const pr = this.progress.get(target)!;
    if (pr.match === this.log.lastIndex()) {
      this.send({ type: 'timeoutNow', from: this.id, to: target, term: this.term });
    } else {
      this.sendAppend(target);
    }
  }

  /**
   * ReadIndex (thesis §6.4): a linearizable read without a log write. When Ready.readStates holds
   * {id, index}, the read may be served once the state machine has applied `index`. On a
   * follower the request is forwarded to the leader. Throws RaftProposalError if no leader is known.
   * A read whose leader loses leadership is never answered: the caller retries after a timeout.
   * Ids must be unique across this node's restarts too (a late answer matches by id).
   */
  readIndex(id: number): void {
    if (this.role === 'leader') {
      this.leaderRead(id, this.id);
      return;
    }
    if (this.lead === NONE) throw new RaftProposalError('not-leader', NONE, 'no leader known; retry later');
    this.send({ type: 'readIndex', from: this.id, to: this.lead, term: 0, id });
  }

  /** Campaigns now (as if the election timeout had fired). */
  campaign(): void {
    if (this.role !== 'leader' && this.promotable()) this.startElection(this.preVote ? 'pre' : 'real', false);
  }

  /**
   * Takes a snapshot at `index` (≤ applied) holding the application's state `data`, and compacts
   * the log up to it. The snapshot is persisted through Ready.compacted.
   */
  compact(index: number, data: Uint8Array): void {
    assert(index <= this.applied, `compact(${index}) above applied ${this.applied}`);
    if (index <= this.log.snapIndex) return;
    const term = this.log.term(index)!;
    const snap: Snapshot = { meta: { index, term, conf: this.confAt(index) }, data };
    this.log.compact(index, term);
    this.confBase = snap.meta.conf;
    this.snapshot = snap;
    this.pendingCompacted = snap;
    this.recomputeConf();
  }

  // ---------------------------------------------------------------------------------------------
  // Ready / advance

  hasReady(): boolean {
    if (this.inProgress) return false;
    return (
      this.broadcastNeeded || this.outbox.length > 0 || this.unstableFrom <= this.log.lastIndex() ||
      this.commit > this.applied || this.hardStateChanged() || this.pendingInstall !== undefined ||
      this.pendingCompacted !== undefined || this.readStates.length > 0 ||
      this.prevSoftState.lead !== this.lead || this.prevSoftState.role !== this.role
    );
  }

  /**
   * What the driver must do now. Call advance() when all of it is done. Until then ready() must
   * not be called again, but tick/step/propose may (they accumulate into the next Ready, which is
   * how the driver batches fsyncs).
   */
  ready(): Ready {
    assert(this.inProgress === undefined, 'ready() called again before advance()');
    if (this.broadcastNeeded) {
      this.broadcastNeeded = false;
      if (this.role === 'leader') this.broadcastAppend();
    }
    // Every Ready of a commit's path allocates only what it hands out (one Ready per commit on
    // each node with one proposal outstanding): nothing-to-do fields share frozen empty arrays,
    // the outbox itself is handed out when all of it goes one way, and no closures.
    const term = this.term;
    const hardState: HardState | undefined = this.hardStateChanged() ? { term, vote: this.vote, commit: this.commit } : undefined;
    const entries = this.unstableFrom <= this.log.lastIndex() ? this.log.slice(this.unstableFrom, Infinity) : NO_ENTRIES;
    const committed = this.commit > this.applied ? this.log.slice(this.applied + 1, this.commit + 1) : NO_ENTRIES;
    const softChanged = this.lead !== this.prevSoftState.lead || this.role !== this.prevSoftState.role;
    const soft: SoftState | undefined = softChanged ? { lead: this.lead, role: this.role } : undefined;
    let messagesNow: readonly Message[] = NO_MESSAGES;
    let messages: readonly Message[] = NO_MESSAGES;
    const outbox = this.outbox;
    if (outbox.length > 0) {
      let nowCount = 0;
      for (let i = 0; i < outbox.length; i++) if (this.sendsEarly(outbox[i]!)) nowCount++;
      if (nowCount === outbox.length) messagesNow = outbox;
      else if (nowCount === 0) messages = outbox;
      else {
        const now: Message[] = [];
        const later: Message[] = [];
        for (let i = 0; i < outbox.length; i++) (this.sendsEarly(outbox[i]!) ? now : later).push(outbox[i]!);
        messagesNow = now;
        messages = later;
      }
      this.outbox = [];
    }
    const p = this.prevHardState;
    const mustSync = entries.length > 0 || this.pendingInstall !== undefined ||
      this.pendingCompacted !== undefined || p.term !== term || p.vote !== this.vote;
    // A leader's own appends in a term already durable: nothing here waits for them but its own
    // count toward commit (stableIndex, moved by persisted()). See Ready.persistAsync.
    let persistAsync = this.role === 'leader' && messages.length === 0 && this.pendingInstall === undefined &&
      p.term === term && p.vote === this.vote && term <= this.durableTerm;
    for (let i = 0; persistAsync && i < entries.length; i++) persistAsync = entries[i]!.term === term;
    const readStates = this.readStates.length > 0 ? this.readStates : NO_READ_STATES;
    const rd: Ready = {
      mustSync,
      hardState,
      snapshot: this.pendingInstall,
      compacted: this.pendingCompacted,
      entries,
      messagesNow,
      messages,
      committed,
      readStates,
      softState: soft,
      persistAsync,
    };
    if (hardState) this.prevHardState = hardState;
    if (soft) this.prevSoftState = soft;
    if (readStates !== NO_READ_STATES) this.readStates = [];
    this.pendingInstall = undefined;
    this.pendingCompacted = undefined;
    this.unstableFrom = this.log.lastIndex() + 1;
    const appliedTo = committed.length ? committed[committed.length - 1]!.index : this.applied;
    this.inProgress = { stableTo: this.log.lastIndex(), appliedTo, term, persistAsync, mustSync };
    return rd;
  }

  /** Whether ready() puts m in messagesNow (see Ready.messagesNow). */
  private sendsEarly(m: Message): boolean {
    return this.mutation === 'sendBeforePersist' ||
      (m.from === this.id && m.term <= this.durableTerm && this.role === 'leader' &&
        (m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot'));
  }

  /**
   * The last Ready is done: its hard state, snapshot and entries are durable, its messages sent
   * and its committed entries applied. This is the persistence-completion input: only now does
   * the leader count its own log toward a commit quorum.
   */
  advance(options: { persisted?: boolean } = {}): void {
    const p = this.inProgress;
    assert(p !== undefined, 'advance() without a ready()');
    this.inProgress = undefined;
    this.applied = Math.max(this.applied, p.appliedTo);
    if (options.persisted === false) {
      // Its writes are still in flight (Ready.persistAsync): persisted() will report them.
      assert(p.persistAsync, 'advance({ persisted: false }) for a Ready that must be durable first (persistAsync is false)');
      return;
    }
    // Durable now, and so is every earlier Ready's write (a driver's flushes complete in order).
    // A Ready with nothing that must sync had no flush: it proves nothing about writes of
    // earlier persistAsync Readies still in flight, so the log counts as durable only as before.
    if (p.mustSync) this.stableIndex = Math.max(this.stableIndex, Math.min(p.stableTo, this.unstableFrom - 1));
    this.durableTerm = Math.max(this.durableTerm, p.term);
    if (this.role === 'leader' && this.maybeCommit()) this.afterCommit();
  }

  /**
   * The persistence-completion input for a Ready advanced with `{ persisted: false }`: the local
   * log is durable up to `index`, whose entry had `term` when written. Ignored if the log has
   * changed there since (the entry was overwritten: a later flush carries the new one). Only now
   * does the leader count these entries as its own vote toward commit (thesis §10.2.1).
   */
  persisted(index: number, term: number): void {
    if (index <= this.stableIndex || index >= this.unstableFrom || this.log.term(index) !== term) return;
    this.stableIndex = index;
    if (this.role === 'leader' && this.maybeCommit()) this.afterCommit();
  }

  // ---------------------------------------------------------------------------------------------
  // Introspection (tests, simulator, metrics)

  status(): { id: number; term: number; vote: number; commit: number; applied: number; role: Role;
    lead: number; lastIndex: number; conf: ConfState; progress: Record<number, { match: number; next: number; state: string }> } {
    const progress: Record<number, { match: number; next: number; state: string }> = {};
    for (const [id, pr] of this.progress) progress[id] = { match: pr.match, next: pr.next, state: pr.state };
    return {
      id: this.id, term: this.term, vote: this.vote, commit: this.commit, applied: this.applied,
      role: this.role, lead: this.lead, lastIndex: this.log.lastIndex(), conf: this.conf, progress,
    };
  }

  latestSnapshot(): Snapshot | undefined {
    return this.snapshot;
  }

  // ---------------------------------------------------------------------------------------------
  // Term rules (Figure 2 "All servers", plus pre-vote and leader-lease rules of thesis §9.6, §6.2)

  /** Returns false if the message must be dropped. */
  private stepTerm(m: Message): boolean {
    if (m.term === 0) return true; // term-less local requests (readIndex forwarding)
    if (m.term > this.term) {
      if (m.type === 'vote' || m.type === 'prevote') {
        // Leader lease: a voter that heard from a leader within the election timeout ignores
        // votes, so a partitioned node rejoining cannot depose a healthy leader.
        const inLease = this.checkQuorum && this.lead !== NONE && this.electionElapsed < this.electionTicks;
        if (inLease && !m.transfer) return false;
      }
      if (m.type === 'prevote' || (m.type === 'prevoteResp' && !m.reject)) {
        // A pre-vote carries the term the candidate would use; it changes no one's term.
      } else {
        const lead = m.type === 'append' || m.type === 'heartbeat' || m.type === 'snapshot' ? m.from : NONE;
        this.becomeFollower(m.term, lead);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === 'append' || m.type === 'heartbeat')) {
        // A stale leader (e.g. after a partition) learns the new term from this response; without
        // it, with pre-vote, it could stay leader of a term no one else follows.
        this.sendAppendResp(m.from, 0, true);
      } else if (m.type === 'prevote') {
        this.send({ type: 'prevoteResp', from: this.id, to: m.from, term: this.term, reject: true });
      }
      return false;
    }
    return true;
  }

  private handleVoteRequest(m: Extract<Message, { type: 'vote' | 'prevote' }>): void {
    const pre = m.type === 'prevote';
    const respType = pre ? 'prevoteResp' : 'voteResp';
    const canVote =
      this.vote === m.from ||
      (this.vote === NONE && this.lead === NONE) ||
      (pre && m.term > this.term);
    const logOk = this.mutation === 'voteWithoutLogCheck' || this.log.isUpToDate(m.lastIndex, m.lastTerm);
    if (canVote && logOk) {
      // A granted pre-vote answers in the candidate's future term, so it can count it.
      this.send({ type: respType, from: this.id, to: m.from, term: m.term, reject: false });
      if (!pre) {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ type: respType, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Roles

  private becomeFollower(term: number, lead: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = NONE;
    }
    this.role = 'follower';
    this.step_ = stepFollower;
    this.lead = lead;
    this.resetTimers();
    this.clearLeaderState();
  }

  private becomePreCandidate(): void {
    assert(this.role !== 'leader', 'a leader cannot become a pre-candidate');
    this.role = 'preCandidate';
    this.step_ = stepCandidate;
    this.lead = NONE;
    this.votes = new Map();
    this.clearLeaderState();
  }

  private becomeCandidate(): void {
    assert(this.role !== 'leader', 'a leader cannot become a candidate');
    this.term++;
    this.vote = this.id;
    this.role = 'candidate';
    this.step_ = stepCandidate;
    this.lead = NONE;
    this.votes = new Map();
    this.resetTimers();
    this.clearLeaderState();
  }

  private becomeLeader(): void {
    assert(this.role === 'candidate', 'only a candidate becomes leader');
    this.role = 'leader';
    this.step_ = stepLeader;
    this.lead = this.id;
    this.resetTimers();
    this.progress = new Map();
    for (const id of this.members()) {
      if (id !== this.id) this.progress.set(id, new Progress(this.log.lastIndex() + 1, this.inflightMax));
    }
    // Thesis §6.4 / Figure 8: a no-op in our own term lets us commit (and serve reads) at once.
    this.appendLocal(EntryType.Normal, new Uint8Array(0));
    // No membership change until this no-op commits: that settles any change left uncommitted
    // in our log, and is the fix for the one-server-change bug (thesis errata, raft-dev 2015).
    this.pendingConfIndex = this.log.lastIndex();
  }

  private clearLeaderState(): void {
    this.progress = new Map();
    this.leadTransferee = NONE;
    this.pendingReads = [];
    this.readsAwaitingCommit = [];
  }

  private resetTimers(): void {
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.electionTimeout = this.electionTicks + this.random.int(this.electionTicks);
  }

  private promotable(): boolean {
    return this.conf.voters.includes(this.id);
  }

  private members(): number[] {
    return [...this.conf.voters, ...this.conf.learners].sort((a, b) => a - b);
  }

  // ---------------------------------------------------------------------------------------------
  // Elections

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.electionTimeout) {
      this.electionElapsed = 0;
      this.startElection(this.preVote ? 'pre' : 'real', false);
    }
  }

  private startElection(kind: 'pre' | 'real', transfer: boolean): void {
    if (kind === 'pre') {
      this.becomePreCandidate();
      this.resetTimers();
    } else {
      this.becomeCandidate();
    }
    const type = kind === 'pre' ? 'prevote' : 'vote';
    const term = kind === 'pre' ? this.term + 1 : this.term;
    this.recordVote(this.id, true);
    if (this.tallyWon()) {
      this.electionWon(kind);
      return;
    }
    for (const to of this.conf.voters) {
      if (to === this.id) continue;
      const lastIndex = this.log.lastIndex();
      const lastTerm = this.log.lastTerm();
      this.send({ type, from: this.id, to, term, lastIndex, lastTerm, transfer });
    }
  }

  private recordVote(from: number, granted: boolean): void {
    if (!this.votes.has(from)) this.votes.set(from, granted);
  }

  private tallyWon(): boolean {
    let granted = 0;
    for (const id of this.conf.voters) if (this.votes.get(id) === true) granted++;
    return granted >= quorum(this.conf.voters.length);
  }

  private tallyLost(): boolean {
    let rejected = 0;
    for (const id of this.conf.voters) if (this.votes.get(id) === false) rejected++;
    return rejected >= quorum(this.conf.voters.length);
  }

  private electionWon(kind: 'pre' | 'real'): void {
    if (kind === 'pre') this.startElection('real', false);
    else this.becomeLeader();
  }

  /** Handles a (pre)vote response while (pre)candidate. */
  handleVoteResponse(m: Extract<Message, { type: 'voteResp' | 'prevoteResp' }>): void {
    const mine = this.role === 'preCandidate' ? 'prevoteResp' : 'voteResp';
    if (m.type !== mine) return;
    this.recordVote(m.from, !m.reject);
    if (this.tallyWon()) this.electionWon(this.role === 'preCandidate' ? 'pre' : 'real');
    else if (this.tallyLost()) this.becomeFollower(this.term, NONE);
  }

  // ---------------------------------------------------------------------------------------------
  // Leader

  private tickLeader(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTicks) {
      this.electionElapsed = 0;
      if (this.checkQuorum && !this.quorumActive()) {
        this.becomeFollower(this.term, NONE);
        return;
      }
    }
    if (this.leadTransferee !== NONE && ++this.transferElapsed >= this.electionTicks) {
      this.leadTransferee = NONE; // the target did not take over in time: resume as leader
    }
    if (this.heartbeatElapsed >= this.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.broadcastHeartbeat(this.pendingReads.length ? this.readCtx : 0);
      this.recoverStalledPipelines();
    }
  }

  /**
   * A pipeline with appends in flight that got no acknowledgement for two heartbeat intervals
   * has lost messages (the network may drop them; nothing else resends them): fall back to
   * probing from the last known match.
   */
  private recoverStalledPipelines(): void {
    for (const [id, pr] of this.progress) {
      if (pr.state !== 'replicate' || pr.inflightCount() === 0) {
        pr.stalledIntervals = 0;
      } else if (++pr.stalledIntervals >= 2) {
        pr.becomeProbe();
        pr.stalledIntervals = 0;
        this.sendAppend(id);
      }
    }
  }

  /** Check-quorum: did a majority of voters respond since the last check? (Resets the marks.) */
  private quorumActive(): boolean {
    let active = 0;
    for (const id of this.conf.voters) {
      if (id === this.id) active++;
      else if (this.progress.get(id)?.recentActive) active++;
    }
    for (const pr of this.progress.values()) pr.recentActive = false;
    return active >= quorum(this.conf.voters.length);
  }

  private checkCanPropose(): void {
    if (this.role !== 'leader') throw new RaftProposalError('not-leader', this.lead, 'propose at the leader');
    if (this.leadTransferee !== NONE) {
      throw new RaftProposalError('transferring', this.lead,
        `leadership is moving to ${this.leadTransferee}; retry there`);
    }
    if (this.log.lastIndex() - this.commit >= this.uncommittedEntriesMax) {
      throw new RaftProposalError('overloaded', this.lead, `${this.uncommittedEntriesMax} entries ` +
        'are uncommitted; retry after commits catch up, or raise uncommittedEntriesMax');
    }
  }

  private appendLocal(type: EntryType, data: Uint8Array): { index: number; term: number } {
    const entry: Entry = { index: this.log.lastIndex() + 1, term: this.term, type, data };
    this.log.append([entry]);
    if (type === EntryType.ConfChange) this.recomputeConf();
    this.broadcastNeeded = true;
    return { index: entry.index, term: entry.term };
  }

  /** Sends appends to every follower that can take more (the batch is whatever accumulated). */
  private broadcastAppend(): void {
    for (const id of this.progress.keys()) this.sendAppend(id);
  }

  private broadcastHeartbeat(ctx: number): void {
    for (const [id, pr] of this.progress) {
      // Never a commit index beyond what the follower is known to hold (it may lack those entries).
      const commit = Math.min(pr.match, this.commit);
      this.send({ type: 'heartbeat', from: this.id, to: id, term: this.term, commit, ctx });
    }
  }

  /** Sends as many appends as the follower's state allows (one when probing, a window when replicating). */
  sendAppend(to: number): void {
    const pr = this.progress.get(to);
    if (pr === undefined) return;
    for (let sent = 0; !pr.isPaused(); sent++) {
      const prevIndex = pr.next - 1;
      const prevTerm = this.log.term(prevIndex);
      if (prevTerm === undefined) {
        this.startSnapshot(to, pr);
        return;
      }
      const entries = this.log.slice(pr.next, Infinity, this.entriesPerMessageMax, this.bytesPerMessageMax);
      if (entries.length === 0 && (sent > 0 || pr.state === 'replicate')) return;
      const commit = this.commit;
      this.send({ type: 'append', from: this.id, to, term: this.term, prevIndex, prevTerm, entries, commit });
      pr.sent(prevIndex + entries.length, entries.length);
      if (entries.length === 0) return;
    }
  }

  private startSnapshot(to: number, pr: Progress): void {
    const snap = this.snapshot;
    assert(snap !== undefined, 'log compacted without a snapshot');
    pr.becomeSnapshot(snap.meta.index);
    this.sendSnapshotChunk(to, pr);
  }

  private sendSnapshotChunk(to: number, pr: Progress): void {
    const snap = this.snapshot!;
    if (snap.meta.index !== pr.snapshotIndex) {
      // We compacted again since: start over with the newer snapshot.
      pr.becomeSnapshot(snap.meta.index);
    }
    const chunk = snap.data.subarray(pr.snapshotOffset, pr.snapshotOffset + this.snapshotChunkBytes);
    this.send({ type: 'snapshot', from: this.id, to, term: this.term, meta: snap.meta, offset: pr.snapshotOffset,
      totalBytes: snap.data.length, chunk });
    pr.snapshotChunkSent = true;
  }

  handleAppendResponse(m: Extract<Message, { type: 'appendResp' }>): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (m.reject) {
      this.handleRejection(pr, m);
      return;
    }
    const wasPaused = pr.isPaused();
    if (pr.ack(m.index)) {
      if (pr.state === 'probe') pr.becomeReplicate();
      else if (pr.state === 'snapshot' && pr.match >= pr.snapshotIndex) pr.becomeProbe();
      if (this.maybeCommit()) this.afterCommit();
      // The last follower to catch up on entries already committed learns the commit now too.
      else if (pr.match <= this.commit) this.noticeCommit(m.from, pr);
      if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
        this.send({ type: 'timeoutNow', from: this.id, to: m.from, term: this.term });
      }
      this.sendAppend(m.from);
    } else if (wasPaused && !pr.isPaused()) {
      this.sendAppend(m.from);
    }
  }

  /** Fast backtracking (thesis §5.3 optimization): skip a whole conflicting term per round trip. */
  private handleRejection(pr: Progress, m: Extract<Message, { type: 'appendResp' }>): void {
    if (m.index === 0 && m.hintIndex === 0) return; // a stale-term notice, nothing to backtrack
    if (pr.state === 'replicate' ? m.index <= pr.match : m.index !== pr.next - 1) return; // stale
    let next: number;
    if (m.hintTerm === 0) {
      next = m.hintIndex;
    } else {
      const j = this.log.lastIndexWithTermAtMost(m.index, m.hintTerm);
      next = this.log.term(j) === m.hintTerm ? j + 1 : m.hintIndex;
    }
    next = Math.max(pr.match + 1, Math.min(next, m.index));
    pr.becomeProbe();
    pr.next = next;
    this.sendAppend(m.from);
  }

  handleHeartbeatResponse(m: Extract<Message, { type: 'heartbeatResp' }>): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    pr.probeSent = false;
    if (pr.state === 'snapshot') this.sendSnapshotChunk(m.from, pr);
    else if (pr.match < this.log.lastIndex()) this.sendAppend(m.from);
    if (m.ctx > pr.readCtxAcked) {
      pr.readCtxAcked = m.ctx;
      this.releaseReads();
    }
  }

  handleSnapshotResponse(m: Extract<Message, { type: 'snapshotResp' }>): void {
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    pr.recentActive = true;
    if (pr.state !== 'snapshot' || m.index !== pr.snapshotIndex || m.offset <= pr.snapshotOffset) return;
    pr.snapshotOffset = m.offset;
    pr.snapshotChunkSent = false;
    if (m.offset < this.snapshot!.data.length) this.sendSnapshotChunk(m.from, pr);
  }

  /** Figure 2 / §5.4.2: commit the highest index on a majority, but only if it is from our term. */
  private maybeCommit(): boolean {
    // Runs on every ack and every advance(): the voters' matches go into a kept array, sorted in
    // place by insertion (a handful of voters). With map() and sort() it was the leader's largest
    // allocation per commit (~3.5 KB of 15 in the raft bench's heap profile, sort's work arrays).
    const voters = this.conf.voters;
    const n = voters.length;
    if (n === 0) return false;
    const matches = this.matchScratch;
    if (matches.length !== n) matches.length = n; // (a length store is a runtime call: only on a change)
    for (let i = 0; i < n; i++) {
      const id = voters[i]!;
      const match = id === this.id ? this.stableIndex : this.progress.get(id)?.match ?? 0;
      let j = i;
      for (; j > 0 && matches[j - 1]! < match; j--) matches[j] = matches[j - 1]!; // descending
      matches[j] = match;
    }
    const index = matches[quorum(n) - 1]!;
    if (index <= this.commit) return false;
    if (this.log.term(index) !== this.term && this.mutation !== 'commitPreviousTerm') return false;
    this.commit = index;
    return true;
  }

  private readonly noticeCommitEach = (pr: Progress, id: number): void => this.noticeCommit(id, pr);

  /** Tells a follower that holds every entry the commit index (see afterCommit). */
  private noticeCommit(id: number, pr: Progress): void {
    if (id === this.id || pr.state !== 'replicate' || pr.match !== this.log.lastIndex()) return;
    this.send({ type: 'heartbeat', from: this.id, to: id, term: this.term, commit: Math.min(pr.match, this.commit), ctx: 0 });
  }

  private afterCommit(): void {
    // Followers that hold every entry get the new commit index now, in a heartbeat (ctx 0: no
    // read round). A follower still receiving entries learns it with its next append; one that
    // holds them all would otherwise wait for the next heartbeat tick (measured: a raft shard's
    // persisted() waited ~50 ms, one heartbeat interval, for its followers to apply an idle
    // call). etcd sends an (empty) append to every follower for the same reason.
    this.progress.forEach(this.noticeCommitEach); // (for-of over entries: an iterator and a pair per follower)
    // Reads waiting for our first commit in this term can now start.
    if (this.readsAwaitingCommit.length && this.log.term(this.commit) === this.term) {
      const waiting = this.readsAwaitingCommit;
      this.readsAwaitingCommit = [];
      for (const r of waiting) this.leaderRead(r.id, r.from);
    }
    // Thesis §4.2.2: a leader removed from the membership steps down once that change commits.
    if (!this.conf.voters.includes(this.id) && this.pendingConfIndex <= this.commit) {
      this.becomeFollower(this.term, NONE);
    }
  }

  private leaderRead(id: number, from: number): void {
    if (this.log.term(this.commit) !== this.term) {
      // Thesis §6.4 step 1: until our no-op commits we do not know the latest commit index.
      this.readsAwaitingCommit.push({ id, from });
      return;
    }
    if (this.conf.voters.length === 1 && this.conf.voters[0] === this.id) {
      this.answerRead({ id, index: this.commit, ctx: 0, from });
      return;
    }
    this.readCtx++;
    this.pendingReads.push({ id, index: this.commit, ctx: this.readCtx, from });
    this.broadcastHeartbeat(this.readCtx);
  }

  /** A read is confirmed when a majority acknowledged a heartbeat sent at or after it. */
  private releaseReads(): void {
    while (this.pendingReads.length > 0) {
      const read = this.pendingReads[0]!;
      let acks = 0;
      for (const id of this.conf.voters) {
        if (id === this.id || (this.progress.get(id)?.readCtxAcked ?? 0) >= read.ctx) acks++;
      }
      if (acks < quorum(this.conf.voters.length)) return;
      this.pendingReads.shift();
      this.answerRead(read);
    }
  }

  private answerRead(read: PendingRead): void {
    if (read.from === this.id) this.readStates.push({ id: read.id, index: read.index });
    else this.sendReadIndexResp(read.from, read.id, read.index, false);
  }

  handleReadIndexRequest(m: Extract<Message, { type: 'readIndex' }>): void {
    if (this.role === 'leader') this.leaderRead(m.id, m.from);
    else this.sendReadIndexResp(m.from, m.id, 0, true);
  }

  handleReadIndexResponse(m: Extract<Message, { type: 'readIndexResp' }>): void {
    if (!m.reject) this.readStates.push({ id: m.id, index: m.index });
  }

  // ---------------------------------------------------------------------------------------------
  // Follower

  becomeFollowerOf(term: number, lead: number): void {
    this.becomeFollower(term, lead);
  }

  handleLeaderContact(m: Message): void {
    this.electionElapsed = 0;
    this.lead = m.from;
  }

  handleAppend(m: Extract<Message, { type: 'append' }>): void {
    if (m.prevIndex < this.commit) {
      this.sendAppendResp(m.from, this.commit, false); // everything up to our commit is known to match
      return;
    }
    if (!this.log.matchTerm(m.prevIndex, m.prevTerm)) {
      // §5.3 with the thesis's fast backtracking hint.
      if (m.prevIndex > this.log.lastIndex()) this.sendAppendResp(m.from, m.prevIndex, true, this.log.lastIndex() + 1, 0);
      else {
        const t = this.log.term(m.prevIndex)!;
        this.sendAppendResp(m.from, m.prevIndex, true, Math.max(this.log.firstIndexOfTerm(m.prevIndex), this.commit + 1), t);
      }
      return;
    }
    const entries = m.entries;
    const lastNew = m.prevIndex + entries.length;
    // Append only from the first entry that is not already in our log (duplicates and
    // reordered, shorter appends must not truncate a longer matching log: §5.3 rule 3).
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (this.log.term(e.index) === e.term) continue;
      // (The message is built only on failure: this runs on every append a follower takes.)
      if (e.index <= this.commit) assert(false, `conflict at ${e.index} at or below commit ${this.commit}`);
      // The message's own array when all of it is new (the usual case): no copy.
      this.truncateAndAppend(i === 0 ? entries : entries.slice(i));
      break;
    }
    const commitTo = Math.min(m.commit, lastNew);
    if (commitTo > this.commit) this.commit = commitTo;
    this.sendAppendResp(m.from, lastNew, false);
  }

  private truncateAndAppend(entries: readonly Entry[]): void {
    const first = entries[0]!.index;
    const hadConf = first <= this.log.lastIndex();
    this.log.append(entries);
    if (first < this.unstableFrom) this.unstableFrom = first;
    if (first <= this.stableIndex) this.stableIndex = first - 1;
    let conf = hadConf;
    for (let i = 0; !conf && i < entries.length; i++) conf = entries[i]!.type === EntryType.ConfChange;
    if (conf) this.recomputeConf();
  }

  handleHeartbeat(m: Extract<Message, { type: 'heartbeat' }>): void {
    if (m.commit > this.commit) this.commit = Math.min(m.commit, this.log.lastIndex());
    this.send({ type: 'heartbeatResp', from: this.id, to: m.from, term: this.term, ctx: m.ctx });
  }

  /** Chunked InstallSnapshot (§7): chunks arrive in order; the last one installs. */
  handleSnapshotChunk(m: Extract<Message, { type: 'snapshot' }>): void {
    const meta = m.meta;
    if (meta.index <= this.commit) {
      // We already have everything it covers (§7 rule 6 in spirit): tell the leader where we are.
      this.incoming = undefined;
      this.sendAppendResp(m.from, this.commit, false);
      return;
    }
    let inc = this.incoming;
    const sameTransfer = (i: IncomingSnapshot | undefined): i is IncomingSnapshot =>
      i !== undefined && i.index === meta.index && i.term === this.term && i.from === m.from;
    if (m.offset === 0 && !sameTransfer(inc)) {
      inc = this.incoming = { index: meta.index, term: this.term, from: m.from, chunks: [], offset: 0 };
    }
    if (!sameTransfer(inc) || m.offset !== inc.offset) {
      // Out of order, a duplicate, or from another leader: say what we expect next.
      const offset = inc !== undefined && inc.index === meta.index ? inc.offset : 0;
      this.send({ type: 'snapshotResp', from: this.id, to: m.from, term: this.term, index: meta.index, offset });
      return;
    }
    inc.chunks.push(m.chunk.slice());
    inc.offset += m.chunk.length;
    if (inc.offset < m.totalBytes) {
      const offset = inc.offset;
      this.send({ type: 'snapshotResp', from: this.id, to: m.from, term: this.term, index: meta.index, offset });
      return;
    }
    this.incoming = undefined;
    const data = concat(inc.chunks, m.totalBytes);
    this.installSnapshot({ meta, data });
    this.sendAppendResp(m.from, this.log.lastIndex(), false);
  }

  private installSnapshot(snap: Snapshot): void {
    const { index, term } = snap.meta;
    if (this.log.matchTerm(index, term)) {
      // Our log already contains the snapshot's last entry: keep the log, just commit to it.
      this.commit = Math.max(this.commit, index);
      return;
    }
    this.log.restore(index, term);
    this.snapshot = snap;
    this.confBase = snap.meta.conf;
    this.commit = index;
    this.applied = index;
    this.stableIndex = index;
    this.unstableFrom = index + 1;
    this.pendingInstall = snap;
    this.pendingCompacted = undefined;
    this.recomputeConf();
  }

  handleTimeoutNow(): void {
    if (this.promotable()) this.startElection('real', true);
  }

  // ---------------------------------------------------------------------------------------------
  // Membership

  /** The configuration in force: the snapshot's, then every conf change in the log (§4.1). */
  private recomputeConf(): void {
    const before = this.conf;
    this.conf = this.confAt(this.log.lastIndex());
    if (this.role === 'leader' && before !== this.conf) {
      for (const id of this.members()) {
        if (id !== this.id && !this.progress.has(id)) {
          this.progress.set(id, new Progress(this.log.lastIndex() + 1, this.inflightMax));
          this.broadcastNeeded = true;
        }
      }
      for (const id of [...this.progress.keys()]) {
        if (!this.conf.voters.includes(id) && !this.conf.learners.includes(id)) this.progress.delete(id);
      }
      if (!this.conf.voters.includes(this.leadTransferee)) this.leadTransferee = NONE;
    }
  }

  private confAt(index: number): ConfState {
    return withConfChanges(this.confBase, this.log.slice(this.log.firstIndex(), index + 1));
  }

  // ---------------------------------------------------------------------------------------------

  private send(m: Message): void {
    this.outbox.push(m);
  }

  private sendAppendResp(to: number, index: number, reject: boolean, hintIndex = 0, hintTerm = 0): void {
    this.send({ type: 'appendResp', from: this.id, to, term: this.term, index, reject, hintIndex, hintTerm });
  }

  private sendReadIndexResp(to: number, id: number, index: number, reject: boolean): void {
    this.send({ type: 'readIndexResp', from: this.id, to, term: 0, id, index, reject });
  }

  private hardStateChanged(): boolean {
    const p = this.prevHardState;
    return p.term !== this.term || p.vote !== this.vote || p.commit !== this.commit;
  }
}

/** Shared by every Ready with nothing in that field (frozen: Ready's arrays are read-only). */
const NO_ENTRIES: readonly Entry[] = Object.freeze([]);
const NO_MESSAGES: readonly Message[] = Object.freeze([]);
const NO_READ_STATES: readonly ReadState[] = Object.freeze([]);

function quorum(voters: number): number {
  return Math.floor(voters / 2) + 1;
}

function concat(chunks: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

// -----------------------------------------------------------------------------------------------
// The step table: what each role does with a message whose term has already been reconciled.

function stepFollower(r: RaftCore, m: Message): void {
  switch (m.type) {
    case 'append':
      r.handleLeaderContact(m);
      r.handleAppend(m);
      return;
    case 'heartbeat':
      r.handleLeaderContact(m);
      r.handleHeartbeat(m);
      return;
    case 'snapshot':
      r.handleLeaderContact(m);
      r.handleSnapshotChunk(m);
      return;
    case 'timeoutNow':
      r.handleTimeoutNow();
      return;
    case 'readIndex':
      r.handleReadIndexRequest(m);
      return;
    case 'readIndexResp':
      r.handleReadIndexResponse(m);
      return;
    default:
      return; // stale responses meant for an earlier role
  }
}

function stepCandidate(r: RaftCore, m: Message): void {
  switch (m.type) {
    case 'append':
    case 'heartbeat':
    case 'snapshot':
      // A leader of our term exists (§5.2): follow it, then handle the message as a follower.
      r.becomeFollowerOf(m.term, m.from);
      stepFollower(r, m);
      return;
    case 'voteResp':
    case 'prevoteResp':
      r.handleVoteResponse(m);
      return;
    case 'readIndex':
      r.handleReadIndexRequest(m);
      return;
    default:
      return;
  }
}

function stepLeader(r: RaftCore, m: Message): void {
  switch (m.type) {
    case 'appendResp':
      r.handleAppendResponse(m);
      return;
    case 'heartbeatResp':
      r.handleHeartbeatResponse(m);
      return;
    case 'snapshotResp':
      r.handleSnapshotResponse(m);
      return;
    case 'readIndex':
      r.handleReadIndexRequest(m);
      return;
    case 'append':
    case 'heartbeat':
    case 'snapshot':
      // Two leaders in one term would break election safety (§5.2); it cannot happen.
      assert(false, `leader ${r.id} got ${m.type} from ${m.from} in its own term ${m.term}`);
      return;
    default:
      return;
  }
}
