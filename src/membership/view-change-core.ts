/**
 * The view-change manager as a pure state machine, one per member.
 *
 * Every decision goes through the membership log (a Raft group among the voters; see DESIGN.md
 * §4). This core never talks to Raft directly: the driver feeds it the log's committed entries in
 * order (`committed`) and proposes what the core asks (`ready().proposals`). Because every member
 * applies the same entries in the same order with the same pure rules, every member computes the
 * same next view without a further round of agreement, and a Raft leader change in the middle of a
 * view change is harmless.
 *
 * One round, from installed view v to v+1:
 *  1. A change entry (joins, clean leaves, removals of suspected nodes) commits. Every member
 *     applies it; the first accepted change after v was installed wedges v (effect `wedge`).
 *  2. The driver wedges multicast for v, and reports what each of the node's shards received from
 *     each sender (`wedged`). The core sends the reports to the other members of the shard and
 *     proposes a `wedged` entry for itself.
 *  3. The shard leader (the lowest-ranked surviving shard member) waits for the reports of every
 *     survivor of the shard, computes the ragged trim with the injected `computeTrim`, and
 *     proposes it. The first trim committed for a shard is final; later ones are ignored. A
 *     failure in the middle is one more change entry: the survivors shrink, a new shard leader may
 *     take over, and trims already committed stay valid (a minimum over more nodes).
 *  4. When a trim has committed for every shard that needs one, and every survivor's `wedged`
 *     acknowledgement has committed (survivors are a majority of v, so a side of a partition
 *     that cannot reach a majority never seals), the next view is sealed: its
 *     members are v's survivors in rank order then the joiners in commit order, and its layout
 *     comes from the allocator. The core asks the driver to deliver up to the trims and persist
 *     (`deliver`), and once told `delivered`, installs the next view (`install`). Entries
 *     committed after the seal belong to the next round and are applied after the install.
 *
 * Partition safety: a change entry that would leave fewer than a majority of v's members (clean
 * leavers excepted) is refused by every member (effect `refused`). A side that can still commit
 * to the membership log but has lost a majority of the view thus never installs a view; it waits
 * (the driver keeps its shards wedged) until the partition heals.
 */
import { Packr } from 'msgpackr';
import { assert } from '../core/assert.js';
import { SquallError } from '../core/errors.js';
import {
  viewId as makeViewId,
  type NodeId,
  type ShardIndex,
  type SubgroupId,
  type ViewId,
} from '../core/ids.js';
import { runAllocator, type Allocator } from './layout.js';
import { View, type Member } from './view.js';

/**
 * One membership change, as proposed and as committed. A leave or removal names the view it was
 * raised in and applies only in that view: a retried duplicate that commits late must not remove
 * a node that has since rejoined under the same id. (A suspicion that misses its view is raised
 * again by the failure detector of the next view if the node is still silent.)
 */
export type MembershipChange =
  | { readonly kind: 'join'; readonly node: NodeId; readonly address: string }
  | { readonly kind: 'leave'; readonly node: NodeId; readonly viewId: ViewId }
  | { readonly kind: 'remove'; readonly node: NodeId; readonly viewId: ViewId };

function sameChange(a: MembershipChange, b: MembershipChange): boolean {
  if (a.kind !== b.kind || a.node !== b.node) return false;
  return a.kind === 'join' || a.viewId === (b as { viewId: ViewId }).viewId;
}

/** An entry of the membership log. */
export type MembershipEntry =
  | { readonly kind: 'change'; readonly changes: readonly MembershipChange[] }
  | {
      readonly kind: 'trim';
      readonly viewId: ViewId;
      readonly subgroupId: SubgroupId;
      readonly shardIndex: ShardIndex;
      /** Per sender (index in the shard's sender list): messages every survivor delivers. */
      readonly trim: readonly number[];
    }
  /**
   * `node` wedged `viewId`. The next view is sealed only once every survivor's acknowledgement
   * has committed: survivors are a majority of the view, so a side of a partition that cannot
   * reach a majority never seals, however its removals happen to commit one by one.
   */
  | { readonly kind: 'wedged'; readonly viewId: ViewId; readonly node: NodeId };

/** What one member of a wedged shard received: per sender, the count of messages (final). */
export interface ReceiveReport {
  readonly viewId: ViewId;
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  readonly reporter: NodeId;
  /** Indexed like the shard's sender list. Opaque to this core; `computeTrim` reads it. */
  readonly received: readonly number[];
}

