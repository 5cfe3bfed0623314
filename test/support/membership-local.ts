/**
 * In-process members for the membership driver tests: one native Endpoint on 127.0.0.1 and one
 * MembershipDriver per node, each with a small versioned key-value state per shard (the state
 * transfer source and target) and a record of what it delivered in which view.
 */
import type { ExecutionContext } from 'ava';
import { Packr } from 'msgpackr';
import { nodeId, viewId, type NodeId, type ShardIndex, type SubgroupId } from '../../src/core/ids.js';
import { defaultAllocator, fixedEvenShards, flexibleEvenShards, oneSubgroup, runAllocator, type SubgroupPolicy } from '../../src/membership/layout.js';
import { View } from '../../src/membership/view.js';
import { multicastLimits } from '../../src/multicast/config.js';
import {
  MembershipDriver, type MembershipDriverOptions, type ShardRef, type ShardStateStore,
} from '../../src/runtime/membership-driver.js';
import type { MulticastDelivery } from '../../src/runtime/multicast-driver.js';
import { Endpoint } from '../../src/transport/native-transport.js';

const packr = new Packr({ useRecords: false });
/** Below every version, the seeded ones included (those are negative: see seed()). */
export const NO_VERSION = -(1n << 62n);
export const shardKey = (s: ShardRef): string => `${s.subgroupId}/${s.shardIndex}`;

/** A shard's state: every delivered payload tag by version (the log), digested. */
export class KvState implements ShardStateStore {
  readonly shards = new Map<string, { version: bigint; tag: string }[]>();
  chunkRecords = 50;
  chunkBytes = 1 << 20;

  latestVersion(shard: ShardRef): bigint {
    const log = this.shards.get(shardKey(shard));
    return log === undefined || log.length === 0 ? NO_VERSION : log[log.length - 1]!.version;
  }

  *stateChunks(shard: ShardRef, afterVersion: bigint): Iterable<Uint8Array> {
    const log = this.shards.get(shardKey(shard)) ?? [];
    let items: [string, string][] = [];
    let bytes = 0;
    for (const r of log) {
      if (r.version <= afterVersion) continue;
      items.push([String(r.version), r.tag]);
      bytes += r.tag.length + 24;
      if (items.length >= this.chunkRecords || bytes >= this.chunkBytes) {
        yield Uint8Array.from(packr.pack(items));
        items = [];
        bytes = 0;
      }
    }
    if (items.length > 0) yield Uint8Array.from(packr.pack(items));
  }

  applyStateChunk(shard: ShardRef, chunk: Uint8Array): void {
    for (const [version, tag] of packr.unpack(chunk) as [string, string][]) this.append(shard, BigInt(version), tag);
  }

  /** Initial state of a founder's shard, below every multicast version (which are >= 0). */
  seed(shard: ShardRef, records: number, bytes: number): void {
    const filler = 'x'.repeat(bytes);
    for (let i = 0; i < records; i++) this.append(shard, BigInt(i) - (1n << 40n), `${i}:${filler}`);
  }

  async truncate(shard: ShardRef, version: bigint): Promise<void> {
    const log = this.shards.get(shardKey(shard)) ?? [];
    this.shards.set(shardKey(shard), log.filter((r) => r.version <= version));
  }

  floorVersion(shard: ShardRef, version: bigint): bigint {
    let floor = -1n;
    for (const r of this.shards.get(shardKey(shard)) ?? []) if (r.version <= version) floor = r.version;
    return floor;
  }

  append(shard: ShardRef, version: bigint, tag: string): void {
    const log = this.shards.get(shardKey(shard)) ?? [];
    this.shards.set(shardKey(shard), log);
    if (log.length > 0 && version <= log[log.length - 1]!.version) return;
    log.push({ version, tag });
  }

  digest(shard: string): string {
    const log = this.shards.get(shard) ?? [];
    let h = 0x811c9dc5;
    // Version, length and head of each record: cheap on megabyte records (a status call must not
    // stall the event loop, or heartbeats stop), and the heads carry the payload tags.
    for (const r of log) {
      for (const c of `${r.version}:${r.tag.length}:${r.tag.slice(0, 64)};`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
    }
    return `${log.length}:${h.toString(16)}`;
  }
}

export interface LocalNode {
  readonly id: NodeId;
  readonly endpoint: Endpoint;
  readonly driver: MembershipDriver;
  readonly state: KvState;
  /** View id → shard key → delivered tags, in order. */
  readonly delivered: Map<number, Map<string, string[]>>;
  readonly views: View[];
  removed: Error | undefined;
  alive: boolean;
  /** Called with the view id of every delivery. */
  onAnyDelivery?: (viewId: number) => void;
}

export const LAYOUT_HASH = 'kv:2x(2..3)';
export const ALLOCATOR = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(2, 2, 3)) });

export async function createEndpoint(seed: number): Promise<Endpoint> {
  return Endpoint.create({ host: '127.0.0.1', port: 0, seed, peerFailureTimeoutMs: 1000 });
}

/**
 * The start of a restart test: endpoints for nodes 1-3 (seeds seedBase + 1..3), a KV type of one
 * 3-member shard (`shards`, by default fixedEvenShards(1, 3)), and view 4 over the three: the last
 * view the nodes recorded before the group went down.
 */
