/**
 * The View: one agreed configuration of the group. A view says who the members are (in rank
 * order, with the transport address of each), what changed since the previous view, and the
 * layout: for every replicated type, its subgroups; for every subgroup, its shards; for every
 * shard, its members in shard-rank order, which of them send, its delivery mode and profile.
 *
 * A View is immutable and validated on construction, so code that holds one can rely on its
 * invariants (unique members, shard members are view members, shards of one subgroup disjoint,
 * senders are shard members). Encoding is deterministic: two nodes that agree on a view produce
 * the same bytes, which is what the view digest and the membership log compare.
 */
import { Packr } from 'msgpackr';
import { SquallError } from '../core/errors.js';
import {
  nodeId,
  shardIndex,
  subgroupId,
  viewId,
  type NodeId,
  type ShardIndex,
  type SubgroupId,
  type ViewId,
} from '../core/ids.js';

/**
 * How a shard orders the calls it delivers: 'ordered' is virtually synchronous multicast (SMC /
 * RDMC, delivered once stable at every member), 'raw' is the same transport without ordering
 * guarantees beyond per-sender FIFO, 'raft' commits calls through a Raft log inside the shard.
 */
export type DeliveryMode = 'ordered' | 'raw' | 'raft';
export const DELIVERY_MODES: readonly DeliveryMode[] = ['ordered', 'raw', 'raft'];

/** One shard of one subgroup in one view. */
export interface ShardLayout {
  /** Members in shard-rank order; shard rank 0 is the shard leader while it lives. */
  readonly members: readonly NodeId[];
  /** The members allowed to send ordered calls, a subset of `members` in shard-rank order. */
  readonly senders: readonly NodeId[];
  readonly mode: DeliveryMode;
  /** Names the tuning profile (window sizes, block sizes) the shard's multicast uses. */
  readonly profile: string;
}

export interface SubgroupLayout {
  /** Group-wide subgroup number: consecutive from 0 over types sorted by name. */
  readonly subgroupId: SubgroupId;
  readonly shards: readonly ShardLayout[];
}

export interface TypeLayout {
  /** The name the replicated type is registered under. */
  readonly typeName: string;
  readonly subgroups: readonly SubgroupLayout[];
}

/**
 * Why a shard cannot work in this view. 'too-few-nodes': fewer members than the policy's minimum.
 * 'no-senders': the shard has members but none of them may send (a sender set named only nodes
 * that are absent).
 */
export type InadequacyReason = 'too-few-nodes' | 'no-senders';

/** One inadequately provisioned shard; its whole subgroup refuses ordered calls in this view. */
export interface Inadequacy {
  readonly typeName: string;
  readonly subgroupIndex: number;
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  readonly reason: InadequacyReason;
  /** Members the shard has in this view. */
  readonly nodesHave: number;
  /** Members the policy asks for at least. */
  readonly nodesMin: number;
}

/** The layout of a view: types sorted by name, and every shard whose policy is not met. */
export interface Layout {
  readonly types: readonly TypeLayout[];
  /** In layout order (type name, subgroup, shard). Empty when the view is adequate. */
  readonly inadequate: readonly Inadequacy[];
}

/** A member of a view and where to reach it (a transport address, "host:port"). */
export interface Member {
  readonly id: NodeId;
  readonly address: string;
}

/** Where one node sits in the layout: one entry per shard it belongs to. */
export interface ShardMembership {
  readonly typeName: string;
  readonly subgroupIndex: number;
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
  readonly shardRank: number;
  readonly isSender: boolean;
  readonly mode: DeliveryMode;
  readonly profile: string;
}

export interface ViewInit {
  readonly id: ViewId;
  /** Rank order: survivors of the previous view in their old order, then joiners. */
  readonly members: readonly Member[];
  /** Nodes that are members of this view and were not members of the previous one. */
  readonly joined: readonly NodeId[];
  /** Nodes of the previous view that left cleanly (asked to leave). */
  readonly departed: readonly NodeId[];
  /** Nodes of the previous view removed because they were suspected of failure. */
  readonly failed: readonly NodeId[];
  readonly layout: Layout;
}

