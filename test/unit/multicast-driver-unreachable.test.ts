// A member whose session cannot be opened while a multicast driver is created or moved to a new
// view: with onPeerFailed (the membership driver's case) the driver is made anyway and reports
// the member, so the node still installs the view and the view change removes the member (before,
// the membership driver's whole install failed and the node stayed in the old view); without it
// create() rejects and leaves nothing registered on the transport.
import test from 'ava';
import { nodeId, viewId, type NodeId } from '../../src/core/ids.js';
import { MulticastDriver, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';

const SHARD = 3;

function view(id: number, members: readonly { node: NodeId; address: string }[]): MulticastView {
  return {
    viewId: viewId(id),
    members: members.map((m) => m.node),
    senders: members.map((m) => m.node),
    addresses: new Map(members.map((m) => [m.node, m.address])),
  };
}

test('create() with onPeerFailed: an unreachable member is reported and the others are served', async (t) => {
  const net = new MemoryNetwork();
  const a = net.endpoint();
  const b = net.endpoint();
  const gone = '127.0.0.1:1'; // no endpoint there: connect() rejects
  const failed: NodeId[] = [];
  const deliveredAtB: number[] = [];
  const members = [
    { node: nodeId(1), address: a.address },
    { node: nodeId(2), address: b.address },
    { node: nodeId(3), address: gone },
  ];
  // Raw mode delivers on receipt: the member that cannot be reached does not hold it back.
  const common = { shard: SHARD, view: view(1, members), mode: 'raw' as const };
  const atA = await MulticastDriver.create({
    ...common, transport: a, self: nodeId(1), onDeliver: () => undefined, onPeerFailed: (node) => failed.push(node),
  });
  const atB = await MulticastDriver.create({
    ...common, transport: b, self: nodeId(2), onDeliver: (d) => deliveredAtB.push(d.payload[0]!), onPeerFailed: () => undefined,
  });
  t.deepEqual(failed, [nodeId(3)], 'the unreachable member is reported once');
  await atA.send(new Uint8Array([7]));
  for (let i = 0; i < 200 && deliveredAtB.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
  t.deepEqual(deliveredAtB, [7], 'the reachable member still gets the message');
  await atA.close();
  await atB.close();
  await a.close();
  await b.close();
});

test('installView() with onPeerFailed resolves although a new member is unreachable', async (t) => {
  const net = new MemoryNetwork();
  const a = net.endpoint();
  const failed: NodeId[] = [];
  const one = [{ node: nodeId(1), address: a.address }];
  const driver = await MulticastDriver.create({
    transport: a, self: nodeId(1), shard: SHARD, view: view(1, one), mode: 'raw',
    onDeliver: () => undefined, onPeerFailed: (node) => failed.push(node),
  });
  driver.wedge();
  driver.applyTrim(driver.receiveState().receivedCounts);
  await driver.installView(view(2, [...one, { node: nodeId(4), address: '127.0.0.1:2' }]));
  t.deepEqual(failed, [nodeId(4)]);
  await driver.close();
  await a.close();
});

test('create() without onPeerFailed rejects and leaves the shard free on the transport', async (t) => {
  const net = new MemoryNetwork();
  const a = net.endpoint();
  const options = {
    transport: a, self: nodeId(1), shard: SHARD, mode: 'raw' as const, onDeliver: () => undefined,
    view: view(1, [{ node: nodeId(1), address: a.address }, { node: nodeId(2), address: '127.0.0.1:1' }]),
  };
  await t.throwsAsync(MulticastDriver.create(options), { message: /no endpoint at 127\.0\.0\.1:1/ });
  // Before, the failed driver stayed registered: a second one for the shard hit "already has a driver".
  const again = await MulticastDriver.create({ ...options, view: view(1, [{ node: nodeId(1), address: a.address }]) });
  t.pass();
  await again.close();
  await a.close();
});
