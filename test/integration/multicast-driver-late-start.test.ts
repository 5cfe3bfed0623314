// Members start their multicast drivers at different moments: until a member has created its
// first driver its transport answers the others' frames with NO_HANDLER. The driver must keep
// those packets and send them again (it used to report the member failed and drop everything
// for it for good: the 3-process test then stalled about one run in 15 to 30, a member delivering
// nothing), and report the member failed only once it stays without a handler too long.
import test from 'ava';
import { Endpoint } from '../../src/transport/native-transport.js';
import { MulticastDriver, type MulticastDelivery, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { nodeId, viewId } from '../../src/core/ids.js';
import { MIXED_LIMITS, payloadIntact, tagOf, taggedPayload, waitFor } from '../support/multicast-driver-local.js';

async function twoEndpoints(): Promise<[Endpoint, Endpoint, MulticastView]> {
  const a = await Endpoint.create({ host: '127.0.0.1', port: 0, seed: 301, peerFailureTimeoutMs: 15_000 });
  const b = await Endpoint.create({ host: '127.0.0.1', port: 0, seed: 302, peerFailureTimeoutMs: 15_000 });
  const view: MulticastView = {
    viewId: viewId(1),
    members: [nodeId(1), nodeId(2)],
    addresses: new Map([[nodeId(1), a.address], [nodeId(2), b.address]]),
  };
  return [a, b, view];
}

test.serial('a member that creates its driver after the others were refused still gets everything', async (t) => {
  t.timeout(30_000);
  const [a, b, view] = await twoEndpoints();
  const failed: string[] = [];
  const seen1: MulticastDelivery[] = [];
  const seen2: MulticastDelivery[] = [];
  const d1 = await MulticastDriver.create({
    transport: a, self: nodeId(1), shard: 1, view, limits: MIXED_LIMITS,
    onDeliver: (d) => seen1.push({ ...d, payload: d.payload.slice() }),
    onPeerFailed: (node, error) => failed.push(`${node}: ${error.message}`),
  });
  let d2: MulticastDriver | null = null;
  try {
    // A small message and a 4-block RDMC message, both sent while member 2 has no handler.
    await d1.send(taggedPayload(1, 0, 100));
    await d1.send(taggedPayload(1, 1, 100_000));
    const refused = await waitFor(() => d1.counters.notReadyRefusals + d1.counters.callFailures >= 2, 10_000);
    t.true(refused, 'member 2 refused frames before its driver existed');
    d2 = await MulticastDriver.create({
      transport: b, self: nodeId(2), shard: 1, view, limits: MIXED_LIMITS,
      onDeliver: (d) => seen2.push({ ...d, payload: d.payload.slice() }),
    });
    await d2.send(taggedPayload(2, 0, 50_000));
    const done = await waitFor(() => seen1.length >= 3 && seen2.length >= 3, 10_000);
    t.true(done, `delivered ${seen1.length} and ${seen2.length} of 3: ${JSON.stringify(d1.diagnostics())}`);
    t.deepEqual(failed, [], 'a member without a handler yet is not a failed member');
    t.is(d1.counters.callFailures, 0);
    t.true(d1.counters.notReadyRefusals >= 2);
    t.deepEqual(seen2.map((d) => tagOf(d.payload)), seen1.map((d) => tagOf(d.payload)));
    t.deepEqual(seen1.map((d) => tagOf(d.payload)).sort(), ['1:0', '1:1', '2:0']);
    for (const d of [...seen1, ...seen2]) t.true(payloadIntact(d.payload), `payload ${tagOf(d.payload)} intact`);
  } finally {
    await d1.close();
    await d2?.close();
    await a.close();
    await b.close();
  }
});

test.serial('a member that never creates its driver is reported failed after peerNotReadyTimeoutMs', async (t) => {
  t.timeout(30_000);
  const [a, b, view] = await twoEndpoints();
  const failed: string[] = [];
  const d1 = await MulticastDriver.create({
    transport: a, self: nodeId(1), shard: 1, view, limits: MIXED_LIMITS, peerNotReadyTimeoutMs: 300,
    onDeliver: () => undefined,
    onPeerFailed: (node, error) => failed.push(`${node}: ${error.message}`),
  });
  try {
    await d1.send(taggedPayload(1, 0, 100));
    t.true(await waitFor(() => failed.length > 0, 10_000), 'reported failed in the end');
    t.is(failed.length, 1);
    t.regex(failed[0]!, /^2: .*no handler/);
    t.true(d1.counters.notReadyRefusals >= 2, `re-sent before giving up (${d1.counters.notReadyRefusals} refusals)`);
  } finally {
    await d1.close();
    await a.close();
    await b.close();
  }
});
