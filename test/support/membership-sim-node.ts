/**
 * The membership driver in miniature: one simulated node composing the real pure cores the way
 * src/runtime/'s membership driver will. It is the blueprint for that driver; everything the
 * simulator needs to *check* goes out through the `MembershipObserver` hooks and nothing here
 * reads global state.
 *
 * Composition (per node incarnation):
 *  - RaftCore for the membership log, on the configured voters only (a fixed set: see "Voters"
 *    below). Duties in Raft's order: persist hard state and entries (sim disk), wait for the
 *    sync, then send, then apply the committed entries, then advance. A restarted voter rebuilds
 *    Raft from its disk; Raft re-emits the committed entries, so its copy of the log comes back.
 *  - The log follower: every node keeps the committed membership entries by Raft index. A voter
 *    takes them from its own Raft; a non-voter pulls them from the voters (`fetch` → `entries`,
 *    a contiguous range of Raft indexes with the membership entries in it; Raft's own entries
 *    leave gaps). The follower feeds them, in order, to the ViewChangeCore.
 *  - Proposals: the core's `ready().proposals` go to Raft: a voter that leads proposes; any other
 *    node sends them to a voter, which proposes or forwards once to the leader it knows. Lost
 *    proposals are the core's business (it re-proposes after proposalRetryTicks).
 *  - FailureDetectorCore over heartbeats (`hb`, carrying the sender's address so that a
 *    restarted process is not mistaken for the member it replaced); a message from a member's id
 *    under another address is the transport's session failure: `peerFailed`.
 *  - ViewChangeCore: suspicions → suspect(); wedge → wedge every MulticastCore of the view and
 *    report `receiveState()`; receive reports travel as `report`; deliver → `applyTrim` per
 *    shard, then `delivered()`; install → new MulticastCores for the node's shards of the new
 *    view, own messages cut by the trim queued first, state transfer, `resetView`.
 *  - One MulticastCore per shard of the node, over a per-link, per-view, per-shard reliable
 *    channel (sequence numbers, acks, retransmission), as in multicast-sim.ts.
 *
 * Joining: a node that is not a member (a new node, a restarted one, one removed or that left)
 * sends `join` with a fresh address to members; a member calls `requestJoin` (NodeIdInUseError
 * while the id is still in the view: the old incarnation must be removed first). Any member that
 * has installed the view where that address joined answers `welcome` with the view and its seal
 * index; the joiner starts its ViewChangeCore there and follows the log after the seal.
 *
 * State transfer (the simplest honest model): a shard's state is the sequence of messages it
 * delivered, summarised as a running digest and count. At install, the StateTransfer source
 * sends its digest as of the end of the previous view to the shard's joiners; a joiner queues
 * its deliveries in that shard until the state arrives (and asks the shard's other old members
 * again if it does not). A shard whose every old member is gone has lost its state; its nodes
 * are marked stateless and the digest check skips them.
 *
 * Voters: the founding voters first, then the installed view's (the install effect's `voters`):
 * the Raft leader adds a learner, promotes it once caught up, removes voters that left the view,
 * and hands over leadership if it must go itself. A node runs Raft from its disk if it has Raft
 * state; it fetches the log whenever its own Raft does not feed it. Former voters keep serving
 * the log (fetch and proposals go to them too).
 *
 * Persistence of the membership layer: not modelled beyond Raft. A restarted node has lost its
 * view and its shard state and rejoins as a new member (Derecho's model); `deliver` → `delivered`
 * is synchronous (the "persist" step is instantaneous here).
 */
import { nodeId, viewId as makeViewId, type NodeId, type ShardIndex, type SubgroupId, type ViewId } from '../../src/core/ids.js';
import { RaftCore } from '../../src/raft/raft-core.js';
import { RaftProposalError } from '../../src/raft/errors.js';
import { EntryType, type Entry, type HardState, type Message as RaftMessage, type Ready } from '../../src/raft/types.js';
import { FailureDetectorCore } from '../../src/membership/failure-detector-core.js';
import { SerialPump } from '../../src/membership/serial-pump.js';
import { nextVoterStep } from '../../src/membership/voter-plan.js';
import {
  NodeIdInUseError, ViewChangeCore, decodeEntry, encodeEntry, votersOf,
  type MembershipEntry, type ReceiveReportMessage, type ViewChangeEffect,
} from '../../src/membership/view-change-core.js';
import { decodeView, encodeView, View } from '../../src/membership/view.js';
import type { Allocator } from '../../src/membership/layout.js';
import { MulticastCore } from '../../src/multicast/multicast-core.js';
import type { MulticastLimits } from '../../src/multicast/config.js';
import { computeTrim } from '../../src/multicast/ragged-edge.js';
import { decodePacket, encodePacket } from '../../src/multicast/codec.js';
import type { Delivery } from '../../src/multicast/types.js';
import type { NodeContext, SimNode } from '../sim/simulation.js';

