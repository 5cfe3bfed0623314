/**
 * Layout allocation: which members serve which shard of which subgroup of which type.
 *
 * The default allocator is a pure function of (the previous layout or none, the new member list
 * in rank order, the per-type policies). It keeps surviving members in their shards, puts reserved
 * nodes in their reserved shards, fills shards up to their minimum from unassigned members in rank
 * order, then grows flexible shards round-robin up to their maximum. A subgroup whose shards
 * cannot all reach their minimum is reported as inadequately provisioned, shard by shard, while
 * every other subgroup keeps working (Derecho stalls the whole group instead; see README.md).
 *
 * Types are always processed sorted by name, whatever order the caller listed them in, so that
 * nodes that registered their types in a different order still compute the same layout.
 */
import { SquallError } from '../core/errors.js';
import { shardIndex, subgroupId, type NodeId } from '../core/ids.js';
import {
  checkLayout,
  DELIVERY_MODES,
  type DeliveryMode,
  type Inadequacy,
  type Layout,
  type ShardLayout,
  type TypeLayout,
} from './view.js';

/**
 * Who may send ordered calls in a shard. 'all': every member. `shardRanks`: the members at these
 * shard ranks (rank 0 is the longest-serving member). `nodeIds`: these reserved nodes, when
 * present.
 */
export type SendersPolicy =
  'all' | { readonly shardRanks: readonly number[] } | { readonly nodeIds: readonly NodeId[] };

export interface ShardPolicy {
  /** Fewer members than this makes the shard's subgroup inadequately provisioned. */
  readonly nodesMin: number;
  /** The shard never grows beyond this. */
  readonly nodesMax: number;
  /** Default 'ordered'. */
  readonly mode?: DeliveryMode;
  /** Default 'default'. */
  readonly profile?: string;
  /**
   * Nodes that always serve in this shard when they are members. The same id may be reserved in
   * shards of other subgroups or types (overlapping subgroups), never in two shards of one
   * subgroup. A reserved node is never used to fill any other shard.
   */
  readonly reservedNodeIds?: readonly NodeId[];
  /** Default 'all'. */
  readonly senders?: SendersPolicy;
}

export interface SubgroupPolicy {
  readonly shards: readonly ShardPolicy[];
}

export interface TypePolicy {
  readonly subgroups: readonly SubgroupPolicy[];
}

/** Policies by registered type name. A Map's insertion order does not matter. */
export type LayoutPolicies = ReadonlyMap<string, TypePolicy> | Readonly<Record<string, TypePolicy>>;

/** Options shared by the even-sharding helpers. */
export interface EvenShardOptions {
  readonly mode?: DeliveryMode;
  readonly profile?: string;
  readonly senders?: SendersPolicy;
  /** One list per shard (length = shard count). */
  readonly reservedNodeIdsByShard?: readonly (readonly NodeId[])[];
}

/** A type with a single subgroup. */
export function oneSubgroup(subgroup: SubgroupPolicy): TypePolicy {
  return { subgroups: [subgroup] };
}

/** A type with `count` subgroups that all follow the same policy (e.g. independent caches). */
export function identicalSubgroups(count: number, subgroup: SubgroupPolicy): TypePolicy {
  return { subgroups: Array.from({ length: count }, () => subgroup) };
}

/** `shardCount` shards of exactly `nodesPerShard` members each. */
export function fixedEvenShards(
  shardCount: number,
  nodesPerShard: number,
  options: EvenShardOptions = {},
): SubgroupPolicy {
  return flexibleEvenShards(shardCount, nodesPerShard, nodesPerShard, options);
}