/** A view or layout broke one of its invariants (a bug in an allocator, or corrupt input). */
export class InvalidViewError extends SquallError {
  constructor(problem: string, fix: string) {
    super(`invalid view: ${problem}. Fix: ${fix}`, 'INVALID_VIEW');
  }
}

/** Bytes that do not decode to a view. */
export class ViewDecodeError extends SquallError {
  constructor(problem: string) {
    super(
      `cannot decode a view: ${problem}. ` +
        'Fix: decode only bytes made by encodeView from the same Squall version.',
      'VIEW_DECODE',
    );
  }
}

/** An immutable, validated view with lookups by node. */
export class View {
  readonly id: ViewId;
  readonly members: readonly Member[];
  readonly joined: readonly NodeId[];
  readonly departed: readonly NodeId[];
  readonly failed: readonly NodeId[];
  readonly layout: Layout;
  private readonly rankByNode: ReadonlyMap<NodeId, number>;
  private readonly shardsByNode: ReadonlyMap<NodeId, readonly ShardMembership[]>;
  private readonly inadequateSubgroups: ReadonlySet<SubgroupId>;

  constructor(init: ViewInit) {
    this.id = init.id;
    this.members = Object.freeze(init.members.map((m) => Object.freeze({ ...m })));
    this.joined = Object.freeze([...init.joined]);
    this.departed = Object.freeze([...init.departed]);
    this.failed = Object.freeze([...init.failed]);
    this.layout = freezeLayout(init.layout);
    const ranks = new Map<NodeId, number>();
    this.members.forEach((m, rank) => {
      if (ranks.has(m.id)) {
        throw new InvalidViewError(
          `node ${m.id} is listed twice among the members of view ${init.id}`,
          'list each member once',
        );
      }
      ranks.set(m.id, rank);
    });
    this.rankByNode = ranks;
    for (const n of this.joined) {
      if (!ranks.has(n))
        throw new InvalidViewError(
          `joined node ${n} is not a member of view ${init.id}`,
          'list only members as joined',
        );
    }
    for (const n of [...this.departed, ...this.failed]) {
      if (ranks.has(n))
        throw new InvalidViewError(
          `removed node ${n} is still a member of view ${init.id}`,
          'drop departed and failed nodes from the members',
        );
    }
    checkLayout(
      this.layout,
      this.members.map((m) => m.id),
    );
    this.shardsByNode = indexShards(this.layout);
    this.inadequateSubgroups = new Set(this.layout.inadequate.map((i) => i.subgroupId));
  }

  /** True when every subgroup's policy is met. */
  get isAdequate(): boolean {
    return this.layout.inadequate.length === 0;
  }

  /** The member list's node ids in rank order. */
  get memberIds(): NodeId[] {
    return this.members.map((m) => m.id);
  }

  /** The node's rank in this view, or -1 if it is not a member. */
  rankOf(node: NodeId): number {
    return this.rankByNode.get(node) ?? -1;
  }

  isMember(node: NodeId): boolean {
    return this.rankByNode.has(node);
  }

  /** The node's transport address; undefined if it is not a member. */
  addressOf(node: NodeId): string | undefined {
    const rank = this.rankByNode.get(node);
    return rank === undefined ? undefined : this.members[rank]!.address;
  }

  /** Every shard the node belongs to, in layout order (several when subgroups overlap). */
  shardsOf(node: NodeId): readonly ShardMembership[] {
    return this.shardsByNode.get(node) ?? [];
  }

  /** The subgroup ids the node belongs to, ascending. */
  subgroupsOf(node: NodeId): SubgroupId[] {
    return this.shardsOf(node).map((s) => s.subgroupId);
  }

  /** The layout of one type, or undefined if the group hosts no such type. */
  typeLayout(typeName: string): TypeLayout | undefined {
    return this.layout.types.find((t) => t.typeName === typeName);
  }

