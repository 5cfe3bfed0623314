/**
 * Total restart, the pure part: when every member of a group was down, the nodes come back from
 * their disks, agree on the view to resume in, and reconcile each shard to its newest durable
 * version before serving (Derecho's restart, research/derecho.md §2; DESIGN.md §4).
 *
 * The protocol (the driver, src/runtime/membership-driver.ts, runs it):
 *  1. Every restarting node knows the last view it installed (`R_i`, persisted before it created
 *     any multicast driver of that view) and exchanges it with the members of that view, with
 *     a summary of its membership log (restart-log.ts). The newest view any of them recorded
 *     or the most up-to-date log among them seals is `R`.
 *  2. The **restart leader**, the lowest-ranked member of `R` that is back, waits until a
 *     majority of `R`'s members and a majority of every shard's members are back
 *     (`restartQuorum`; also a majority of every raft shard's voters as any member's persisted
 *     Raft log has them, `RaftVoters`, since that configuration can lag `R`; and a majority of
 *     the voters of the most up-to-date membership log's configuration: restart-log.ts), then a
 *     grace period for the rest (or until all are back), and gets the
 *     restart view agreed by **single-decree Paxos** among `R`'s members (below). The decision
 *     it proposes if nobody accepted one is `restartView(R, back)`: id `R + 1`, the members that
 *     are back in `R`'s rank order under their current addresses, the others failed, the
 *     allocator's layout, and a new membership-log epoch. Only a chosen decision is acted on;
 *     any node that knows it hands it on.
 *  3. Every member of the restart view starts a new membership log (a new Raft group, its
 *     `epoch` names the decision) and runs its shards from the restart view on. Before a
 *     shard serves, its members reconcile it: a node whose log runs past the ragged trim that
 *     was committed for `R` truncates to what the trim keeps (`keptVersion`), every node learns
 *     the others' latest versions and pulls the suffix it lacks from one that holds the newest
 *     (`reconcileShard`). New versions start at view `R + 1`, above every old one.
 *
 * **The decision** (acceptorPrepare, acceptorAccept, RestartProposer). A restart instance is
 * named by the view record it restarts from (`R`'s id and epoch). A ballot is (view, round, node):
 * every ballot of a newer instance of an epoch ranks above every ballot of an older one.
 *  - Phase 1: the leader sends `prepare(instance, ballot)`; an acceptor promises never to accept
 *    a lower ballot (of any instance of the epoch) and answers with the decision it accepted
 *    last (and its ballot), if any, whichever instance of the epoch that was in.
 *  - Once the promisers are a quorum of `R` (a majority of `R` and of every shard:
 *    isRestartQuorum) **and meet every quorum of `R`'s predecessor** `P` (meetsEveryQuorum; `R`'s
 *    record carries `P`'s members and shards when `P` was installed in the same epoch:
 *    ballotQuorums), the leader proposes the decision with the highest ballot among those
 *    answers, or its own if none had one; phase 2 sends `accept(instance, ballot, decision)`.
 *  - Once a quorum of `R` accepted, the decision is **chosen**: the leader tells every node of the
 *    restart view, and only then does anyone adopt it (found the new epoch, reconcile, serve).
 *  - An acceptor persists its promise and its acceptance (in its view record, MembershipRecord
 *    `restart`) before it answers, and a leader promises its own ballot first, durably, so it
 *    never reuses a ballot after a crash. A refused or stalled ballot is retried with a higher
 *    round, by the same leader or by the next one when it stops hearing from it.
 *  - A message of an older instance (the acceptor knows a newer record) is answered `stale`, and
 *    the proposer moves to the newer record. One of a newer instance of the same epoch moves the
 *    acceptor to it and **keeps** its promise and acceptance; one of another epoch starts it over
 *    (an epoch after `E` exists only once a decision of `E` was chosen and adopted).
 *
 * **Invariant**: within one epoch, at most one decision is chosen, whichever instances its ballots
 * ran in, and every node that adopts a decision adopts that one. It is Paxos over the ballot
 * order; what needs showing is that when a decision was chosen by ballot `b` of instance `U` (its
 * acceptors `A` hold a quorum of `U`), the promisers of every higher ballot `c` that reaches phase
 * 2 include a node of `A`. That node accepted `b` before promising `c` (having promised `c` it
 * refuses `b`, also across instances), so it reports `b`'s decision or one accepted at a ballot
 * between `b` and `c`, which by induction is the same, and `c` proposes it again. Let `c` be of
 * instance `V ≥ U`:
 *  - `V = U`: `c`'s promisers are a quorum of `U`, and two majorities of the same sets meet.
 *  - `V = U + 1`: `c`'s promisers meet every quorum of `U` (ballotQuorums, from `V`'s record).
 *    This is the case of a view `U + 1` recorded by a few nodes only (so it delivered nothing)
 *    just before every node crashed: instance `U` may have chosen before they came back, and then
 *    the nodes still deciding move to instance `U + 1`. They used to start over there; now they
 *    carry `U`'s acceptances along, and `U + 1`'s ballots reach a node that holds one, whichever
 *    node leads (the holder of `U + 1`'s record knows `U`'s quorums from it).
 *  - `V ≥ U + 2`: then `U`'s instance cannot choose at all. A node records `V` only after `V` was
 *    sealed, and `V` is sealed only once every survivor of `V − 1` (a majority of it) has
 *    acknowledged wedging `V − 1` (view-change-core.ts, step 4), which it does only once it
 *    recorded `V − 1`. Those survivors answer `U`'s ballots `stale` forever (a record only moves
 *    on), so `A` avoids them; and they meet every quorum of `U` when `V − 1`'s survivors include
 *    half of `U`'s members or of one of its shards, e.g. always when the views kept their members
 *    (the simulator's group). So a chain of two views recorded by a minority each cannot exist:
 *    if anyone recorded `U + 2`, a majority of `U + 1` recorded `U + 1`.
 * A leader that fails between promise, accept and adoption thus leaves either nothing chosen or
 * the chosen decision on a quorum's disks. Checked by the restart simulator
 * (test/sim/restart-sim.ts), whose flags generate newer records (of a minority, of a majority, a
 * chain of two, the holder leading, leaders crashing mid-phase) and which catches the earlier
 * rules (`--flag mutation=singlePhase`: the leader decides alone; `mutation=perInstance`: an
 * acceptor starts over in each instance, the hole this closed).
 *
 * **A view that delivered is never skipped.** A node writes the view record before any multicast
 * of that view exists, so every member of a shard that delivered anything in view `W` recorded
 * `W`. A quorum of `W − 1` holds a majority of each shard of `W − 1`; when the shards kept their
 * members (the allocator keeps survivors in place), it holds one of those nodes, which answers
 * every ballot of instance `W − 1` or older `stale`: no decision from before `W` is chosen, and
 * the restart view `R + 1` never reuses the id of a view that delivered. A view recorded by a
 * minority only (it delivered nothing) may be skipped: then the decision restarts from `R` and its
 * view takes the id `R + 1` again, which is harmless, since that view has no versions.
 *
 * Limits and the membership-log rule: (1) the argument for `V ≥ U + 2` and for a delivered view
 * needs survivors and shards that stay in place; two view changes in a row that each removed
 * nearly half the members can leave the removed nodes, with records of `U`, a quorum of `U` none
 * of whose members knows a newer view. The membership log closes that (restart-log.ts): a
 * restart also waits for a majority of the voters of the most up-to-date membership log back
 * (which then holds every committed entry), and `R` becomes the newest view that log seals or any
 * node recorded, so `R` is at least every view whose seal committed, and every view that
 * delivered. A view only a log seals counts as a record of it for the instance and the
 * predecessor rule; one whose seal no node back knows committed is `tentative` (two logs may
 * seal two different such views under one id): its ballots also need acceptances from a quorum
 * of the predecessor (ballotQuorums), where they meet every other ballot of the epoch; and once
 * the rule is met, a node in such a view moves to the met rule's log's seal of that id when it
 * differs, and a record of the id replaces it (restart-log.ts movesToLogView, peerSameId). The
 * `V ≥ U + 2` case then cannot choose from `U`: a leader of `U`'s instance would have waited for
 * the log's voters and moved to `U + 2`. (2) A record written before `previous` existed, or by a
 * node that joined in that view (its install has no
 * predecessor), carries no predecessor rule: its ballots need a quorum of its view only (the
 * earlier rule); a node learns the rule from a peer's hello with the same record.
 */