/** `shardCount` shards of `nodesMin` to `nodesMax` members each; spare nodes grow them. */
export function flexibleEvenShards(
  shardCount: number,
  nodesMin: number,
  nodesMax: number,
  options: EvenShardOptions = {},
): SubgroupPolicy {
  const shards: ShardPolicy[] = [];
  for (let i = 0; i < shardCount; i++) {
    const reserved = options.reservedNodeIdsByShard?.[i];
    shards.push({
      nodesMin,
      nodesMax,
      ...(options.mode !== undefined ? { mode: options.mode } : {}),
      ...(options.profile !== undefined ? { profile: options.profile } : {}),
      ...(options.senders !== undefined ? { senders: options.senders } : {}),
      ...(reserved !== undefined ? { reservedNodeIds: reserved } : {}),
    });
  }
  const byShard = options.reservedNodeIdsByShard;
  if (byShard !== undefined && byShard.length !== shardCount) {
    // Caught again by validation, but say it where the mistake is made.
    throw new LayoutPolicyError([
      {
        path: 'reservedNodeIdsByShard',
        message:
          `has ${byShard.length} lists for ${shardCount} shards. ` +
          'Fix: give one list per shard (an empty list for none).',
      },
    ]);
  }
  return { shards };
}

/** A subgroup whose shards each have their own policy. */
export function customShards(shards: readonly ShardPolicy[]): SubgroupPolicy {
  return { shards };
}

/** One or more policies are invalid; `problems` lists each with its path. */
export class LayoutPolicyError extends SquallError {
  readonly problems: readonly { path: string; message: string }[];
  constructor(problems: readonly { path: string; message: string }[]) {
    super(
      `invalid layout policy:\n${problems.map((p) => `  ${p.path}: ${p.message}`).join('\n')}`,
      'LAYOUT_POLICY',
    );
    this.problems = problems;
  }
}

/** A user-supplied allocator returned a layout that breaks the layout rules. */
export class AllocatorOutputError extends SquallError {
  constructor(problem: string, options?: { cause?: unknown }) {
    super(
      `the layout allocator returned an invalid layout: ${problem}. ` +
        'Fix: correct the allocator function ' +
        '(see checkLayout in src/membership/view.ts for the rules).',
      'ALLOCATOR_OUTPUT',
      options,
    );
  }
}

/** What an allocator sees. */
export interface AllocationInput {
  /** The previous view's layout; undefined for the first view. */
  readonly previous: Layout | undefined;
  /** The new view's members in rank order. */
  readonly members: readonly NodeId[];
}

/**
 * Computes the next layout. Must be pure and deterministic: every member runs it on the same
 * input and must get the same answer. Report unmet policies in `inadequate` rather than throw.
 */
export type Allocator = (input: AllocationInput) => Layout;

/** A shard policy with defaults filled in. */
export interface NormalShardPolicy {
  readonly nodesMin: number;
  readonly nodesMax: number;
  readonly mode: DeliveryMode;
  readonly profile: string;
  readonly reservedNodeIds: readonly NodeId[];
  readonly senders: SendersPolicy;
}

export interface NormalTypePolicy {
  readonly typeName: string;
  readonly subgroups: readonly { readonly shards: readonly NormalShardPolicy[] }[];
}

/** Validated policies, types sorted by name. */
export interface CompiledPolicies {
  readonly types: readonly NormalTypePolicy[];
  /** Every node id reserved anywhere, ascending. */
  readonly reservedNodeIds: readonly NodeId[];
}

const isUint = (n: unknown): n is number =>
  typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;

/** Validates policies and fills in defaults. Throws LayoutPolicyError listing every problem. */
export function compilePolicies(policies: LayoutPolicies): CompiledPolicies {
  const entries: [string, TypePolicy][] =
    policies instanceof Map
      ? [...policies.entries()]
      : Object.entries(policies as Record<string, TypePolicy>);
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const problems: { path: string; message: string }[] = [];
  const types: NormalTypePolicy[] = [];
  const reservedAll = new Set<NodeId>();
  if (entries.length === 0) {
    problems.push({
      path: '(policies)',
      message: 'no replicated types. Fix: give a policy for each registered type.',
    });
  }
  for (const [typeName, policy] of entries) {
    if (typeName.length === 0) {
      problems.push({
        path: '(policies)',
        message: 'a type has an empty name. Fix: use the registered type name.',
      });
    }
    const subgroups = policy?.subgroups ?? [];
    if (subgroups.length === 0) {
      problems.push({
        path: typeName,
        message:
          'has no subgroups. Fix: use oneSubgroup(...) or identicalSubgroups(n, ...) with n >= 1.',
      });
    }
    types.push({
      typeName,
      subgroups: subgroups.map((s, i) => {
        const path = `${typeName}.subgroups[${i}]`;
        if ((s?.shards ?? []).length === 0) {
          problems.push({
            path,
            message: 'has no shards. Fix: give at least one shard, e.g. fixedEvenShards(1, 3).',
          });
        }
        const inSubgroup = new Map<NodeId, number>();
        return {
          shards: (s?.shards ?? []).map((sh, j) => {
            const normal = normalizeShard(sh, `${path}.shards[${j}]`, problems);
            for (const n of normal.reservedNodeIds) {
              const other = inSubgroup.get(n);
              if (other !== undefined && other !== j) {
                problems.push({
                  path: `${path}.shards[${j}]`,
                  message:
                    `reserves node ${n}, already reserved by shard ${other} of the same ` +
                    'subgroup. Fix: shards of one subgroup are disjoint; ' +
                    'reserve the node in one of them.',
                });
              }
              inSubgroup.set(n, j);
              reservedAll.add(n);
            }
            return normal;
          }),
        };
      }),
    });
  }
  if (problems.length > 0) throw new LayoutPolicyError(problems);
  return { types, reservedNodeIds: [...reservedAll].sort((a, b) => a - b) };
}

