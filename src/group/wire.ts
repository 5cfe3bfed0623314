/**
 * The group layer's own messages over the transport (request types beside Raft's 40 and the
 * multicast driver's 48), and the small waiting list the frontiers use.
 *
 *   ordered call (inside a multicast payload), framed by hand (big-endian; encodeOrderedCall):
 *       u8 1 | u64 callId | u16 n | wireName (n bytes utf8) | encodedArgs (the rest)
 *       relayed: u8 2 | u64 callId | u16 n | wireName | u16 m | clientId (m bytes utf8)
 *                | u64 requestId | encodedArgs
 *       (u64: integers below 2^53, as u32 high | u32 low)
 *       the caller is the delivery's sender; callId is unique per caller node. Calls written as
 *       msgpack [callId, wireName, encodedArgs(, clientId, requestId)] (before 2026-11-22: a raft
 *       shard's log may hold them) still decode: a msgpack array never starts with 1 or 2.
 *   ORDERED_REPLY_TYPE request: u8 1, then per reply f64 callId | u32 fromNode | u32 n | replyBytes
 *       (n bytes)   response: empty
 *       every member sends its reply to the caller; replies to one caller leave together, one
 *       transport call per destination per event-loop turn
 *   (Framed by hand, not msgpack: the args and reply bytes are already encoded, and a pack plus
 *   an unpack of the envelope cost ~1 µs each per call on every node.)
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
import { readU32BE } from '../core/bytes.js';
import { decodeMessage } from '../core/codec.js';
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
export interface OrderedCallMessage {
  readonly callId: number;
  readonly wireName: string;
  /** The encoded arguments (a view into the payload). */
  readonly args: Uint8Array;
  readonly clientId?: string;
  readonly requestId?: number;
}
export type RelayRequest = [
  clientId: string, requestId: number, subgroupId: number, shardIndex: number, wireName: string, args: Uint8Array,
];
export type RelayResponse =
  | [status: typeof RELAY_OK, version: bigint, micros: number, logical: number, replies: [number, Uint8Array][]]
  | [status: typeof RELAY_REFUSED, code: string, message: string];
export type OrderedReply = [callId: number, fromNode: number, reply: Uint8Array];
/** readMode (raft-shard.ts): absent or 0 = the shard's default (linearizable on raft shards), 1 = local. */
export type P2PRequest = [subgroupId: number, shardIndex: number, wireName: string, args: Uint8Array, readMode?: number];

const CALL = 1;
const RELAYED_CALL = 2;
const REPLIES = 1;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });
/** UTF-8 of the wire names sent so far (a handful of method names). */
const wireNameBytes = new Map<string, Uint8Array>();

function utf8Of(text: string, cache?: Map<string, Uint8Array>): Uint8Array {
  let bytes = cache?.get(text);
  if (bytes === undefined) {
    bytes = utf8.encode(text);
    if (bytes.byteLength > 0xffff) throw new RangeError(`a name of ${bytes.byteLength} bytes is too long for an ordered call (at most 65535)`);
    cache?.set(text, bytes);
  }
  return bytes;
}

/**
 * Ordered-call payloads are written into shared slabs, each handed out in disjoint views and
 * never written again (as msgpackr does): a fresh ArrayBuffer per call cost more than the
 * msgpack envelope this replaces.
 */
const SLAB_BYTES = 64 << 10;
let slab = new Uint8Array(0);
let slabAt = 0;

function reserve(bytes: number): Uint8Array {
  if (slabAt + bytes > slab.byteLength) {
    slab = new Uint8Array(Math.max(SLAB_BYTES, bytes));
    slabAt = 0;
  }
  const out = slab.subarray(slabAt, slabAt + bytes);
  slabAt += bytes;
  return out;
}