  /** One subgroup by type name and index within the type. */
  subgroup(typeName: string, subgroupIndex: number): SubgroupLayout | undefined {
    return this.typeLayout(typeName)?.subgroups[subgroupIndex];
  }

  /** One shard by subgroup id and shard index. */
  shard(id: SubgroupId, index: ShardIndex): ShardLayout | undefined {
    for (const t of this.layout.types) {
      for (const s of t.subgroups) if (s.subgroupId === id) return s.shards[index];
    }
    return undefined;
  }

  /** False if any shard of the subgroup is inadequately provisioned in this view. */
  isSubgroupAdequate(id: SubgroupId): boolean {
    return !this.inadequateSubgroups.has(id);
  }

  /** The problems of one subgroup (empty when it is adequate). */
  inadequaciesOf(id: SubgroupId): Inadequacy[] {
    return this.layout.inadequate.filter((i) => i.subgroupId === id);
  }
}

function freezeLayout(layout: Layout): Layout {
  return Object.freeze({
    types: Object.freeze(
      layout.types.map((t) =>
        Object.freeze({
          typeName: t.typeName,
          subgroups: Object.freeze(
            t.subgroups.map((s) =>
              Object.freeze({
                subgroupId: s.subgroupId,
                shards: Object.freeze(
                  s.shards.map((sh) =>
                    Object.freeze({
                      members: Object.freeze([...sh.members]),
                      senders: Object.freeze([...sh.senders]),
                      mode: sh.mode,
                      profile: sh.profile,
                    }),
                  ),
                ),
              }),
            ),
          ),
        }),
      ),
    ),
    inadequate: Object.freeze(layout.inadequate.map((i) => Object.freeze({ ...i }))),
  });
}

function indexShards(layout: Layout): Map<NodeId, ShardMembership[]> {
  const byNode = new Map<NodeId, ShardMembership[]>();
  for (const t of layout.types) {
    t.subgroups.forEach((s, subgroupIndex) => {
      s.shards.forEach((sh, index) => {
        sh.members.forEach((n, shardRank) => {
          const list = byNode.get(n) ?? [];
          list.push(
            Object.freeze({
              typeName: t.typeName,
              subgroupIndex,
              subgroupId: s.subgroupId,
              shardIndex: shardIndex(index),
              shardRank,
              isSender: sh.senders.includes(n),
              mode: sh.mode,
              profile: sh.profile,
            }),
          );
          byNode.set(n, list);
        });
      });
    });
  }
  return byNode;
}

/**
 * Checks a layout against the members of its view and throws InvalidViewError on the first
 * broken rule. Used on every View and on the output of user-supplied allocators. Rules: types
 * sorted by name and unique; subgroup ids consecutive from 0 in layout order; every shard member
 * is a view member; no node twice in one shard or in two shards of one subgroup; senders are
 * shard members in shard-rank order; known delivery modes; inadequacies name existing shards.
 */
export function checkLayout(layout: Layout, members: readonly NodeId[]): void {
  const present = new Set(members);
  for (let i = 1; i < layout.types.length; i++) {
    if (!(layout.types[i - 1]!.typeName < layout.types[i]!.typeName)) {
      throw new InvalidViewError(
        `type "${layout.types[i]!.typeName}" is out of order or repeated in the layout`,
        'list types once each, sorted by name',
      );
    }
  }
  let nextSubgroupId = 0;
  for (const t of layout.types) {
    const where = `type "${t.typeName}"`;
    if (t.subgroups.length === 0)
      throw new InvalidViewError(
        `${where} has no subgroups`,
        'give every type at least one subgroup',
      );
    t.subgroups.forEach((s, subgroupIndex) => {
      const at = `${where} subgroup ${subgroupIndex}`;
      if (s.subgroupId !== nextSubgroupId) {
        throw new InvalidViewError(
          `${at} has subgroup id ${s.subgroupId}, expected ${nextSubgroupId}`,
          'number subgroups consecutively from 0 over types sorted by name',
        );
      }
      nextSubgroupId += 1;
      if (s.shards.length === 0)
        throw new InvalidViewError(`${at} has no shards`, 'give every subgroup at least one shard');
      const inSubgroup = new Set<NodeId>();
      s.shards.forEach((sh, index) => checkShard(sh, `${at} shard ${index}`, present, inSubgroup));
    });
  }
  for (const i of layout.inadequate) {
    const t = layout.types.find((x) => x.typeName === i.typeName);
    const s = t?.subgroups[i.subgroupIndex];
    if (s === undefined || s.subgroupId !== i.subgroupId || s.shards[i.shardIndex] === undefined) {
      throw new InvalidViewError(
        `an inadequacy names ${i.typeName} subgroup ${i.subgroupIndex} shard ${i.shardIndex}, ` +
          'which is not in the layout',
        'report inadequacies only for shards of the layout',
      );
    }
  }
}