export async function threeNodesAtView4(seedBase: number, shards: SubgroupPolicy = fixedEvenShards(1, 3)) {
  const endpoints = await Promise.all([1, 2, 3].map((i) => createEndpoint(seedBase + i)));
  const members = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const allocator = defaultAllocator({ KV: oneSubgroup(shards) });
  const layout = runAllocator(allocator, { previous: undefined, members: members.map((m) => m.id) });
  const view4 = new View({ id: viewId(4), members, joined: [], departed: [], failed: [], layout });
  const shard = { subgroupId: layout.types[0]!.subgroups[0]!.subgroupId as SubgroupId, shardIndex: 0 as ShardIndex };
  return { endpoints, members, allocator, layout, view4, shard };
}

/** An endpoint at `port` on loopback (a restarted process's address), retried while the closed one there is let go. */
export async function endpointAt(port: number): Promise<Endpoint> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await Endpoint.create({ host: '127.0.0.1', port, seed: 999 + attempt, peerFailureTimeoutMs: 1000 });
    } catch (error) {
      if (attempt > 100) throw error; // the closed socket is let go a loop turn or two later
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

export function createNode(
  id: number,
  endpoint: Endpoint,
  options: Omit<MembershipDriverOptions, 'self' | 'transport' | 'allocator' | 'layoutHash' | 'state' | 'onDeliver'> & { layoutHash?: string },
): LocalNode {
  const state = new KvState();
  const delivered = new Map<number, Map<string, string[]>>();
  const node: LocalNode = {
    id: nodeId(id), endpoint, state, delivered, views: [], removed: undefined, alive: true,
    driver: new MembershipDriver({
      layoutHash: LAYOUT_HASH, heartbeatMs: 20, failureTimeoutMs: 300, tickMs: 10,
      ...options, self: nodeId(id), transport: endpoint, allocator: ALLOCATOR, state,
      multicastLimits: multicastLimits({ windowSize: 16, sendQueueCountMax: 64 }),
      onDeliver: (shard: ShardRef, d: MulticastDelivery) => {
        const tag = new TextDecoder().decode(d.payload);
        state.append(shard, d.version!, tag);
        const byShard = delivered.get(d.viewId) ?? new Map<string, string[]>();
        delivered.set(d.viewId, byShard);
        const list = byShard.get(shardKey(shard)) ?? [];
        byShard.set(shardKey(shard), list);
        list.push(tag);
        node.onAnyDelivery?.(d.viewId);
      },
    }),
  };
  node.driver.on('view', (view) => node.views.push(view));
  node.driver.on('removed', (error) => {
    node.removed = error;
  });
  return node;
}

/** Stops a node as kill -9 would look to the others: its endpoint goes silent at once. */
export async function kill(node: LocalNode): Promise<void> {
  node.alive = false;
  await node.endpoint.close();
  await node.driver.close();
}

export async function waitFor(what: string, done: () => boolean, timeoutMs = 10_000): Promise<number> {
  const started = performance.now();
  while (!done()) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return performance.now() - started;
}

/** Sends `count` tagged messages from `node` to each of its shards. */
export async function sendSome(node: LocalNode, count: number, label: string): Promise<string[]> {
  const tags: string[] = [];
  const view = node.driver.current();
  for (const s of view.shardsOf(node.id)) {
    const driver = node.driver.multicast(s);
    if (driver === undefined) continue;
    for (let i = 0; i < count; i++) {
      const tag = `${label}:${node.id}:${i}`;
      tags.push(tag);
      await driver.send(new TextEncoder().encode(tag));
    }
  }
  return tags;
}

/**
 * Five (or `count`) founders on fresh endpoints, not started yet. With MEMBERSHIP_LOG set, every
 * driver's progress lines go to stdout with the ms since creation.
 */
export async function createFounders(
  seedBase: number, count = 5,
  extra: (id: number) => Partial<MembershipDriverOptions> = () => ({}),
): Promise<{ nodes: LocalNode[]; founders: { id: NodeId; address: string }[] }> {
  const endpoints = await Promise.all(Array.from({ length: count }, (_, i) => createEndpoint(seedBase + i + 1)));
  const founders = endpoints.map((e, i) => ({ id: nodeId(i + 1), address: e.address }));
  const t0 = performance.now();
  const nodes = endpoints.map((e, i) => createNode(i + 1, e, {
    founders, found: true,
    ...(process.env['MEMBERSHIP_LOG'] ? { log: (line: string) => console.log(`${(performance.now() - t0).toFixed(1)} n${i + 1} ${line}`) } : {}),
    ...extra(i + 1),
  }));
  return { nodes, founders };
}

/** Runs `body`; if it fails, logs the nodes' lines; then closes `drivers` (also those added meanwhile) and `endpoints`. */
export async function logOnFailure(
  t: ExecutionContext, lines: readonly string[], drivers: readonly MembershipDriver[], endpoints: readonly Endpoint[],
  body: () => Promise<void>,
): Promise<void> {
  try {
    await body();
  } catch (error) {
    t.log(lines.join('\n'));
    throw error;
  } finally {
    for (const d of drivers) await d.close();
    for (const e of endpoints) await e.close();
  }
}
