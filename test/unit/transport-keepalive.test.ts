// Liveness per peer through the addon over real UDP (native/src/transport/endpoint.cc, "Peers";
// the virtual-time cases are in native/test/transport_keepalive_test.cc): sessions to one remote
// endpoint share one keepalive, so 500 idle sessions send the PINGs of one peer, not of 500
// sessions, and every session still works afterwards. Each endpoint's incarnation tag comes from
// the incarnation the binding draws, so this also checks that the tags cross the handshake.
import test from 'ava';
import { Endpoint } from '../../src/transport/native-transport.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('500 idle sessions to one peer share one keepalive', async (t) => {
  const options = { peerFailureTimeoutMs: 1000 };  // keepalive interval 250 ms
  const server = await Endpoint.create(options);
  server.handle(1, (bytes) => bytes);
  const client = await Endpoint.create(options);
  const sessions = await Promise.all(Array.from({ length: 500 }, () => client.connect(server.address)));
  t.is(client.stats().peers, 1);
  t.is(server.stats().peers, 1);
  const before = client.stats();
  await sleep(1500);  // six keepalive intervals, idle
  const after = client.stats();
  const pings = after['sent.PING']! - before['sent.PING']!;
  const sessionTimers = after.sessionTimerFires! - before.sessionTimerFires!;
  t.log(`500 idle sessions, 1.5 s: ${pings} PINGs, ${after.peerTimerFires! - before.peerTimerFires!} peer timer fires, ` +
    `${sessionTimers} session timer fires`);
  // Per-session keepalives would have sent ~3,000.
  t.true(pings >= 1 && pings <= 20, `PINGs ${pings}`);
  t.is(sessionTimers, 0);
  const replies = await Promise.all(sessions.map((s, i) => s.call(1, Buffer.from(String(i)))));
  replies.forEach((r, i) => t.is(Buffer.from(r).toString(), String(i)));
  t.is(client.stats().peerFailures, 0);
  await client.close();
  await server.close();
});