/**
 * The ragged trim of one shard: given each survivor's received counts (per sender index, the
 * survivors in shard-rank order), how many messages of each sender every survivor delivers. The
 * multicast layer owns the rule (`computeTrim` in src/multicast/ragged-edge.ts: per sender, the
 * minimum over the survivors); the driver passes it in. Must be pure.
 */
export type TrimFunction = (
  survivorReceivedCounts: readonly (readonly number[])[],
) => readonly number[];

/** The only message cores send each other: a receive report, to every member of the shard. */
export interface ReceiveReportMessage {
  readonly kind: 'receive-report';
  readonly report: ReceiveReport;
}

export interface ShardTrim {
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  readonly trim: readonly number[];
}

/** For a shard that gained members: who sends them the state, if any member stayed. */
export interface StateTransfer {
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  /** The surviving shard member with the lowest shard rank; undefined if none survived. */
  readonly from: NodeId | undefined;
  readonly to: readonly NodeId[];
}

export type ViewChangeEffect =
  /** Stop sending in every shard of this view, flush, then call wedged() with receive reports. */
  | { readonly kind: 'wedge'; readonly viewId: ViewId }
  /** Deliver each shard's messages up to its trim, persist, then call delivered(viewId). */
  | { readonly kind: 'deliver'; readonly viewId: ViewId; readonly trims: readonly ShardTrim[] }
  /** The next view: start its multicast, re-send own messages beyond the trims, transfer state. */
  | {
      readonly kind: 'install';
      readonly view: View;
      readonly previous: View;
      /** Log index of the entry that sealed the view: a joiner consumes the log after it. */
      readonly sealedAtIndex: number;
      /** The membership log's voters in this view: its first `votersCount` members. */
      readonly voters: readonly NodeId[];
      readonly stateTransfers: readonly StateTransfer[];
    }
  /**
   * This node suspects half or more of the view: it is on a minority side. Stop delivering ordered
   * calls and stop sending heartbeats, until a view is installed or the node learns it was
   * removed. Going silent lets the majority remove this node even if the partition was one-sided
   * (the majority heard from it all along); the node then rejoins as a new member.
   */
  | { readonly kind: 'partitioned'; readonly viewId: ViewId; readonly suspects: readonly NodeId[] }
  /** This node is not in the next view: stop serving and say so. */
  | { readonly kind: 'removed'; readonly viewId: ViewId; readonly reason: 'failed' | 'left' }
  /** A committed change was refused by every member because it would leave a minority. */
  | {
      readonly kind: 'refused';
      readonly viewId: ViewId;
      readonly changes: readonly MembershipChange[];
      readonly reason: 'minority';
    };

export interface ViewChangeReady {
  readonly proposals: readonly MembershipEntry[];
  readonly messages: readonly { readonly to: NodeId; readonly message: ReceiveReportMessage }[];
  readonly effects: readonly ViewChangeEffect[];
}

export interface ViewChangeConfig {
  readonly self: NodeId;
  /** The view this node starts in (the first view, or the view a joiner was given). */
  readonly view: View;
  readonly allocator: Allocator;
  readonly computeTrim: TrimFunction;
  /** How many members replicate the membership log (group.voters). */
  readonly votersCount: number;
  /** Re-propose what has not committed after this many ticks (proposals can be lost). */
  readonly proposalRetryTicks: number;
  /**
   * The log index the starting view was sealed at (0 for the first view): the next committed
   * entry fed to the core must have index appliedIndex + 1.
   */
  readonly appliedIndex?: number;
  /** Bounds the changes in one proposal and the entries queued behind a seal. */
  readonly pendingMax?: number;
}

/** A join was refused because the node id is already in the group. */
export class NodeIdInUseError extends SquallError {
  readonly node: NodeId;
  constructor(node: NodeId, viewId: ViewId) {
    super(
      `node id ${node} is already a member of view ${viewId} (or joining). ` +
        'Fix: give the new node an unused node id, or wait until the old node is removed.',
      'NODE_ID_IN_USE',
    );
    this.node = node;
  }
}

/** Too many changes or entries are waiting; the caller should retry later. */
export class ViewChangeBacklogError extends SquallError {
  constructor(what: string, countMax: number) {
    super(
      `${what}: more than ${countMax} are waiting. ` +
        'Fix: retry after the current view change completes, or raise pendingMax.',
      'VIEW_CHANGE_BACKLOG',
    );
  }
}