export type MemMessage =
  | { readonly kind: 'raft'; readonly m: RaftMessage }
  | { readonly kind: 'fetch'; readonly from: number }
  | { readonly kind: 'entries'; readonly upTo: number; readonly list: readonly (readonly [number, Uint8Array])[] }
  | { readonly kind: 'propose'; readonly bytes: Uint8Array; readonly hops: number }
  | { readonly kind: 'hb'; readonly address: string }
  | { readonly kind: 'report'; readonly address: string; readonly msg: ReceiveReportMessage }
  | { readonly kind: 'join'; readonly address: string }
  | { readonly kind: 'welcome'; readonly address: string; readonly view: Uint8Array; readonly sealedAtIndex: number }
  | { readonly kind: 'pkt'; readonly ch: string; readonly seq: number; readonly bytes: Uint8Array }
  | { readonly kind: 'ack'; readonly ch: string; readonly seq: number }
  | { readonly kind: 'state'; readonly view: number; readonly shard: string; readonly digest: number; readonly count: number; readonly lost: boolean }
  | { readonly kind: 'stateReq'; readonly view: number; readonly shard: string }
  /** The answer to `stateReq` of a member that does not hold the shard's state either. */
  | { readonly kind: 'stateNone'; readonly view: number; readonly shard: string };

export interface MembershipSimConfig {
  readonly voters: readonly number[];
  /** Every node id that may ever run (join requests go to these). */
  readonly all: readonly number[];
  /** The founding members (view 0); others start as joiners. */
  readonly founders: readonly number[];
  readonly allocator: Allocator;
  readonly limits: MulticastLimits;
  readonly heartbeatTicks: number;
  readonly timeoutTicks: number;
  readonly proposalRetryTicks: number;
  readonly tickMs: number;
  /** Test-only: deliver up to this node's own receive counts instead of the committed trim. */
  readonly mutation?: 'skipTrimAgreement' | undefined;
}

/** What the simulator watches. Every call happens at the moment the driver does the thing. */
export interface MembershipObserver {
  delivered(node: MembershipSimNode, view: View, shard: string, key: string, version: bigint, atTrim: boolean): void;
  installed(node: MembershipSimNode, view: View, previous: View | undefined, finals: ReadonlyMap<string, readonly string[]>): void;
  stateReady(node: MembershipSimNode, view: View, shard: string, digest: number, count: number, lost: boolean): void;
  removed(node: MembershipSimNode, viewId: number, reason: string): void;
  effect(node: MembershipSimNode, effect: ViewChangeEffect): void;
}

const RETRANSMIT_MS = 40;
const FETCH_EVERY_MS = 15;
const JOIN_EVERY_MS = 60;
const FETCH_BATCH = 64;

export function shardKeyOf(subgroupId: number, shardIndex: number): string {
  return `${subgroupId}/${shardIndex}`;
}

export function fnvStep(h: number, key: string): number {
  let x = h;
  for (let i = 0; i < key.length; i++) x = Math.imul(x ^ key.charCodeAt(i), 0x01000193);
  return x >>> 0;
}

/** One shard of the installed view on this node: its multicast core and its state. */
export interface ShardRun {
  readonly key: string;
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  readonly core: MulticastCore;
  readonly channel: string;
  /** Application messages waiting for the core (re-sends from the previous view first). */
  readonly appQueue: Uint8Array[];
  /** Delivered message keys in this view (in order). */
  readonly deliveries: string[];
  /** State: digest and count of every delivery of the shard since its beginning. */
  digest: number;
  count: number;
  /** The state is not here yet (a joiner waiting for its transfer): deliveries wait. */
  awaitingState: boolean;
  stateless: boolean;
  readonly held: string[];
  /** The digest at the start of this view (what a joiner of this view must receive). */
  digestAtStart: number;
  countAtStart: number;
  statelessAtStart: boolean;
  stateAskedAtMs: number;
  /** Members of the shard that answered they lack its state too (in this view). */
  readonly noStateFrom: Set<number>;
}

interface Link {
  nextSeq: number;
  readonly unacked: Map<number, { bytes: Uint8Array; sentAtMs: number }>;
}

export class MembershipSimNode implements SimNode<MemMessage> {
  readonly id: number;
  raft: RaftCore | undefined;
  /** The membership log's voters as of the installed view (founding voters at first). */
  voters: readonly number[];
  /**
   * Every node known to have been a voter: they hold the log even after they left the voters (a
   * view change may remove all of them at once, and the Raft leader may then be a node that is
   * rejoining): fetches and proposals go to them too.
   */
  private readonly logHolders = new Set<number>();
  private raftWaiting: { token: number; rd: Ready } | undefined;
  private raftDiskLast = 0;
  /** The committed membership log as far as this node knows it: Raft index → entry. */
  private readonly log = new Map<number, MembershipEntry>();
  /** Every Raft index up to here is known (membership entry or gap). */
  private knownUpTo = 0;
  private lastFetchMs = -1000;
  private fetchTurn = 0;

