// Proves the default layout allocator keeps its contract: each policy helper lays out shards as
// documented, every policy problem is refused with a named error that ends with the fix, user
// allocators are checked, and over long random sequences of joins, failures and leaves (many
// seeds, random policies) the invariants below hold after every view.
import test from 'ava';
import { nodeId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { SquallError } from '../../src/core/errors.js';
import {
  allocateLayout,
  AllocatorOutputError,
  compilePolicies,
  customShards,
  defaultAllocator,
  fixedEvenShards,
  flexibleEvenShards,
  identicalSubgroups,
  LayoutPolicyError,
  oneSubgroup,
  runAllocator,
  type CompiledPolicies,
  type LayoutPolicies,
  type SendersPolicy,
  type ShardPolicy,
  type TypePolicy,
} from '../../src/membership/layout.js';
import { checkLayout, DELIVERY_MODES, type Layout } from '../../src/membership/view.js';

const ids = (...values: number[]): NodeId[] => values.map(nodeId);
const range = (from: number, to: number): NodeId[] =>
  ids(...Array.from({ length: to - from }, (_, i) => from + i));
const shardMembers = (layout: Layout, type: string, subgroup = 0, shard = 0): number[] => [
  ...layout.types.find((t) => t.typeName === type)!.subgroups[subgroup]!.shards[shard]!.members,
];

function allocate(policies: LayoutPolicies, members: NodeId[], previous?: Layout): Layout {
  return allocateLayout(compilePolicies(policies), previous, members);
}

// ---- Invariants -----------------------------------------------------------------------------

interface ShardRef {
  type: string;
  subgroup: number;
  shard: number;
  policy: CompiledPolicies['types'][number]['subgroups'][number]['shards'][number];
}

function shardRefs(policies: CompiledPolicies): ShardRef[] {
  return policies.types.flatMap((t) =>
    t.subgroups.flatMap((s, subgroup) =>
      s.shards.map((policy, shard) => ({ type: t.typeName, subgroup, shard, policy })),
    ),
  );
}

function membersAt(layout: Layout | undefined, r: ShardRef): NodeId[] {
  return [
    ...(layout?.types.find((t) => t.typeName === r.type)?.subgroups[r.subgroup]?.shards[r.shard]
      ?.members ?? []),
  ];
}

function expectedSenders(members: NodeId[], senders: SendersPolicy): NodeId[] {
  if (senders === 'all') return members;
  if ('shardRanks' in senders)
    return members.filter((_, rank) => senders.shardRanks.includes(rank));
  return members.filter((n) => senders.nodeIds.includes(n));
}

/** Returns a list of broken invariants (empty when all hold). */
function invariantProblems(
  policies: CompiledPolicies,
  previous: Layout | undefined,
  members: NodeId[],
  layout: Layout,
): string[] {
  const problems: string[] = [];
  const fail = (message: string): void => {
    problems.push(message);
  };
  try {
    checkLayout(layout, members); // no node twice in a shard or subgroup, members only, ids consecutive
  } catch (error) {
    fail(`checkLayout: ${(error as Error).message}`);
  }
  const reservedAnywhere = new Set(policies.reservedNodeIds);
  const present = new Set(members);
  const refs = shardRefs(policies);
  const whereNonReserved = new Map<NodeId, string>();
  const expectedInadequate: string[] = [];
  let anyShort = false;
  let allFull = true;
  for (const r of refs) {
    const at = `${r.type}/${r.subgroup}/${r.shard}`;
    const now = membersAt(layout, r);
    const before = membersAt(previous, r);
    const shard = layout.types.find((t) => t.typeName === r.type)!.subgroups[r.subgroup]!.shards[
      r.shard
    ]!;
    if (now.length > r.policy.nodesMax)
      fail(`${at} has ${now.length} > nodesMax ${r.policy.nodesMax}`);
    if (now.length < r.policy.nodesMax) allFull = false;
    if (new Set(now).size !== now.length) fail(`${at} holds a node twice`);
    if (shard.mode !== r.policy.mode || shard.profile !== r.policy.profile)
      fail(`${at} lost its mode or profile`);
    const senders = expectedSenders(now, r.policy.senders);
    if (JSON.stringify(shard.senders) !== JSON.stringify(senders))
      fail(`${at} senders ${shard.senders} != ${senders}`);
    if (now.length < r.policy.nodesMin) {
      anyShort = true;
      expectedInadequate.push(`${at}:too-few-nodes:${now.length}/${r.policy.nodesMin}`);
    } else if (senders.length === 0)
      expectedInadequate.push(`${at}:no-senders:${now.length}/${r.policy.nodesMin}`);
    // Reserved ids honoured: present reserved nodes are in their shard; reserved nodes nowhere else.
    for (const n of r.policy.reservedNodeIds)
      if (present.has(n) && !now.includes(n)) fail(`${at} lacks reserved node ${n}`);
    for (const n of now) {
      if (reservedAnywhere.has(n)) {
        if (!r.policy.reservedNodeIds.includes(n))
          fail(`${at} holds node ${n}, which is reserved elsewhere`);
      } else if (whereNonReserved.has(n))
        fail(`node ${n} serves in ${whereNonReserved.get(n)} and ${at}`);
      else whereNonReserved.set(n, at);
    }
    // Survivors keep their shards, in their old relative order. The one exception: a returning
    // reserved node pushed a full shard over nodesMax, so non-reserved members made room.
    const survivors = before.filter((n) => present.has(n));
    const returned = now.filter((n) => r.policy.reservedNodeIds.includes(n) && !before.includes(n));
    const makingRoom = returned.length > 0 && now.length === r.policy.nodesMax;
    for (const n of survivors) {
      if (!now.includes(n) && !(makingRoom && !reservedAnywhere.has(n)))
        fail(`${at} lost survivor ${n}`);
    }
    const keptOrder = now.filter((n) => survivors.includes(n));
    if (JSON.stringify(keptOrder) !== JSON.stringify(survivors.filter((n) => now.includes(n)))) {
      fail(`${at} reordered its survivors: ${keptOrder} vs ${survivors}`);
    }
  }
  const reported = layout.inadequate.map(
    (i) =>
      `${i.typeName}/${i.subgroupIndex}/${i.shardIndex}:${i.reason}:${i.nodesHave}/${i.nodesMin}`,
  );
  if (JSON.stringify(reported) !== JSON.stringify(expectedInadequate)) {
    fail(
      `inadequacies reported ${JSON.stringify(reported)}, expected ${JSON.stringify(expectedInadequate)}`,
    );
  }
  const spare = members.filter((n) => !reservedAnywhere.has(n) && !whereNonReserved.has(n));
  // Precise inadequacy: a shard is short only when no spare node could have filled it.
  if (anyShort && spare.length > 0) fail(`a shard is short while nodes ${spare} are unassigned`);
  // Flexible shards grow: spare nodes exist only when every shard is at its maximum.
  if (spare.length > 0 && !allFull)
    fail(`nodes ${spare} are unassigned while a shard is below nodesMax`);
  // Gaps are filled in rank order: every spare node ranks after every newly placed node.
  const rank = new Map(members.map((n, i) => [n, i]));
  const placedBefore = new Set(refs.flatMap((r) => membersAt(previous, r)));
  const newlyPlaced = [...whereNonReserved.keys()].filter((n) => !placedBefore.has(n));
  const lastPlaced = Math.max(-1, ...newlyPlaced.map((n) => rank.get(n)!));
  const firstSpare = Math.min(Infinity, ...spare.map((n) => rank.get(n)!));
  if (firstSpare < lastPlaced)
    fail(`spare node at rank ${firstSpare} skipped for rank ${lastPlaced}`);
  return problems;
}

// ---- Policy helpers -------------------------------------------------------------------------

test('fixed even sharding fills shards with consecutive ranks and leaves extras unassigned', (t) => {
  const layout = allocate({ Cache: oneSubgroup(fixedEvenShards(2, 3)) }, range(10, 18));
  t.deepEqual(shardMembers(layout, 'Cache', 0, 0), [10, 11, 12]);
  t.deepEqual(shardMembers(layout, 'Cache', 0, 1), [13, 14, 15]);
  t.deepEqual(layout.inadequate, []);
});

test('identical subgroups get their own shards, subgroup ids numbered across types by name', (t) => {
  // The user guide's example, with names: types are laid out by name, so Bar comes before Foo.
  const layout = allocate(
    { Foo: oneSubgroup(fixedEvenShards(2, 3)), Bar: identicalSubgroups(2, fixedEvenShards(1, 3)) },
    range(0, 12),
  );
  t.deepEqual(
    layout.types.map((ty) => ty.typeName),
    ['Bar', 'Foo'],
  );
  t.deepEqual(
    layout.types.map((ty) => ty.subgroups.map((s) => s.subgroupId as number)),
    [[0, 1], [2]],
  );
  t.deepEqual(shardMembers(layout, 'Bar', 0), [0, 1, 2]);
  t.deepEqual(shardMembers(layout, 'Bar', 1), [3, 4, 5]);
  t.deepEqual(shardMembers(layout, 'Foo', 0, 0), [6, 7, 8]);
  t.deepEqual(shardMembers(layout, 'Foo', 0, 1), [9, 10, 11]);
});

test('flexible even sharding meets minimums first, then grows shards round-robin up to max', (t) => {
  const policies = { Kv: oneSubgroup(flexibleEvenShards(2, 2, 4)) };
  const layout = allocate(policies, range(0, 7));
  t.deepEqual(shardMembers(layout, 'Kv', 0, 0), [0, 1, 4, 6]);
  t.deepEqual(shardMembers(layout, 'Kv', 0, 1), [2, 3, 5]);
  const full = allocate(policies, range(0, 10));
  t.deepEqual(
    [shardMembers(full, 'Kv', 0, 0).length, shardMembers(full, 'Kv', 0, 1).length],
    [4, 4],
  );
  // A join grows the smaller shard; survivors stay where they were.
  const next = allocate(policies, range(0, 8), layout);
  t.deepEqual(shardMembers(next, 'Kv', 0, 0), [0, 1, 4, 6]);
  t.deepEqual(shardMembers(next, 'Kv', 0, 1), [2, 3, 5, 7]);
});

test('a failed member is replaced from unassigned nodes and survivors keep their shard ranks', (t) => {
  const policies = { Cache: oneSubgroup(fixedEvenShards(2, 3)) };
  const first = allocate(policies, range(0, 8));
  const second = allocate(policies, ids(0, 2, 3, 4, 5, 6, 7), first); // node 1 failed
  t.deepEqual(shardMembers(second, 'Cache', 0, 0), [0, 2, 6]);
  t.deepEqual(shardMembers(second, 'Cache', 0, 1), [3, 4, 5]);
  const third = allocate(policies, ids(2, 3, 4, 5, 6, 7), second); // the shard leader failed
  t.deepEqual(shardMembers(third, 'Cache', 0, 0), [2, 6, 7]);
});

test('an under-provisioned subgroup is reported precisely while the others keep working', (t) => {
  const policies = {
    Big: oneSubgroup(fixedEvenShards(1, 5)),
    Small: oneSubgroup(fixedEvenShards(1, 2)),
  };
  const layout = allocate(policies, range(0, 4));
  // Big cannot be met with 4 nodes, so Small is filled first and Big gets the rest.
  t.deepEqual(shardMembers(layout, 'Small'), [0, 1]);
  t.deepEqual(shardMembers(layout, 'Big'), [2, 3]);
  t.deepEqual(
    layout.inadequate.map((i) => [
      i.typeName,
      i.subgroupIndex,
      i.shardIndex,
      i.reason,
      i.nodesHave,
      i.nodesMin,
    ]),
    [['Big', 0, 0, 'too-few-nodes', 2, 5]],
  );
  // Three joins later Big is whole, and nobody moved.
  const later = allocate(policies, range(0, 7), layout);
  t.deepEqual(later.inadequate, []);
  t.deepEqual(shardMembers(later, 'Big'), [2, 3, 4, 5, 6]);
  t.deepEqual(shardMembers(later, 'Small'), [0, 1]);
});

test('a short subgroup gets free nodes toward its minimum before other shards grow', (t) => {
  // So that fewer joins make it whole later; growing Small instead would need more joins.
  const policies = {
    Big: oneSubgroup(fixedEvenShards(1, 5)),
    Small: oneSubgroup(flexibleEvenShards(1, 1, 3)),
  };
  const layout = allocate(policies, range(0, 4));
  t.deepEqual(shardMembers(layout, 'Small'), [0]);
  t.deepEqual(shardMembers(layout, 'Big'), [1, 2, 3]);
  t.deepEqual(
    layout.inadequate.map((i) => [i.typeName, i.nodesHave]),
    [['Big', 3]],
  );
  const whole = allocate(policies, range(0, 6), layout);
  t.deepEqual(shardMembers(whole, 'Big'), [1, 2, 3, 4, 5]);
  t.deepEqual(whole.inadequate, []);
});

test('reserved node ids serve in several types and subgroups (overlapping) and are never fillers', (t) => {
  const policies: LayoutPolicies = {
    Foo: oneSubgroup(fixedEvenShards(2, 2, { reservedNodeIdsByShard: [ids(100), ids(101)] })),
    Bar: oneSubgroup(customShards([{ nodesMin: 2, nodesMax: 3, reservedNodeIds: ids(100, 101) }])),
  };
  const layout = allocate(policies, ids(1, 2, 3, 100, 101, 4));
  // Bar is laid out first (by name); it already meets its minimum with its reserved nodes, so
  // Foo's shards take the free nodes first and Bar grows with the last one.
  t.deepEqual(shardMembers(layout, 'Bar'), [100, 101, 3]);
  t.deepEqual(shardMembers(layout, 'Foo', 0, 0), [100, 1]);
  t.deepEqual(shardMembers(layout, 'Foo', 0, 1), [101, 2]);
  t.deepEqual(layout.inadequate, []);
  // Without the reserved nodes, Bar takes the only free node and Foo is short: reserved nodes are
  // replaced by fillers only as far as free nodes exist.
  const without = allocate(policies, ids(1, 2, 3, 4), layout);
  t.deepEqual(shardMembers(without, 'Bar'), [3, 4]);
  t.deepEqual(shardMembers(without, 'Foo', 0, 0), [1]);
  t.deepEqual(
    without.inadequate.map((i) => `${i.typeName}/${i.shardIndex}`),
    ['Foo/0', 'Foo/1'],
  );
  // Their return puts them back; Bar was full (max 3), so its newest non-reserved member (4)
  // made room and is spare now.
  const back = allocate(policies, ids(1, 2, 3, 4, 100, 101), without);
  t.deepEqual(shardMembers(back, 'Bar'), [3, 100, 101]);
  t.deepEqual(shardMembers(back, 'Foo', 0, 0), [1, 100]);
  t.deepEqual(shardMembers(back, 'Foo', 0, 1), [2, 101]);
  t.deepEqual(back.inadequate, []);
});

test('a returning reserved node displaces the highest-ranked non-reserved member of a full shard', (t) => {
  const policies = {
    Kv: oneSubgroup(customShards([{ nodesMin: 2, nodesMax: 3, reservedNodeIds: ids(9) }])),
  };
  const first = allocate(policies, ids(1, 2, 3, 4));
  t.deepEqual(shardMembers(first, 'Kv'), [1, 2, 3]);
  const second = allocate(policies, ids(1, 2, 3, 4, 9), first);
  t.deepEqual(shardMembers(second, 'Kv'), [1, 2, 9]);
});

test('sender sets: all members, chosen shard ranks, or reserved nodes', (t) => {
  const layout = allocate(
    {
      A: oneSubgroup(fixedEvenShards(1, 3)),
      B: oneSubgroup(fixedEvenShards(1, 3, { senders: { shardRanks: [0] } })),
      C: oneSubgroup(
        fixedEvenShards(1, 2, { reservedNodeIdsByShard: [ids(50)], senders: { nodeIds: ids(50) } }),
      ),
    },
    ids(1, 2, 3, 4, 5, 6, 7, 50),
  );
  const senders = (type: string): number[] => [
    ...layout.types.find((x) => x.typeName === type)!.subgroups[0]!.shards[0]!.senders,
  ];
  t.deepEqual(senders('A'), [1, 2, 3]);
  t.deepEqual(senders('B'), [4]);
  t.deepEqual(senders('C'), [50]);
  // Without node 50, C has members but nobody may send: a no-senders inadequacy.
  const without = allocate(
    {
      C: oneSubgroup(
        fixedEvenShards(1, 2, { reservedNodeIdsByShard: [ids(50)], senders: { nodeIds: ids(50) } }),
      ),
    },
    ids(1, 2),
    layout,
  );
  t.deepEqual(
    without.inadequate.map((i) => i.reason),
    ['no-senders'],
  );
});

test('delivery mode and profile are set per shard', (t) => {
  const layout = allocate(
    {
      Log: oneSubgroup(
        customShards([
          { nodesMin: 1, nodesMax: 1, mode: 'raft', profile: 'large' },
          { nodesMin: 1, nodesMax: 1, mode: 'raw' },
          { nodesMin: 1, nodesMax: 1 },
        ]),
      ),
    },
    range(0, 3),
  );
  const shards = layout.types[0]!.subgroups[0]!.shards;
  t.deepEqual(
    shards.map((s) => [s.mode, s.profile]),
    [
      ['raft', 'large'],
      ['raw', 'default'],
      ['ordered', 'default'],
    ],
  );
});

test('the first view with no members reports every shard short, and nothing is thrown', (t) => {
  const layout = allocate({ A: identicalSubgroups(2, fixedEvenShards(1, 1)) }, []);
  t.is(layout.inadequate.length, 2);
  t.true(layout.inadequate.every((i) => i.reason === 'too-few-nodes' && i.nodesHave === 0));
});

test('a previous layout of another shape (policy changed) is laid out afresh', (t) => {
  const before = allocate({ A: oneSubgroup(fixedEvenShards(1, 2)) }, range(0, 4));
  const after = allocate({ A: oneSubgroup(fixedEvenShards(2, 2)) }, ids(3, 2, 1, 0), before);
  t.deepEqual(shardMembers(after, 'A', 0, 0), [3, 2]);
  t.deepEqual(shardMembers(after, 'A', 0, 1), [1, 0]);
});

// ---- Policy validation ----------------------------------------------------------------------

const policyErrors: [string, () => unknown, RegExp][] = [
  [
    'nodesMin above nodesMax',
    () => compilePolicies({ A: oneSubgroup(flexibleEvenShards(1, 4, 2)) }),
    /A\.subgroups\[0\]\.shards\[0\]: nodesMin \(4\) is greater than nodesMax \(2\)\. Fix: make nodesMin <= nodesMax\./,
  ],
  [
    'nodesMin zero',
    () => compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 0)) }),
    /nodesMin is 0\. Fix: use an integer >= 1\./,
  ],
  [
    'fractional nodesMax',
    () => compilePolicies({ A: oneSubgroup(flexibleEvenShards(1, 1, 2.5)) }),
    /nodesMax is 2\.5\. Fix: use an integer >= 1\./,
  ],
  [
    'reserved id twice in one shard',
    () =>
      compilePolicies({
        A: oneSubgroup(customShards([{ nodesMin: 1, nodesMax: 3, reservedNodeIds: ids(7, 7) }])),
      }),
    /reserves node 7 twice\. Fix: list each reserved node once per shard\./,
  ],
  [
    'reserved id in two shards of one subgroup',
    () =>
      compilePolicies({
        A: oneSubgroup(fixedEvenShards(2, 2, { reservedNodeIdsByShard: [ids(7), ids(7)] })),
      }),
    /A\.subgroups\[0\]\.shards\[1\]: reserves node 7, already reserved by shard 0 of the same subgroup\. Fix: .*reserve the node in one of them\./,
  ],
  [
    'more reserved ids than nodesMax',
    () =>
      compilePolicies({
        A: oneSubgroup(customShards([{ nodesMin: 1, nodesMax: 1, reservedNodeIds: ids(1, 2) }])),
      }),
    /reserves 2 nodes but nodesMax is 1\. Fix: raise nodesMax or reserve fewer nodes\./,
  ],
  [
    'no subgroups',
    () => compilePolicies({ A: identicalSubgroups(0, fixedEvenShards(1, 1)) }),
    /A: has no subgroups\. Fix: use oneSubgroup/,
  ],
  [
    'no shards',
    () => compilePolicies({ A: oneSubgroup(fixedEvenShards(0, 1)) }),
    /has no shards\. Fix: give at least one shard/,
  ],
  [
    'no types',
    () => compilePolicies({}),
    /no replicated types\. Fix: give a policy for each registered type\./,
  ],
  [
    'unknown mode',
    () => compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 1, { mode: 'fast' as never })) }),
    /mode is "fast"\. Fix: use one of ordered, raw, raft\./,
  ],
  [
    'empty profile',
    () => compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 1, { profile: '' })) }),
    /profile is empty\. Fix: name a profile/,
  ],
  [
    'sender rank beyond nodesMax',
    () =>
      compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 2, { senders: { shardRanks: [2] } })) }),
    /sender shard rank 2 is outside 0\.\.1\. Fix: use ranks below nodesMax\./,
  ],
  [
    'sender rank twice',
    () =>
      compilePolicies({
        A: oneSubgroup(fixedEvenShards(1, 2, { senders: { shardRanks: [0, 0] } })),
      }),
    /sender shard rank 0 is listed twice\. Fix: list each rank once\./,
  ],
  [
    'no sender ranks',
    () =>
      compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 2, { senders: { shardRanks: [] } })) }),
    /senders\.shardRanks is empty\. Fix:/,
  ],
  [
    'sender node not reserved',
    () =>
      compilePolicies({ A: oneSubgroup(fixedEvenShards(1, 2, { senders: { nodeIds: ids(3) } })) }),
    /sender node 3 is not reserved in this shard.*Fix: add it to reservedNodeIds\./,
  ],
  [
    'reserved lists of the wrong length',
    () => fixedEvenShards(2, 2, { reservedNodeIdsByShard: [ids(1)] }),
    /has 1 lists for 2 shards\. Fix: give one list per shard/,
  ],
];