/** Writes `value` (an integer, 0 <= value < 2^53) at `at` as u32 high | u32 low, big-endian. */
function putU64(out: Uint8Array, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${value} is not an integer from 0 to 2^53 - 1 (an ordered call's id or request id)`);
  const high = Math.floor(value / 0x1_0000_0000);
  putU32(out, at, high);
  putU32(out, at + 4, value - high * 0x1_0000_0000);
}

function putU32(out: Uint8Array, at: number, value: number): void {
  out[at] = value >>> 24;
  out[at + 1] = value >>> 16;
  out[at + 2] = value >>> 8;
  out[at + 3] = value;
}

function u32At(bytes: Uint8Array, at: number): number {
  if (at + 4 > bytes.byteLength) throw new RangeError('an ordered call cut short');
  return readU32BE(bytes, at);
}

function u64At(bytes: Uint8Array, at: number): number {
  return u32At(bytes, at) * 0x1_0000_0000 + u32At(bytes, at + 4);
}

function u16At(bytes: Uint8Array, at: number): number {
  if (at + 2 > bytes.byteLength) throw new RangeError('an ordered call cut short');
  return (bytes[at]! << 8) | bytes[at + 1]!;
}

/** The multicast payload of an ordered call (see the file comment). */
export function encodeOrderedCall(
  callId: number, wireName: string, args: Uint8Array, relayKey?: readonly [clientId: string, requestId: number],
): Uint8Array {
  const name = utf8Of(wireName, wireNameBytes);
  const client = relayKey === undefined ? undefined : utf8Of(relayKey[0]);
  const head = 1 + 8 + 2 + name.byteLength + (client === undefined ? 0 : 2 + client.byteLength + 8);
  const out = reserve(head + args.byteLength);
  out[0] = client === undefined ? CALL : RELAYED_CALL;
  putU64(out, 1, callId);
  out[9] = name.byteLength >>> 8;
  out[10] = name.byteLength;
  out.set(name, 11);
  let at = 11 + name.byteLength;
  if (client !== undefined) {
    out[at] = client.byteLength >>> 8;
    out[at + 1] = client.byteLength;
    out.set(client, at + 2);
    at += 2 + client.byteLength;
    putU64(out, at, relayKey![1]);
    at += 8;
  }
  out.set(args, at);
  return out;
}

/** The ordered call in a multicast payload. Throws on anything else. */
export function decodeOrderedCall(payload: Uint8Array): OrderedCallMessage {
  const kind = payload[0];
  if (kind !== CALL && kind !== RELAYED_CALL) return decodeMsgpackCall(payload);
  const callId = u64At(payload, 1);
  const nameEnd = 11 + u16At(payload, 9);
  if (nameEnd > payload.byteLength) throw new RangeError('an ordered call cut short');
  const wireName = textAt(payload, 11, nameEnd);
  if (kind === CALL) return { callId, wireName, args: bytesFrom(payload, nameEnd) };
  const clientEnd = nameEnd + 2 + u16At(payload, nameEnd);
  if (clientEnd + 8 > payload.byteLength) throw new RangeError('a relayed ordered call cut short');
  const clientId = textAt(payload, nameEnd + 2, clientEnd);
  const requestId = u64At(payload, clientEnd);
  return { callId, wireName, args: bytesFrom(payload, clientEnd + 8), clientId, requestId };
}

/**
 * The UTF-8 text in bytes [start, end) of `bytes`; throws if it is not UTF-8. Short ASCII (wire
 * names) without TextDecoder, which cost ~1 % of a replica's CPU per call.
 */
function textAt(bytes: Uint8Array, start: number, end: number): string {
  if (end - start <= 64) {
    let text = '';
    for (let i = start; i < end; i++) {
      const byte = bytes[i]!;
      if (byte >= 0x80) return fromUtf8.decode(bytes.subarray(start, end));
      text += String.fromCharCode(byte);
    }
    return text;
  }
  return fromUtf8.decode(bytes.subarray(start, end));
}

/** Bytes `start..` of `bytes` as a plain Uint8Array view (a Buffer's subarray is a slower Buffer). */
function bytesFrom(bytes: Uint8Array, start: number): Uint8Array {
  return new Uint8Array(bytes.buffer, bytes.byteOffset + start, bytes.byteLength - start);
}

/** An ordered call written as msgpack (see the file comment). Throws if it is not one. */
function decodeMsgpackCall(payload: Uint8Array): OrderedCallMessage {
  const m = decodeMessage<unknown[]>(payload);
  if (!Array.isArray(m) || typeof m[0] !== 'number' || typeof m[1] !== 'string' || !(m[2] instanceof Uint8Array) ||
      (m.length === 5 && (typeof m[3] !== 'string' || typeof m[4] !== 'number'))) {
    throw new Error('not an ordered call');
  }
  return m.length === 5
    ? { callId: m[0], wireName: m[1], args: m[2], clientId: m[3] as string, requestId: m[4] as number }
    : { callId: m[0], wireName: m[1], args: m[2] };
}

/** The request of an ORDERED_REPLY_TYPE call: replies to one caller (see the file comment). */
export function encodeOrderedReplies(replies: readonly OrderedReply[]): Uint8Array {
  let size = 1;
  for (const reply of replies) size += 16 + reply[2].byteLength;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out[0] = REPLIES;
  let at = 1;
  for (const [callId, from, bytes] of replies) {
    view.setFloat64(at, callId);
    view.setUint32(at + 8, from);
    view.setUint32(at + 12, bytes.byteLength);
    out.set(bytes, at + 16);
    at += 16 + bytes.byteLength;
  }
  return out;
}

/**
 * Calls `each` with every reply in an ORDERED_REPLY_TYPE request (reply bytes are views into
 * `request`), in order. Throws on a malformed request (before calling `each` at all).
 */
export function forEachOrderedReply(request: Uint8Array, each: (callId: number, from: number, reply: Uint8Array) => void): void {
  const view = new DataView(request.buffer, request.byteOffset, request.byteLength);
  if (request[0] !== REPLIES) throw new RangeError('not a batch of ordered-call replies');
  let at = 1;
  while (at < request.byteLength) { // check the whole frame first: all or nothing
    if (at + 16 > request.byteLength) throw new RangeError('an ordered-call reply cut short');
    at += 16 + view.getUint32(at + 12);
  }
  if (at !== request.byteLength) throw new RangeError('an ordered-call reply cut short');
  for (at = 1; at < request.byteLength;) {
    const length = view.getUint32(at + 12);
    each(view.getFloat64(at), view.getUint32(at + 8), request.subarray(at + 16, at + 16 + length));
    at += 16 + length;
  }
}

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
  private waiters: { version: Version; resolve: (version: Version) => void; reject: (e: unknown) => void }[] = [];
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

  /** Resolves with `version` once the frontier reached it. */
  wait(version: Version): Promise<Version> {
    if (version <= this.frontier) return Promise.resolve(version);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise<Version>((resolve, reject) => {
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
      waiter.resolve(waiter.version);
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
