/**
 * The replicated key-value store: the app module `squall node --app` loads. It exports the types
 * a node hosts (`types`) and their layout (`layout`): one subgroup of one shard of 3 replicas.
 *
 * `entries` is a Persistent PersistentMap in delta mode: every ordered call that changes it adds
 * one version holding only the changed keys, so reads by version, index and time are cheap.
 */
import 'reflect-metadata';
import {
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  PersistentMap,
  flexibleEvenShards,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  objectDigest,
  replicated,
} from '../../src/index.js';

/** An application error: thrown by a replica, it reaches the caller as that replica's RemoteError. */
export class KeyMissingError extends Error {
  override name = 'KeyMissingError';
}

@replicated({ name: 'KvStore' })
export class KvStore {
  declare readonly [ORDERED_METHODS]: 'put' | 'remove' | 'update' | 'putMany';
  declare readonly [P2P_METHODS]: 'get' | 'getAt' | 'size' | 'stateDigest';

  // Delta mode: each version stores only the keys it changed. A full copy of the map is written
  // once the deltas since the last one add up to its size, so writes stay O(change) however
  // many keys the map holds (a fixed checkpointEvery re-encodes the whole map every N puts:
  // with 100,000 keys and every 1,024 puts that cost 4x the puts themselves).
  @persistent() entries = new Persistent(() => new PersistentMap<string, string>(), {
    delta: PersistentMap.codec<string, string>(),
  });

  /** Sets a key; returns the previous value ('' when there was none). */
  @ordered() put(key: string, value: string): string {
    const previous = this.entries.value.get(key) ?? '';
    this.entries.update((map) => {
      map.set(key, value);
    });
    return previous;
  }

  /** Sets many keys in one ordered call (one version). */
  @ordered({ params: [Array] }) putMany(pairs: [string, string][]): number {
    this.entries.update((map) => {
      for (const [key, value] of pairs) map.set(key, value);
    });
    return pairs.length;
  }

  /** Changes an existing key; throws KeyMissingError (on every replica alike) if it is absent. */
  @ordered() update(key: string, value: string): string {
    const previous = this.entries.value.get(key);
    if (previous === undefined) throw new KeyMissingError(`no key "${key}" to update`);
    this.entries.update((map) => {
      map.set(key, value);
    });
    return previous;
  }

  @ordered() remove(key: string): boolean {
    if (!this.entries.value.has(key)) return false;
    this.entries.update((map) => {
      map.delete(key);
    });
    return true;
  }

  /** The current value ('' when absent). */
  @p2p() get(key: string): string {
    return this.entries.value.get(key) ?? '';
  }

  /** The value at HLC time `micros` (epoch µs): a temporal query over the version history. */
  @p2p() getAt(key: string, micros: number): string {
    return this.entries.getByTime(micros).get(key) ?? '';
  }

  @p2p() size(): number {
    return this.entries.value.size;
  }

  /** SHA-256 of this replica's whole state: equal on replicas that applied the same calls. */
  @p2p() stateDigest(): string {
    return objectDigest(this);
  }
}

export const types = [KvStore];
/**
 * One shard of 2 to 3 replicas: three nodes give three replicas, and after one fails the two
 * left still make the shard whole (with a minimum of 3, ordered calls would wait for a node to
 * join: group.inadequate_wait_ms).
 */
export const layout = { KvStore: oneSubgroup(flexibleEvenShards(1, 2, 3)) };