  /** Membership layer (undefined while joining). */
  core: ViewChangeCore | undefined;
  private fd: FailureDetectorCore | undefined;
  address: string;
  private rejoins = 0;
  state: 'joining' | 'member' | 'removed' = 'joining';
  /** Port-unreachable answers per peer since it was last heard from (see unreachable()). */
  private readonly unreachableReports = new Map<number, number>();
  private rejoinAtMs = 0;
  private lastJoinMs = -1000;
  partitioned = false;
  /** Installed views with their seal index, to welcome joiners. */
  private readonly history: { view: View; sealedAtIndex: number }[] = [];
  shards = new Map<string, ShardRun>();
  /** Per shard key: own messages cut by the trim, re-sent first in the next view. */
  private resend = new Map<string, Uint8Array[]>();
  private links = new Map<string, Link>();
  private readonly earlyStates = new Map<string, Extract<MemMessage, { kind: 'state' }>>();
  private nextPayloadSeq = 0;
  /** Delivered message keys per shard of this membership (exactly-once across views). */
  readonly everDelivered = new Map<string, Set<string>>();
  readonly lastVersion = new Map<string, bigint>();
  /** Incremented at every (re)join: checks key per-membership state on it. */
  membershipEpoch = 0;
  private readonly pumper = new SerialPump(() => this.pumpCoreOnce(), () => this.state === 'member');

  constructor(
    readonly ctx: NodeContext<MemMessage>,
    private readonly config: MembershipSimConfig,
    private readonly observer: MembershipObserver,
  ) {
    this.id = ctx.id;
    this.address = `sim://${ctx.id}/${ctx.incarnation}.0`;
    this.voters = config.voters;
    for (const v of config.voters) this.logHolders.add(v);
    // A founding voter, or a node whose disk holds Raft state (it was made a voter later).
    if (config.voters.includes(ctx.id) || ctx.disk.get<HardState>('hs') !== undefined) {
      this.startRaft(config.voters.includes(ctx.id) ? config.voters : []);
    }
    if (ctx.incarnation === 0 && config.founders.includes(ctx.id)) {
      // Formation: every founder computes view 0 itself.
      const members = config.founders.map((id) => ({ id: nodeId(id), address: `sim://${id}/0.0` }));
      const view = new View({
        id: makeViewId(0), members, joined: members.map((m) => m.id), departed: [], failed: [],
        layout: config.allocator({ previous: undefined, members: members.map((m) => m.id) }),
      });
      this.becomeMember(view, 0, undefined);
    }
    this.pumpRaft();
  }

  // ---- SimNode ----------------------------------------------------------------------------------

  /**
   * The transport's port-unreachable rule (src/transport/README.md, "Failure"): two answers for
   * a peer with nothing heard from it in between fail its session, which the failure detector
   * takes as a suspicion at once (the runtime driver's `peer-failed` path).
   */
  unreachable(to: number): void {
    const reports = (this.unreachableReports.get(to) ?? 0) + 1;
    this.unreachableReports.set(to, reports);
    if (reports < 2) return;
    this.unreachableReports.delete(to);
    if (this.state !== 'member') return;
    this.ctx.trace(`session to ${to} failed: port unreachable`);
    this.fd!.peerFailed(nodeId(to));
    this.pumpCore();
  }

  deliver(from: number, msg: MemMessage): void {
    this.unreachableReports.delete(from); // heard from: earlier reports are void
    switch (msg.kind) {
      case 'raft':
        if (this.raft) {
          this.raft.step(msg.m);
          this.pumpRaft();
        }
        return;
      case 'fetch':
        return this.serveFetch(from, msg.from);
      case 'entries':
        return this.onEntries(msg.upTo, msg.list);
      case 'propose':
        return this.proposeBytes(msg.bytes, msg.hops);
      case 'hb':
        this.onPeerMessage(from, msg.address);
        return;
      case 'report':
        if (!this.onPeerMessage(from, msg.address) || this.core === undefined) return;
        this.core.receive(nodeId(from), msg.msg);
        return this.pumpCore();
      case 'join':
        return this.onJoinRequest(from, msg.address);
      case 'welcome':
        return this.onWelcome(msg);
      case 'pkt':
        return this.onPacket(from, msg.ch, msg.seq, msg.bytes);
      case 'ack':
        this.links.get(`${from}|${msg.ch}`)?.unacked.delete(msg.seq);
        return;
      case 'state':
        return this.onState(msg);
      case 'stateReq':
        return this.onStateReq(from, msg.view, msg.shard);
      case 'stateNone':
        return this.onStateNone(from, msg.view, msg.shard);
    }
  }

  tick(): void {
    const now = this.ctx.nowMs();
    if (this.raft) {
      this.raft.tick();
      this.pumpRaft();
      this.reconfigureVoters();
    }
    if (!this.inLog() && now - this.lastFetchMs >= FETCH_EVERY_MS && (this.state === 'member' || this.knownUpTo > 0)) {
      this.lastFetchMs = now;
      const holders = [...this.voters, ...[...this.logHolders].sort((a, b) => a - b).filter((v) => !this.voters.includes(v))]
        .filter((v) => v !== this.id);
      if (holders.length > 0) this.ctx.send(holders[this.fetchTurn++ % holders.length]!, { kind: 'fetch', from: this.knownUpTo + 1 });
    }
    if (this.state === 'member') {
      this.fd!.tick();
      this.core!.tick();
      this.pumpCore();
      for (const run of this.shards.values()) {
        run.core.tick(now * 1000);
        if (run.awaitingState && now - run.stateAskedAtMs >= 100) this.askState(run);
      }
      this.retransmit(now);
      this.pumpShards();
    } else if (now >= this.rejoinAtMs && now - this.lastJoinMs >= JOIN_EVERY_MS) {
      this.lastJoinMs = now;
      // Ask everyone: members propose, non-members ignore (a seed list would do as well).
      for (const to of this.config.all) if (to !== this.id) this.ctx.send(to, { kind: 'join', address: this.address });
    }
  }

