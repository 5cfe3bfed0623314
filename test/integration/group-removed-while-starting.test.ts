// A joiner the group removes while its Group.start still waits for its state (welcomed into a
// view, then silent past the failure timeout: here its endpoint drops everything it sends from
// its first state request, which is held, until the others installed a view without it) must not
// start as if it were a member: Group.start rejects with RemovedFromGroupError. Before, the removal cleared the
// shard the start was waiting on, Group.start resolved, and a `removed` listener added after it
// never fired (the kv chaos harness's "removal-unnoticed" joiners). And group.on('removed')
// added after the removal still hears of it.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unpack } from 'msgpackr';
import { Group, RemovedFromGroupError, flexibleEvenShards, oneSubgroup } from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { MEMBERSHIP_REQUEST_TYPE } from '../../src/runtime/membership-driver.js';
import { Endpoint } from '../../src/transport/native-transport.js';
import type { CallOptions, TransportSession } from '../../src/transport/transport.js';
import { waitFor } from '../support/membership-local.js';
import { CounterCell } from '../support/counter-cell.js';

const Cell = CounterCell;
const layout = { CounterCell: oneSubgroup(flexibleEvenShards(1, 2, 4)) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-removed-while-starting-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

test.serial('a joiner removed while Group.start waits for its state: Group.start rejects with RemovedFromGroupError', async (t) => {
  t.timeout(60_000);
  const configs = await localGroupConfigs(4, {
    dataRoot, firstId: 1, listed: 3,
    extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const founders = await Promise.all(configs.slice(0, 3).map((c) => Group.start(c, { types: [Cell], layout, membership: true })));
  const create = Endpoint.create.bind(Endpoint);
  let joinerEndpoint: Endpoint | undefined;
  let silenced = false;
  let failHeld = (): void => undefined;
  try {
    await founders[0]!.subgroup(Cell).ordered.add(5);
    // The joiner's endpoint (Group.start makes it): the first state request it sends turns its
    // sending off, so it is welcomed into a view and then silent.
    Endpoint.create = async (options) => {
      const endpoint = await create(options);
      joinerEndpoint = endpoint;
      const connect = endpoint.connect.bind(endpoint);
      endpoint.connect = async (remote) => {
        const session = await connect(remote);
        const call = session.call.bind(session);
        (session as { call: TransportSession['call'] }).call = (type: number, request: Uint8Array, options?: CallOptions) => {
          if (!silenced && type === MEMBERSHIP_REQUEST_TYPE && (unpack(request) as { t?: string }).t === 'stateOpen') {
            silenced = true;
            endpoint.injectFault({ dropProbability: 1 });
            // Held (never sent): the state cannot arrive before the news of the removal does.
            return new Promise<Uint8Array>((_, reject) => {
              failHeld = () => reject(new Error('held by the test'));
            });
          }
          return call(type, request, options);
        };
        return session;
      };
      return endpoint;
    };
    const joining = Group.start(configs[3]!, { types: [Cell], layout, membership: true });
    Endpoint.create = create;
    const outcome = joining.then(
      async (group) => {
        await group.close({ leave: false });
        return 'resolved';
      },
      (error: unknown) => error,
    );
    await waitFor('the joiner asks for its state', () => silenced, 20_000);
    await waitFor('a view of the founders without node 4', () =>
      founders.every((g) => g.view.memberIds.map(Number).join() === '1,2,3' && g.view.id > 1), 20_000);
    joinerEndpoint!.injectFault({ dropProbability: 0 }); // it hears of its removal now
    const result = await outcome;
    t.true(result instanceof RemovedFromGroupError, `Group.start rejected with RemovedFromGroupError (got ${String(result)})`);
    t.regex(String((result as Error).message), /node 4 is no longer a member/);
    // The founders go on.
    t.deepEqual([...(await founders[1]!.subgroup(Cell).ordered.add(1)).values()], [6, 6, 6]);
  } finally {
    Endpoint.create = create;
    failHeld();
    for (const g of founders) await g.close({ leave: false });
  }
});

test.serial("group.on('removed') added after the removal is called at once", async (t) => {
  t.timeout(30_000);
  const configs = await localGroupConfigs(3, {
    dataRoot: join(dataRoot, 'late-listener'), firstId: 1, listed: 3,
    extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const groups = await Promise.all(configs.map((c) => Group.start(c, { types: [Cell], layout, membership: true })));
  try {
    const early: unknown[] = [];
    groups[2]!.on('removed', (error) => early.push(error));
    t.true(await groups[2]!.leave(), 'node 3 left');
    t.is(early.length, 1, 'a listener added before hears of it once');
    t.true(early[0] instanceof RemovedFromGroupError);
    const late: unknown[] = [];
    groups[2]!.on('removed', (error) => late.push(error));
    t.is(late.length, 1, 'a listener added after hears of it at once');
    t.is(late[0], early[0]);
  } finally {
    for (const g of groups.slice(0, 2)) await g.close({ leave: false });
  }
});
