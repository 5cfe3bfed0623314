/**
 * `npm run bench -- replica [--quick]`: the CPU one ordered put costs a member in the group and
 * persistence layers alone, without the transport or the multicast: `ShardReplica.deliver` of
 * the kv-store's put (16-byte key, 64-byte value; decode the call, dispatch, one version of the
 * map's delta, the reply's encoding) plus the turn's LMDB commit ('buffered' store), in turns of
 * 1 and of 16 deliveries (one outstanding call, and about what a member delivers per turn with 64
 * outstanding), with keys written in key order (as the kv benchmark writes them) and scrambled
 * (where a sorted checkpoint of the map paid for its sort).
 *
 * This is the part of a member's CPU per put (25-35 µs in `bench -- kv --mode ordered`) that
 * src/group and persistence/ own; the rest is the transport and the multicast. On the shared VM
 * the wall-clock benchmarks swing ±10% from minute to minute, so changes to this path are
 * measured here. Baseline, in the same run: the floor of the same work without the layers
 * (msgpack decode of the call and its arguments, Map.get and Map.set, msgpack encode of the delta
 * and of the reply), per put.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { encodeArguments } from '../decorators/codec.js';
import { replicatedClassInfo } from '../decorators/metadata.js';
import { PersistenceStore } from '../persistence/store.js';
import { makeVersion, viewId, type NodeId, type ShardIndex, type SubgroupId } from '../src/core/ids.js';
import { ShardReplica } from '../src/group/replica.js';
import { encodeOrderedCall } from '../src/group/wire.js';
import type { View } from '../src/membership/view.js';
import { KvStore } from '../examples/kv-store/app.js';
import { report } from './_report.js';

const KEYS = 100_000;
const VALUE = 'v'.repeat(64);
const load = (): number => Number(loadavg()[0]!.toFixed(2));

/** Key i: in key order, or scrambled (a bijection of 0..KEYS-1). */
function key(i: number, scrambled: boolean): string {
  const n = scrambled ? (i * 7919) % KEYS : i % KEYS;
  return `key-${String(n).padStart(12, '0')}`; // 16 bytes
}

/** CPU µs per put of `count` puts through a member's ShardReplica, `perTurn` per event turn. */
async function replicaPath(count: number, perTurn: number, scrambled: boolean): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'squall-bench-replica-'));
  const store = PersistenceStore.open({ dataDir: dir, syncMode: 'buffered' });
  try {
    const registry = store.registry('KvStore/0/0');
    const info = replicatedClassInfo(KvStore);
    const views = { current: (): View => undefined as unknown as View, onView: (): void => undefined };
    const replica = new ShardReplica(info, 0, 0 as SubgroupId, 0 as ShardIndex, [0, 1, 2] as NodeId[], registry,
      1 as NodeId, views, () => undefined, 'persistent');
    const put = [...info.ordered.values()].find((m) => m.methodName === 'put')!;
    const run = async (from: number, to: number): Promise<void> => {
      for (let i = from; i < to; i += perTurn) {
        for (let j = i; j < Math.min(to, i + perTurn); j++) {
          // The payload as the caller's orderedCall builds it.
          const payload = encodeOrderedCall(j, put.wireName, encodeArguments(put, [key(j, scrambled), VALUE]));
          replica.deliver({ sender: 0 as NodeId, version: makeVersion(viewId(1), j), timestamp: { micros: 1_000_000 + j, logical: 0 }, payload });
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
      await registry.whenPersisted(registry.latestVersion);
    };
    await run(0, Math.min(count, 20_000)); // warm-up (JIT), and a map that is not empty
    const before = process.cpuUsage();
    await run(20_000, 20_000 + count);
    const used = process.cpuUsage(before);
    return (used.user + used.system) / count;
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The floor: the same decodes, map operations and encodes, with no layer around them. */
function rawFloor(count: number, scrambled: boolean): number {
  const packr = new Packr({ moreTypes: true });
  const map = new Map<string, string>();
  const calls: Uint8Array[] = [];
  for (let j = 0; j < 1000; j++) calls.push(packr.pack([j, 'put', packr.pack([key(j, scrambled), VALUE])]));
  const step = (j: number): void => {
    const [callId, , args] = packr.unpack(calls[j % 1000]!) as [number, string, Uint8Array];
    const [k, v] = packr.unpack(args) as [string, string];
    const name = key(j, scrambled); // the distinct keys the member path sees
    const previous = map.get(name) ?? '';
    map.set(name, v);
    packr.pack([[k, 1, v]]); // the delta
    packr.pack([0, previous, callId]); // the reply
  };
  for (let j = 0; j < 20_000; j++) step(j); // warm-up, as the member path's
  map.clear();
  const before = process.cpuUsage();
  for (let j = 0; j < count; j++) step(20_000 + j);
  const used = process.cpuUsage(before);
  return (used.user + used.system) / count;
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const count = quick ? 40_000 : 150_000;
  for (const scrambled of [false, true]) {
    const floor = rawFloor(count, scrambled);
    for (const perTurn of [1, 16]) {
      const us = await replicaPath(count, perTurn, scrambled);
      report({
        suite: 'replica',
        case: `ordered put, member side (ShardReplica.deliver + turn commit), ${perTurn} per turn, keys ${scrambled ? 'scrambled' : 'in order'}`,
        value: Number(us.toFixed(2)),
        unit: 'us cpu/put',
        baselines: { raw_msgpack_and_map_us: Number(floor.toFixed(2)) },
        puts: count,
        load: load(),
      });
    }
  }
}
