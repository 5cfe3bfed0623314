// Proves that replies to many concurrent ordered calls reach the right call and the right member
// (three nodes in this process on loopback, native endpoints, LMDB): members send the replies
// of one event-loop turn to each caller as one frame, and the caller decodes each reply only
// when it is asked for. 300 calls from all three nodes at once each get, from every member,
// the value computed for that very call; a method that throws on one member only gives that
// member's reply a RemoteError naming it while the others' replies are values; frontier waits
// of every call resolve; the replicas' states end equal.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  RemoteError,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
  type ReplicaContext,
} from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';

@replicated({ name: 'GroupRepliesTally', factory: (c) => new Tally(c as ReplicaContext), transient: ['replica'] })
class Tally {
  declare readonly [ORDERED_METHODS]: 'add' | 'refuseOn';
  declare readonly [P2P_METHODS]: 'total';
  @persistent() sum = new Persistent(() => 0);
  constructor(private readonly replica: ReplicaContext) {}

  /** Returns something only this call and this member produce: `tag * 10 + node id`. */
  @ordered() add(n: number, tag: number): number {
    this.sum.value += n;
    return tag * 10 + this.replica.nodeId;
  }
  /** Throws on member `node` only (no state change: the replicas stay equal). */
  @ordered() refuseOn(node: number): number {
    if (this.replica.nodeId === node) throw new RangeError(`refused on ${node}`);
    return this.replica.nodeId;
  }
  @p2p() total(): number {
    return this.sum.value;
  }
}

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-replies-'));
let groups: Group[] = [];

test.before(async () => {
  const configs = await localGroupConfigs(3, { dataRoot });
  const layout = { GroupRepliesTally: oneSubgroup(fixedEvenShards(1, 3)) };
  groups = await Promise.all(configs.map((config) => Group.start(config, { types: [Tally], layout })));
});

test.after.always(async () => {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
});

test.serial('300 concurrent calls from three nodes: every member\'s reply reaches its own call', async (t) => {
  const handles = groups.map((g) => g.subgroup(Tally));
  const members = [...handles[0]!.members];
  const calls = Array.from({ length: 300 }, (_, tag) => handles[tag % 3]!.ordered.add(1, tag));
  const replies = await Promise.all(calls);
  replies.forEach((reply, tag) => {
    t.deepEqual([...reply.keys()], members, `call ${tag}: one reply per member, in rank order`);
    for (const [node, value] of reply) if (value !== tag * 10 + node) t.fail(`call ${tag} got ${value} from node ${node}`);
  });
  await Promise.all(calls.map((c) => c.persisted()));
  const totals = await Promise.all(members.map((node) => handles[0]!.p2p(node).total()));
  t.deepEqual(totals, [300, 300, 300]);
  t.is(new Set(handles.map((h) => h.digest())).size, 1, 'equal replicas');
});

test.serial('an error on one member is that member\'s RemoteError; the others reply values', async (t) => {
  const handles = groups.map((g) => g.subgroup(Tally));
  const members = [...handles[0]!.members];
  const refused = members[1]!;
  // Many at once, so the refusals share reply frames with the values.
  const calls = Array.from({ length: 60 }, (_, i) => handles[i % 3]!.ordered.refuseOn(refused));
  for (const call of calls) {
    for (const node of members) {
      const reply = call.replies.get(node)!;
      if (node === refused) {
        const error = await t.throwsAsync(reply, { instanceOf: RemoteError });
        t.is(error?.remoteName, 'RangeError');
        t.is(error?.nodeId, refused);
      } else {
        t.is(await reply, node);
      }
    }
    await t.throwsAsync(Promise.resolve(call), { instanceOf: RemoteError }, 'awaiting the map rejects');
  }
});