  diskSynced(token: number): void {
    const w = this.raftWaiting;
    if (w === undefined || token < w.token) return;
    this.raftWaiting = undefined;
    this.finishRaft(w.rd);
    this.pumpRaft();
  }

  // ---- Workload ---------------------------------------------------------------------------------

  /** Submits an application message to shard `key` (if this node sends there); returns its id. */
  submit(key: string, bytes: (seq: number) => Uint8Array): number | undefined {
    const run = this.shards.get(key);
    if (run === undefined || run.core.mySenderIndex < 0) return undefined;
    const seq = this.nextPayloadSeq++;
    run.appQueue.push(bytes(seq));
    this.pumpShards();
    return seq;
  }

  /** Asks to leave the group cleanly. */
  leave(): void {
    if (this.state !== 'member') return;
    this.core!.leave();
    this.pumpCore();
  }

  setPayloadSeq(seq: number): void {
    this.nextPayloadSeq = Math.max(this.nextPayloadSeq, seq);
  }

  // ---- Raft driver ------------------------------------------------------------------------------

  /** Raft from this node's disk; `founding` bootstraps a new log if the disk is empty. */
  private startRaft(founding: readonly number[]): void {
    const disk = this.ctx.disk;
    const hardState = disk.get<HardState>('hs') ?? { term: 0, vote: 0, commit: 0 };
    const entries: Entry[] = [];
    for (const key of disk.keys('log/')) entries.push(disk.get<Entry>(key)!);
    this.raftDiskLast = entries.length ? entries[entries.length - 1]!.index : 0;
    this.raft = new RaftCore(
      { id: this.id, random: this.ctx.random, electionTicks: 10, heartbeatTicks: 2, preVote: true, checkQuorum: true },
      { hardState, snapshot: undefined, entries },
      founding,
    );
  }

  /** Whether this node's Raft is in the log's configuration (else it fetches the entries). */
  private inLog(): boolean {
    // A node that left the voters may never hear of its removal from the configuration (the
    // installed view decides), and one removed while it lagged hears from no leader at all
    // (seed 90): both fetch.
    const raft = this.raft;
    return raft !== undefined && raft.lead !== 0 && this.voters.includes(this.id) &&
      (raft.conf.voters.includes(this.id) || raft.conf.learners.includes(this.id));
  }

  /**
   * Voter replacement, as in the runtime driver: the Raft leader moves the configuration toward
   * the installed view's voters one step at a time (add a learner, promote it once caught up,
   * then remove voters that left the view).
   */
  private reconfigureVoters(): void {
    const raft = this.raft;
    if (raft === undefined || raft.role !== 'leader' || this.state !== 'member') return;
    const status = raft.status();
    const step = nextVoterStep({
      self: this.id, voters: status.conf.voters, learners: status.conf.learners, want: this.voters,
      matchIndex: (n) => status.progress[n]?.match ?? 0, commitIndex: status.commit,
    });
    if (step === undefined) return;
    if (step.kind === 'transferLeadership') {
      try {
        raft.transferLeadership(step.node);
      } catch (e) {
        if (!(e instanceof RaftProposalError)) throw e;
      }
      this.pumpRaft();
      return;
    }
    const change = { op: step.kind, node: step.node };
    try {
      raft.proposeConfChange(change);
      this.ctx.trace(`voters: ${change.op} ${change.node}`);
      this.pumpRaft();
    } catch (e) {
      if (!(e instanceof RaftProposalError)) throw e;
    }
  }

  /** Raft duty 1: persist, and wait for durability before anything of this Ready that needs it. */
  private pumpRaft(): void {
    const raft = this.raft;
    if (raft === undefined) return;
    while (this.raftWaiting === undefined && raft.hasReady()) {
      const rd = raft.ready();
      // A leader's appends and heartbeats of a durable term go out while it writes its own log.
      for (const m of rd.messagesNow) this.ctx.send(m.to, { kind: 'raft', m });
      const disk = this.ctx.disk;
      let wrote = false;
      if (rd.entries.length) {
        const first = rd.entries[0]!.index;
        for (let i = first; i <= this.raftDiskLast; i++) disk.del(raftKey(i));
        for (const e of rd.entries) disk.put(raftKey(e.index), e);
        this.raftDiskLast = rd.entries[rd.entries.length - 1]!.index;
        wrote = true;
      }
      if (rd.hardState) {
        disk.put('hs', rd.hardState);
        wrote = true;
      }
      if (wrote && rd.mustSync) {
        this.raftWaiting = { token: disk.sync(), rd };
        return;
      }
      // A commit-only hard state rides along with the next sync (or is lost in a crash).
      this.finishRaft(rd);
    }
  }

  private finishRaft(rd: Ready): void {
    for (const m of rd.messages) this.ctx.send(m.to, { kind: 'raft', m });
    const list: [number, Uint8Array][] = [];
    let upTo = this.knownUpTo;
    for (const e of rd.committed) {
      if (e.index <= upTo) continue;
      upTo = e.index;
      if (e.type === EntryType.Normal && e.data.length > 0) list.push([e.index, e.data]);
    }
    this.raft!.advance();
    if (upTo > this.knownUpTo) this.onEntries(upTo, list);
  }

