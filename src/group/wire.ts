/**
 * The group layer's own messages over the transport (request types beside Raft's 40 and the
 * multicast driver's 48), and the small waiting list the frontiers use.
 *
 *   ordered call (inside a multicast payload):  [callId, wireName, encodedArgs]
 *       the caller is the delivery's sender; callId is unique per caller node
 *   ORDERED_REPLY_TYPE request:  [[callId, fromNode, replyBytes], ...]   response: empty
 *       every member sends its reply to the caller; replies to one caller leave together, one
 *       transport call per destination per event-loop turn
 *   P2P_REQUEST_TYPE request:  [subgroupId, shardIndex, wireName, encodedArgs]
 *       response: [P2P_OK, replyBytes] | [P2P_REPLY_TOO_LARGE, bytes, bytesMax] | [P2P_NOT_HOSTED, message]
 *   READY_TYPE request: empty   response: [1] once every local shard's driver exists, else [0]
 *   VIEW_TYPE request: empty    response: encodeView(current view)   (for external clients)
 *   RELAY_TYPE request: [clientId, requestId, subgroupId, shardIndex, wireName, encodedArgs]
 *       a member sends it into the shard as an ordered call carrying the idempotency key
 *       (clientId, requestId); response [RELAY_OK, version, micros, logical, [[node, replyBytes]...]]
 *       | [RELAY_REFUSED, code, message]
 *
 * replyBytes are decorators/' reply encoding (result, application error or framework error).
 */
import type { Version } from '../core/ids.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

export const P2P_REQUEST_TYPE = REQUEST_TYPES.p2p;
export const ORDERED_REPLY_TYPE = REQUEST_TYPES.orderedReply;
export const READY_TYPE = REQUEST_TYPES.ready;
export const VIEW_TYPE = REQUEST_TYPES.view;
export const RELAY_TYPE = REQUEST_TYPES.relay;
/** Request empty; response: a NodeStatus (msgpack) for `squall status`. */
export const STATUS_TYPE = REQUEST_TYPES.status;

/** What a node reports to `squall status`. */
export interface NodeStatus {
  readonly node: number;
  readonly view: Uint8Array;
  readonly shards: readonly {
    readonly typeName: string;
    readonly subgroupIndex: number;
    readonly shardIndex: number;
    readonly delivered: bigint;
    readonly localPersisted: bigint;
    readonly persisted: bigint;
    readonly stableMicros: number;
  }[];
}

export const RELAY_OK = 0;
export const RELAY_REFUSED = 1;

export const P2P_OK = 0;
export const P2P_REPLY_TOO_LARGE = 1;
export const P2P_NOT_HOSTED = 2;

/** An ordered call; a relayed one also carries its client's idempotency key. */
export type OrderedCallMessage =
  | [callId: number, wireName: string, args: Uint8Array]
  | [callId: number, wireName: string, args: Uint8Array, clientId: string, requestId: number];
export type RelayRequest = [
  clientId: string, requestId: number, subgroupId: number, shardIndex: number, wireName: string, args: Uint8Array,
];
export type RelayResponse =
  | [status: typeof RELAY_OK, version: bigint, micros: number, logical: number, replies: [number, Uint8Array][]]
  | [status: typeof RELAY_REFUSED, code: string, message: string];
export type OrderedReply = [callId: number, fromNode: number, reply: Uint8Array];
/** readMode (raft-shard.ts): absent or 0 = the shard's default (linearizable on raft shards), 1 = local. */
export type P2PRequest = [subgroupId: number, shardIndex: number, wireName: string, args: Uint8Array, readMode?: number];

/** The multicast driver's shard number for one shard: unique per node's transport. */
export function driverShardNumber(subgroupId: number, shardIndex: number): number {
  return subgroupId * 0x1_0000 + shardIndex;
}

/**
 * Promises waiting for a frontier (a version) to reach them. Waiters are kept sorted by version
 * (calls wait in about the order they were numbered, so an insert is almost always an append),
 * and advance() resolves from the front: O(resolved) per advance, not O(waiting). The frontier
 * moves once per delivery, so with 64 calls outstanding a full scan cost 64 steps per call.
 */
export class FrontierWaiters {
  private waiters: { version: Version; resolve: () => void; reject: (e: unknown) => void }[] = [];
  /** Waiters before this index are resolved (their slots are cleared, compacted lazily). */
  private head = 0;
  private frontier: Version;
  private failure: unknown;

  constructor(initial: Version) {
    this.frontier = initial;
  }

  get current(): Version {
    return this.frontier;
  }

  /** Waiting, not yet resolved or failed. */
  get waitingCount(): number {
    return this.waiters.length - this.head;
  }

  wait(version: Version): Promise<void> {
    if (version <= this.frontier) return Promise.resolve();
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const waiter = { version, resolve, reject };
      const waiters = this.waiters;
      let at = waiters.length;
      // After every waiter of the same or a lower version: equal versions resolve in call order.
      while (at > this.head && waiters[at - 1]!.version > version) at--;
      if (at === waiters.length) waiters.push(waiter);
      else waiters.splice(at, 0, waiter);
    });
  }

  advance(version: Version): void {
    if (version <= this.frontier) return;
    this.frontier = version;
    const waiters = this.waiters;
    let head = this.head;
    while (head < waiters.length && waiters[head]!.version <= version) {
      const waiter = waiters[head]!;
      waiters[head++] = undefined as never;
      waiter.resolve();
    }
    if (head === waiters.length) {
      waiters.length = 0;
      head = 0;
    } else if (head >= 1024 && head * 2 >= waiters.length) {
      waiters.splice(0, head);
      head = 0;
    }
    this.head = head;
  }

  failAll(error: unknown): void {
    this.failure = error;
    const waiters = this.waiters;
    for (let i = this.head; i < waiters.length; i++) waiters[i]!.reject(error);
    this.waiters = [];
    this.head = 0;
  }
}

/** A stable 32-bit FNV-1a hash of a key (strings as UTF-8), for hash-sharded layouts. */
export function hashKey(key: string | Uint8Array | number | bigint): number {
  const bytes =
    key instanceof Uint8Array ? key : Buffer.from(typeof key === 'string' ? key : String(key));
  let hash = 0x811c9dc5;
  for (const byte of bytes) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash;
}
