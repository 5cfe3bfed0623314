/**
 * In-process shard members for the driver tests: one native Endpoint and one MulticastDriver per
 * member, all in this process, each recording its deliveries.
 */
import { Endpoint, type EndpointOptions } from '../../src/transport/native-transport.js';
import { MulticastDriver, type MulticastDelivery, type MulticastView } from '../../src/runtime/multicast-driver.js';
import { multicastLimits, type MulticastLimits } from '../../src/multicast/config.js';
import { nodeId, viewId, type NodeId } from '../../src/core/ids.js';
import type { Transport, TransportSession } from '../../src/transport/transport.js';
import type { ExecutionContext } from 'ava';

export interface LocalMember {
  node: NodeId;
  endpoint: Endpoint;
  driver: MulticastDriver;
  deliveries: MulticastDelivery[];
}

export const MIXED_LIMITS: MulticastLimits = multicastLimits({
  payloadBytesMax: 1 << 20,
  smcPayloadBytesMax: 4096,
  blockBytes: 32 * 1024,
  windowSize: 32,
  sendQueueCountMax: 128,
});

/** A payload naming its sender and sequence number (bytes 0..4), filled by both. */
export function taggedPayload(node: number, seq: number, size: number): Uint8Array {
  const payload = new Uint8Array(Math.max(size, 8)).fill((node * 37 + seq) & 0xff);
  payload[0] = node;
  new DataView(payload.buffer).setUint32(1, seq, true);
  return payload;
}

export function tagOf(payload: Uint8Array): string {
  return `${payload[0]}:${new DataView(payload.buffer, payload.byteOffset).getUint32(1, true)}`;
}

/** True if the payload still has the fill its tag implies (RDMC reassembly intact). */
export function payloadIntact(payload: Uint8Array): boolean {
  const node = payload[0]!;
  const seq = new DataView(payload.buffer, payload.byteOffset).getUint32(1, true);
  const fill = (node * 37 + seq) & 0xff;
  for (let i = 5; i < payload.byteLength; i++) if (payload[i] !== fill) return false;
  return true;
}

/** `count` native endpoints on loopback and one view over them (nodes 1.., all senders). */
export async function nativeEndpoints(
  count: number, seedBase: number, options: { endpoint?: EndpointOptions; viewId?: number } = {},
): Promise<{ endpoints: Endpoint[]; nodes: NodeId[]; view: MulticastView }> {
  const endpoints = await Promise.all(
    Array.from({ length: count }, (_, i) =>
      Endpoint.create({ host: '127.0.0.1', port: 0, seed: seedBase + i, peerFailureTimeoutMs: 15_000, ...options.endpoint }),
    ),
  );
  const nodes = endpoints.map((_, i) => nodeId(i + 1));
  const view: MulticastView = {
    viewId: viewId(options.viewId ?? 1),
    members: nodes,
    senders: nodes,
    addresses: new Map(nodes.map((n, i) => [n, endpoints[i]!.address])),
  };
  return { endpoints, nodes, view };
}

/** `transport` whose sessions (from connect) are replaced by `wrap(session)`. */
export function withSessions(transport: Transport, wrap: (session: TransportSession) => TransportSession): Transport {
  return new Proxy(transport, {
    get(target, prop) {
      if (prop === 'connect') return async (remote: string) => wrap(await target.connect(remote));
      const value = Reflect.get(target, prop) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

export async function startLocalShard(
  count: number,
  options: { endpoint?: EndpointOptions; limits?: MulticastLimits; viewId?: number } = {},
): Promise<LocalMember[]> {
  const { endpoints, nodes, view } = await nativeEndpoints(count, 100, options);
  return Promise.all(
    endpoints.map(async (endpoint, i) => {
      const deliveries: MulticastDelivery[] = [];
      const driver = await MulticastDriver.create({
        transport: endpoint,
        self: nodes[i]!,
        shard: 1,
        view,
        limits: options.limits ?? MIXED_LIMITS,
        onDeliver: (d) => deliveries.push({ ...d, payload: d.payload.slice() }),
      });
      return { node: nodes[i]!, endpoint, driver, deliveries };
    }),
  );
}

export async function stopLocalShard(members: LocalMember[]): Promise<void> {
  for (const m of members) await m.driver.close();
  for (const m of members) await m.endpoint.close();
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls (every 20 ms) until `done()` or the deadline; returns whether it became true. */
export async function waitFor(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!done()) {
    if (performance.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** A comparable line per delivery: identity, order, version, stamp and payload tag. */
export function deliveryLine(d: MulticastDelivery): string {
  return `${d.viewId}/${d.sender}/${d.index}/${d.position}/${d.version}/${d.timestamp.micros}.${d.timestamp.logical}/${tagOf(d.payload)}/${d.payload.byteLength}`;
}

/** Every member delivered the same messages (tag and size) in the same order, all intact. */
export function checkSameOrderIntact(t: ExecutionContext, deliveries: readonly MulticastDelivery[][]): void {
  const order = deliveries.map((list) => list.map((d) => `${tagOf(d.payload)}/${d.payload.byteLength}`));
  for (let m = 1; m < order.length; m++) t.deepEqual(order[m], order[0]);
  for (const list of deliveries) t.true(list.every((d) => payloadIntact(d.payload)), 'payloads intact');
}