import { makeVersion, viewId as makeViewId, type NodeId, type Version } from '../core/ids.js';
import { runAllocator, type Allocator } from './layout.js';
import type { LogWait } from './restart-log.js';
import { View, type Member } from './view.js';

/** Who is back, and what still keeps the restart from going ahead. */
export interface RestartQuorum {
  /**
   * A majority of the view's members and of every shard's members are back, and (given the
   * predecessor's rule) the nodes back meet every quorum of the predecessor.
   */
  readonly ready: boolean;
  /** The predecessor's rule was given and the nodes back do not meet every quorum of it. */
  readonly previousShort: boolean;
  /** Members of the view that are not back, in rank order. */
  readonly missing: readonly NodeId[];
  /** Shards with fewer than a majority of their members back. */
  readonly shortShards: readonly {
    readonly typeName: string;
    readonly subgroupIndex: number;
    readonly shardIndex: number;
    readonly back: number;
    readonly needed: number;
  }[];
  /** Raft shard configurations (as some member's log holds them) with fewer than a majority back. */
  readonly shortRaft: readonly RaftVoters[];
  /** What the membership-log rule still waits for (restart-log.ts restartLogRule), if anything. */
  readonly shortLog: LogWait | undefined;
  /**
   * The view is tentative (restart-log.ts) and the nodes back are no restart quorum of the
   * predecessor: its ballot could not get its acceptances (ballotQuorums), so it waits.
   */
  readonly tentativeShort: boolean;
}