function checkShard(
  sh: ShardLayout,
  at: string,
  present: ReadonlySet<NodeId>,
  inSubgroup: Set<NodeId>,
): void {
  if (!DELIVERY_MODES.includes(sh.mode)) {
    throw new InvalidViewError(
      `${at} has delivery mode "${String(sh.mode)}"`,
      `use one of ${DELIVERY_MODES.join(', ')}`,
    );
  }
  for (const n of sh.members) {
    if (!present.has(n))
      throw new InvalidViewError(
        `${at} contains node ${n}, which is not a view member`,
        'assign only members of the view',
      );
    if (inSubgroup.has(n))
      throw new InvalidViewError(
        `${at}: node ${n} appears twice in one subgroup`,
        'keep the shards of a subgroup disjoint',
      );
    inSubgroup.add(n);
  }
  let lastRank = -1;
  for (const n of sh.senders) {
    const rank = sh.members.indexOf(n);
    if (rank < 0)
      throw new InvalidViewError(
        `${at}: sender ${n} is not a member of the shard`,
        'choose senders among the shard members',
      );
    if (rank <= lastRank)
      throw new InvalidViewError(
        `${at}: senders are repeated or not in shard-rank order`,
        'list senders once each, in shard-rank order',
      );
    lastRank = rank;
  }
}

// ---- Encoding -----------------------------------------------------------------------------

/** Bumped when the encoded form changes; decodeView refuses other versions. */
const VIEW_FORMAT_VERSION = 1;
const REASONS: readonly InadequacyReason[] = ['too-few-nodes', 'no-senders'];

/**
 * The canonical, digest-friendly form of a view: nested arrays of numbers and strings only, in a
 * fixed order, with no maps and no property names, so that no iteration order can leak in.
 */
export type CanonicalView = readonly unknown[];

export function canonicalView(view: View): CanonicalView {
  return [
    VIEW_FORMAT_VERSION,
    view.id,
    view.members.map((m) => [m.id, m.address]),
    [...view.joined],
    [...view.departed],
    [...view.failed],
    view.layout.types.map((t) => [
      t.typeName,
      t.subgroups.map((s) => [
        s.subgroupId,
        s.shards.map((sh) => [
          [...sh.members],
          [...sh.senders],
          DELIVERY_MODES.indexOf(sh.mode),
          sh.profile,
        ]),
      ]),
    ]),
    view.layout.inadequate.map((i) => [
      i.typeName,
      i.subgroupIndex,
      i.subgroupId,
      i.shardIndex,
      REASONS.indexOf(i.reason),
      i.nodesHave,
      i.nodesMin,
    ]),
  ];
}

const packr = new Packr({ useRecords: false, mapsAsObjects: false, variableMapSize: true });

/** Deterministic bytes of a view; the caller owns the returned buffer. */
export function encodeView(view: View): Uint8Array {
  // msgpackr packs into a shared scratch buffer that the next pack() overwrites: copy out.
  return Uint8Array.from(packr.pack(canonicalView(view)));
}

