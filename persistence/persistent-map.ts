/**
 * PersistentMap<K, V>: a Map that records which keys changed, so a Persistent field holding it
 * can store only those keys per version (delta mode).
 *
 *   entries = new Persistent(() => new PersistentMap<string, string>(), {
 *     delta: PersistentMap.codec(),
 *   });
 *   entries.value.set('a', '1');          // logged as a one-key delta at the next makeVersion
 */
import { Packr } from 'msgpackr';
import type { DeltaCodec } from './codec.js';

const packr = new Packr({ moreTypes: true });

const SET = 1;
const DELETE = 0;
type DeltaItem = [unknown, number, unknown?];
/** In `changed`: the key was deleted (any other value: it was set to that value). */
const DELETED: unique symbol = Symbol('deleted');

function compareKeys(a: unknown, b: unknown): number {
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return Buffer.compare(packr.pack(a), packr.pack(b));
}

export class PersistentMap<K, V> implements Iterable<[K, V]> {
  private map = new Map<K, V>();
  /**
   * The keys changed since the last delta, each with its new value (or DELETED): takeDelta then
   * reads nothing from `map`, whose lookups (one random probe each in a map of many keys) were
   * a few % of a replica's CPU in the kv benchmark.
   */
  private changed = new Map<K, V | typeof DELETED>();
  private changes = 0;

  constructor(entries?: Iterable<[K, V]>) {
    if (entries) for (const [key, value] of entries) this.map.set(key, value);
  }

  get size(): number {
    return this.map.size;
  }
  get(key: K): V | undefined {
    return this.map.get(key);
  }
  has(key: K): boolean {
    return this.map.has(key);
  }
  set(key: K, value: V): this {
    this.map.set(key, value);
    this.note(key, value);
    return this;
  }
  delete(key: K): boolean {
    const existed = this.map.delete(key);
    if (existed) this.note(key, DELETED);
    return existed;
  }
  clear(): void {
    for (const key of this.map.keys()) this.note(key, DELETED);
    this.map.clear();
  }
  keys(): IterableIterator<K> {
    return this.map.keys();
  }
  values(): IterableIterator<V> {
    return this.map.values();
  }
  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }
  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.map.entries();
  }
  /** A PersistentMap over `map` itself (no copy), with no changes recorded. */
  private static adopt<K, V>(map: Map<K, V>): PersistentMap<K, V> {
    const adopted = new PersistentMap<K, V>();
    adopted.map = map;
    return adopted;
  }

  /** A plain Map copy (for comparisons and tests). */
  toMap(): Map<K, V> {
    return new Map(this.map);
  }

  private note(key: K, value: V | typeof DELETED): void {
    this.changed.set(key, value);
    this.changes += 1;
  }

  /**
   * The delta codec for Persistent's delta mode. encode() (snapshots, digests) sorts the entries
   * by key, so equal maps give equal bytes: an array of [key, value] pairs. Checkpoints
   * (encodeCheckpoint) write the Map itself as a msgpack map, in its own order: no sort (~3/4
   * of a checkpoint's cost: 100,000 keys took ~0.45 of ~0.56 s on the shared VM) and no pair
   * array per entry (garbage the next scavenge must copy while the encode still holds it). A
   * map decoded from its own order iterates exactly like the map that was written, so a
   * historical read iterates alike on every replica and after a restart or a state transfer
   * (a sorted checkpoint reordered it). decode() reads both forms.
   */
  static codec<K, V>(): DeltaCodec<PersistentMap<K, V>> {
    return {
      encode(value) {
        const entries = [...value.map.entries()].sort((a, b) => compareKeys(a[0], b[0]));
        return packr.pack(entries);
      },
      encodeCheckpoint(value) {
        return packr.pack(value.map);
      },
      decode(bytes) {
        const decoded = packr.unpack(Uint8Array.prototype.slice.call(bytes)) as [K, V][] | Map<K, V>;
        return decoded instanceof Map ? PersistentMap.adopt(decoded) : new PersistentMap<K, V>(decoded);
      },
      takeDelta(value) {
        if (value.changed.size === 0) return null;
        const items: DeltaItem[] = [];
        for (const [key, now] of value.changed) {
          items.push(now === DELETED ? [key, DELETE] : [key, SET, now]);
        }
        value.changed = new Map();
        return packr.pack(items);
      },
      applyDelta(value, delta) {
        const items = packr.unpack(Uint8Array.prototype.slice.call(delta)) as DeltaItem[];
        for (const [key, op, item] of items) {
          if (op === SET) value.map.set(key as K, item as V);
          else value.map.delete(key as K);
        }
      },
      changeCount: (value) => value.changes,
    };
  }
}