/**
 * A raft-ordered shard's voters as one member's persisted Raft log holds them (`shard`:
 * "subgroupId/shardIndex"). They can lag the view (a configuration step not taken yet when every
 * node crashed): the shard's Raft then needs a majority of these voters to elect a leader, which
 * a majority of the view's shard members need not be. A restart waits for them too, so that a
 * restarted raft shard can serve (liveness only: safety does not depend on it).
 */
export interface RaftVoters {
  readonly shard: string;
  readonly voters: readonly number[];
}

export function restartQuorum(
  view: View, back: ReadonlySet<NodeId>, previous?: QuorumRule, raftVoters: readonly RaftVoters[] = [], log?: LogWait, tentative = false,
): RestartQuorum {
  const members = view.memberIds;
  const missing = members.filter((m) => !back.has(m));
  const shortShards: RestartQuorum['shortShards'][number][] = [];
  for (const type of view.layout.types) {
    type.subgroups.forEach((subgroup, subgroupIndex) => {
      subgroup.shards.forEach((shard, shardIndex) => {
        if (shard.members.length === 0) return;
        const present = shard.members.filter((m) => back.has(m)).length;
        const needed = Math.floor(shard.members.length / 2) + 1;
        if (present < needed) {
          shortShards.push({ typeName: type.typeName, subgroupIndex, shardIndex, back: present, needed });
        }
      });
    });
  }
  const majority = 2 * (members.length - missing.length) > members.length;
  const previousShort = previous !== undefined && !meetsEveryQuorum(previous, back as ReadonlySet<number>);
  const seen = new Set<string>();
  const shortRaft: RaftVoters[] = [];
  for (const r of raftVoters) {
    const key = `${r.shard}:${[...r.voters].sort((a, b) => a - b).join(',')}`;
    if (r.voters.length === 0 || seen.has(key)) continue;
    seen.add(key);
    if (!hasMajority(r.voters, back as ReadonlySet<number>)) shortRaft.push(r);
  }
  const tentativeShort = tentative && previous !== undefined && !isRestartQuorum(previous, back as ReadonlySet<number>);
  return {
    ready: majority && shortShards.length === 0 && !previousShort && shortRaft.length === 0 && log === undefined && !tentativeShort,
    missing, shortShards, previousShort, shortRaft, shortLog: log, tentativeShort,
  };
}