  private proposeBytes(bytes: Uint8Array, hops: number): void {
    const raft = this.raft;
    if (raft === undefined) return;
    try {
      raft.propose(bytes);
      this.pumpRaft();
    } catch (e) {
      if (!(e instanceof RaftProposalError)) throw e;
      if (hops === 0 && raft.lead !== 0 && raft.lead !== this.id) {
        this.ctx.send(raft.lead, { kind: 'propose', bytes, hops: 1 });
      }
    }
  }

  /** A current voter at random, or now and then an older log holder (it may lead the log). */
  private proposalTarget(): number {
    const older = [...this.logHolders].sort((a, b) => a - b).filter((v) => !this.voters.includes(v));
    if (older.length > 0 && this.ctx.random.next() < 0.5) return older[this.ctx.random.int(older.length)]!;
    return this.voters[this.ctx.random.int(this.voters.length)]!;
  }

  private propose(entry: MembershipEntry): void {
    const bytes = encodeEntry(entry);
    if (this.raft !== undefined && this.raft.role === 'leader') return this.proposeBytes(bytes, 0);
    const lead = this.raft?.lead ?? 0;
    const to = lead !== 0 && lead !== this.id
      ? lead
      : this.proposalTarget();
    if (to === this.id) return this.proposeBytes(bytes, 0);
    this.ctx.send(to, { kind: 'propose', bytes, hops: 0 });
  }

  // ---- Log follower -----------------------------------------------------------------------------

  private serveFetch(to: number, from: number): void {
    if (from > this.knownUpTo) return;
    const upTo = Math.min(this.knownUpTo, from + FETCH_BATCH - 1);
    const list: [number, Uint8Array][] = [];
    for (let i = from; i <= upTo; i++) {
      const e = this.log.get(i);
      if (e !== undefined) list.push([i, encodeEntry(e)]);
    }
    this.ctx.send(to, { kind: 'entries', upTo, list });
  }

  private onEntries(upTo: number, list: readonly (readonly [number, Uint8Array])[]): void {
    if (upTo <= this.knownUpTo) return;
    // Ranges are requested from knownUpTo + 1 and knownUpTo only grows, so every reply covers
    // (knownUpTo, upTo] completely.
    for (const [index, bytes] of list) if (index > this.knownUpTo) this.log.set(index, decodeEntry(bytes));
    const from = this.knownUpTo + 1;
    this.knownUpTo = upTo;
    this.feedCore(from);
  }

  /** Feeds the committed entries from `from` on to the view-change core, in order. */
  private feedCore(from: number): void {
    if (this.core === undefined) return;
    for (let i = Math.max(from, this.core.lastAppliedIndex + 1); i <= this.knownUpTo; i++) {
      const entry = this.log.get(i);
      if (entry === undefined || this.core === undefined) continue;
      this.ctx.trace(`commit ${i} ${describeEntry(entry)}`);
      this.core.committed(i, entry);
      this.pumpCore();
    }
  }

  // ---- Membership -------------------------------------------------------------------------------

  private becomeMember(view: View, sealedAtIndex: number, previous: View | undefined): void {
    this.state = 'member';
    this.partitioned = false;
    this.membershipEpoch++;
    this.everDelivered.clear();
    this.lastVersion.clear();
    this.core = new ViewChangeCore({
      self: nodeId(this.id), view, allocator: this.config.allocator, computeTrim,
      votersCount: this.config.voters.length, proposalRetryTicks: this.config.proposalRetryTicks,
      appliedIndex: sealedAtIndex,
    });
    this.fd = new FailureDetectorCore({
      self: nodeId(this.id), heartbeatTicks: this.config.heartbeatTicks, timeoutTicks: this.config.timeoutTicks,
    });
    this.history.length = 0;
    this.startView(view, previous, sealedAtIndex, []);
    this.feedCore(sealedAtIndex + 1);
  }

  private onPeerMessage(from: number, address: string): boolean {
    if (this.state !== 'member') return false;
    const view = this.core!.view;
    const expected = view.addressOf(nodeId(from));
    if (expected === undefined) return false;
    if (expected !== address) {
      // Another process under a member's id: the member's session is gone.
      this.fd!.peerFailed(nodeId(from));
      this.pumpCore();
      return false;
    }
    this.fd!.heartbeatReceived(nodeId(from));
    return true;
  }

  private onJoinRequest(from: number, address: string): void {
    if (this.state !== 'member') return;
    const core = this.core!;
    const expected = core.view.addressOf(nodeId(from));
    if (expected !== undefined && expected !== address) {
      this.fd!.peerFailed(nodeId(from)); // the old process is gone
    }
    for (let i = this.history.length - 1; i >= 0; i--) {
      const h = this.history[i]!;
      if (h.view.joined.includes(nodeId(from)) && h.view.addressOf(nodeId(from)) === address) {
        this.ctx.send(from, { kind: 'welcome', address, view: encodeView(h.view), sealedAtIndex: h.sealedAtIndex });
        return;
      }
    }
    if (expected === undefined) {
      try {
        core.requestJoin(nodeId(from), address);
      } catch (e) {
        if (!(e instanceof NodeIdInUseError)) throw e;
      }
    }
    this.pumpCore();
  }

