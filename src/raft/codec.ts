/**
 * Wire encoding of Raft messages for the driver. One request carries every message of one Ready
 * for one peer, so a Ready costs one transport call per peer.
 *
 * The messages on every commit's path (append, appendResp, heartbeat, heartbeatResp) have a
 * fixed binary layout written with a DataView; msgpack cost about a fifth of all CPU time in
 * the raft benchmark (one encode and one decode per message, objects with string keys). The
 * rare ones (votes, snapshots, reads, timeoutNow) stay msgpack inside the batch.
 *
 * Batch: u8 version (3), u32 Raft group id, u32 message count, then the messages back to back,
 * each a u8 kind and its body. The group id lets several Raft groups (the membership log and
 * each raft-ordered shard) share one endpoint and one request type: the driver's mux reads it
 * (`batchGroup`) before decoding and hands the batch to that group's driver. Numbers are
 * float64 (terms and indexes are JS numbers; node ids too), big-endian.
 *   append        from to term prevIndex prevTerm commit, u32 count,
 *                 count × (index term, u8 type, u32 length, data)
 *   appendResp    from to term index hintIndex hintTerm, u8 reject
 *   heartbeat     from to term commit ctx
 *   heartbeatResp from to term ctx
 *   other         u32 length, msgpack of the message object
 *
 * Decoded `Uint8Array` fields alias the request buffer, which the transport hands to the receiver
 * to own. A malformed batch throws (the driver drops and counts it).
 *
 * Both directions allocate only what they return on the commit path (no closures, no DataView
 * per batch; see poolView and readF64): every commit encodes and decodes two to four batches
 * on each node.
 */
import { Packr } from 'msgpackr';
import { readU32BE } from '../core/bytes.js';
import type { Entry, EntryType, Message } from './types.js';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true });

/** Wire format version: the first byte of a batch (3: with the group id). */
const VERSION = 3;
/** Bytes before the first message: version, group id, count. */
const BATCH_HEADER_BYTES = 1 + 4 + 4;
/** The largest group id (u32). */
export const RAFT_GROUP_ID_MAX = 0xffff_ffff;

const KIND_APPEND = 1;
const KIND_APPEND_RESP = 2;
const KIND_HEARTBEAT = 3;
const KIND_HEARTBEAT_RESP = 4;
const KIND_OTHER = 5;

const F64 = 8;
const ENTRY_HEADER_BYTES = 2 * F64 + 1 + 4;

type Append = Extract<Message, { type: 'append' }>;

/** The msgpack bytes of the rare kinds in the batch being encoded, in order (packed once). */
const packedOther: Uint8Array[] = [];

function encodedBytes(m: Message): number {
  switch (m.type) {
    case 'append': {
      let bytes = 1 + 6 * F64 + 4;
      for (const e of m.entries) bytes += ENTRY_HEADER_BYTES + e.data.byteLength;
      return bytes;
    }
    case 'appendResp':
      return 1 + 6 * F64 + 1;
    case 'heartbeat':
      return 1 + 5 * F64;
    case 'heartbeatResp':
      return 1 + 4 * F64;
    default: {
      const packed = packr.pack(m);
      packedOther.push(packed);
      return 1 + 4 + packed.byteLength;
    }
  }
}

/**
 * The encoder's DataView over the buffer pool `Buffer.allocUnsafe` carves batches from: one view
 * per pool slab (8 KiB: dozens of batches), not one per batch. With the f64 closures this was
 * most of what an encode allocated besides its output.
 */
let poolView: DataView | undefined;