/**
 * What a restart quorum of a view is made of: its members and each shard's members (a quorum is a
 * majority of both). A view record carries its predecessor's (MembershipRecord `previous`), so
 * that a ballot of its instance can meet the quorums of the one before (the header's argument).
 */
export interface QuorumRule {
  readonly viewId: number;
  readonly members: readonly number[];
  readonly shards: readonly (readonly number[])[];
}

export function quorumRuleOf(view: View): QuorumRule {
  const shards: number[][] = [];
  for (const type of view.layout.types) {
    for (const subgroup of type.subgroups) {
      for (const shard of subgroup.shards) if (shard.members.length > 0) shards.push(shard.members.map(Number));
    }
  }
  return { viewId: view.id, members: view.memberIds.map(Number), shards };
}

/** More than half of `group` is in `nodes`. */
function hasMajority(group: readonly number[], nodes: ReadonlySet<number>): boolean {
  return 2 * group.filter((m) => nodes.has(m)).length > group.length;
}

/** `nodes` hold a majority of the rule's members and of every shard's (restartQuorum's `ready`). */
export function isRestartQuorum(rule: QuorumRule, nodes: ReadonlySet<number>): boolean {
  return hasMajority(rule.members, nodes) && rule.shards.every((shard) => hasMajority(shard, nodes));
}

/** Every restart quorum of `rule` holds one of `nodes` (the others are no quorum). */
export function meetsEveryQuorum(rule: QuorumRule, nodes: ReadonlySet<number>): boolean {
  return !isRestartQuorum(rule, new Set(rule.members.filter((m) => !nodes.has(m))));
}

/** When a ballot's phase 1 (promises) and phase 2 (acceptances) are complete. */
export interface BallotQuorums {
  readonly promise: (nodes: ReadonlySet<number>) => boolean;
  readonly accept: (nodes: ReadonlySet<number>) => boolean;
}

/**
 * The quorums of a ballot of the instance of `view` (`previous`: its predecessor's rule, carried
 * by the record, when that view was installed in the same epoch): the promisers are a quorum of
 * `view` and meet every quorum of `previous`; the acceptors are a quorum of `view`, and, when
 * `tentative` (a view only a membership log seals, by entries not known to be committed:
 * restart-log.ts), also a quorum of `previous`.
 */
export function ballotQuorums(view: QuorumRule, previous: QuorumRule | undefined, tentative = false): BallotQuorums {
  return {
    promise: (nodes) => isRestartQuorum(view, nodes) && (previous === undefined || meetsEveryQuorum(previous, nodes)),
    accept: (nodes) => isRestartQuorum(view, nodes) && (!tentative || previous === undefined || isRestartQuorum(previous, nodes)),
  };
}

/** The restart leader: the lowest-ranked member of `view` that is back (undefined: none). */
export function restartLeader(view: View, back: ReadonlySet<NodeId>): NodeId | undefined {
  return view.memberIds.find((m) => back.has(m));
}

/**
 * The view the group resumes in after a total restart of `last`: id last + 1; the members of
 * `last` that are back (`addresses`: node → its address now), in `last`'s rank order; the others
 * failed; the allocator's layout from `last`'s (so survivors keep their shards).
 */
