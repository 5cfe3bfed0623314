// onPayloadReleased: the driver hands an own payload back only when its core is done with it and
// no call that lends its bytes is still unsettled, so an application can write it again (reuse
// it for a later send). Three members over native endpoints whose lent calls settle 30 ms late
// (the core is done with a message well before that): a release while such a call is open is a
// failure; each released payload is poisoned at once and reused for a later send, so any read of
// its bytes after the release would corrupt a delivery.
import test from 'ava';
import type { Transport, TransportSession } from '../../src/transport/transport.js';
import { MulticastDriver, type MulticastDelivery } from '../../src/runtime/multicast-driver.js';
import { MIXED_LIMITS, checkSameOrderIntact, nativeEndpoints, tagOf, taggedPayload, waitFor, withSessions } from '../support/multicast-driver-local.js';
import { multicastLimits } from '../../src/multicast/config.js';

const KIB = 1024;
const SETTLE_DELAY_MS = 30;

/** Lent calls by the buffer of their body, not settled yet (as the driver sees them). */
const open = new Map<ArrayBufferLike, number>();
/** Lent bodies whose bytes changed before their call settled (the driver must never let that happen). */
const changedWhileLent: string[] = [];

/** `transport` whose sessions' lent calls settle SETTLE_DELAY_MS after the transport's answer. */
function lateSettling(transport: Transport): Transport {
  return withSessions(transport, (session) =>
    new Proxy(session, {
      get: (s, p) => {
        if (p === 'callLent') {
          return async (...args: Parameters<NonNullable<TransportSession['callLent']>>) => {
            const body = args[2];
            const buffer = body.buffer;
            const before = Buffer.from(body);  // a copy
            open.set(buffer, (open.get(buffer) ?? 0) + 1);
            try {
              return await s.callLent!(...args);
            } finally {
              await new Promise((resolve) => setTimeout(resolve, SETTLE_DELAY_MS));
              if (!before.equals(body)) changedWhileLent.push(`${body.byteLength} bytes at ${body.byteOffset}`);
              const n = open.get(buffer)! - 1;
              if (n === 0) open.delete(buffer);
              else open.set(buffer, n);
            }
          };
        }
        const value = Reflect.get(s, p) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(s) : value;
      },
    }));
}

/** Writes the tagged content of taggedPayload(node, seq, ·) into `payload`. */
function tag(payload: Uint8Array, node: number, seq: number): Uint8Array {
  payload.fill((node * 37 + seq) & 0xff);
  payload[0] = node;
  new DataView(payload.buffer, payload.byteOffset).setUint32(1, seq, true);
  return payload;
}

test.serial('released payloads: back once each, only after the lent calls sending them settled; reusing them keeps every delivery intact', async (t) => {
  t.timeout(90_000);
  const { endpoints: native, nodes, view } = await nativeEndpoints(3, 330);
  const endpoints = native.map(lateSettling);
  // Blocks of 128 KiB (lent: at least 64 KiB), messages of 1-3 blocks and small ones between.
  const limits = multicastLimits({ ...MIXED_LIMITS, payloadBytesMax: 1 << 20, blockBytes: 128 * KIB, rdmcRepairMicros: 600_000_000 });
  const deliveries: MulticastDelivery[][] = [[], [], []];
  const free: Uint8Array[][] = [[], [], []];
  /** Payloads sent and not released yet; releases so far. */
  const inUse = new Set<Uint8Array>();
  let releases = 0;
  const problems: string[] = [];
  const drivers = await Promise.all(
    endpoints.map((endpoint, i) =>
      MulticastDriver.create({
        transport: endpoint, self: nodes[i]!, shard: 1, view, limits,
        // Sends wait for deliveries, so later ones find released payloads to reuse.
        ownBytesUndeliveredMax: 400 * KIB,
        onDeliver: (d) => deliveries[i]!.push({ ...d, payload: d.payload.slice() }),
        onPayloadReleased: (payload) => {
          releases++;
          if (!inUse.delete(payload)) problems.push(`member ${i + 1} released ${tagOf(payload)}, not in use`);
          if ((open.get(payload.buffer) ?? 0) > 0) problems.push(`member ${i + 1} released ${tagOf(payload)} with a lent call open`);
          payload.fill(0xee);
          free[i]!.push(payload);
        },
      }),
    ),
  );
  try {
    const perSender = 30;
    const sizes = [200 * KIB, 1000, 300 * KIB, 130 * KIB, 2000];
    let sent = 0;
    let reused = 0;
    await Promise.all(drivers.map(async (driver, r) => {
      for (let i = 0; i < perSender; i++) {
        const size = sizes[(i + r) % sizes.length]!;
        const at = free[r]!.findIndex((p) => p.byteLength === size);
        let payload: Uint8Array;
        if (at >= 0) {
          payload = free[r]!.splice(at, 1)[0]!;
          reused++;
        } else payload = new Uint8Array(size);
        inUse.add(payload);
        await driver.send(tag(payload, r + 1, i));
        sent++;
      }
    }));
    const total = 3 * perSender;
    const done = await waitFor(() => deliveries.every((list) => list.length >= total), 60_000);
    t.true(done, `delivered ${deliveries.map((list) => list.length).join(', ')} of ${total}`);
    const allBack = await waitFor(() => releases === sent, 30_000);
    t.true(allBack, `released ${releases} of ${sent} sends`);
    t.deepEqual(problems, [], 'each send released once, never while a lent call sending it was open');
    t.true(reused >= 10, `released payloads were reused for later sends (${reused})`);
    t.true(native.every((e) => (e.stats().requestsLent ?? 0) > 0), 'blocks were lent');
    checkSameOrderIntact(t, deliveries);
  } finally {
    for (const d of drivers) await d.close();
    for (const e of native) await e.close();
  }
});