/** Encodes one batch for the Raft group `groupId` (default 0: the membership log). */
export function encodeMessages(messages: readonly Message[], groupId = 0): Uint8Array {
  // (Only when needed: a store to an array's length is a runtime call, and the commit path
  // encodes only the binary kinds.)
  if (packedOther.length !== 0) packedOther.length = 0;
  const n = messages.length;
  let bytes = BATCH_HEADER_BYTES;
  for (let i = 0; i < n; i++) bytes += encodedBytes(messages[i]!);
  let nextOther = 0;
  // Pooled and not zero-filled: every byte is written below. The transport copies it at call().
  const out = Buffer.allocUnsafe(bytes);
  if (poolView === undefined || poolView.buffer !== out.buffer) poolView = new DataView(out.buffer);
  const view = poolView;
  const base = out.byteOffset;
  out[0] = VERSION;
  view.setUint32(base + 1, groupId);
  view.setUint32(base + 5, n);
  let at = base + BATCH_HEADER_BYTES; // in view (out[at - base] is the same byte)
  for (let i = 0; i < n; i++) {
    const m = messages[i]!;
    switch (m.type) {
      case 'append': {
        view.setUint8(at, KIND_APPEND);
        view.setFloat64(at + 1, m.from); view.setFloat64(at + 9, m.to); view.setFloat64(at + 17, m.term);
        view.setFloat64(at + 25, m.prevIndex); view.setFloat64(at + 33, m.prevTerm); view.setFloat64(at + 41, m.commit);
        const entries = m.entries;
        view.setUint32(at + 49, entries.length);
        at += 53;
        for (let j = 0; j < entries.length; j++) {
          const e = entries[j]!;
          view.setFloat64(at, e.index); view.setFloat64(at + 8, e.term);
          view.setUint8(at + 16, e.type);
          view.setUint32(at + 17, e.data.byteLength);
          at += ENTRY_HEADER_BYTES;
          out.set(e.data, at - base);
          at += e.data.byteLength;
        }
        break;
      }
      case 'appendResp':
        view.setUint8(at, KIND_APPEND_RESP);
        view.setFloat64(at + 1, m.from); view.setFloat64(at + 9, m.to); view.setFloat64(at + 17, m.term);
        view.setFloat64(at + 25, m.index); view.setFloat64(at + 33, m.hintIndex); view.setFloat64(at + 41, m.hintTerm);
        view.setUint8(at + 49, m.reject ? 1 : 0);
        at += 50;
        break;
      case 'heartbeat':
        view.setUint8(at, KIND_HEARTBEAT);
        view.setFloat64(at + 1, m.from); view.setFloat64(at + 9, m.to); view.setFloat64(at + 17, m.term);
        view.setFloat64(at + 25, m.commit); view.setFloat64(at + 33, m.ctx);
        at += 41;
        break;
      case 'heartbeatResp':
        view.setUint8(at, KIND_HEARTBEAT_RESP);
        view.setFloat64(at + 1, m.from); view.setFloat64(at + 9, m.to); view.setFloat64(at + 17, m.term);
        view.setFloat64(at + 25, m.ctx);
        at += 33;
        break;
      default: {
        const packed = packedOther[nextOther++]!;
        view.setUint8(at, KIND_OTHER);
        view.setUint32(at + 1, packed.byteLength);
        at += 5;
        out.set(packed, at - base);
        at += packed.byteLength;
      }
    }
  }
  if (nextOther !== 0) packedOther.length = 0;
  return out;
}

/** The Raft group a batch is for, or -1 if it is too short or of another version. */
export function batchGroup(bytes: Uint8Array): number {
  if (bytes.byteLength < BATCH_HEADER_BYTES || bytes[0] !== VERSION) return -1;
  return ((bytes[1]! << 24) >>> 0) + (bytes[2]! << 16) + (bytes[3]! << 8) + bytes[4]!;
}

/**
 * The decoder reads numbers through these instead of a DataView per batch (each delivered batch
 * is a new buffer, so a view could not be kept): a big-endian float64 is its 8 bytes copied into
 * f64Bytes in host order. With a DataView and f64 closures per batch, decoding was a follower's
 * largest allocation per commit in the raft bench's heap profile.
 */
const f64Value = new Float64Array(1);
const f64Bytes = new Uint8Array(f64Value.buffer);
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The big-endian float64 at bytes[at..at+8), which the caller has bounds-checked. */
function readF64(bytes: Uint8Array, at: number): number {
  if (HOST_LITTLE_ENDIAN) {
    for (let i = 0; i < 8; i++) f64Bytes[i] = bytes[at + 7 - i]!;
  } else {
    for (let i = 0; i < 8; i++) f64Bytes[i] = bytes[at + i]!;
  }
  return f64Value[0]!;
}

/** Thrown when a message's fixed part runs past the end of the batch. */
function truncated(kind: number, at: number, length: number): Error {
  return new Error(`raft message of kind ${kind} at byte ${at} runs past the end of the ${length}-byte batch`);
}

