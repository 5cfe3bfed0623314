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

// "Orphans" (endpoint.cc): a server session whose client gave up on it without the server
// hearing -- here all three DISCONNECT tries are lost -- used to live as long as the client
// endpoint did (its peer record stays alive on the other sessions' traffic). The census the
// client's PINGs carry names it and the server reaps it within about two failure timeouts,
// while the idle sessions the client still holds answer the server's PINGs and stay.
test('a server session orphaned by lost DISCONNECTs is reaped; the idle others stay', async (t) => {
  const options = { peerFailureTimeoutMs: 1000 };
  const server = await Endpoint.create(options);
  server.handle(1, (bytes) => bytes);
  const client = await Endpoint.create(options);
  const sessions = await Promise.all(Array.from({ length: 50 }, () => client.connect(server.address)));
  t.is(server.stats().sessionsServer, 50);
  // The next three packets the client sends are its three DISCONNECT tries. A keepalive PING
  // can take one of the drops (then a try gets through): try another session, a few times.
  let closed = 0;
  let made = false;
  while (!made && closed < 4) {
    client.injectFault({ dropNext: 3 });
    await sessions[closed]!.close();
    closed++;
    await sleep(100);
    made = server.stats().sessionsServer === 50 - closed + 1;  // the last one is still there
  }
  t.true(made, 'no disconnect was lost: the orphan could not be made');
  const expected = 50 - closed;
  const orphaned = Date.now();
  while (server.stats().sessionsServer! > expected && Date.now() - orphaned < 10_000) await sleep(50);
  const after = Date.now() - orphaned;
  const stats = server.stats();
  t.log(`orphan reaped after ${after} ms (failure timeout 1000 ms): ${stats.orphanAudits} audits, ` +
    `${stats.orphanProbes} probe PINGs`);
  t.is(stats.sessionsServer, expected);
  t.is(stats.orphansReaped, 1);
  await sleep(1500);  // the idle live sessions outlast more audits
  t.is(server.stats().sessionsServer, expected);
  const live = sessions.slice(closed);
  const replies = await Promise.all(live.map((s, i) => s.call(1, Buffer.from(String(i)))));
  replies.forEach((r, i) => t.is(Buffer.from(r).toString(), String(i)));
  t.is(client.stats().peerFailures, 0);
  await client.close();
  await server.close();
});