test.serial('releaseReceived: received frames go back to the transport once delivered and relayed, never while a lent call sends from them', async (t) => {
  t.timeout(90_000);
  const { endpoints: native, nodes, view } = await nativeEndpoints(3, 340);
  const problems: string[] = [];
  // Lent calls settle late (relays hold their frame longer); a release with one open is a failure.
  const endpoints = native.map((endpoint) => {
    const late = lateSettling(endpoint);
    return new Proxy(late, {
      get: (target, p) => {
        if (p !== 'release') return Reflect.get(target, p) as unknown;
        return (bytes: Uint8Array) => {
          if ((open.get(bytes.buffer) ?? 0) > 0) problems.push(`released ${tagOf(bytes.subarray(44))} with a lent call open`);
          return endpoint.release(bytes);
        };
      },
    });
  });
  // 128 KiB blocks: 100 KiB messages are one block (the payload is a view of the frame), 300 KiB
  // ones three (each block copied into the message).
  const limits = multicastLimits({ ...MIXED_LIMITS, payloadBytesMax: 1 << 20, blockBytes: 128 * KIB, rdmcRepairMicros: 600_000_000 });
  const deliveries: MulticastDelivery[][] = [[], [], []];
  /** One-block payloads from other senders, kept only to see them detached later. */
  const views: Uint8Array[] = [];
  const drivers = await Promise.all(
    endpoints.map((endpoint, i) =>
      MulticastDriver.create({
        transport: endpoint, self: nodes[i]!, shard: 1, view, limits, releaseReceived: true,
        onDeliver: (d) => {
          // Valid while onDeliver runs: copied here (a Buffer's slice() would be a view), the
          // view kept only to see it detached later.
          deliveries[i]!.push({ ...d, payload: new Uint8Array(d.payload) });
          if (d.large && d.sender !== nodes[i] && d.payload.byteLength <= limits.blockBytes) views.push(d.payload);
        },
      }),
    ),
  );
  try {
    const perSender = 24;
    const sizes = [100 * KIB, 1000, 300 * KIB, 100 * KIB, 300 * KIB];
    await Promise.all(drivers.map(async (driver, r) => {
      for (let i = 0; i < perSender; i++) await driver.send(taggedPayload(r + 1, i, sizes[(i + r) % sizes.length]!));
    }));
    const total = 3 * perSender;
    const done = await waitFor(() => deliveries.every((list) => list.length >= total), 60_000);
    t.true(done, `delivered ${deliveries.map((list) => list.length).join(', ')} of ${total}`);
    // Released after onDeliver (and after their relays settled): one-block payloads now read
    // empty, every one (also those whose frame carried reports ahead of the block). Payloads
    // of several blocks are assembled in JS buffers, not frames: not detached.
    const detached = await waitFor(() => views.every((v) => v.byteLength === 0), 20_000);
    t.true(detached, `${views.filter((v) => v.byteLength === 0).length} of ${views.length} large payloads released`);
    t.deepEqual(problems, [], 'no frame released while a lent call sent from it');
    // Buffers of 300 KiB messages (assembled from blocks) are recycled for later ones, never
    // while a relay still sends from them.
    t.deepEqual(changedWhileLent, [], 'no lent body written before its call settled');
    for (const [i, driver] of drivers.entries()) {
      t.true(driver.counters.assembledBuffersReused > 0, `member ${i + 1} assembled messages in recycled buffers`);
      // Nothing more arrives: the kept buffers are let go after a few idle ticks.
      t.true(await waitFor(() => driver.counters.assembledBuffersDropped > 0, 10_000), `member ${i + 1} let its kept buffers go`);
      const stats = native[i]!.stats();
      t.true(driver.counters.framesReleased > 0, `member ${i + 1} released frames`);
      t.is(stats.receiveReleasesIgnored, 0, 'every release named a frame on loan (none twice)');
      t.is(stats.receiveBuffersReleased, driver.counters.framesReleased);
      t.true((stats.receiveBuffersReused ?? 0) > 0, `member ${i + 1} reused received buffers`);
    }
    checkSameOrderIntact(t, deliveries);
  } finally {
    for (const d of drivers) await d.close();
    for (const e of native) await e.close();
  }
});
