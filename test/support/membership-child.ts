/**
 * One group member in its own process (a MembershipDriver on a native endpoint at 127.0.0.1),
 * for the real-process membership test and bench/membership.ts. Driven by its parent over the
 * IPC channel (see membership-cluster.ts); every answer carries `atMs`, this process's clock as
 * epoch milliseconds (performance.timeOrigin + performance.now(): comparable across processes).
 *   {cmd:'init', seed, peerFailureTimeoutMs}             -> {address}   (transport timeout, 1000)
 *   {cmd:'start', self, founders, found, seeds, heartbeatMs, failureTimeoutMs, stateRecords,
 *    recordBytes}                                        -> {viewId}   (once a member)
 *   {cmd:'status'}                 -> {viewId, members, failed, digests, awaiting, stateChunks,
 *                                       suspicions: {transport, timeout}, transport: {counters}}
 *   {cmd:'waitView', atLeast, timeoutMs}                 -> {viewId, atMs: when it installed}
 *   {cmd:'load', everyMs}          starts sending a small message to each of its shards
 *   {cmd:'stopLoad'}
 *   {cmd:'waitDelivery', viewAtLeast, timeoutMs}         -> {atMs of the first such delivery}
 *   {cmd:'exit'}
 */
import { nodeId, type NodeId } from '../../src/core/ids.js';
import type { View } from '../../src/membership/view.js';
import { Endpoint } from '../../src/transport/native-transport.js';
import { createNode, shardKey, type LocalNode } from './membership-local.js';

const now = (): number => performance.timeOrigin + performance.now();
let endpoint: Endpoint | null = null;
let node: LocalNode | null = null;
const viewAt = new Map<number, number>();
const firstDeliveryAt = new Map<number, number>();
let load: NodeJS.Timeout | undefined;

const reply = (message: Record<string, unknown>): void => {
  process.send!({ ...message, atMs: message['atMs'] ?? now() });
};

async function poll<T>(get: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const end = now() + timeoutMs;
  for (;;) {
    const value = get();
    if (value !== undefined) return value;
    if (now() > end) throw new Error(`node ${node?.id}: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const pick = (stats: Record<string, number>, keys: string[]): Record<string, number> =>
  Object.fromEntries(keys.map((k) => [k, stats[k] ?? 0]));

function status(): Record<string, unknown> {
  const view = node!.driver.current();
  const digests: Record<string, string> = {};
  let awaiting = false;
  for (const s of view.shardsOf(node!.id)) {
    digests[shardKey(s)] = node!.state.digest(shardKey(s));
    awaiting ||= node!.driver.awaitingState(s);
  }
  return {
    viewId: view.id, members: view.memberIds, failed: view.failed, digests, awaiting,
    stateChunks: node!.driver.counters.stateChunks, removed: node!.removed?.message ?? null,
    leader: node!.driver.isLeader,
    suspicions: { transport: node!.driver.counters.suspicionsTransport, timeout: node!.driver.counters.suspicionsTimeout },
    transport: pick(endpoint!.stats(), ['peerFailures', 'peerFailuresUnreachable', 'udpPortUnreachable', 'unreachableReports', 'unreachableUnmatched']),
  };
}

async function handle(message: Record<string, unknown>): Promise<void> {
  switch (message['cmd']) {
    case 'init':
      endpoint = await Endpoint.create({
        host: '127.0.0.1', port: 0, seed: Number(message['seed']), peerFailureTimeoutMs: Number(message['peerFailureTimeoutMs'] ?? 1000),
      });
      return reply({ address: endpoint.address });
    case 'start': {
      const founders = (message['founders'] as [number, string][]).map(([id, address]) => ({ id: nodeId(id), address }));
      node = createNode(Number(message['self']), endpoint!, {
        founders, found: Boolean(message['found']),
        ...(message['seeds'] ? { seeds: message['seeds'] as string[] } : {}),
        heartbeatMs: Number(message['heartbeatMs'] ?? 50), failureTimeoutMs: Number(message['failureTimeoutMs'] ?? 500),
        ...(process.env['MEMBERSHIP_LOG'] ? { log: (line: string) => console.error(`${now().toFixed(1)} n${String(message['self'])} ${line}`) } : {}),
      });
      node.driver.on('view', (view: View) => viewAt.set(view.id, now()));
      const recordDelivery = (viewId: number): void => {
        if (!firstDeliveryAt.has(viewId)) firstDeliveryAt.set(viewId, now());
      };
      node.onAnyDelivery = recordDelivery;
      await node.driver.start();
      const records = Number(message['stateRecords'] ?? 0);
      if (records > 0 && message['found']) {
        for (const s of node.driver.current().shardsOf(node.id)) node.state.seed(s, records, Number(message['recordBytes'] ?? 1024));
      }
      return reply({ viewId: node.driver.current().id });
    }
    case 'status':
      return reply(status());
    case 'waitView': {
      const atLeast = Number(message['atLeast']);
      const id = await poll(() => [...viewAt.keys()].find((v) => v >= atLeast), Number(message['timeoutMs'] ?? 10_000), `view ${atLeast}`);
      return reply({ viewId: id, atMs: viewAt.get(id)!, ...status() });
    }
    case 'stopLoad':
      if (load !== undefined) clearInterval(load);
      return reply({ ok: true });
    case 'load': {
      const everyMs = Number(message['everyMs'] ?? 5);
      let seq = 0;
      load = setInterval(() => {
        if (node === null || !node.driver.isMember) return;
        for (const s of node.driver.current().shardsOf(node.id)) {
          node.driver.multicast(s)?.send(new TextEncoder().encode(`load:${node.id}:${seq++}`)).catch(() => undefined);
        }
      }, everyMs);
      load.unref();
      return reply({ ok: true });
    }
    case 'waitDelivery': {
      const viewAtLeast = Number(message['viewAtLeast']);
      const v = await poll(() => [...firstDeliveryAt.keys()].find((x) => x >= viewAtLeast), Number(message['timeoutMs'] ?? 10_000), `a delivery in view ${viewAtLeast}`);
      return reply({ viewId: v, atMs: firstDeliveryAt.get(v)! });
    }
    case 'exit':
      await node?.driver.close();
      await endpoint?.close();
      process.exit(0);
  }
}

process.on('message', (message: Record<string, unknown>) => {
  handle(message).catch((error: unknown) => reply({ error: String(error instanceof Error ? error.stack : error) }));
});

export type { NodeId };
