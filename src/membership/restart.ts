/**
 * Total restart, the pure part: when every member of a group was down, the nodes come back from
 * their disks, agree on the view to resume in, and reconcile each shard to its newest durable
 * version before serving (Derecho's restart, research/derecho.md §2; DESIGN.md §4).
 *
 * The protocol (the driver, src/runtime/membership-driver.ts, runs it):
 *  1. Every restarting node knows the last view it installed (`R_i`, persisted before it created
 *     any multicast driver of that view) and exchanges it with the members of that view. The
 *     newest view any of them knows is `R`.
 *  2. The **restart leader**, the lowest-ranked member of `R` that is back, waits until a
 *     majority of `R`'s members and a majority of every shard's members are back
 *     (`restartQuorum`), then a grace period for the rest (or until all are back), and decides
 *     the restart view `restartView(R, back)`: id `R + 1`, the members that are back in `R`'s
 *     rank order under their current addresses, the others failed, the allocator's layout. The
 *     decision goes to every node that is back; any node that holds it hands it on.
 *  3. Every member of the restart view starts a new membership log (a new Raft group, its
 *     `epoch` names the decision) and runs its shards from the restart view on. Before a
 *     shard serves, its members reconcile it: a node whose log runs past the ragged trim that
 *     was committed for `R` truncates to what the trim keeps (`keptVersion`), every node learns
 *     the others' latest versions and pulls the suffix it lacks from one that holds the newest
 *     (`reconcileShard`). New versions start at view `R + 1`, above every old one.
 *
 * Why `R + 1` cannot collide with a view some absent node used: a node writes the view record
 * before any multicast of that view exists, so every member of a view that delivered anything
 * recorded it; every installed view holds a majority of its predecessor, and the leader waits for
 * a majority of `R`. So if `R + 1` had been installed (and delivered), some node that is back
 * recorded it, and `R` would be that view instead.
 */
import { makeVersion, viewId as makeViewId, type NodeId, type Version } from '../core/ids.js';
import { runAllocator, type Allocator } from './layout.js';
import { View, type Member } from './view.js';

/** Who is back, and what still keeps the restart from going ahead. */
export interface RestartQuorum {
  /** A majority of the view's members and of every shard's members are back. */
  readonly ready: boolean;
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
}

export function restartQuorum(view: View, back: ReadonlySet<NodeId>): RestartQuorum {
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
  return { ready: majority && shortShards.length === 0, missing, shortShards };
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
