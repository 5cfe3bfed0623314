// Proves the heartbeat failure detector's contract: heartbeats go out every period, a silent peer
// is suspected after exactly the timeout and reported once, peers that keep sending are never
// suspected (also under random heartbeat jitter within the timeout), transport failures are
// suspicions at once, and a new view starts over.
import test from 'ava';
import { nodeId, viewId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import {
  FailureDetectorConfigError,
  FailureDetectorCore,
  type Suspicion,
} from '../../src/membership/failure-detector-core.js';

const ids = (...values: number[]): NodeId[] => values.map(nodeId);

function detector(heartbeatTicks = 2, timeoutTicks = 6): FailureDetectorCore {
  const fd = new FailureDetectorCore({ self: nodeId(1), heartbeatTicks, timeoutTicks });
  fd.resetView(viewId(1), ids(1, 2, 3, 4));
  return fd;
}

test('heartbeats go to every peer at the view start and then every heartbeatTicks ticks', (t) => {
  const fd = detector(3, 10);
  t.deepEqual(fd.ready().heartbeatsTo, ids(2, 3, 4));
  t.deepEqual(fd.ready().heartbeatsTo, [], 'ready() forgets what it returned');
  const sentAt: number[] = [];
  for (let tick = 1; tick <= 9; tick++) {
    for (const peer of ids(2, 3, 4)) fd.heartbeatReceived(peer);
    fd.tick();
    if (fd.ready().heartbeatsTo.length > 0) sentAt.push(tick);
  }
  t.deepEqual(sentAt, [3, 6, 9]);
});

test('a silent peer is suspected after exactly timeoutTicks ticks, and reported once', (t) => {
  const fd = detector(2, 6);
  fd.ready();
  const reports: [number, Suspicion][] = [];
  for (let tick = 1; tick <= 20; tick++) {
    fd.heartbeatReceived(nodeId(2));
    fd.heartbeatReceived(nodeId(4));
    fd.tick();
    for (const s of fd.ready().suspicions) reports.push([tick, s]);
  }
  t.deepEqual(reports, [
    [6, { node: nodeId(3), cause: 'timeout', viewId: viewId(1), silentTicks: 6 }],
  ]);
  t.deepEqual(fd.suspects(), ids(3));
  t.true(fd.isSuspected(nodeId(3)));
});

test('the timeout counts from the last heartbeat, not from the view start', (t) => {
  const fd = detector(2, 6);
  for (let tick = 1; tick <= 4; tick++) fd.tick();
  fd.heartbeatReceived(nodeId(2)); // at tick 4
  let suspectedAt = -1;
  for (let tick = 5; tick <= 12 && suspectedAt < 0; tick++) {
    fd.heartbeatReceived(nodeId(3));
    fd.heartbeatReceived(nodeId(4));
    fd.tick();
    if (fd.ready().suspicions.some((s) => s.node === nodeId(2))) suspectedAt = tick;
  }
  t.is(suspectedAt, 10);
});

test('peers whose heartbeats arrive within the timeout are never suspected (random jitter, 50 seeds)', (t) => {
  for (let seed = 1; seed <= 50; seed++) {
    const r = new SeededRandom(seed);
    const heartbeatTicks = 1 + r.int(4);
    const timeoutTicks = heartbeatTicks + 1 + r.int(6);
    const fd = new FailureDetectorCore({ self: nodeId(0), heartbeatTicks, timeoutTicks });
    fd.resetView(viewId(seed), ids(0, 1, 2, 3, 4, 5));
    // Each peer's next heartbeat arrives 1..timeoutTicks-1 ticks after its previous one.
    const nextAt = new Map(ids(1, 2, 3, 4, 5).map((n) => [n, 1 + r.int(timeoutTicks - 1)]));
    for (let tick = 1; tick <= 500; tick++) {
      fd.tick();
      for (const [peer, at] of [...nextAt]) {
        if (at === tick) {
          fd.heartbeatReceived(peer);
          nextAt.set(peer, tick + 1 + r.int(timeoutTicks - 1));
        }
      }
      const { suspicions } = fd.ready();
      if (suspicions.length > 0) {
        t.fail(`seed ${seed}: false suspicion ${JSON.stringify(suspicions)} at tick ${tick}`);
        return;
      }
    }
  }
  t.pass();
});

test('a transport failure is a suspicion at once; a late heartbeat does not clear it', (t) => {
  const fd = detector(2, 6);
  fd.ready();
  fd.tick();
  fd.peerFailed(nodeId(4));
  t.deepEqual(fd.ready().suspicions, [
    { node: nodeId(4), cause: 'transport', viewId: viewId(1), silentTicks: 1 },
  ]);
  fd.heartbeatReceived(nodeId(4));
  fd.peerFailed(nodeId(4));
  for (let tick = 0; tick < 10; tick++) fd.tick();
  const later = fd.ready();
  t.deepEqual(
    later.suspicions.map((s) => s.node),
    ids(2, 3),
    'node 4 is not reported twice',
  );
  t.true(fd.isSuspected(nodeId(4)));
  t.false(later.heartbeatsTo.includes(nodeId(4)), 'no heartbeats to suspected peers');
});

test('non-members and self are ignored', (t) => {
  const fd = detector(2, 6);
  fd.ready();
  fd.peerFailed(nodeId(99));
  fd.peerFailed(nodeId(1));
  fd.heartbeatReceived(nodeId(99));
  t.deepEqual(fd.ready().suspicions, []);
  for (let tick = 0; tick < 6; tick++) fd.tick();
  t.false(fd.ready().suspicions.some((s) => s.node === nodeId(1) || s.node === nodeId(99)));
});

test('a new view starts over: suspicions cleared, unreported ones dropped, full timeout for all', (t) => {
  const fd = detector(2, 6);
  for (let tick = 0; tick < 6; tick++) fd.tick(); // 2, 3, 4 suspected, not yet read
  fd.resetView(viewId(2), ids(1, 3, 5));
  const first = fd.ready();
  t.deepEqual(first.suspicions, []);
  t.deepEqual(first.heartbeatsTo, ids(3, 5));
  t.deepEqual(fd.suspects(), []);
  const reports: [number, number][] = [];
  for (let tick = 1; tick <= 6; tick++) {
    fd.tick();
    for (const s of fd.ready().suspicions) reports.push([tick, s.node]);
  }
  t.deepEqual(reports, [
    [6, 3],
    [6, 5],
  ]);
  t.true(fd.ready().suspicions.every((s) => s.viewId === viewId(2)));
});

test('before the first view nothing is sent or suspected', (t) => {
  const fd = new FailureDetectorCore({ self: nodeId(1), heartbeatTicks: 1, timeoutTicks: 2 });
  for (let tick = 0; tick < 5; tick++) fd.tick();
  fd.peerFailed(nodeId(2));
  t.deepEqual(fd.ready(), { heartbeatsTo: [], suspicions: [] });
});

test('configuration errors are named and say how to fix them', (t) => {
  t.throws(() => new FailureDetectorCore({ self: nodeId(1), heartbeatTicks: 0, timeoutTicks: 5 }), {
    instanceOf: FailureDetectorConfigError,
    message: /heartbeatTicks is 0\. Fix: use an integer >= 1/,
  });
  const error = t.throws(
    () => new FailureDetectorCore({ self: nodeId(1), heartbeatTicks: 5, timeoutTicks: 5 }),
    {
      instanceOf: FailureDetectorConfigError,
      message:
        /timeoutTicks \(5\) must be an integer above heartbeatTicks \(5\).*Fix: raise the timeout/,
    },
  );
  t.is(error!.name, 'FailureDetectorConfigError');
});