/** The inverse of encodeView. Throws ViewDecodeError on malformed input or InvalidViewError. */
export function decodeView(bytes: Uint8Array): View {
  let raw: unknown;
  try {
    // A fresh wrapper over the same memory: msgpackr caches a DataView as a property on the
    // object it decodes, and the caller's buffer should come back untouched.
    raw = packr.unpack(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (error) {
    throw new ViewDecodeError(`not msgpack (${(error as Error).message})`);
  }
  return fromCanonical(raw);
}

function arr(value: unknown, what: string): unknown[] {
  if (!Array.isArray(value)) throw new ViewDecodeError(`${what} is not an array`);
  return value;
}
function num(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new ViewDecodeError(`${what} is not a uint32`);
  }
  return value;
}
function str(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new ViewDecodeError(`${what} is not a string`);
  return value;
}
const nodes = (value: unknown, what: string): NodeId[] =>
  arr(value, what).map((n) => nodeId(num(n, what)));

function fromCanonical(raw: unknown): View {
  const top = arr(raw, 'the view');
  if (top.length !== 8) throw new ViewDecodeError(`the view has ${top.length} fields, expected 8`);
  if (top[0] !== VIEW_FORMAT_VERSION) {
    throw new ViewDecodeError(
      `format version ${String(top[0])}, this build reads ${VIEW_FORMAT_VERSION}`,
    );
  }
  const members = arr(top[2], 'members').map((m) => {
    const pair = arr(m, 'a member');
    return { id: nodeId(num(pair[0], 'member id')), address: str(pair[1], 'member address') };
  });
  const types = arr(top[6], 'layout').map((t) => {
    const [typeName, subgroups] = arr(t, 'a type layout');
    return {
      typeName: str(typeName, 'type name'),
      subgroups: arr(subgroups, 'subgroups').map((s) => {
        const [id, shards] = arr(s, 'a subgroup');
        return {
          subgroupId: subgroupId(num(id, 'subgroup id')),
          shards: arr(shards, 'shards').map((sh) => {
            const [m, senders, mode, profile] = arr(sh, 'a shard');
            const modeName = DELIVERY_MODES[num(mode, 'delivery mode')];
            if (modeName === undefined)
              throw new ViewDecodeError(`unknown delivery mode ${String(mode)}`);
            return {
              members: nodes(m, 'shard members'),
              senders: nodes(senders, 'senders'),
              mode: modeName,
              profile: str(profile, 'profile'),
            };
          }),
        };
      }),
    };
  });
  const inadequate = arr(top[7], 'inadequacies').map((i) => {
    const f = arr(i, 'an inadequacy');
    const reason = REASONS[num(f[4], 'reason')];
    if (reason === undefined)
      throw new ViewDecodeError(`unknown inadequacy reason ${String(f[4])}`);
    return {
      typeName: str(f[0], 'type name'),
      subgroupIndex: num(f[1], 'subgroup index'),
      subgroupId: subgroupId(num(f[2], 'subgroup id')),
      shardIndex: shardIndex(num(f[3], 'shard index')),
      reason,
      nodesHave: num(f[5], 'nodes have'),
      nodesMin: num(f[6], 'nodes min'),
    };
  });
  return new View({
    id: viewId(num(top[1], 'view id')),
    members,
    joined: nodes(top[3], 'joined'),
    departed: nodes(top[4], 'departed'),
    failed: nodes(top[5], 'failed'),
    layout: { types, inadequate },
  });
}

/** Human-readable text for one inadequacy, for logs and for the errors callers see. */
export function describeInadequacy(i: Inadequacy): string {
  const where = `${i.typeName} subgroup ${i.subgroupIndex} shard ${i.shardIndex}`;
  if (i.reason === 'too-few-nodes') {
    const { nodesHave: have, nodesMin: min } = i;
    return `${where} has ${have} of at least ${min} nodes (${min - have} more must join)`;
  }
  return `${where} has ${i.nodesHave} nodes but none of its configured senders is present`;
}
