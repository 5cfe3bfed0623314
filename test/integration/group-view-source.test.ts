// Proves the group's side of the ViewSource seam with a view source that can install a second
// view (what the membership driver will do): group.view, group.on('view') and the replicas'
// onViewChange follow it, and a reply still awaited from a member the new view removed rejects
// with NodeRemovedError (the call names it) while the other members' replies stay pending.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  NodeRemovedError,
  ORDERED_METHODS,
  Persistent,
  StaticViewSource,
  View,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  persistent,
  replicated,
  staticMembersFromConfig,
  viewId,
  type ReplicaContext,
  type ViewListener,
  type ViewSource,
} from '../../src/index.js';
import { defaultAllocator } from '../../src/membership/layout.js';
import { localGroupConfigs } from '../../src/group/local.js';

const seenViews: number[] = [];

@replicated({ name: 'ViewSourceTestCell', factory: (c) => new Cell(c as ReplicaContext) })
class Cell {
  declare readonly [ORDERED_METHODS]: 'set';
  @persistent() value = new Persistent(() => 0);
  constructor(context: ReplicaContext) {
    context.onViewChange((view) => seenViews.push(view.id));
  }
  @ordered() set(n: number): number {
    this.value.value = n;
    return n;
  }
}

/** StaticViewSource plus install(view), as a membership driver would do. */
class SteppableViewSource implements ViewSource {
  private readonly listeners: ViewListener[] = [];
  private latest: View | undefined;
  constructor(private readonly first: StaticViewSource) {}
  current(): View | undefined {
    return this.latest;
  }
  on(_event: 'view', listener: ViewListener): void {
    this.listeners.push(listener);
  }
  async start(): Promise<View> {
    this.latest = await this.first.start();
    return this.latest;
  }
  install(view: View): void {
    this.latest = view;
    for (const l of this.listeners) l(view);
  }
  async close(): Promise<void> {}
}

const layout = { ViewSourceTestCell: oneSubgroup(fixedEvenShards(1, 3)) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-view-source-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

test('a new view without a member fails the replies awaited from it with NodeRemovedError', async (t) => {
  const configs = await localGroupConfigs(3, { dataRoot });
  const allocator = defaultAllocator(layout);
  const source = new SteppableViewSource(new StaticViewSource(staticMembersFromConfig(configs[0]!), allocator));
  const groups = await Promise.all(configs.map((config, i) =>
    Group.start(config, { types: [Cell], layout, ...(i === 0 ? { viewSource: source } : {}) })));
  const views: number[] = [];
  groups[0]!.on('view', (view) => views.push(view.id));
  try {
    t.is(await groups[0]!.subgroup(Cell).ordered.set(1).then((r) => r.size), 3);
    await groups[2]!.close(); // node 2 stops: nothing more is delivered until a view change
    const pending = groups[0]!.subgroup(Cell).ordered.set(2);
    const first = groups[0]!.view;
    const survivors = first.members.filter((m) => m.id !== 2);
    const next = new View({
      id: viewId(2),
      members: survivors,
      joined: [],
      departed: [],
      failed: [first.members[2]!.id],
      layout: allocator({ previous: first.layout, members: survivors.map((m) => m.id) }),
    });
    source.install(next);
    t.is(groups[0]!.view.id as number, 2);
    t.deepEqual(views, [2]);
    t.true(seenViews.includes(2), 'the replica context reported the view change');
    const error = await t.throwsAsync(pending.replies.get(first.members[2]!.id)!, { instanceOf: NodeRemovedError });
    t.regex(error?.message ?? '', /node 2 was removed from the group before it replied to ViewSourceTestCell\.set/);
    const stillPending = await Promise.race([pending.replies.get(first.members[0]!.id)!.then(() => 'settled'), new Promise((r) => setTimeout(() => r('pending'), 100))]);
    t.is(stillPending, 'pending', 'node 0\'s reply waits for the delivery the membership driver would finish');
  } finally {
    await Promise.all(groups.slice(0, 2).map((g) => g.close()));
  }
});