type State = 'idle' | 'wedging' | 'delivering' | 'removed';

interface Pending {
  readonly joins: { node: NodeId; address: string }[];
  readonly departed: NodeId[];
  readonly failed: NodeId[];
}

const shardKey = (subgroup: SubgroupId, shard: ShardIndex): string => `${subgroup}/${shard}`;
/** This node's own `wedged` acknowledgement, kept with the trims it proposes. */
const ACK_KEY = 'wedged';

/** A majority of the view's members, clean leavers excepted, must survive a change. */
export function leavesMajority(
  view: View,
  departed: readonly NodeId[],
  failed: readonly NodeId[],
): boolean {
  const base = view.members.length - departed.length;
  const survivors = base - failed.length;
  return 2 * survivors > base;
}

/**
 * The first view of a new group (id 0): the configured initial members in rank order, every one
 * of them joined, and the layout from the allocator (possibly inadequate: the group starts anyway
 * and the affected subgroups wait for joins).
 */
export function initialView(members: readonly Member[], allocator: Allocator): View {
  const layout = runAllocator(allocator, {
    previous: undefined,
    members: members.map((m) => m.id),
  });
  return new View({
    id: makeViewId(0),
    members,
    joined: members.map((m) => m.id),
    departed: [],
    failed: [],
    layout,
  });
}

/** The membership log's voters in a view: its first `count` members in rank order. */
export function votersOf(view: View, count: number): NodeId[] {
  return view.memberIds.slice(0, count);
}

export class ViewChangeCore {
  private readonly self: NodeId;
  private readonly allocator: Allocator;
  private readonly computeTrim: TrimFunction;
  private readonly votersCount: number;
  private readonly retryTicks: number;
  private readonly pendingMax: number;
  private current: View;
  private state: State = 'idle';
  private pending: Pending = { joins: [], departed: [], failed: [] };
  private appliedIndex = 0;
  /** Entries committed after the seal, applied after the install. */
  private afterSeal: { index: number; entry: MembershipEntry }[] = [];
  private sealed: { view: View; index: number } | undefined;
  private trims = new Map<string, ShardTrim>();
  /** Receive reports by view id, then by shard, then by reporter. */
  private reports = new Map<ViewId, Map<string, Map<NodeId, ReceiveReport>>>();
  private wedgedViewId: ViewId | undefined;
  /** Nodes this node suspects in the current view, and whether that makes it a minority. */
  private suspected = new Set<NodeId>();
  private partitioned = false;
  private leaving = false;
  private proposedTrimSurvivors = new Map<string, number>();
  private nowTicks = 0;
  private reportsSentAtTicks = 0;
  /** Changes proposed but not yet seen committed, with the tick they were (re)proposed at. */
  private inFlight: { change: MembershipChange; proposedAtTicks: number }[] = [];
  private inFlightTrims = new Map<string, { entry: MembershipEntry; proposedAtTicks: number }>();
  /** Survivors whose `wedged` entry for the current view has committed. */
  private acks = new Set<NodeId>();
  private toPropose: MembershipChange[] = [];
  private proposals: MembershipEntry[] = [];
  private messages: { to: NodeId; message: ReceiveReportMessage }[] = [];
  private effects: ViewChangeEffect[] = [];

  constructor(config: ViewChangeConfig) {
    assert(config.view.isMember(config.self), 'a view-change core starts in a view it belongs to');
    assert(config.votersCount >= 1 && config.proposalRetryTicks >= 1, 'positive counts');
    this.self = config.self;
    this.current = config.view;
    this.allocator = config.allocator;
    this.computeTrim = config.computeTrim;
    this.votersCount = config.votersCount;
    this.retryTicks = config.proposalRetryTicks;
    this.pendingMax = config.pendingMax ?? 1024;
    this.appliedIndex = config.appliedIndex ?? 0;
  }

  /** The installed view. */
  get view(): View {
    return this.current;
  }

  get phase(): State {
    return this.state;
  }

  /**
   * The trims committed in the open round, every shard's (in layout order): read once `deliver`
   * was emitted, before delivered(); restart-log.ts replays a log with it.
   */
  get roundTrims(): ShardTrim[] {
    return [...this.trims.values()].sort((a, b) => a.subgroupId - b.subgroupId || a.shardIndex - b.shardIndex);
  }

  /** Index of the last committed entry applied (or queued behind a seal). */
  get lastAppliedIndex(): number {
    return this.appliedIndex;
  }

