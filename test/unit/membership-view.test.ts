// Proves the View model keeps its contract: lookups by node (rank, address, shards, subgroups,
// sender flags) agree with the layout, adequacy is reported per subgroup, invalid views are
// refused with named errors, and encoding is deterministic and round-trips exactly.
import test from 'ava';
import { Packr } from 'msgpackr';
import { nodeId, shardIndex, subgroupId, viewId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import {
  allocateLayout,
  compilePolicies,
  customShards,
  fixedEvenShards,
  flexibleEvenShards,
  identicalSubgroups,
  oneSubgroup,
} from '../../src/membership/layout.js';
import {
  canonicalView,
  decodeView,
  describeInadequacy,
  encodeView,
  InvalidViewError,
  View,
  ViewDecodeError,
  type Layout,
  type ViewInit,
} from '../../src/membership/view.js';

const ids = (...values: number[]): NodeId[] => values.map(nodeId);
const member = (n: number): { id: NodeId; address: string } => ({
  id: nodeId(n),
  address: `127.0.0.1:${9000 + n}`,
});

const policies = compilePolicies({
  Cache: identicalSubgroups(2, fixedEvenShards(1, 2)),
  Kv: oneSubgroup(flexibleEvenShards(2, 1, 2, { senders: { shardRanks: [0] } })),
  Meta: oneSubgroup(
    customShards([{ nodesMin: 2, nodesMax: 2, reservedNodeIds: ids(1, 2), mode: 'raft' }]),
  ),
});

function makeView(memberIds: number[], previous?: View): View {
  const members = memberIds.map(member);
  const layout = allocateLayout(
    policies,
    previous?.layout,
    members.map((m) => m.id),
  );
  const before = new Set(previous?.memberIds ?? []);
  const now = new Set(members.map((m) => m.id));
  return new View({
    id: viewId(previous === undefined ? 0 : previous.id + 1),
    members,
    joined: members.map((m) => m.id).filter((n) => !before.has(n)),
    departed: [],
    failed: [...before].filter((n) => !now.has(n)),
    layout,
  });
}

test('lookups by node agree with the layout, including overlapping subgroups', (t) => {
  const view = makeView([1, 2, 3, 4, 5, 6, 7, 8]);
  t.is(view.rankOf(nodeId(3)), 2);
  t.is(view.rankOf(nodeId(99)), -1);
  t.true(view.isMember(nodeId(8)));
  t.is(view.addressOf(nodeId(4)), '127.0.0.1:9004');
  t.is(view.addressOf(nodeId(99)), undefined);
  // Cache: subgroups 0 and 1; Kv: 2; Meta: 3 (types by name). Nodes 1 and 2 are reserved in Meta
  // and never fill other shards.
  t.deepEqual(view.subgroupsOf(nodeId(1)), [subgroupId(3)]);
  t.deepEqual(view.shardsOf(nodeId(1)), [
    {
      typeName: 'Meta',
      subgroupIndex: 0,
      subgroupId: subgroupId(3),
      shardIndex: shardIndex(0),
      shardRank: 0,
      isSender: true,
      mode: 'raft',
      profile: 'default',
    },
  ]);
  t.deepEqual(view.subgroup('Cache', 0)!.shards[0]!.members, ids(3, 4));
  t.deepEqual(view.subgroup('Cache', 1)!.shards[0]!.members, ids(5, 6));
  t.deepEqual(
    view.subgroup('Kv', 0)!.shards.map((s) => s.members),
    [ids(7), ids(8)],
  );
  const kvShard = view.shardsOf(nodeId(8))[0]!;
  t.is(kvShard.shardIndex, shardIndex(1));
  t.true(kvShard.isSender);
  t.deepEqual(view.shard(subgroupId(2), shardIndex(1))?.members, ids(8));
  t.is(view.shard(subgroupId(9), shardIndex(0)), undefined);
  t.deepEqual(view.shardsOf(nodeId(99)), []);
  t.true(view.isAdequate);
  t.deepEqual(view.joined, ids(1, 2, 3, 4, 5, 6, 7, 8));
});

test('a node in several overlapping subgroups sees one entry per shard, senders by shard rank', (t) => {
  const overlap = compilePolicies({
    A: oneSubgroup(customShards([{ nodesMin: 1, nodesMax: 2, reservedNodeIds: ids(5) }])),
    B: oneSubgroup(
      customShards([
        { nodesMin: 2, nodesMax: 2, reservedNodeIds: ids(5), senders: { shardRanks: [1] } },
      ]),
    ),
  });
  const members = ids(5, 6, 7);
  const view = new View({
    id: viewId(1),
    members: members.map((n) => member(n)),
    joined: members,
    departed: [],
    failed: [],
    layout: allocateLayout(overlap, undefined, members),
  });
  t.deepEqual(
    view.shardsOf(nodeId(5)).map((s) => [s.typeName, s.shardRank, s.isSender]),
    [
      ['A', 0, true],
      ['B', 0, false],
    ],
  );
  // B needs a second node and takes 6 first; A then grows with 7.
  t.deepEqual(
    view.shardsOf(nodeId(6)).map((s) => [s.typeName, s.shardRank, s.isSender]),
    [['B', 1, true]],
  );
  t.deepEqual(
    view.shardsOf(nodeId(7)).map((s) => [s.typeName, s.shardRank, s.isSender]),
    [['A', 1, true]],
  );
});

test('an inadequate view names the affected subgroups and why; the others stay adequate', (t) => {
  const view = makeView([1, 2, 3, 4, 5]);
  t.false(view.isAdequate);
  t.true(view.isSubgroupAdequate(subgroupId(0)));
  t.true(view.isSubgroupAdequate(subgroupId(3)));
  const shortOnes = [0, 1, 2, 3].filter((s) => !view.isSubgroupAdequate(subgroupId(s)));
  // Meta takes its reserved 1 and 2; Cache 0 takes 3 and 4; neither Cache 1 (needs 2) nor Kv
  // (needs 2) can be met by node 5, which goes to Cache 1 (first in layout order).
  t.deepEqual(shortOnes, [1, 2]);
  t.deepEqual(
    view.inadequaciesOf(subgroupId(2)).map((i) => [i.shardIndex, i.nodesHave]),
    [
      [0, 0],
      [1, 0],
    ],
  );
  const [problem] = view.inadequaciesOf(subgroupId(1));
  t.is(
    describeInadequacy(problem!),
    'Cache subgroup 1 shard 0 has 1 of at least 2 nodes (1 more must join)',
  );
  const noSender = describeInadequacy({ ...problem!, reason: 'no-senders', nodesHave: 2 });
  t.regex(noSender, /has 2 nodes but none of its configured senders is present/);
});

test('views across a failure keep survivors in place and record who failed and joined', (t) => {
  const first = makeView([1, 2, 3, 4, 5, 6, 7, 8]);
  const second = makeView([1, 2, 4, 5, 6, 7, 8, 9], first);
  t.deepEqual(second.failed, ids(3));
  t.deepEqual(second.joined, ids(9));
  t.is(second.id, viewId(1));
  t.deepEqual(second.subgroup('Cache', 0)!.shards[0]!.members, ids(4, 9));
});

function validInit(): ViewInit {
  const v = makeView([1, 2, 3, 4, 5, 6, 7, 8]);
  return {
    id: v.id,
    members: v.members,
    joined: v.joined,
    departed: v.departed,
    failed: v.failed,
    layout: v.layout,
  };
}

function withShard(layout: Layout, members: NodeId[], senders: NodeId[]): Layout {
  const [cache, ...rest] = layout.types;
  const [first, ...others] = cache!.subgroups;
  return {
    ...layout,
    types: [
      {
        ...cache!,
        subgroups: [{ ...first!, shards: [{ ...first!.shards[0]!, members, senders }] }, ...others],
      },
      ...rest,
    ],
  };
}

const invalid: [string, (init: ViewInit) => ViewInit, RegExp][] = [
  [
    'a member listed twice',
    (i) => ({ ...i, members: [...i.members, member(1)] }),
    /node 1 is listed twice among the members of view 0\. Fix: list each member once/,
  ],
  [
    'a joined node that is not a member',
    (i) => ({ ...i, joined: ids(42) }),
    /joined node 42 is not a member.*Fix:/,
  ],
  [
    'a failed node still a member',
    (i) => ({ ...i, failed: ids(1) }),
    /removed node 1 is still a member.*Fix: drop departed and failed nodes/,
  ],
  [
    'a shard member outside the view',
    (i) => ({ ...i, layout: withShard(i.layout, ids(3, 42), ids(3)) }),
    /Cache" subgroup 0 shard 0 contains node 42, which is not a view member\. Fix:/,
  ],
  [
    'a node twice in one shard',
    (i) => ({ ...i, layout: withShard(i.layout, ids(3, 3), ids(3)) }),
    /node 3 appears twice in one subgroup\. Fix: keep the shards of a subgroup disjoint/,
  ],
  [
    'a sender outside its shard',
    (i) => ({ ...i, layout: withShard(i.layout, ids(3, 4), ids(5)) }),
    /sender 5 is not a member of the shard\. Fix:/,
  ],
  [
    'senders out of shard-rank order',
    (i) => ({ ...i, layout: withShard(i.layout, ids(3, 4), ids(4, 3)) }),
    /not in shard-rank order\. Fix:/,
  ],
  [
    'types out of order',
    (i) => ({ ...i, layout: { ...i.layout, types: [...i.layout.types].reverse() } }),
    /out of order or repeated.*Fix: list types once each, sorted by name/,
  ],
  [
    'subgroup ids not consecutive',
    (i) => ({ ...i, layout: { ...i.layout, types: i.layout.types.slice(1) } }),
    /has subgroup id 2, expected 0\. Fix: number subgroups consecutively/,
  ],
  [
    'an inadequacy for a shard that does not exist',
    (i) => ({
      ...i,
      layout: {
        ...i.layout,
        inadequate: [
          {
            typeName: 'Nope',
            subgroupIndex: 0,
            subgroupId: subgroupId(0),
            shardIndex: shardIndex(0),
            reason: 'too-few-nodes',
            nodesHave: 0,
            nodesMin: 1,
          },
        ],
      },
    }),
    /names Nope subgroup 0 shard 0, which is not in the layout/,
  ],
];

for (const [name, mutate, message] of invalid) {
  test(`a view is refused: ${name}`, (t) => {
    const error = t.throws(() => new View(mutate(validInit())), {
      instanceOf: InvalidViewError,
      message,
    });
    t.is(error!.name, 'InvalidViewError');
    t.is(error!.code, 'INVALID_VIEW');
  });
}

test('encoding round-trips exactly and is independent of property insertion order', (t) => {
  let view = makeView([1, 2, 3]);
  const r = new SeededRandom(11);
  for (let step = 0; step < 30; step++) {
    const bytes = encodeView(view);
    const back = decodeView(bytes);
    t.deepEqual(canonicalView(back), canonicalView(view));
    t.deepEqual(encodeView(back), bytes);
    t.deepEqual(back.shardsOf(nodeId(4)), view.shardsOf(nodeId(4)));
    const ids = view.memberIds.map(Number).filter(() => r.int(5) !== 0);
    view = makeView([...ids, 10 + step, 40 + step], view);
  }
  // The same view built from objects whose keys were written in another order encodes the same.
  const init = validInit();
  const scrambled: ViewInit = {
    layout: {
      inadequate: init.layout.inadequate,
      types: init.layout.types.map((ty) => ({
        subgroups: ty.subgroups.map((s) => ({
          shards: s.shards.map((sh) => ({
            profile: sh.profile,
            mode: sh.mode,
            senders: sh.senders,
            members: sh.members,
          })),
          subgroupId: s.subgroupId,
        })),
        typeName: ty.typeName,
      })),
    },
    failed: init.failed,
    departed: init.departed,
    joined: init.joined,
    members: init.members.map((m) => ({ address: m.address, id: m.id })),
    id: init.id,
  };
  t.deepEqual(encodeView(new View(scrambled)), encodeView(new View(init)));
});

test('encodeView returns a buffer the caller owns', (t) => {
  const a = encodeView(makeView([1, 2, 3, 4]));
  const copy = Uint8Array.from(a);
  encodeView(makeView([5, 6, 7, 8, 9, 10, 11, 12]));
  t.deepEqual(a, copy);
});

test('views are frozen: the layout cannot be changed through a view', (t) => {
  const view = makeView([1, 2, 3, 4, 5, 6, 7, 8]);
  t.throws(() => {
    (view.layout.types[0]!.subgroups[0]!.shards[0]!.members as NodeId[]).push(nodeId(1));
  });
  t.throws(() => {
    (view.members as unknown[]).pop();
  });
});

test('decodeView refuses malformed bytes with a named error', (t) => {
  const good = canonicalView(makeView([1, 2, 3]));
  t.throws(() => decodeView(Uint8Array.from([0x92, 0x01])), {
    instanceOf: ViewDecodeError,
    message: /not msgpack.*Fix: decode only bytes made by encodeView/,
  });
  const bytes = encodeView(makeView([1, 2]));
  const before = Object.keys(bytes);
  decodeView(bytes);
  t.deepEqual(Object.keys(bytes), before, "decoding leaves the caller's buffer untouched");
  t.throws(() => decodeView(Uint8Array.from([0x93, 1, 2, 3])), {
    instanceOf: ViewDecodeError,
    message: /has 3 fields, expected 8/,
  });
  const badVersion = [2, ...good.slice(1)];
  const encode = (value: unknown): Uint8Array => new Packr({ useRecords: false }).pack(value);
  t.throws(() => decodeView(encode(badVersion)), {
    instanceOf: ViewDecodeError,
    message: /format version 2, this build reads 1/,
  });
  const badMode = structuredClone(good) as unknown[];
  ((((badMode[6] as unknown[])[0] as unknown[])[1] as unknown[][])[0]![1] as unknown[][])[0]![2] =
    7;
  t.throws(() => decodeView(encode(badMode)), {
    instanceOf: ViewDecodeError,
    message: /unknown delivery mode 7/,
  });
  const badMember = structuredClone(good) as unknown[];
  (badMember[2] as unknown[][])[0]![0] = -1;
  t.throws(() => decodeView(encode(badMember)), {
    instanceOf: ViewDecodeError,
    message: /member id is not a uint32/,
  });
});