export function restartView(last: View, addresses: ReadonlyMap<NodeId, string>, allocator: Allocator): View {
  const members: Member[] = last.members
    .filter((m) => addresses.has(m.id))
    .map((m) => ({ id: m.id, address: addresses.get(m.id)! }));
  const ids = members.map((m) => m.id);
  const layout = runAllocator(allocator, { previous: last.layout, members: ids });
  return new View({
    id: makeViewId(last.id + 1),
    members,
    joined: [],
    departed: [],
    failed: last.memberIds.filter((m) => !addresses.has(m)),
    layout,
  });
}

/** What one node holds of one shard, and what it knows of the trim that closed the last view. */
export interface ShardHolding {
  /** The newest version in its store for the shard (VERSION_NONE: nothing). */
  readonly latest: bigint;
  /**
   * True if this node delivered up to the committed trim of `trimViewId` itself (then every
   * version it holds in that view is inside the trim).
   */
  readonly trimApplied: boolean;
}

/** The committed ragged trim of one shard in the view the group restarts from. */
export interface RestartTrim {
  readonly viewId: number;
  /** Per sender, in the shard's sender order, how many messages the view delivered. */
  readonly trim: readonly number[];
}

/**
 * The version a node keeps of a shard at a restart. Deliveries of view `trim.viewId` are numbered
 * `makeVersion(view, position)`, position i·n + r for message i of sender r (n senders, round
 * robin). A node that delivered in position order but did not apply the committed trim (it
 * crashed first) may hold positions the trim cut off (possible in raw mode, where delivery does
 * not wait for stability): it keeps only the positions below the first one the trim cut, which
 * the trim keeps, and gets the rest from a node that applied it. Versions of other views stay.
 */
export function keptVersion(holding: ShardHolding, trim: RestartTrim | undefined): bigint {
  if (trim === undefined || holding.trimApplied || holding.latest < 0n) return holding.latest;
  if (holding.latest >> 32n !== BigInt(trim.viewId)) return holding.latest;
  const senders = trim.trim.length;
  if (senders === 0) return holding.latest;
  // The first position the trim does not deliver: sender r's message trim[r].
  let firstCut = Number.MAX_SAFE_INTEGER;
  trim.trim.forEach((count, r) => {
    firstCut = Math.min(firstCut, count * senders + r);
  });
  const lastKept = makeVersion(makeViewId(trim.viewId), 0) + BigInt(firstCut) - 1n;
  return holding.latest < lastKept ? holding.latest : lastKept;
}

/** A shard member's answer during reconciliation: its kept version. */
export interface PeerVersion {
  readonly node: NodeId;
  readonly kept: bigint;
}

export type Reconciliation =
  | { readonly kind: 'current' }
  | { readonly kind: 'pull'; readonly from: NodeId; readonly after: bigint; readonly target: bigint };

/**
 * What a shard member does once it knows its own kept version and the other members' (`peers`,
 * in shard-rank order): pull the suffix after its own from the lowest-ranked member holding the
 * newest version, or nothing if it holds the newest itself. Every member thus ends at the newest
 * durable version of the shard among the members that are back.
 */
export function reconcileShard(kept: bigint, peers: readonly PeerVersion[]): Reconciliation {
  let best: PeerVersion | undefined;
  for (const p of peers) if (best === undefined || p.kept > best.kept) best = p;
  if (best === undefined || best.kept <= kept) return { kind: 'current' };
  return { kind: 'pull', from: best.node, after: kept, target: best.kept as Version };
}

// ---- The restart decision: single-decree Paxos over the last view's members -----------------

/**
 * A proposal number: the id of the view the ballot restarts from (its instance), then `round`,
 * then the proposing node's id, so that no two proposers (nor one proposer before and after a
 * crash: it promises its own ballot durably first) share one, and every ballot of a newer
 * instance of an epoch ranks above every ballot of an older one. (A record written before this
 * field existed holds ballots without it: restartAcceptorOf fills in its instance's view.)
 */
export interface Ballot {
  readonly viewId: number;
  readonly round: number;
  readonly node: number;
}

/** Negative, zero or positive as `a` is below, equal to or above `b`. */
export function compareBallots(a: Ballot, b: Ballot): number {
  if (a.viewId !== b.viewId) return a.viewId - b.viewId;
  return a.round !== b.round ? a.round - b.round : a.node - b.node;
}

