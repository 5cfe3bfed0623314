/**
 * Overlapping subgroups: two replicated types whose shards share members, through reserved node
 * ids. 4 nodes in this process: Inventory on nodes 0, 1, 2 and Orders on nodes 1, 2, 3, so nodes
 * 1 and 2 hold a replica of both and can make ordered calls into both. Run:
 *   node dist/examples/overlapping-subgroups.js
 */
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  fixedEvenShards,
  nodeId,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
} from '../src/index.js';
import { localGroupConfigs } from '../src/group/local.js';

@replicated()
export class Inventory {
  declare readonly [ORDERED_METHODS]: 'take';
  declare readonly [P2P_METHODS]: 'left';
  @persistent() stock = new Persistent(() => 10);
  @ordered() take(count: number): number {
    if (count > this.stock.value) throw new RangeError(`only ${this.stock.value} left`);
    this.stock.value -= count;
    return this.stock.value;
  }
  @p2p() left(): number {
    return this.stock.value;
  }
}

@replicated()
export class Orders {
  declare readonly [ORDERED_METHODS]: 'record';
  declare readonly [P2P_METHODS]: 'count';
  @persistent() placed = new Persistent(() => 0);
  @ordered() record(): number {
    return ++this.placed.value;
  }
  @p2p() count(): number {
    return this.placed.value;
  }
}

const ids = (...n: number[]) => [n.map(nodeId)];
const layout = {
  Inventory: oneSubgroup(fixedEvenShards(1, 3, { reservedNodeIdsByShard: ids(0, 1, 2) })),
  Orders: oneSubgroup(fixedEvenShards(1, 3, { reservedNodeIdsByShard: ids(1, 2, 3) })),
};
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-overlap-'));
const configs = await localGroupConfigs(4, { dataRoot });
const groups = await Promise.all(configs.map((c) => Group.start(c, { types: [Inventory, Orders], layout })));
try {
  console.log(`Inventory on nodes [${groups[0]!.members(Inventory)[0]!.join(', ')}], Orders on nodes [${groups[0]!.members(Orders)[0]!.join(', ')}]`);
  for (const g of groups) console.log(`node ${g.nodeId} holds: ${g.shards.map((s) => s.typeName).join(' and ')}`);
  const both = groups[1]!; // a member of both subgroups places an order: two ordered calls
  for (let i = 0; i < 3; i++) {
    const left = (await both.subgroup(Inventory).ordered.take(3)).get(both.nodeId);
    const order = both.subgroup(Orders).ordered.record();
    const placed = await order;
    await order.persisted();
    console.log(`node ${both.nodeId}: took 3, ${left} left; order #${placed.get(both.nodeId)} recorded on nodes [${[...placed.keys()].join(', ')}]`);
  }
  console.log(`node 3 (Orders only) reads Inventory from node 0: ${await groups[3]!.nonmember(Inventory).p2p(0).left()} left`);
  console.log(`node 0 (Inventory only) reads Orders from node 3: ${await groups[0]!.nonmember(Orders).p2p(3).count()} orders`);
} finally {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
}