  // ---- Proposals ------------------------------------------------------------------------------

  /**
   * The failure detector suspects `node`: propose its removal (once). If this node now suspects
   * half or more of the view, it is on a minority side: effect `partitioned` (once per view).
   */
  suspect(node: NodeId): void {
    if (this.state === 'removed' || !this.current.isMember(node) || node === this.self) return;
    this.suspected.add(node);
    const departed = this.pending.departed;
    const failed = [...new Set([...this.pending.failed, ...this.suspected])].filter(
      (n) => !departed.includes(n),
    );
    if (!this.partitioned && !leavesMajority(this.current, departed, failed)) {
      this.partitioned = true;
      this.effects.push({
        kind: 'partitioned',
        viewId: this.current.id,
        suspects: [...this.suspected].sort((a, b) => a - b),
      });
    }
    this.enqueue({ kind: 'remove', node, viewId: this.current.id });
  }

  /** This node wants to leave cleanly (asked again in each view until it is out). */
  leave(): void {
    if (this.state === 'removed') return;
    this.leaving = true;
    this.enqueue({ kind: 'leave', node: this.self, viewId: this.current.id });
  }

  /**
   * A node asks to join (the driver checked its build and layout hash and redirected it here).
   * Throws NodeIdInUseError if the id is a member or already joining.
   */
  requestJoin(node: NodeId, address: string): void {
    const joining = (c: MembershipChange): boolean => c.kind === 'join' && c.node === node;
    const taken =
      this.current.isMember(node) ||
      this.pending.joins.some((j) => j.node === node) ||
      this.toPropose.some(joining) ||
      this.inFlight.some((f) => joining(f.change));
    if (taken) throw new NodeIdInUseError(node, this.current.id);
    this.enqueue({ kind: 'join', node, address });
  }

  private isLeaving(node: NodeId): boolean {
    return this.pending.departed.includes(node) || this.pending.failed.includes(node);
  }

  private enqueue(change: MembershipChange): void {
    const same = (c: MembershipChange): boolean => sameChange(c, change);
    if (this.toPropose.some(same) || this.inFlight.some((f) => same(f.change))) return;
    if (change.kind !== 'join' && this.isLeaving(change.node)) return;
    if (this.toPropose.length + this.inFlight.length >= this.pendingMax) {
      throw new ViewChangeBacklogError('membership changes', this.pendingMax);
    }
    this.toPropose.push(change);
  }

  // ---- Inputs ---------------------------------------------------------------------------------

  /** Advances time: re-proposes what has not committed within proposalRetryTicks. */
  tick(): void {
    this.nowTicks += 1;
    if (this.state === 'removed') return;
    const stale = this.inFlight.filter((f) => this.nowTicks - f.proposedAtTicks >= this.retryTicks);
    if (stale.length > 0) {
      for (const f of stale) f.proposedAtTicks = this.nowTicks;
      this.proposals.push({ kind: 'change', changes: stale.map((f) => f.change) });
    }
    for (const f of this.inFlightTrims.values()) {
      if (this.nowTicks - f.proposedAtTicks >= this.retryTicks) {
        f.proposedAtTicks = this.nowTicks;
        this.proposals.push(f.entry);
      }
    }
    const wedged = this.state === 'wedging' && this.wedgedViewId === this.current.id;
    if (wedged && this.nowTicks - this.reportsSentAtTicks >= this.retryTicks) this.sendReports();
  }

  /**
   * The next committed entry of the membership log, by its Raft index. Indexes increase but may
   * skip (Raft's own entries, such as configuration changes and a new leader's empty entry, are
   * not membership entries); an entry at or below the last applied index is a replay and is
   * ignored. Throws ViewChangeBacklogError, and does not consume the entry, if pendingMax entries
   * already wait behind a sealed view: feed it again after delivered().
   */
  committed(index: number, entry: MembershipEntry): void {
    if (index <= this.appliedIndex) return;
    if (this.state !== 'removed' && this.sealed !== undefined) {
      if (this.afterSeal.length >= this.pendingMax) {
        throw new ViewChangeBacklogError('entries behind a sealed view', this.pendingMax);
      }
    }
    this.appliedIndex = index;
    if (this.state === 'removed') return;
    this.forgetCommitted(entry);
    if (this.sealed !== undefined) this.afterSeal.push({ index, entry });
    else this.apply(index, entry);
  }