  private onWelcome(msg: Extract<MemMessage, { kind: 'welcome' }>): void {
    if (this.state === 'member' || msg.address !== this.address) return;
    const view = decodeView(msg.view);
    this.becomeMember(view, msg.sealedAtIndex, undefined);
    this.ctx.trace(`welcomed into view ${view.id} at ${msg.sealedAtIndex}`);
  }

  /** Drains the failure detector and the view-change core, and acts on what they ask. */
  private pumpCore(): void {
    this.pumper.run();
  }

  private pumpCoreOnce(): void {
    for (;;) {
      if (this.state !== 'member') return;
      const fd = this.fd!.ready();
      if (!this.partitioned) {
        for (const to of fd.heartbeatsTo) this.ctx.send(to, { kind: 'hb', address: this.address });
      }
      const core = this.core!;
      for (const s of fd.suspicions) core.suspect(s.node);
      const rd = core.ready();
      for (const p of rd.proposals) this.propose(p);
      for (const m of rd.messages) this.ctx.send(m.to, { kind: 'report', address: this.address, msg: m.message });
      if (rd.effects.length === 0 && rd.proposals.length === 0 && fd.suspicions.length === 0) return;
      for (const effect of rd.effects) {
        this.observer.effect(this, effect);
        this.ctx.trace(`effect ${describeEffect(effect)}`);
        this.applyEffect(effect);
        if (this.state !== 'member') return;
      }
    }
  }

  private applyEffect(effect: ViewChangeEffect): void {
    switch (effect.kind) {
      case 'wedge': {
        this.pumpShards(); // deliver what is already stable first
        const reports = [];
        for (const s of this.core!.view.shardsOf(nodeId(this.id))) {
          const run = this.shards.get(shardKeyOf(s.subgroupId, s.shardIndex))!;
          run.core.wedge();
          reports.push({ subgroupId: s.subgroupId, shardIndex: s.shardIndex, received: run.core.receiveState().receivedCounts });
        }
        this.core!.wedged(effect.viewId, reports);
        return;
      }
      case 'deliver': {
        for (const t of effect.trims) {
          const run = this.shards.get(shardKeyOf(t.subgroupId, t.shardIndex))!;
          const trim = this.config.mutation === 'skipTrimAgreement' ? run.core.receiveState().receivedCounts : t.trim;
          const cut = run.core.applyTrim(trim).resend;
          this.resend.set(run.key, cut.map((m) => m.payload));
          this.drain(run, true);
        }
        this.core!.delivered(effect.viewId);
        return;
      }
      case 'install':
        this.voters = effect.voters.map(Number);
        for (const v of this.voters) this.logHolders.add(v);
        this.startView(effect.view, effect.previous, effect.sealedAtIndex, effect.stateTransfers);
        return;
      case 'partitioned':
        // A minority side: stop delivering and go silent until a view is installed or removal.
        this.partitioned = true;
        for (const run of this.shards.values()) run.core.wedge();
        return;
      case 'removed': {
        this.observer.removed(this, effect.viewId, effect.reason);
        // Only a leader reconfigures the log: a removed leader hands over to a voter that stays.
        const heir = this.raft?.conf.voters.find((v) => v !== this.id && this.voters.includes(v));
        if (this.raft?.role === 'leader' && heir !== undefined) {
          this.raft.transferLeadership(heir);
          this.pumpRaft();
        }
        this.becomeJoiner(effect.reason === 'left' ? 200 + this.ctx.random.int(400) : 50);
        return;
      }
      case 'refused':
        return;
    }
  }

  private becomeJoiner(delayMs: number): void {
    this.state = 'joining';
    this.core = undefined;
    this.fd = undefined;
    this.shards = new Map();
    this.links = new Map();
    this.resend = new Map();
    this.history.length = 0;
    this.rejoins++;
    this.address = `sim://${this.id}/${this.ctx.incarnation}.${this.rejoins}`;
    this.rejoinAtMs = this.ctx.nowMs() + delayMs;
  }