for (const [name, make, message] of policyErrors) {
  test(`policy validation refuses: ${name}`, (t) => {
    const error = t.throws(make, { instanceOf: LayoutPolicyError, message });
    t.true(error instanceof SquallError);
    t.is(error!.name, 'LayoutPolicyError');
    t.is(error!.code, 'LAYOUT_POLICY');
  });
}

test('policy validation lists every problem at once and defaultAllocator validates eagerly', (t) => {
  const error = t.throws(
    () =>
      defaultAllocator({
        A: oneSubgroup(flexibleEvenShards(1, 3, 2)),
        B: oneSubgroup(fixedEvenShards(0, 1)),
      }),
    { instanceOf: LayoutPolicyError },
  );
  t.deepEqual(
    error!.problems.map((p) => p.path),
    ['A.subgroups[0].shards[0]', 'B.subgroups[0]'],
  );
});

// ---- User-supplied allocators ---------------------------------------------------------------

test('a user allocator replaces the default and its output is checked', (t) => {
  const everyoneInOne = (input: { members: readonly NodeId[] }): Layout => ({
    types: [
      {
        typeName: 'All',
        subgroups: [
          {
            subgroupId: 0 as never,
            shards: [
              {
                members: [...input.members],
                senders: [...input.members],
                mode: 'ordered',
                profile: 'default',
              },
            ],
          },
        ],
      },
    ],
    inadequate: [],
  });
  const layout = runAllocator(everyoneInOne, { previous: undefined, members: range(0, 3) });
  t.deepEqual(shardMembers(layout, 'All'), [0, 1, 2]);
  const twice = (): Layout => everyoneInOne({ members: ids(1, 1) });
  t.throws(() => runAllocator(twice, { previous: undefined, members: ids(1) }), {
    instanceOf: AllocatorOutputError,
    message: /node 1 appears twice in one subgroup.*Fix: correct the allocator function/s,
  });
  const stranger = (): Layout => everyoneInOne({ members: ids(5) });
  t.throws(() => runAllocator(stranger, { previous: undefined, members: ids(1) }), {
    instanceOf: AllocatorOutputError,
    message: /node 5, which is not a view member/,
  });
  const throws = (): Layout => {
    throw new Error('boom');
  };
  t.throws(() => runAllocator(throws, { previous: undefined, members: ids(1) }), {
    instanceOf: AllocatorOutputError,
    message: /it threw boom/,
  });
  const dflt = defaultAllocator({ A: oneSubgroup(fixedEvenShards(1, 2)) });
  t.deepEqual(
    shardMembers(runAllocator(dflt, { previous: undefined, members: range(0, 3) }), 'A'),
    [0, 1],
  );
});