  /** The driver wedged multicast for `viewId`; one report per shard this node belongs to. */
  wedged(viewId: ViewId, reports: readonly Omit<ReceiveReport, 'viewId' | 'reporter'>[]): void {
    if (this.state !== 'wedging' || viewId !== this.current.id || this.wedgedViewId === viewId)
      return;
    const mine = this.current.shardsOf(this.self);
    assert(reports.length === mine.length, `one receive report per shard of node ${this.self}`);
    this.wedgedViewId = viewId;
    for (const r of reports) {
      const report: ReceiveReport = { ...r, viewId, reporter: this.self };
      const senders = this.current.shard(r.subgroupId, r.shardIndex)?.senders.length;
      assert(r.received.length === senders, 'a receive report has one count per sender');
      assert(
        mine.some((s) => s.subgroupId === r.subgroupId && s.shardIndex === r.shardIndex),
        'report for one of my shards',
      );
      this.storeReport(report);
    }
    this.sendReports();
    // Our acknowledgement rides in the trim map: retried like a trim until it commits.
    const ack: MembershipEntry = { kind: 'wedged', viewId, node: this.self };
    this.inFlightTrims.set(ACK_KEY, { entry: ack, proposedAtTicks: this.nowTicks });
    this.proposals.push(ack);
    this.proposeTrims();
  }

  /**
   * Sends this node's reports to the other survivors of each of its shards whose trim has not
   * committed. Called at the wedge and again every proposalRetryTicks: a report lost in a
   * partition must not stall the round once a new shard leader needs it.
   */
  private sendReports(): void {
    this.reportsSentAtTicks = this.nowTicks;
    const byShard = this.reports.get(this.current.id);
    for (const s of this.current.shardsOf(this.self)) {
      const key = shardKey(s.subgroupId, s.shardIndex);
      const report = byShard?.get(key)?.get(this.self);
      if (report === undefined || this.trims.has(key)) continue;
      for (const to of this.current.shard(s.subgroupId, s.shardIndex)!.members) {
        if (to !== this.self && this.survives(to)) {
          this.messages.push({ to, message: { kind: 'receive-report', report } });
        }
      }
    }
  }

  /** A message from another member's core. */
  receive(from: NodeId, message: ReceiveReportMessage): void {
    const report = message.report;
    if (this.state === 'removed' || report.reporter !== from) return;
    if (report.viewId < this.current.id) return;
    if (report.viewId === this.current.id) {
      // Only a member of the shard may report for it (a report for a later view is checked
      // when this node reaches that view, by the shard leader's survivor list).
      const shard = this.current.shard(report.subgroupId, report.shardIndex);
      if (shard === undefined || !shard.members.includes(from)) return;
    }
    this.storeReport(report);
    this.proposeTrims();
  }

  /** The driver delivered up to the trims of `viewId` and persisted: install the next view. */
  delivered(viewId: ViewId): void {
    if (this.state !== 'delivering' || viewId !== this.current.id) return;
    const { view, index } = this.sealed!;
    const previous = this.current;
    this.effects.push({
      kind: 'install',
      view,
      previous,
      sealedAtIndex: index,
      voters: votersOf(view, this.votersCount),
      stateTransfers: stateTransfers(previous, view),
    });
    this.current = view;
    this.state = 'idle';
    this.sealed = undefined;
    this.pending = { joins: [], departed: [], failed: [] };
    this.trims = new Map();
    this.proposedTrimSurvivors = new Map();
    this.inFlightTrims = new Map();
    this.acks = new Set();
    this.wedgedViewId = undefined;
    this.suspected = new Set();
    this.partitioned = false;
    for (const id of [...this.reports.keys()]) if (id < view.id) this.reports.delete(id);
    // Leaves and removals of the old view are stale now; joins stand until their node is in.
    const live = (c: MembershipChange): boolean => c.kind === 'join' && !view.isMember(c.node);
    this.toPropose = this.toPropose.filter(live);
    this.inFlight = this.inFlight.filter((f) => live(f.change));
    if (this.leaving) this.enqueue({ kind: 'leave', node: this.self, viewId: view.id });
    const queued = this.afterSeal;
    this.afterSeal = [];
    // Replay what committed behind the seal; it may seal (and queue behind) the next view.
    for (const { index: i, entry } of queued) this.replay(i, entry);
  }

  private replay(index: number, entry: MembershipEntry): void {
    if (this.sealed !== undefined) this.afterSeal.push({ index, entry });
    else if (this.state !== 'removed') this.apply(index, entry);
  }