/**
 * Which restart a message belongs to: the view record the group restarts from (its id and the
 * membership-log epoch it was installed in). Newer is a higher view id (then the epoch string,
 * only so that the order is total).
 */
export interface RestartInstance {
  readonly viewId: number;
  readonly epoch: string;
}

export function compareInstances(a: RestartInstance, b: RestartInstance): number {
  if (a.viewId !== b.viewId) return a.viewId - b.viewId;
  return a.epoch < b.epoch ? -1 : a.epoch > b.epoch ? 1 : 0;
}

export type RestartLeadStep =
  /** Another member that is back ranks lower: it leads. */
  | { readonly kind: 'follow' }
  /** This node leads, but the quorum is not back, or the grace period for the others runs. */
  | { readonly kind: 'wait'; readonly quorumSinceMs: number | undefined }
  /** This node leads and may run a ballot now. */
  | { readonly kind: 'decide'; readonly quorumSinceMs: number };

/**
 * One tick of a restarting node as a would-be leader: it leads if it is the lowest-ranked member
 * of `view` that is back; it may decide once the quorum (restartQuorum with `previous`, the
 * predecessor's rule; with `tentative`, also a quorum of the predecessor, which its ballot's
 * acceptances need) has been back for `graceMs` (since `quorumSinceMs`, which this returns
 * updated), or at once if every member is back.
 */
export function restartLeadStep(input: {
  readonly view: View;
  readonly previous?: QuorumRule | undefined;
  /** The raft shards' voters the members back reported (restartQuorum). */
  readonly raftVoters?: readonly RaftVoters[];
  /** What the membership-log rule still waits for (restart-log.ts), if anything. */
  readonly log?: LogWait | undefined;
  /** The view is tentative: also wait for a restart quorum of `previous` (restartQuorum). */
  readonly tentative?: boolean;
  readonly back: ReadonlySet<NodeId>;
  readonly self: NodeId;
  readonly nowMs: number;
  readonly quorumSinceMs: number | undefined;
  readonly graceMs: number;
}): RestartLeadStep {
  if (restartLeader(input.view, input.back) !== input.self) return { kind: 'follow' };
  const quorum = restartQuorum(input.view, input.back, input.previous, input.raftVoters, input.log, input.tentative);
  if (!quorum.ready) return { kind: 'wait', quorumSinceMs: undefined };
  const since = input.quorumSinceMs ?? input.nowMs;
  if (quorum.missing.length > 0 && input.nowMs - since < input.graceMs) return { kind: 'wait', quorumSinceMs: since };
  return { kind: 'decide', quorumSinceMs: since };
}

/**
 * The ballot a leader runs next: round at least `nextRound` (above every refusal it saw) and above
 * every round it promised in `instance` (its persisted acceptor state), so that it never reuses a
 * ballot, also after a crash.
 */
export function nextBallot(
  acceptor: RestartAcceptorState<unknown> | undefined, instance: RestartInstance, nextRound: number, self: number,
): Ballot {
  const promised = acceptor?.promised !== undefined && acceptor.instance.epoch === instance.epoch &&
    acceptor.promised.viewId === instance.viewId ? acceptor.promised.round : 0;
  return { viewId: instance.viewId, round: Math.max(nextRound, promised + 1), node: self };
}

/**
 * What a node persists as an acceptor of the restart decision of one membership-log epoch (in its
 * view record): the promise and the acceptance carry over from an older instance of the epoch to a
 * newer one (the header's argument needs it), and start over in another epoch.
 */
export interface RestartAcceptorState<D> {
  /** The newest instance this node took part in. */
  readonly instance: RestartInstance;
  /** The highest ballot this node promised (it accepts nothing lower). */
  readonly promised?: Ballot;
  /** The decision it accepted last, with the ballot it came with. */
  readonly accepted?: { readonly ballot: Ballot; readonly decision: D };
}

