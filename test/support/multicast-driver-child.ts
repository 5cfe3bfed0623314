/**
 * One shard member in its own process, for the 3-process multicast test and bench/multicast.ts.
 * Driven by its parent over the IPC channel (child_process.fork):
 *   {cmd:'init', seed}                          -> {address}
 *   {cmd:'start', shard, self, viewId, members, senders, addresses, mode, limits}
 *                                               -> {ok}
 *   {cmd:'run', shard, plan, expect, digest, timeoutMs}
 *        sends plan.count messages (sizes cycle through plan.sizes) at plan.ratePerSec (0: as fast
 *        as the window allows) and waits until `expect` deliveries arrived on that shard
 *                                               -> {delivered, bytes, elapsedMs, cpuMicros,
 *                                                   transport (counter deltas), digest, latency}
 *   {cmd:'ceiling', peers, size, seconds, lent} -> raw transport one-way calls to the peers
 *        (lent: callLent with a 48-byte head and the payload lent, as the multicast driver sends
 *        its large blocks; else call(), whose request the transport copies)
 *                                               -> {messages, bytes, elapsedMs, cpuMicros}
 *   {cmd:'cpu'}                                 -> {cpuMicros} (user + system so far)
 *   {cmd:'exit'}
 * The sink handler (request type 49) answers the ceiling calls of the other members.
 * Received large buffers go back to the transport once used (the drivers' releaseReceived, the
 * sink's Endpoint.release), as an application that keeps no payload does; MC_RELEASE=0 leaves
 * them to the garbage collector (for comparisons).
 */
import { createHash, type Hash } from 'node:crypto';
import { Endpoint, type NativeSession } from '../../src/transport/native-transport.js';
import { MulticastDriver, type MulticastDelivery } from '../../src/runtime/multicast-driver.js';
import { multicastLimits } from '../../src/multicast/config.js';
import { nodeId, viewId, type NodeId } from '../../src/core/ids.js';

const SINK_TYPE = 49;
const RELEASE = process.env.MC_RELEASE !== '0';
const EMPTY = new Uint8Array(0);

interface ShardState {
  driver: MulticastDriver;
  /** The current run's deliveries and their bytes (those that arrived early included). */
  delivered: number;
  bytes: number;
  hash: Hash | null;
  digestMode: 'full' | 'order' | 'none';
  latencies: number[];
  waiter: (() => void) | null;
  expect: number;
  /** The run has what it expects (or ended), or none started yet: deliveries go to `early`. */
  between: boolean;
  /**
   * Deliveries that arrived between runs: they belong to the next one. Members get the 'run'
   * command at slightly different moments, and a member that starts late delivers the others'
   * first messages of the round before its own run began (the null rule fills its positions
   * meanwhile). Counted from the run's start, as before, they were lost: that member waited
   * for 2 deliveries that had already happened until the timeout, and its CPU per message
   * took the whole wait (the bench's rare "slow rounds", ~1 in 15-20 under load).
   */
  early: { line: string; bytes: number; payload: Uint8Array | null }[];
}

/** The digest line of one delivery (order, numbering, stamp and size). */
const deliveryLine = (d: MulticastDelivery): string =>
  `${d.sender}/${d.index}/${d.position}/${d.version}/${d.timestamp.micros}.${d.timestamp.logical}/${d.payload.byteLength};`;

let endpoint: Endpoint | null = null;
const shards = new Map<number, ShardState>();
let self = 0;

const reply = (message: unknown): void => {
  process.send!(message);
};

function onDeliver(state: ShardState, d: MulticastDelivery): void {
  if (state.between) {
    // Kept for the next run (a copy of the payload only for a full digest: it is valid only now).
    const payload = state.digestMode === 'full' ? new Uint8Array(d.payload) : null;
    state.early.push({ line: deliveryLine(d), bytes: d.payload.byteLength, payload });
    return;
  }
  state.delivered++;
  state.bytes += d.payload.byteLength;
  if (state.hash !== null) {
    state.hash.update(deliveryLine(d));
    if (state.digestMode === 'full') state.hash.update(d.payload);
  }
  if (d.sender === self && d.payload.byteLength >= 8) {
    const sentAt = new DataView(d.payload.buffer, d.payload.byteOffset, 8).getFloat64(0, true);
    state.latencies.push(performance.now() - sentAt);
  }
  if (state.waiter !== null && state.delivered >= state.expect) {
    state.between = true;
    const w = state.waiter;
    state.waiter = null;
    w();
  }
}