// ---- Random sequences of views --------------------------------------------------------------

const TYPE_NAMES = ['Alpha', 'Bravo', 'Cache', 'Delta'];
const NODE_ID_SPACE = 24;

function randomShard(r: SeededRandom, reservedInSubgroup: Set<number>): ShardPolicy {
  const nodesMin = 1 + r.int(3);
  const nodesMax = nodesMin + r.int(3);
  const reserved: NodeId[] = [];
  if (r.int(3) === 0) {
    for (let k = 1 + r.int(Math.min(2, nodesMax)); k > 0; k--) {
      const n = r.int(NODE_ID_SPACE);
      if (!reservedInSubgroup.has(n) && reserved.length < nodesMax) {
        reservedInSubgroup.add(n);
        reserved.push(nodeId(n));
      }
    }
  }
  const choice = r.int(4);
  const senders: SendersPolicy =
    choice === 1
      ? { shardRanks: [0] }
      : choice === 2 && nodesMax > 1
        ? { shardRanks: [0, 1] }
        : choice === 3 && reserved.length > 0
          ? { nodeIds: [reserved[0]!] }
          : 'all';
  return {
    nodesMin,
    nodesMax,
    mode: DELIVERY_MODES[r.int(3)]!,
    profile: r.int(2) === 0 ? 'default' : 'large',
    reservedNodeIds: reserved,
    senders,
  };
}