export type AcceptorReply<D> =
  /** `prepare` answered: this node will accept nothing below the ballot; what it accepted before. */
  | { readonly kind: 'promise'; readonly accepted?: { readonly ballot: Ballot; readonly decision: D } }
  | { readonly kind: 'accepted' }
  /** A higher ballot was promised: the proposer retries above it. */
  | { readonly kind: 'nack'; readonly promised: Ballot }
  /** This node knows a newer view record than the proposer's instance: it restarts from that. */
  | { readonly kind: 'stale'; readonly newer: RestartInstance };

export interface AcceptorStep<D> {
  readonly state: RestartAcceptorState<D> | undefined;
  readonly reply: AcceptorReply<D>;
  /** The state changed: persist it (durably) before the reply leaves. */
  readonly persist: boolean;
}

/**
 * The acceptor's answer to `prepare(instance, ballot)`. `own` is the newest view record this node
 * knows (its own or one it heard of). A message of an older instance is answered `stale`; one of
 * a newer instance of the same epoch moves this acceptor to it and keeps what it promised and
 * accepted (the ballots of the newer instance rank above, and its promise reports the accepted
 * decision: the header's argument); one of another epoch starts over; a ballot below the promised
 * one is answered `nack`.
 */
export function acceptorPrepare<D>(
  state: RestartAcceptorState<D> | undefined, own: RestartInstance, instance: RestartInstance, ballot: Ballot,
): AcceptorStep<D> {
  const current = enter(state, own, instance);
  if (current === 'stale') return { state, reply: { kind: 'stale', newer: newest(state, own) }, persist: false };
  if (current.promised !== undefined && compareBallots(ballot, current.promised) < 0) {
    return { state: current, reply: { kind: 'nack', promised: current.promised }, persist: current !== state };
  }
  const next: RestartAcceptorState<D> = { ...current, promised: ballot };
  return {
    state: next,
    reply: current.accepted !== undefined ? { kind: 'promise', accepted: current.accepted } : { kind: 'promise' },
    persist: current.promised === undefined || compareBallots(ballot, current.promised) !== 0 || current !== state,
  };
}

/** The acceptor's answer to `accept(instance, ballot, decision)` (the same rules as prepare). */
export function acceptorAccept<D>(
  state: RestartAcceptorState<D> | undefined, own: RestartInstance, instance: RestartInstance, ballot: Ballot, decision: D,
): AcceptorStep<D> {
  const current = enter(state, own, instance);
  if (current === 'stale') return { state, reply: { kind: 'stale', newer: newest(state, own) }, persist: false };
  if (current.promised !== undefined && compareBallots(ballot, current.promised) < 0) {
    return { state: current, reply: { kind: 'nack', promised: current.promised }, persist: current !== state };
  }
  return { state: { instance: current.instance, promised: ballot, accepted: { ballot, decision } }, reply: { kind: 'accepted' }, persist: true };
}

function newest<D>(state: RestartAcceptorState<D> | undefined, own: RestartInstance): RestartInstance {
  return state !== undefined && compareInstances(state.instance, own) > 0 ? state.instance : own;
}

/** The acceptor state for `instance`, or 'stale' if this node knows a newer one. */
function enter<D>(
  state: RestartAcceptorState<D> | undefined, own: RestartInstance, instance: RestartInstance,
): RestartAcceptorState<D> | 'stale' {
  if (compareInstances(newest(state, own), instance) > 0) return 'stale';
  if (state === undefined || compareInstances(state.instance, instance) === 0) return state ?? { instance };
  if (state.instance.epoch !== instance.epoch) return { instance };
  return { ...state, instance };
}

/** A ballot as a record holds it: one written before ballots named their view has no `viewId`. */
export type StoredBallot = Omit<Ballot, 'viewId'> & { readonly viewId?: number };

