/**
 * The relayed-call table of a shard: which (client id, request id) pairs the shard has already
 * run, so a client's retry of a relayed ordered call (through another member, after a failure)
 * is not run twice. The decision must be the same on every replica, including one that entered
 * the shard by state transfer or restarted from disk, so the table is replicated state: a
 * Persistent field of the shard's registry (RELAY_TABLE_FIELD), versioned with every call that
 * changed it, transferred with the state, reloaded at restart.
 *
 * Per client it keeps a sliding window of RELAY_WINDOW request ids (clients number their calls
 * 1, 2, 3, ...): 8 bytes of base id, 8 bytes of last use and a bitmap, so a relayed call logs a
 * delta of 16 + RELAY_WINDOW/8 bytes. A request id below a client's window counts as new again
 * (as a retry of a call RELAY_WINDOW calls old: the client has long given up on it). The replies
 * themselves stay in memory only (ShardReplica): a replica that has the pair but not the reply
 * (it joined or restarted since) answers RelayedReplyUnavailableError, and the caller takes the
 * reply of another member.
 *
 * Clients come and go (each Client.connect is a new random id), so the table is bounded: past
 * RELAY_CLIENTS_MAX clients it drops the least recently used ones, RELAY_EVICT_BATCH at a time.
 * "Last use" is a counter kept in each window (one more than the largest in the table), so the
 * choice depends only on the replicated state and every replica, also one given the state by
 * transfer or reloaded from disk (where the map's order is not the order of use), drops the same
 * clients. The cost: a client that stays silent while RELAY_CLIENTS_MAX others make relayed
 * calls, and then retries an old call, has it run again; clients retry within
 * 2 × members × their request timeout, so that takes thousands of clients in seconds.
 * Windows written before the last-use counter existed (8 + RELAY_WINDOW/8 bytes) read as last
 * used at 0.
 */
import { Persistent } from '../../persistence/persistent.js';
import { PersistentMap } from '../../persistence/persistent-map.js';
import type { PersistentRegistry } from '../../persistence/registry.js';

/** The registry field holding the table; not a valid identifier, so no user field is named so. */
export const RELAY_TABLE_FIELD = '#relayed';
/** Request ids remembered per client. */
export const RELAY_WINDOW = 1024;
/** Clients remembered per shard; past it the least recently used are dropped. */
export const RELAY_CLIENTS_MAX = 4096;
/** Clients dropped at once when the table is over RELAY_CLIENTS_MAX (one scan per batch). */
export const RELAY_EVICT_BATCH = 256;

const BASE_AT = 0;
const USE_AT = 8;
const BITS_AT = 16;
/** The window format before the last-use counter: base id and bitmap only. */
const OLD_BITS_AT = 8;

export class RelayTable {
  private readonly field = new Persistent(() => new PersistentMap<string, Uint8Array>(), {
    delta: PersistentMap.codec<string, Uint8Array>(),
  });
  /** The largest last-use counter in `usesOf`'s map (recomputed when the map is replaced). */
  private lastUse = 0;
  private usesOf: PersistentMap<string, Uint8Array> | undefined;

  constructor(
    registry: PersistentRegistry,
    private readonly clientsMax = RELAY_CLIENTS_MAX,
    private readonly evictBatch = RELAY_EVICT_BATCH,
  ) {
    registry.attach(RELAY_TABLE_FIELD, this.field);
  }

  /** Clients the table remembers. */
  get clients(): number {
    return this.field.value.size;
  }

  /** Whether the shard already ran `requestId` of `clientId` (within the client's window). */
  has(clientId: string, requestId: number): boolean {
    const window = this.field.value.get(clientId);
    if (window === undefined) return false;
    const offset = requestId - readNumber(window, BASE_AT);
    if (offset < 0 || offset >= RELAY_WINDOW) return false;
    return bit(window, offset);
  }

  /** The lowest request id of `clientId` the table can still answer for (undefined: unknown). */
  windowBase(clientId: string): number | undefined {
    const window = this.field.value.get(clientId);
    return window === undefined ? undefined : readNumber(window, BASE_AT);
  }

  /**
   * Records that the shard ran `requestId` of `clientId`; the window slides up to include it.
   * Returns the clients dropped to stay within the bound (their replies can go too).
   */
  add(clientId: string, requestId: number): readonly string[] {
    const map = this.field.value;
    const old = map.get(clientId);
    let base = old === undefined ? requestId : readNumber(old, BASE_AT);
    if (requestId < base) return []; // older than the window: nothing to remember it by
    const next = new Uint8Array(BITS_AT + RELAY_WINDOW / 8);
    if (requestId - base >= RELAY_WINDOW) base = requestId - RELAY_WINDOW + 1;
    writeNumber(next, BASE_AT, base);
    writeNumber(next, USE_AT, this.nextUse(map));
    if (old !== undefined) {
      const shift = base - readNumber(old, BASE_AT);
      for (let offset = Math.max(shift, 0); offset < RELAY_WINDOW; offset++) {
        if (bit(old, offset)) setBit(next, offset - shift);
      }
    }
    setBit(next, requestId - base);
    const evicted = old === undefined && map.size >= this.clientsMax ? this.leastRecent(map) : [];
    // A new array per change: PersistentMap logs the keys that were set.
    this.field.update((m) => {
      for (const client of evicted) m.delete(client);
      m.set(clientId, next);
    });
    return evicted;
  }

  private nextUse(map: PersistentMap<string, Uint8Array>): number {
    if (this.usesOf !== map) {
      // A new map (the first use, a state transfer or a reload): find the largest counter.
      this.usesOf = map;
      this.lastUse = 0;
      for (const window of map.values()) this.lastUse = Math.max(this.lastUse, lastUseOf(window));
    }
    return ++this.lastUse;
  }

  /** The `evictBatch` least recently used clients (ties by id: the same on every replica). */
  private leastRecent(map: PersistentMap<string, Uint8Array>): string[] {
    return [...map.entries()]
      .map(([client, window]) => [client, lastUseOf(window)] as const)
      .sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .slice(0, Math.min(this.evictBatch, map.size))
      .map(([client]) => client);
  }
}

function bitsAt(window: Uint8Array): number {
  return window.byteLength === OLD_BITS_AT + RELAY_WINDOW / 8 ? OLD_BITS_AT : BITS_AT;
}

function lastUseOf(window: Uint8Array): number {
  return bitsAt(window) === OLD_BITS_AT ? 0 : readNumber(window, USE_AT);
}

function bit(window: Uint8Array, offset: number): boolean {
  return (window[bitsAt(window) + (offset >> 3)]! & (1 << (offset & 7))) !== 0;
}

function setBit(window: Uint8Array, offset: number): void {
  const at = BITS_AT + (offset >> 3);
  window[at] = window[at]! | (1 << (offset & 7));
}

function readNumber(window: Uint8Array, at: number): number {
  return new DataView(window.buffer, window.byteOffset + at, 8).getFloat64(0, true);
}

function writeNumber(window: Uint8Array, at: number, value: number): void {
  new DataView(window.buffer, window.byteOffset + at, 8).setFloat64(0, value, true);
}