function normalizeShard(
  sh: ShardPolicy,
  path: string,
  problems: { path: string; message: string }[],
): NormalShardPolicy {
  const say = (message: string): void => {
    problems.push({ path, message });
  };
  const { nodesMin, nodesMax } = sh;
  if (!isUint(nodesMin) || nodesMin < 1)
    say(`nodesMin is ${String(nodesMin)}. Fix: use an integer >= 1.`);
  if (!isUint(nodesMax) || nodesMax < 1)
    say(`nodesMax is ${String(nodesMax)}. Fix: use an integer >= 1.`);
  if (isUint(nodesMin) && isUint(nodesMax) && nodesMin > nodesMax) {
    say(
      `nodesMin (${nodesMin}) is greater than nodesMax (${nodesMax}). ` +
        'Fix: make nodesMin <= nodesMax.',
    );
  }
  const mode = sh.mode ?? 'ordered';
  if (!DELIVERY_MODES.includes(mode))
    say(`mode is "${String(mode)}". Fix: use one of ${DELIVERY_MODES.join(', ')}.`);
  const profile = sh.profile ?? 'default';
  if (typeof profile !== 'string' || profile.length === 0)
    say('profile is empty. Fix: name a profile or leave it out for "default".');
  const reserved = sh.reservedNodeIds ?? [];
  const seen = new Set<NodeId>();
  for (const n of reserved) {
    if (!isUint(n))
      say(
        `reserved node id ${String(n)} is not a uint32. Fix: use node ids from the configuration.`,
      );
    else if (seen.has(n))
      say(`reserves node ${n} twice. Fix: list each reserved node once per shard.`);
    seen.add(n);
  }
  if (isUint(nodesMax) && seen.size > nodesMax) {
    say(
      `reserves ${seen.size} nodes but nodesMax is ${nodesMax}. ` +
        'Fix: raise nodesMax or reserve fewer nodes.',
    );
  }
  const senders = sh.senders ?? 'all';
  checkSenders(senders, seen, isUint(nodesMax) ? nodesMax : Infinity, say);
  return { nodesMin, nodesMax, mode, profile, reservedNodeIds: [...seen], senders };
}

function checkSenders(
  senders: SendersPolicy,
  reserved: ReadonlySet<NodeId>,
  nodesMax: number,
  say: (m: string) => void,
): void {
  if (senders === 'all') return;
  if (typeof senders !== 'object' || senders === null) {
    say(
      `senders is ${String(senders)}. Fix: use 'all', { shardRanks: [...] } or { nodeIds: [...] }.`,
    );
    return;
  }
  if ('shardRanks' in senders) {
    const ranks = senders.shardRanks;
    if (ranks.length === 0)
      say(
        'senders.shardRanks is empty. Fix: list at least one shard rank (0 is the shard leader).',
      );
    const seen = new Set<number>();
    for (const r of ranks) {
      if (!isUint(r) || r >= nodesMax)
        say(
          `sender shard rank ${String(r)} is outside 0..${nodesMax - 1}. ` +
            'Fix: use ranks below nodesMax.',
        );
      else if (seen.has(r))
        say(`sender shard rank ${r} is listed twice. Fix: list each rank once.`);
      seen.add(r);
    }
    return;
  }
  const ids = senders.nodeIds;
  if (ids.length === 0)
    say("senders.nodeIds is empty. Fix: list at least one reserved node, or use 'all'.");
  const seen = new Set<NodeId>();
  for (const n of ids) {
    if (!reserved.has(n)) {
      say(
        `sender node ${String(n)} is not reserved in this shard, so it may never be a member. ` +
          'Fix: add it to reservedNodeIds.',
      );
    } else if (seen.has(n)) say(`sender node ${n} is listed twice. Fix: list each sender once.`);
    seen.add(n);
  }
}