function randomPolicies(r: SeededRandom): Record<string, TypePolicy> {
  const policies: Record<string, TypePolicy> = {};
  const typeCount = 1 + r.int(3);
  const names = [...TYPE_NAMES];
  for (let i = names.length - 1; i > 0; i--) {
    const j = r.int(i + 1);
    [names[i], names[j]] = [names[j]!, names[i]!];
  }
  for (const name of names) {
    if (Object.keys(policies).length === typeCount) break;
    if (r.int(4) === 0) continue;
    const subgroups = Array.from({ length: 1 + r.int(3) }, () => {
      const reservedInSubgroup = new Set<number>();
      return {
        shards: Array.from({ length: 1 + r.int(3) }, () => randomShard(r, reservedInSubgroup)),
      };
    });
    policies[name] = { subgroups };
  }
  if (Object.keys(policies).length === 0) policies.Alpha = oneSubgroup(fixedEvenShards(1, 2));
  return policies;
}

/** The next member list: survivors in rank order, then joiners (a batch of changes). */
function nextMembers(r: SeededRandom, members: NodeId[]): NodeId[] {
  let next = [...members];
  const changes = 1 + (r.int(4) === 0 ? r.int(4) : 0);
  for (let c = 0; c < changes; c++) {
    const roll = r.int(10);
    if (roll < 5 || next.length === 0) {
      const absent = range(0, NODE_ID_SPACE).filter((n) => !next.includes(n));
      if (absent.length > 0) next.push(absent[r.int(absent.length)]!);
    } else {
      next.splice(r.int(next.length), 1); // a failure or a clean leave: the same to the allocator
    }
  }
  return next;
}