  /** Proposals, messages and effects since the last call; all are forgotten once returned. */
  ready(): ViewChangeReady {
    if (this.toPropose.length > 0) {
      this.proposals.push({ kind: 'change', changes: this.toPropose });
      for (const change of this.toPropose)
        this.inFlight.push({ change, proposedAtTicks: this.nowTicks });
      this.toPropose = [];
    }
    const out = { proposals: this.proposals, messages: this.messages, effects: this.effects };
    this.proposals = [];
    this.messages = [];
    this.effects = [];
    return out;
  }

  // ---- Applying committed entries -------------------------------------------------------------

  private apply(index: number, entry: MembershipEntry): void {
    if (entry.kind === 'change') this.applyChange(entry.changes);
    else if (entry.kind === 'trim') this.applyTrim(entry);
    else if (this.state === 'wedging' && entry.viewId === this.current.id) this.acks.add(entry.node);
    this.maybeSeal(index);
  }

  private applyChange(changes: readonly MembershipChange[]): void {
    let next = this.pendingWith(changes);
    if (next === undefined) return;
    if (!leavesMajority(this.current, next.departed, next.failed)) {
      // Joins do not weaken the quorum: only the leaves and removals of the entry are refused.
      const refused = changes.filter((c) => c.kind !== 'join');
      this.effects.push({
        kind: 'refused',
        viewId: this.current.id,
        changes: refused,
        reason: 'minority',
      });
      next = this.pendingWith(changes.filter((c) => c.kind === 'join'));
      if (next === undefined) return;
    }
    this.pending = next;
    if (next.departed.includes(this.self) || next.failed.includes(this.self)) {
      this.state = 'removed';
      const reason = next.departed.includes(this.self) ? 'left' : 'failed';
      this.effects.push({ kind: 'removed', viewId: this.current.id, reason });
      return;
    }
    if (this.state === 'idle') {
      this.state = 'wedging';
      this.effects.push({ kind: 'wedge', viewId: this.current.id });
    }
    this.proposeTrims();
  }

  /** The pending changes with `changes` applied in order, or undefined if none applies. */
  private pendingWith(changes: readonly MembershipChange[]): Pending | undefined {
    const next: Pending = {
      joins: [...this.pending.joins],
      departed: [...this.pending.departed],
      failed: [...this.pending.failed],
    };
    let accepted = false;
    for (const change of changes) {
      const joinAt = next.joins.findIndex((j) => j.node === change.node);
      if (change.kind === 'join') {
        // A member that is being removed rejoins only after the view without it is installed.
        if (joinAt >= 0 || this.current.isMember(change.node)) continue;
        next.joins.push({ node: change.node, address: change.address });
        accepted = true;
      } else if (change.viewId !== this.current.id) {
        continue; // raised in an earlier view: stale
      } else if (joinAt >= 0) {
        next.joins.splice(joinAt, 1); // a joiner that leaves or fails before it was installed
        accepted = true;
      } else if (
        this.current.isMember(change.node) &&
        !next.departed.includes(change.node) &&
        !next.failed.includes(change.node)
      ) {
        (change.kind === 'leave' ? next.departed : next.failed).push(change.node);
        accepted = true;
      }
    }
    return accepted ? next : undefined;
  }

  private applyTrim(entry: Extract<MembershipEntry, { kind: 'trim' }>): void {
    if (this.state !== 'wedging' || entry.viewId !== this.current.id) return;
    const key = shardKey(entry.subgroupId, entry.shardIndex);
    if (this.trims.has(key) || this.current.shard(entry.subgroupId, entry.shardIndex) === undefined)
      return;
    this.trims.set(key, {
      subgroupId: entry.subgroupId,
      shardIndex: entry.shardIndex,
      trim: entry.trim,
    });
  }

  private survives(node: NodeId): boolean {
    return this.current.isMember(node) && !this.isLeaving(node);
  }

  /** Shards of the current view that need a committed trim before the next view is sealed. */
  private shardsNeedingTrim(): {
    subgroupId: SubgroupId;
    shardIndex: ShardIndex;
    survivors: NodeId[];
  }[] {
    const out: { subgroupId: SubgroupId; shardIndex: ShardIndex; survivors: NodeId[] }[] = [];
    for (const type of this.current.layout.types) {
      for (const subgroup of type.subgroups) {
        subgroup.shards.forEach((shard, index) => {
          // Raft-mode shards order through their own log; a shard without senders has nothing
          // to trim.
          if (shard.mode === 'raft' || shard.senders.length === 0) return;
          const survivors = shard.members.filter((n) => this.survives(n));
          if (survivors.length > 0)
            out.push({
              subgroupId: subgroup.subgroupId,
              shardIndex: index as ShardIndex,
              survivors,
            });
        });
      }
    }
    return out;
  }