/**
 * Throws on anything that is not a well-formed batch (bounds, kinds, entry types, lengths).
 * The messages are pushed onto `out` (a new array unless given: a caller may keep one and clear
 * it after use) and it is returned.
 */
export function decodeMessages(bytes: Uint8Array, out: Message[] = []): Message[] {
  const length = bytes.byteLength;
  if (length < BATCH_HEADER_BYTES || bytes[0] !== VERSION) {
    throw new Error(`not a raft message batch (version ${length ? bytes[0] : '?'}, expected ${VERSION})`);
  }
  const expected = readU32BE(bytes, 5);
  const first = out.length;
  let at = BATCH_HEADER_BYTES;
  while (at < length) {
    const kind = bytes[at++]!;
    switch (kind) {
      case KIND_APPEND: {
        if (at + 6 * F64 + 4 > length) throw truncated(kind, at - 1, length);
        const from = readF64(bytes, at), to = readF64(bytes, at + 8), term = readF64(bytes, at + 16);
        const prevIndex = readF64(bytes, at + 24), prevTerm = readF64(bytes, at + 32), commit = readF64(bytes, at + 40);
        const count = readU32BE(bytes, at + 48);
        at += 52;
        if (count * ENTRY_HEADER_BYTES > length - at) throw new Error(`append claims ${count} entries`);
        const entries: Entry[] = new Array(count);
        for (let i = 0; i < count; i++) {
          if (at + ENTRY_HEADER_BYTES > length) throw truncated(kind, at, length);
          const index = readF64(bytes, at), entryTerm = readF64(bytes, at + 8);
          const type = bytes[at + 16]!;
          if (type !== 0 && type !== 1) throw new Error(`entry ${index} has unknown type ${type}`);
          const dataBytes = readU32BE(bytes, at + 17);
          at += ENTRY_HEADER_BYTES;
          if (dataBytes > length - at) throw new Error(`entry ${index} claims ${dataBytes} bytes`);
          entries[i] = { index, term: entryTerm, type: type as EntryType, data: bytes.subarray(at, at + dataBytes) };
          at += dataBytes;
        }
        const m: Append = { type: 'append', from, to, term, prevIndex, prevTerm, entries, commit };
        out.push(m);
        break;
      }
      case KIND_APPEND_RESP: {
        if (at + 6 * F64 + 1 > length) throw truncated(kind, at - 1, length);
        out.push({
          type: 'appendResp', from: readF64(bytes, at), to: readF64(bytes, at + 8), term: readF64(bytes, at + 16),
          index: readF64(bytes, at + 24), reject: bytes[at + 48] !== 0, hintIndex: readF64(bytes, at + 32), hintTerm: readF64(bytes, at + 40),
        });
        at += 49;
        break;
      }
      case KIND_HEARTBEAT: {
        if (at + 5 * F64 > length) throw truncated(kind, at - 1, length);
        out.push({
          type: 'heartbeat', from: readF64(bytes, at), to: readF64(bytes, at + 8), term: readF64(bytes, at + 16),
          commit: readF64(bytes, at + 24), ctx: readF64(bytes, at + 32),
        });
        at += 40;
        break;
      }
      case KIND_HEARTBEAT_RESP: {
        if (at + 4 * F64 > length) throw truncated(kind, at - 1, length);
        out.push({ type: 'heartbeatResp', from: readF64(bytes, at), to: readF64(bytes, at + 8), term: readF64(bytes, at + 16), ctx: readF64(bytes, at + 24) });
        at += 32;
        break;
      }
      case KIND_OTHER: {
        if (at + 4 > length) throw truncated(kind, at - 1, length);
        const packedBytes = readU32BE(bytes, at);
        at += 4;
        if (packedBytes > length - at) throw new Error(`message claims ${packedBytes} bytes`);
        const m = packr.unpack(bytes.subarray(at, at + packedBytes)) as Message;
        if (typeof m !== 'object' || m === null || typeof m.type !== 'string') throw new Error('not a raft message');
        out.push(m);
        at += packedBytes;
        break;
      }
      default:
        throw new Error(`unknown raft message kind ${kind}`);
    }
  }
  if (out.length - first !== expected) throw new Error(`batch holds ${out.length - first} of ${expected} messages`);
  return out;
}