/**
 * Payloads the drivers released (onPayloadReleased), by size, for the next sends: a fresh MiB per
 * message cost the sender an allocation, page faults and zeroing (and the garbage collector the
 * external memory) that the transport ceiling's sender, which sends one buffer, does not pay.
 */
const released = new Map<number, Uint8Array[]>();
let payloadsAllocated = 0;
let payloadsReused = 0;

function payloadOf(size: number, seq: number, digest: 'full' | 'order' | 'none'): Uint8Array {
  const bytes = Math.max(size, 8);
  let payload = released.get(bytes)?.pop();
  if (payload === undefined) {
    payloadsAllocated++;
    payload = Buffer.allocUnsafeSlow(bytes);
    payload.fill((self * 31 + seq) & 0xff);
  } else {
    payloadsReused++;
    // Only the full digest reads the bytes beyond the header: write them all for it alone.
    if (digest === 'full') payload.fill((self * 31 + seq) & 0xff);
  }
  if (size >= 16) new DataView(payload.buffer, payload.byteOffset, bytes).setUint32(8, seq, true);
  return payload;
}

function recycle(payload: Uint8Array): void {
  const list = released.get(payload.byteLength);
  if (list === undefined) released.set(payload.byteLength, [payload]);
  else if (list.length < 256) list.push(payload);
}

function statsDelta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const delta: Record<string, number> = {};
  for (const [key, value] of Object.entries(after)) delta[key] = value - (before[key] ?? 0);
  return delta;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function runPlan(message: {
  shard: number;
  plan: { count: number; sizes: number[]; ratePerSec: number };
  expect: number;
  digest: 'full' | 'order' | 'none';
  timeoutMs: number;
}): Promise<void> {
  const state = shards.get(message.shard)!;
  state.delivered = 0;
  state.bytes = 0;
  state.latencies = [];
  state.digestMode = message.digest;
  state.hash = message.digest === 'none' ? null : createHash('sha256');
  state.expect = message.expect;
  for (const e of state.early) {
    state.delivered++;
    state.bytes += e.bytes;
    state.hash?.update(e.line);
    if (state.digestMode === 'full' && e.payload !== null) state.hash!.update(e.payload);
  }
  const earlyDeliveries = state.early.length;
  state.early = [];
  state.between = false;
  const done = new Promise<void>((resolve) => {
    state.waiter = resolve;
    if (state.delivered >= state.expect) {
      state.between = true;
      state.waiter = null;
      resolve();
    }
  });
  const started = performance.now();
  const cpuStart = process.cpuUsage();
  const transportStart = endpoint!.stats();
  const { count, sizes, ratePerSec } = message.plan;
  const sending = (async () => {
    const gapMs = ratePerSec > 0 ? 1000 / ratePerSec : 0;
    for (let i = 0; i < count; i++) {
      if (gapMs > 0) {
        const due = started + i * gapMs;
        const wait = due - performance.now();
        if (wait > 1) await sleep(wait);
      }
      const payload = payloadOf(sizes[i % sizes.length]!, i, message.digest);
      new DataView(payload.buffer, payload.byteOffset, 8).setFloat64(0, performance.now(), true);
      await state.driver.send(payload);
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = await Promise.race([
    Promise.all([done, sending]).then(() => false),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), message.timeoutMs))),
  ]);
  clearTimeout(timer);
  state.between = true;
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuStart);
  const sorted = state.latencies.sort((a, b) => a - b);
  const q = (p: number): number => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
  reply({
    timedOut,
    delivered: state.delivered,
    bytes: state.bytes,
    // Of them, delivered before this run began (see ShardState.early).
    earlyDeliveries,
    elapsedMs,
    cpuMicros: cpu.user + cpu.system,
    systemMicros: cpu.system,
    transport: statsDelta(transportStart, endpoint!.stats()),
    digest: state.hash?.digest('hex') ?? null,
    latency: { p50: q(0.5), p99: q(0.99), samples: sorted.length },
    counters: state.driver.counters,
    // Sends so far that took a fresh buffer vs one the drivers had released (all runs).
    payloads: { allocated: payloadsAllocated, reused: payloadsReused },
    core: state.driver.coreCounters(),
    // On a timeout: what every layer was waiting for (the parent prints it).
    diagnostics: timedOut ? { driver: state.driver.diagnostics(), transport: endpoint!.stats() } : undefined,
  });
}

