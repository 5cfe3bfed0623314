/**
 * The relayed-call table of a shard: which (client id, request id) pairs the shard has already
 * run, so a client's retry of a relayed ordered call (through another member, after a failure)
 * is not run twice. The decision must be the same on every replica, including one that entered
 * the shard by state transfer or restarted from disk, so the table is replicated state: a
 * Persistent field of the shard's registry (RELAY_TABLE_FIELD), versioned with every call that
 * changed it, transferred with the state, reloaded at restart.
 *
 * Per client it keeps a sliding window of RELAY_WINDOW request ids (clients number their calls
 * 1, 2, 3, ...): 8 bytes of base id and a bitmap, so a relayed call logs a delta of
 * 8 + RELAY_WINDOW/8 bytes. A request id below a client's window counts as new again (as a
 * retry of a call RELAY_WINDOW calls old: the client has long given up on it). The replies
 * themselves stay in memory only (ShardReplica): a replica that has the pair but not the reply
 * (it joined or restarted since) answers RelayedReplyUnavailableError, and the caller takes the
 * reply of another member.
 */
import { Persistent } from '../../persistence/persistent.js';
import { PersistentMap } from '../../persistence/persistent-map.js';
import type { PersistentRegistry } from '../../persistence/registry.js';

/** The registry field holding the table; not a valid identifier, so no user field is named so. */
export const RELAY_TABLE_FIELD = '#relayed';
/** Request ids remembered per client. */
export const RELAY_WINDOW = 1024;

const BASE_BYTES = 8;

export class RelayTable {
  private readonly field = new Persistent(() => new PersistentMap<string, Uint8Array>(), {
    delta: PersistentMap.codec<string, Uint8Array>(),
  });

  constructor(registry: PersistentRegistry) {
    registry.attach(RELAY_TABLE_FIELD, this.field);
  }

  /** Whether the shard already ran `requestId` of `clientId` (within the client's window). */
  has(clientId: string, requestId: number): boolean {
    const window = this.field.value.get(clientId);
    if (window === undefined) return false;
    const offset = requestId - readBase(window);
    if (offset < 0 || offset >= RELAY_WINDOW) return false;
    return (window[BASE_BYTES + (offset >> 3)]! & (1 << (offset & 7))) !== 0;
  }

  /** Records that the shard ran `requestId` of `clientId`; the window slides up to include it. */
  add(clientId: string, requestId: number): void {
    const old = this.field.value.get(clientId);
    let base = old === undefined ? requestId : readBase(old);
    if (requestId < base) return; // older than the window: nothing to remember it by
    const next = new Uint8Array(BASE_BYTES + RELAY_WINDOW / 8);
    if (requestId - base >= RELAY_WINDOW) base = requestId - RELAY_WINDOW + 1;
    writeBase(next, base);
    if (old !== undefined) {
      const shift = base - readBase(old);
      for (let offset = shift; offset < RELAY_WINDOW; offset++) {
        if ((old[BASE_BYTES + (offset >> 3)]! & (1 << (offset & 7))) === 0) continue;
        const moved = offset - shift;
        setBit(next, moved);
      }
    }
    setBit(next, requestId - base);
    // A new array per change: PersistentMap logs the keys that were set.
    this.field.update((map) => {
      map.set(clientId, next);
    });
  }
}

function setBit(window: Uint8Array, offset: number): void {
  const at = BASE_BYTES + (offset >> 3);
  window[at] = window[at]! | (1 << (offset & 7));
}

function readBase(window: Uint8Array): number {
  return new DataView(window.buffer, window.byteOffset, BASE_BYTES).getFloat64(0, true);
}

function writeBase(window: Uint8Array, base: number): void {
  new DataView(window.buffer, window.byteOffset, BASE_BYTES).setFloat64(0, base, true);
}