  /** Starts `view` on this node: multicast per shard, state, failure detector. */
  private startView(view: View, previous: View | undefined, sealedAtIndex: number,
    transfers: readonly { subgroupId: SubgroupId; shardIndex: ShardIndex; from: NodeId | undefined; to: readonly NodeId[] }[]): void {
    const self = nodeId(this.id);
    const finals = new Map<string, readonly string[]>();
    for (const [key, run] of this.shards) finals.set(key, run.deliveries);
    const old = this.shards;
    this.shards = new Map();
    this.links = new Map();
    this.partitioned = false;
    for (const s of view.shardsOf(self)) {
      const key = shardKeyOf(s.subgroupId, s.shardIndex);
      const layout = view.shard(s.subgroupId, s.shardIndex)!;
      const core = new MulticastCore({
        viewId: view.id, members: layout.members, senders: layout.senders, self, mode: 'ordered', limits: this.config.limits,
      });
      const before = old.get(key);
      const joiningShard = before === undefined;
      // The source of this shard's state: the core's StateTransfer at an install; for a joiner
      // welcomed into the view, the shard's lowest-ranked member that did not join with it (the
      // allocator keeps survivors in their shard, so that is the core's choice too).
      const transfer = previous !== undefined
        ? transfers.find((t) => shardKeyOf(t.subgroupId, t.shardIndex) === key)
        : { from: layout.members.find((m) => !view.joined.includes(m)) };
      const pending = [...(this.resend.get(key) ?? []), ...(before?.appQueue ?? [])];
      const run: ShardRun = {
        key, subgroupId: s.subgroupId, shardIndex: s.shardIndex, core, channel: `${view.id}:${key}`,
        appQueue: core.mySenderIndex >= 0 ? pending : [], deliveries: [],
        digest: before?.digest ?? 0, count: before?.count ?? 0,
        // A joiner whose state has not arrived by the next view waits for that view's start state.
        awaitingState: (before?.awaitingState ?? false) || (joiningShard && view.id !== 0 && transfer?.from !== undefined),
        stateless: before?.stateless ?? false, held: [],
        digestAtStart: before?.digest ?? 0, countAtStart: before?.count ?? 0, statelessAtStart: before?.stateless ?? false,
        stateAskedAtMs: this.ctx.nowMs(), noStateFrom: new Set(),
      };
      this.shards.set(key, run);
      this.ctx.trace(`view ${view.id} shard ${key}: ${joiningShard ? `joins, state from ${transfer?.from}` : 'stays'}`);
      if (joiningShard && view.id !== 0 && transfer?.from === undefined) {
        // No member of the shard stayed: its state is lost (or the shard was empty; a joiner
        // cannot tell which), so this node's state is unknown and the digest check skips it.
        run.stateless = true;
        run.statelessAtStart = true;
      }
      const early = this.earlyStates.get(`${view.id}:${key}`);
      if (run.awaitingState && early !== undefined) this.takeState(run, early);
      else if (!run.awaitingState) this.observer.stateReady(this, view, key, run.digest, run.count, run.stateless);
      for (const t of transfers) {
        // A source that is itself still waiting for the shard's state cannot give it: the
        // joiners ask the shard's members (stateReq) until someone has it or all say none.
        if (shardKeyOf(t.subgroupId, t.shardIndex) !== key || t.from !== self || run.awaitingState) continue;
        for (const to of t.to) this.sendState(to, view.id, run);
      }
    }
    this.resend = new Map();
    this.earlyStates.clear();
    if (previous === undefined && view.id !== 0) {
      this.voters = votersOf(view, this.config.voters.length).map(Number);
      for (const v of this.voters) this.logHolders.add(v);
    }
    // Named a voter: run Raft (from this node's disk, if it was one before); the leader adds it.
    if (this.voters.includes(this.id) && this.raft === undefined) this.startRaft([]);
    this.history.push({ view, sealedAtIndex });
    if (this.history.length > 8) this.history.shift();
    this.fd!.resetView(view.id, view.memberIds);
    this.observer.installed(this, view, previous, finals);
    this.pumpShards();
  }

  // ---- State transfer ---------------------------------------------------------------------------

  private sendState(to: number, view: number, run: ShardRun): void {
    this.ctx.send(to, {
      kind: 'state', view, shard: run.key, digest: run.digestAtStart, count: run.countAtStart, lost: run.statelessAtStart,
    });
  }

  private askState(run: ShardRun): void {
    run.stateAskedAtMs = this.ctx.nowMs();
    const layout = this.core!.view.shard(run.subgroupId, run.shardIndex)!;
    for (const m of layout.members) if (m !== this.id) this.ctx.send(m, { kind: 'stateReq', view: this.core!.view.id, shard: run.key });
  }

  private onStateReq(from: number, view: number, shard: string): void {
    if (this.state !== 'member' || this.core!.view.id !== view) return;
    const run = this.shards.get(shard);
    if (run === undefined) return;
    // Only a node that holds the shard's state as of the start of the view can give it.
    if (run.awaitingState) this.ctx.send(from, { kind: 'stateNone', view, shard });
    else this.sendState(from, view, run);
  }

  /**
   * Every other member of the shard in this view lacks its state: nobody can ever give it (only
   * the shard's members of the current view answer, and one that held the state at the start of
   * the view always does), so it is lost (every holder failed). Start stateless.
   */
  private onStateNone(from: number, view: number, shard: string): void {
    if (this.state !== 'member' || this.core!.view.id !== view) return;
    const run = this.shards.get(shard);
    if (run === undefined || !run.awaitingState) return;
    run.noStateFrom.add(from);
    const others = this.core!.view.shard(run.subgroupId, run.shardIndex)!.members.filter((m) => m !== this.id);
    if (!others.every((m) => run.noStateFrom.has(m))) return;
    this.ctx.trace(`shard ${shard}: no member of view ${view} holds its state`);
    this.takeState(run, { kind: 'state', view, shard, digest: 0, count: 0, lost: true });
  }