/** The acceptor state as a record holds it (MembershipRecord `restart`). */
export interface StoredAcceptorState<D> {
  readonly instance: RestartInstance;
  readonly promised?: StoredBallot;
  readonly accepted?: { readonly ballot: StoredBallot; readonly decision: D };
}

/**
 * The acceptor state of a record: a ballot without `viewId` (an older record) is of the record's
 * instance, which is what the earlier rule meant by it.
 */
export function restartAcceptorOf<D>(state: StoredAcceptorState<D> | undefined): RestartAcceptorState<D> | undefined {
  if (state === undefined) return undefined;
  const viewId = state.instance.viewId;
  const fill = (b: StoredBallot): Ballot => ({ viewId: b.viewId ?? viewId, round: b.round, node: b.node });
  return {
    instance: state.instance,
    ...(state.promised !== undefined ? { promised: fill(state.promised) } : {}),
    ...(state.accepted !== undefined ? { accepted: { ballot: fill(state.accepted.ballot), decision: state.accepted.decision } } : {}),
  };
}

export type ProposerStep<D> =
  | { readonly kind: 'wait' }
  /** Send `accept(ballot, decision)` to every node that is back (this node accepts it too). */
  | { readonly kind: 'accept'; readonly ballot: Ballot; readonly decision: D; readonly adopted: boolean }
  /** A quorum accepted `decision`: it is chosen; tell everyone, then act on it. */
  | { readonly kind: 'chosen'; readonly decision: D }
  /** Refused: start again with a higher ballot (`nextRound`), or with a newer instance. */
  | { readonly kind: 'retry'; readonly nextRound: number; readonly newer?: RestartInstance };

/**
 * One ballot of the restart leader: phase 1 gathers promises until `quorum.promise` holds
 * (ballotQuorums: a quorum of the last view that meets every quorum of its predecessor), then
 * proposes the decision with the highest ballot any promiser accepted (or, if none did, the
 * leader's own: `fresh()`, called only then); phase 2 gathers acceptances until `quorum.accept`
 * holds (a quorum of the last view). Its own promise and acceptance count only once the driver
 * persisted them (it calls promise/accepted for itself like for any other node).
 */
export class RestartProposer<D> {
  private readonly promises = new Set<number>();
  private readonly accepts = new Set<number>();
  private best: { readonly ballot: Ballot; readonly decision: D } | undefined;
  private proposal: D | undefined;
  private done = false;

  constructor(
    readonly instance: RestartInstance,
    readonly ballot: Ballot,
    private readonly quorum: BallotQuorums,
    private readonly fresh: () => D,
  ) {}

  /** The decision this ballot proposes, once phase 2 started. */
  get proposing(): D | undefined {
    return this.proposal;
  }

  onReply(from: number, reply: AcceptorReply<D>): ProposerStep<D> {
    if (this.done) return { kind: 'wait' };
    switch (reply.kind) {
      case 'stale':
        this.done = true;
        return { kind: 'retry', nextRound: this.ballot.round + 1, newer: reply.newer };
      case 'nack':
        if (compareBallots(reply.promised, this.ballot) <= 0) return { kind: 'wait' };
        this.done = true;
        return { kind: 'retry', nextRound: reply.promised.round + 1 };
      case 'promise': {
        if (this.proposal !== undefined) return { kind: 'wait' };
        this.promises.add(from);
        if (reply.accepted !== undefined && (this.best === undefined || compareBallots(reply.accepted.ballot, this.best.ballot) > 0)) {
          this.best = reply.accepted;
        }
        if (!this.quorum.promise(this.promises)) return { kind: 'wait' };
        this.proposal = this.best !== undefined ? this.best.decision : this.fresh();
        return { kind: 'accept', ballot: this.ballot, decision: this.proposal, adopted: this.best !== undefined };
      }
      case 'accepted':
        if (this.proposal === undefined) return { kind: 'wait' };
        this.accepts.add(from);
        if (!this.quorum.accept(this.accepts)) return { kind: 'wait' };
        this.done = true;
        return { kind: 'chosen', decision: this.proposal };
    }
  }
}