async function ceiling(message: { peers: string[]; size: number; seconds: number; outstanding: number; lent?: boolean }): Promise<void> {
  const sessions: NativeSession[] = [];
  for (const peer of message.peers) sessions.push(await endpoint!.connect(peer));
  const payload = new Uint8Array(message.size).fill(7);
  const head = new Uint8Array(48).fill(7);  // the multicast's frame + block header
  let messages = 0;
  const started = performance.now();
  const cpuStart = process.cpuUsage();
  const end = started + message.seconds * 1000;
  await Promise.all(
    sessions.flatMap((session) =>
      Array.from({ length: message.outstanding }, async () => {
        while (performance.now() < end) {
          await (message.lent === true ? session.callLent(SINK_TYPE, head, payload) : session.call(SINK_TYPE, payload));
          messages++;
        }
      }),
    ),
  );
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuStart);
  for (const s of sessions) await s.close();
  reply({ messages, bytes: messages * message.size, elapsedMs, cpuMicros: cpu.user + cpu.system });
}

process.on('message', (raw: unknown) => {
  const message = raw as { cmd: string } & Record<string, unknown>;
  void (async () => {
    switch (message.cmd) {
      case 'init': {
        endpoint = await Endpoint.create({
          host: '127.0.0.1',
          port: 0,
          seed: message.seed as number,
          messageBytesMax: 32 * 1024 * 1024,
          peerFailureTimeoutMs: 10_000,
          // Endpoint options for experiments (e.g. '{"retransmitTimeoutMs":40}'), from the parent.
          ...(process.env.MC_ENDPOINT ? JSON.parse(process.env.MC_ENDPOINT) as object : {}),
        });
        const sink = endpoint;
        endpoint.handle(SINK_TYPE, (request) => {
          if (RELEASE) sink.release(request);
          return EMPTY;
        });
        reply({ address: endpoint.address });
        break;
      }
      case 'start': {
        self = message.self as number;
        const addresses = new Map<NodeId, string>(
          (message.addresses as [number, string][]).map(([n, a]) => [nodeId(n), a]),
        );
        const state: ShardState = {
          driver: null as unknown as MulticastDriver,
          delivered: 0, bytes: 0, hash: null, digestMode: 'full', latencies: [], waiter: null, expect: 0,
          between: true, early: [],
        };
        state.driver = await MulticastDriver.create({
          transport: endpoint!,
          self: nodeId(self),
          shard: message.shard as number,
          mode: message.mode as 'ordered' | 'raw',
          limits: multicastLimits(message.limits as object),
          view: {
            viewId: viewId(message.viewId as number),
            members: (message.members as number[]).map(nodeId),
            senders: (message.senders as number[]).map(nodeId),
            addresses,
          },
          onDeliver: (d) => onDeliver(state, d),
          onPayloadReleased: recycle,
          // onDeliver reads each payload only while it runs.
          releaseReceived: RELEASE,
          ...(message.driverOptions as object | undefined),
        });
        shards.set(message.shard as number, state);
        reply({ ok: true });
        break;
      }
      case 'run':
        await runPlan(message as never);
        break;
      case 'ceiling':
        await ceiling(message as never);
        break;
      case 'cpu': {
        const cpu = process.cpuUsage();
        reply({ cpuMicros: cpu.user + cpu.system });
        break;
      }
      case 'exit':
        for (const s of shards.values()) await s.driver.close();
        await endpoint?.close();
        process.exit(0);
    }
  })().catch((error: Error) => {
    reply({ error: error.stack ?? String(error) });
  });
});
process.on('disconnect', () => process.exit(0));