  private onState(msg: Extract<MemMessage, { kind: 'state' }>): void {
    if (this.state === 'member' && this.core!.view.id > msg.view) return;
    if (this.state !== 'member' || this.core!.view.id < msg.view) {
      // The source installed the view before this joiner was welcomed into it: keep it (bounded).
      if (this.earlyStates.size < 16) this.earlyStates.set(`${msg.view}:${msg.shard}`, msg);
      return;
    }
    const run = this.shards.get(msg.shard);
    if (run === undefined || !run.awaitingState) return;
    this.takeState(run, msg);
  }

  private takeState(run: ShardRun, msg: Extract<MemMessage, { kind: 'state' }>): void {
    run.awaitingState = false;
    run.digest = msg.digest;
    run.count = msg.count;
    run.stateless = msg.lost;
    run.digestAtStart = msg.digest;
    run.countAtStart = msg.count;
    run.statelessAtStart = msg.lost;
    this.observer.stateReady(this, this.core!.view, run.key, run.digest, run.count, run.stateless);
    for (const key of run.held.splice(0)) this.applyToState(run, key);
  }

  private applyToState(run: ShardRun, key: string): void {
    run.digest = fnvStep(run.digest, key);
    run.count++;
  }

  // ---- Multicast --------------------------------------------------------------------------------

  private pumpShards(): void {
    if (this.state !== 'member') return;
    for (const run of this.shards.values()) {
      const core = run.core;
      while (run.appQueue.length > 0 && !core.isWedged) {
        const result = core.send(run.appQueue[0]!, { micros: this.ctx.nowMs() * 1000, logical: 0 });
        if (!result.accepted) break;
        run.appQueue.shift();
      }
      this.drain(run, false);
    }
  }

  private drain(run: ShardRun, atTrim: boolean): void {
    const ready = run.core.ready();
    for (const d of ready.deliveries) this.onDelivery(run, d, atTrim);
    for (const out of ready.packets) {
      const bytes = encodePacket(out.packet);
      for (const to of out.to) {
        const lk = `${to}|${run.channel}`;
        let link = this.links.get(lk);
        if (link === undefined) this.links.set(lk, (link = { nextSeq: 0, unacked: new Map() }));
        const seq = link.nextSeq++;
        link.unacked.set(seq, { bytes, sentAtMs: this.ctx.nowMs() });
        this.ctx.send(to, { kind: 'pkt', ch: run.channel, seq, bytes });
      }
    }
  }

  private onDelivery(run: ShardRun, d: Delivery, atTrim: boolean): void {
    const [origin, seq] = readPayloadId(d.payload);
    const key = `${origin}/${seq}`;
    run.deliveries.push(key);
    if (run.awaitingState) run.held.push(key);
    else this.applyToState(run, key);
    this.observer.delivered(this, this.core!.view, run.key, key, d.version as unknown as bigint, atTrim);
  }

  private onPacket(from: number, ch: string, seq: number, bytes: Uint8Array): void {
    if (this.state !== 'member') return;
    let run: ShardRun | undefined;
    for (const r of this.shards.values()) if (r.channel === ch) run = r;
    if (run === undefined) return; // not (yet) in that view: the sender retransmits
    this.ctx.send(from, { kind: 'ack', ch, seq });
    run.core.receive(decodePacket(bytes.slice()));
    this.pumpShards();
  }

  private retransmit(now: number): void {
    for (const [lk, link] of this.links) {
      const bar = lk.indexOf('|');
      const to = Number(lk.slice(0, bar));
      const ch = lk.slice(bar + 1);
      for (const [seq, entry] of link.unacked) {
        if (now - entry.sentAtMs < RETRANSMIT_MS) continue;
        entry.sentAtMs = now;
        this.ctx.send(to, { kind: 'pkt', ch, seq, bytes: entry.bytes });
      }
    }
  }
}

function raftKey(index: number): string {
  return `log/${String(index).padStart(10, '0')}`;
}

/** [origin, seq] from a workload payload: u16 origin, u32 seq (see makePayload). */
export function readPayloadId(payload: Uint8Array): [number, number] {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return [dv.getUint16(0), dv.getUint32(2)];
}

export type { ViewId };

function describeEntry(entry: MembershipEntry): string {
  if (entry.kind === 'wedged') return `wedged v${entry.viewId} ${entry.node}`;
  if (entry.kind === 'trim') return `trim v${entry.viewId} ${entry.subgroupId}/${entry.shardIndex} [${entry.trim}]`;
  return entry.changes.map((c) => c.kind === 'join' ? `join ${c.node}` : `${c.kind} ${c.node}@v${c.viewId}`).join(', ');
}

function describeEffect(effect: ViewChangeEffect): string {
  switch (effect.kind) {
    case 'wedge': return `wedge v${effect.viewId}`;
    case 'deliver': return `deliver v${effect.viewId} ${effect.trims.map((t) => `${t.subgroupId}/${t.shardIndex}[${t.trim}]`).join(' ')}`;
    case 'install': return `install v${effect.view.id} [${effect.view.memberIds}] @${effect.sealedAtIndex}`;
    case 'partitioned': return `partitioned v${effect.viewId} suspects [${effect.suspects}]`;
    case 'removed': return `removed v${effect.viewId} ${effect.reason}`;
    case 'refused': return `refused v${effect.viewId} ${effect.changes.map((c) => `${c.kind} ${c.node}`).join(', ')}`;
  }
}
