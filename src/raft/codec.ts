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
 */
import { Packr } from 'msgpackr';
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

/** Encodes one batch for the Raft group `groupId` (default 0: the membership log). */
export function encodeMessages(messages: readonly Message[], groupId = 0): Uint8Array {
  packedOther.length = 0;
  let bytes = BATCH_HEADER_BYTES;
  for (const m of messages) bytes += encodedBytes(m);
  let nextOther = 0;
  // Pooled and not zero-filled: every byte is written below. The transport copies it at call().
  const out = Buffer.allocUnsafe(bytes);
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out[0] = VERSION;
  view.setUint32(1, groupId);
  view.setUint32(5, messages.length);
  let at = BATCH_HEADER_BYTES;
  const f64 = (value: number): void => {
    view.setFloat64(at, value);
    at += F64;
  };
  for (const m of messages) {
    switch (m.type) {
      case 'append':
        out[at++] = KIND_APPEND;
        f64(m.from); f64(m.to); f64(m.term); f64(m.prevIndex); f64(m.prevTerm); f64(m.commit);
        view.setUint32(at, m.entries.length);
        at += 4;
        for (const e of m.entries) {
          f64(e.index); f64(e.term);
          out[at++] = e.type;
          view.setUint32(at, e.data.byteLength);
          at += 4;
          out.set(e.data, at);
          at += e.data.byteLength;
        }
        break;
      case 'appendResp':
        out[at++] = KIND_APPEND_RESP;
        f64(m.from); f64(m.to); f64(m.term); f64(m.index); f64(m.hintIndex); f64(m.hintTerm);
        out[at++] = m.reject ? 1 : 0;
        break;
      case 'heartbeat':
        out[at++] = KIND_HEARTBEAT;
        f64(m.from); f64(m.to); f64(m.term); f64(m.commit); f64(m.ctx);
        break;
      case 'heartbeatResp':
        out[at++] = KIND_HEARTBEAT_RESP;
        f64(m.from); f64(m.to); f64(m.term); f64(m.ctx);
        break;
      default: {
        const packed = packedOther[nextOther++]!;
        out[at++] = KIND_OTHER;
        view.setUint32(at, packed.byteLength);
        at += 4;
        out.set(packed, at);
        at += packed.byteLength;
      }
    }
  }
  packedOther.length = 0;
  return out;
}

/** The Raft group a batch is for, or -1 if it is too short or of another version. */
export function batchGroup(bytes: Uint8Array): number {
  if (bytes.byteLength < BATCH_HEADER_BYTES || bytes[0] !== VERSION) return -1;
  return ((bytes[1]! << 24) >>> 0) + (bytes[2]! << 16) + (bytes[3]! << 8) + bytes[4]!;
}

/** Throws on anything that is not a well-formed batch (bounds, kinds, entry types, lengths). */
export function decodeMessages(bytes: Uint8Array): Message[] {
  if (bytes.byteLength < BATCH_HEADER_BYTES || bytes[0] !== VERSION) {
    throw new Error(`not a raft message batch (version ${bytes.byteLength ? bytes[0] : '?'}, expected ${VERSION})`);
  }
  // DataView reads past the end throw RangeError: every bound below is checked by them.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const expected = view.getUint32(5);
  let at = BATCH_HEADER_BYTES;
  const f64 = (): number => {
    const value = view.getFloat64(at);
    at += F64;
    return value;
  };
  const messages: Message[] = [];
  while (at < bytes.byteLength) {
    const kind = bytes[at++];
    switch (kind) {
      case KIND_APPEND: {
        const from = f64(), to = f64(), term = f64(), prevIndex = f64(), prevTerm = f64(), commit = f64();
        const count = view.getUint32(at);
        at += 4;
        if (count * ENTRY_HEADER_BYTES > bytes.byteLength - at) throw new Error(`append claims ${count} entries`);
        const entries: Entry[] = [];
        for (let i = 0; i < count; i++) {
          const index = f64(), entryTerm = f64();
          const type = bytes[at++]!;
          if (type !== 0 && type !== 1) throw new Error(`entry ${index} has unknown type ${type}`);
          const length = view.getUint32(at);
          at += 4;
          if (length > bytes.byteLength - at) throw new Error(`entry ${index} claims ${length} bytes`);
          entries.push({ index, term: entryTerm, type: type as EntryType, data: bytes.subarray(at, at + length) });
          at += length;
        }
        const m: Append = { type: 'append', from, to, term, prevIndex, prevTerm, entries, commit };
        messages.push(m);
        break;
      }
      case KIND_APPEND_RESP: {
        const from = f64(), to = f64(), term = f64(), index = f64(), hintIndex = f64(), hintTerm = f64();
        const reject = view.getUint8(at++) !== 0;
        messages.push({ type: 'appendResp', from, to, term, index, reject, hintIndex, hintTerm });
        break;
      }
      case KIND_HEARTBEAT: {
        const from = f64(), to = f64(), term = f64(), commit = f64(), ctx = f64();
        messages.push({ type: 'heartbeat', from, to, term, commit, ctx });
        break;
      }
      case KIND_HEARTBEAT_RESP: {
        const from = f64(), to = f64(), term = f64(), ctx = f64();
        messages.push({ type: 'heartbeatResp', from, to, term, ctx });
        break;
      }
      case KIND_OTHER: {
        const length = view.getUint32(at);
        at += 4;
        if (length > bytes.byteLength - at) throw new Error(`message claims ${length} bytes`);
        const m = packr.unpack(bytes.subarray(at, at + length)) as Message;
        if (typeof m !== 'object' || m === null || typeof m.type !== 'string') throw new Error('not a raft message');
        messages.push(m);
        at += length;
        break;
      }
      default:
        throw new Error(`unknown raft message kind ${kind}`);
    }
  }
  if (messages.length !== expected) throw new Error(`batch holds ${messages.length} of ${expected} messages`);
  return messages;
}