  private maybeSeal(index: number): void {
    if (this.state !== 'wedging') return;
    const needed = this.shardsNeedingTrim();
    if (!needed.every((s) => this.trims.has(shardKey(s.subgroupId, s.shardIndex)))) return;
    if (!this.current.memberIds.every((n) => !this.survives(n) || this.acks.has(n))) return;
    const view = this.nextView();
    this.sealed = { view, index };
    this.state = 'delivering';
    const mine = this.current.shardsOf(this.self);
    const trims = mine
      .map((s) => this.trims.get(shardKey(s.subgroupId, s.shardIndex)))
      .filter((t): t is ShardTrim => t !== undefined);
    this.effects.push({ kind: 'deliver', viewId: this.current.id, trims });
  }

  private nextView(): View {
    const removed = new Set([...this.pending.departed, ...this.pending.failed]);
    const members: Member[] = [
      ...this.current.members.filter((m) => !removed.has(m.id)),
      ...this.pending.joins.map((j) => ({ id: j.node, address: j.address })),
    ];
    const layout = runAllocator(this.allocator, {
      previous: this.current.layout,
      members: members.map((m) => m.id),
    });
    return new View({
      id: makeViewId(this.current.id + 1),
      members,
      joined: this.pending.joins.map((j) => j.node),
      departed: [...this.pending.departed],
      failed: [...this.pending.failed],
      layout,
    });
  }

  // ---- Trims ----------------------------------------------------------------------------------

  private storeReport(report: ReceiveReport): void {
    let byShard = this.reports.get(report.viewId);
    if (byShard === undefined) {
      // Reports for a view this node has not installed yet are kept (bounded) until it does.
      if (this.reports.size > 2) return;
      byShard = new Map();
      this.reports.set(report.viewId, byShard);
    }
    const key = shardKey(report.subgroupId, report.shardIndex);
    const byReporter = byShard.get(key) ?? new Map<NodeId, ReceiveReport>();
    byShard.set(key, byReporter);
    if (!byReporter.has(report.reporter)) byReporter.set(report.reporter, report);
  }

  /** As shard leader, propose the trim of every shard whose survivors have all reported. */
  private proposeTrims(): void {
    if (this.state !== 'wedging' || this.wedgedViewId !== this.current.id) return;
    const byShard = this.reports.get(this.current.id);
    for (const { subgroupId, shardIndex, survivors } of this.shardsNeedingTrim()) {
      const key = shardKey(subgroupId, shardIndex);
      if (survivors[0] !== this.self || this.trims.has(key)) continue;
      if (this.proposedTrimSurvivors.get(key) === survivors.length) continue;
      const byReporter = byShard?.get(key);
      if (byReporter === undefined || !survivors.every((n) => byReporter.has(n))) continue;
      // Survivors in shard-rank order, so computeTrim sees the same input on every leader.
      const trim = this.computeTrim(survivors.map((n) => byReporter.get(n)!.received));
      const entry: MembershipEntry = {
        kind: 'trim',
        viewId: this.current.id,
        subgroupId,
        shardIndex,
        trim,
      };
      this.proposedTrimSurvivors.set(key, survivors.length);
      this.inFlightTrims.set(key, { entry, proposedAtTicks: this.nowTicks });
      this.proposals.push(entry);
    }
  }

  private forgetCommitted(entry: MembershipEntry): void {
    if (entry.kind === 'change') {
      this.inFlight = this.inFlight.filter(
        (f) => !entry.changes.some((c) => sameChange(c, f.change)),
      );
    } else if (entry.kind === 'wedged') {
      if (entry.viewId === this.current.id && entry.node === this.self) this.inFlightTrims.delete(ACK_KEY);
    } else if (entry.viewId === this.current.id) {
      this.inFlightTrims.delete(shardKey(entry.subgroupId, entry.shardIndex));
    }
  }
}