/** The default allocator for these policies; validates them now (throws LayoutPolicyError). */
export function defaultAllocator(policies: LayoutPolicies): Allocator {
  const compiled = compilePolicies(policies);
  return (input) => allocateLayout(compiled, input.previous, input.members);
}

/**
 * Runs any allocator (default or user-supplied) and checks what it returned against the layout
 * rules. Throws AllocatorOutputError if the allocator threw or broke a rule.
 */
export function runAllocator(allocator: Allocator, input: AllocationInput): Layout {
  let layout: Layout;
  try {
    layout = allocator(input);
  } catch (error) {
    throw new AllocatorOutputError(`it threw ${(error as Error)?.message ?? String(error)}`, {
      cause: error,
    });
  }
  try {
    checkLayout(layout, input.members);
  } catch (error) {
    throw new AllocatorOutputError((error as Error).message, { cause: error });
  }
  return layout;
}

/** A shard being built. */
interface Slot {
  readonly typeName: string;
  readonly subgroupIndex: number;
  readonly subgroupId: number;
  readonly shardIndex: number;
  readonly policy: NormalShardPolicy;
  readonly members: NodeId[];
}

/**
 * The default allocation (see the file comment). Pure and deterministic: the output depends only
 * on the arguments' values, never on Map/Set insertion order.
 */
export function allocateLayout(
  policies: CompiledPolicies,
  previous: Layout | undefined,
  members: readonly NodeId[],
): Layout {
  const present = new Set(members);
  const reservedAnywhere = new Set(policies.reservedNodeIds);
  const slots = keepSurvivors(policies, previous, present, reservedAnywhere);
  const assigned = new Set<NodeId>();
  for (const slot of slots) for (const n of slot.members) assigned.add(n);
  const pool = members.filter((n) => !reservedAnywhere.has(n) && !assigned.has(n));
  let next = 0;
  const take = (): NodeId => pool[next++]!;
  const bySubgroup = groupBySubgroup(slots);
  const short: Slot[][] = [];
  // Pass 1: fill whole subgroups to their minimum, in layout order, when the pool can.
  for (const shards of bySubgroup) {
    const deficit = shards.reduce(
      (sum, s) => sum + Math.max(0, s.policy.nodesMin - s.members.length),
      0,
    );
    if (deficit > pool.length - next) {
      short.push(shards);
      continue;
    }
    for (const s of shards) while (s.members.length < s.policy.nodesMin) s.members.push(take());
  }
  // Pass 2: give what is left to short subgroups, so that fewer joins make them whole later.
  for (const shards of short) {
    for (const s of shards)
      while (s.members.length < s.policy.nodesMin && next < pool.length) s.members.push(take());
  }
  // Pass 3: grow shards round-robin up to their maximum with spare members.
  let grew = true;
  while (grew && next < pool.length) {
    grew = false;
    for (const s of slots) {
      if (next < pool.length && s.members.length < s.policy.nodesMax) {
        s.members.push(take());
        grew = true;
      }
    }
  }
  return finish(slots);
}

/**
 * One slot per shard in layout order, holding the members that keep their place: survivors of
 * the same shard in the previous layout (in their old shard-rank order), then reserved nodes that
 * are present. A node reserved anywhere stays only in its reserved shards. If a returning
 * reserved node would push a shard over nodesMax, the non-reserved members with the highest shard
 * ranks make room (they return to the pool).
 */