/** A copy of the policies with types inserted in reverse order, as a Map. */
function reordered(policies: Record<string, TypePolicy>): Map<string, TypePolicy> {
  return new Map(Object.entries(policies).reverse());
}

test('random view sequences keep every allocator invariant (400 seeds x 40 views)', (t) => {
  let steps = 0;
  let inadequateSteps = 0;
  for (let seed = 1; seed <= 400; seed++) {
    const r = new SeededRandom(seed);
    const raw = randomPolicies(r);
    const policies = compilePolicies(raw);
    const shuffled = compilePolicies(reordered(raw));
    let members = range(0, r.int(8));
    let previous: Layout | undefined;
    for (let step = 0; step < 40; step++) {
      const layout = allocateLayout(policies, previous, members);
      const problems = invariantProblems(policies, previous, members, layout);
      if (problems.length > 0) {
        t.fail(`seed ${seed} step ${step} members ${members}: ${problems.join('; ')}`);
        return;
      }
      // Deterministic: same input, same output, whatever order the types were given in.
      const again = allocateLayout(
        shuffled,
        previous === undefined ? undefined : structuredClone(previous),
        [...members],
      );
      if (JSON.stringify(again) !== JSON.stringify(layout)) {
        t.fail(`seed ${seed} step ${step}: the layout depends on type insertion order`);
        return;
      }
      steps += 1;
      if (layout.inadequate.length > 0) inadequateSteps += 1;
      previous = layout;
      members = nextMembers(r, members);
    }
  }
  // The sequences must exercise both adequate and inadequate views, or they prove little.
  t.true(inadequateSteps > steps / 20, `only ${inadequateSteps} of ${steps} views were inadequate`);
  t.true(
    inadequateSteps < steps - steps / 20,
    `${inadequateSteps} of ${steps} views were inadequate`,
  );
});

test('the invariant checker catches a layout that breaks the rules', (t) => {
  // Guards against an invariant that silently checks nothing.
  const policies = compilePolicies({ A: oneSubgroup(flexibleEvenShards(1, 2, 3)) });
  const good = allocateLayout(policies, undefined, range(0, 4));
  t.deepEqual(invariantProblems(policies, undefined, range(0, 4), good), []);
  const moved = allocateLayout(policies, undefined, ids(3, 2, 1, 0));
  t.true(
    invariantProblems(policies, good, range(0, 4), moved).some((p) => p.includes('lost survivor')),
  );
  const short: Layout = {
    ...good,
    types: [
      {
        ...good.types[0]!,
        subgroups: [
          {
            ...good.types[0]!.subgroups[0]!,
            shards: [
              { ...good.types[0]!.subgroups[0]!.shards[0]!, members: ids(0), senders: ids(0) },
            ],
          },
        ],
      },
    ],
  };
  t.true(
    invariantProblems(policies, undefined, range(0, 4), short).some((p) =>
      p.includes('inadequacies reported'),
    ),
  );
});