/** For each shard of `next` that gained members, the transfer that brings them the state. */
export function stateTransfers(previous: View, next: View): StateTransfer[] {
  const out: StateTransfer[] = [];
  for (const type of next.layout.types) {
    for (const subgroup of type.subgroups) {
      subgroup.shards.forEach((shard, index) => {
        const before = previous.shard(subgroup.subgroupId, index as ShardIndex)?.members ?? [];
        const to = shard.members.filter((n) => !before.includes(n));
        if (to.length === 0) return;
        const from = shard.members.find((n) => before.includes(n));
        out.push({ subgroupId: subgroup.subgroupId, shardIndex: index as ShardIndex, from, to });
      });
    }
  }
  return out;
}

// ---- Encoding of membership log entries ---------------------------------------------------------

/** Bumped when the encoded form changes; decodeEntry refuses other versions. */
const ENTRY_FORMAT_VERSION = 1;
const CHANGE_KINDS = ['join', 'leave', 'remove'] as const;
const entryPackr = new Packr({ useRecords: false, mapsAsObjects: false, variableMapSize: true });

/** Bytes that do not decode to a membership log entry. */
export class EntryDecodeError extends SquallError {
  constructor(problem: string) {
    super(
      `cannot decode a membership log entry: ${problem}. ` +
        'Fix: decode only bytes made by encodeEntry from the same Squall version.',
      'ENTRY_DECODE',
    );
  }
}

/** Deterministic bytes of a log entry (arrays only, fixed order); the caller owns the buffer. */
export function encodeEntry(entry: MembershipEntry): Uint8Array {
  if (entry.kind === 'wedged') {
    return Uint8Array.from(entryPackr.pack([ENTRY_FORMAT_VERSION, 2, entry.viewId, entry.node]));
  }
  const canonical =
    entry.kind === 'change'
      ? [
          ENTRY_FORMAT_VERSION,
          0,
          entry.changes.map((c) =>
            c.kind === 'join'
              ? [0, c.node, c.address]
              : [CHANGE_KINDS.indexOf(c.kind), c.node, c.viewId],
          ),
        ]
      : [
          ENTRY_FORMAT_VERSION,
          1,
          entry.viewId,
          entry.subgroupId,
          entry.shardIndex,
          [...entry.trim],
        ];
  // msgpackr packs into a shared scratch buffer that the next pack() overwrites: copy out.
  return Uint8Array.from(entryPackr.pack(canonical));
}

function uint(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new EntryDecodeError(`${what} is not a uint32`);
  }
  return value;
}
function list(value: unknown, what: string): unknown[] {
  if (!Array.isArray(value)) throw new EntryDecodeError(`${what} is not an array`);
  return value;
}

/** The inverse of encodeEntry; throws EntryDecodeError on malformed input. */
export function decodeEntry(bytes: Uint8Array): MembershipEntry {
  let raw: unknown;
  try {
    // A fresh wrapper: msgpackr caches a DataView on the object it decodes.
    raw = entryPackr.unpack(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (error) {
    throw new EntryDecodeError(`not msgpack (${(error as Error).message})`);
  }
  const top = list(raw, 'the entry');
  if (top[0] !== ENTRY_FORMAT_VERSION) {
    throw new EntryDecodeError(
      `format version ${String(top[0])}, this build reads ${ENTRY_FORMAT_VERSION}`,
    );
  }
  if (top[1] === 0) {
    const changes = list(top[2], 'changes').map((c): MembershipChange => {
      const [kind, node, third] = list(c, 'a change');
      const id = uint(node, 'node id') as NodeId;
      if (kind === 0) {
        if (typeof third !== 'string') throw new EntryDecodeError('a join address is not a string');
        return { kind: 'join', node: id, address: third };
      }
      if (kind !== 1 && kind !== 2)
        throw new EntryDecodeError(`unknown change kind ${String(kind)}`);
      return { kind: CHANGE_KINDS[kind], node: id, viewId: uint(third, 'view id') as ViewId };
    });
    return { kind: 'change', changes };
  }
  if (top[1] === 1) {
    return {
      kind: 'trim',
      viewId: uint(top[2], 'view id') as ViewId,
      subgroupId: uint(top[3], 'subgroup id') as SubgroupId,
      shardIndex: uint(top[4], 'shard index') as ShardIndex,
      trim: list(top[5], 'trim').map((n) => uint(n, 'a trim count')),
    };
  }
  if (top[1] === 2) {
    return {
      kind: 'wedged',
      viewId: uint(top[2], 'view id') as ViewId,
      node: uint(top[3], 'node id') as NodeId,
    };
  }
  throw new EntryDecodeError(`unknown entry kind ${String(top[1])}`);
}