function keepSurvivors(
  policies: CompiledPolicies,
  previous: Layout | undefined,
  present: ReadonlySet<NodeId>,
  reservedAnywhere: ReadonlySet<NodeId>,
): Slot[] {
  const slots: Slot[] = [];
  const claimed = new Set<NodeId>();
  let nextSubgroupId = 0;
  for (const type of policies.types) {
    const before = matchingPrevious(type, previous);
    type.subgroups.forEach((subgroup, subgroupIndex) => {
      const id = nextSubgroupId++;
      subgroup.shards.forEach((policy, index) => {
        const reserved = new Set(policy.reservedNodeIds);
        const kept: NodeId[] = [];
        for (const n of before?.subgroups[subgroupIndex]?.shards[index]?.members ?? []) {
          if (!present.has(n) || kept.includes(n)) continue;
          if (reservedAnywhere.has(n) ? reserved.has(n) : !claimed.has(n)) kept.push(n);
        }
        for (const n of policy.reservedNodeIds)
          if (present.has(n) && !kept.includes(n)) kept.push(n);
        for (let i = kept.length - 1; kept.length > policy.nodesMax && i >= 0; i--) {
          if (!reserved.has(kept[i]!)) kept.splice(i, 1);
        }
        for (const n of kept) if (!reservedAnywhere.has(n)) claimed.add(n);
        slots.push({
          typeName: type.typeName,
          subgroupIndex,
          subgroupId: id,
          shardIndex: index,
          policy,
          members: kept,
        });
      });
    });
  }
  return slots;
}

/** The previous layout of a type, if its shape (subgroup and shard counts) still matches. */
function matchingPrevious(
  type: NormalTypePolicy,
  previous: Layout | undefined,
): TypeLayout | undefined {
  const before = previous?.types.find((t) => t.typeName === type.typeName);
  if (before === undefined || before.subgroups.length !== type.subgroups.length) return undefined;
  const same = type.subgroups.every(
    (s, i) => before.subgroups[i]!.shards.length === s.shards.length,
  );
  return same ? before : undefined;
}

function groupBySubgroup(slots: readonly Slot[]): Slot[][] {
  const groups: Slot[][] = [];
  for (const slot of slots) {
    const last = groups[groups.length - 1];
    if (last !== undefined && last[0]!.subgroupId === slot.subgroupId) last.push(slot);
    else groups.push([slot]);
  }
  return groups;
}

function sendersOf(members: readonly NodeId[], policy: SendersPolicy): NodeId[] {
  if (policy === 'all') return [...members];
  if ('shardRanks' in policy) return members.filter((_, rank) => policy.shardRanks.includes(rank));
  return members.filter((n) => policy.nodeIds.includes(n));
}

function finish(slots: readonly Slot[]): Layout {
  const types: { typeName: string; subgroups: { subgroupId: number; shards: ShardLayout[] }[] }[] =
    [];
  const inadequate: Inadequacy[] = [];
  for (const slot of slots) {
    let type = types[types.length - 1];
    if (type === undefined || type.typeName !== slot.typeName) {
      type = { typeName: slot.typeName, subgroups: [] };
      types.push(type);
    }
    let subgroup = type.subgroups[slot.subgroupIndex];
    if (subgroup === undefined) {
      subgroup = { subgroupId: slot.subgroupId, shards: [] };
      type.subgroups.push(subgroup);
    }
    const senders = sendersOf(slot.members, slot.policy.senders);
    subgroup.shards.push({
      members: slot.members,
      senders,
      mode: slot.policy.mode,
      profile: slot.policy.profile,
    });
    const base = {
      typeName: slot.typeName,
      subgroupIndex: slot.subgroupIndex,
      subgroupId: subgroupId(slot.subgroupId),
      shardIndex: shardIndex(slot.shardIndex),
      nodesHave: slot.members.length,
      nodesMin: slot.policy.nodesMin,
    };
    if (slot.members.length < slot.policy.nodesMin)
      inadequate.push({ ...base, reason: 'too-few-nodes' });
    else if (senders.length === 0) inadequate.push({ ...base, reason: 'no-senders' });
  }
  return {
    types: types.map((t) => ({
      typeName: t.typeName,
      subgroups: t.subgroups.map((s) => ({
        subgroupId: subgroupId(s.subgroupId),
        shards: s.shards,
      })),
    })),
    inadequate,
  };
}
