/**
 * Wire encoding of multicast packets, one encode per packet however many members it goes to.
 * Decoding validates the shape and every number's range, and throws MulticastDecodeError for
 * anything else, which a driver counts and drops.
 *
 *   data:  msgpack tuple (compact, no field names)
 *          [1, viewId, fromRank, report | null, [entry...]]
 *          report = [receivedCounts[], contiguousCount, deliveredCount,
 *                    persistedVersion, frontierMicros]
 *          entry  = [index, micros, logical, payload]   (a message; micros, logical = HLC)
 *                 | [index, count]                      (a null run)
 *   block: a fixed 36-byte little-endian header, then the block's bytes (to the end):
 *          u8 0xb2 | u8 0 | u16 fromRank | u32 viewId | u32 senderIndex | u32 index |
 *          f64 micros | u32 logical | u32 totalBytes | u32 block
 *          Not msgpack, so that a block (up to `block_size`, a MiB by default) is copied once,
 *          straight into the driver's frame (`encodeBlockInto`), instead of once into msgpack's
 *          buffer and again into the frame. A data packet starts with 0x95 (a 5-tuple).
 *
 * Decoded payloads and blocks are views into the input buffer (msgpackr does not copy), so the
 * driver hands the core ownership of the buffer it decodes.
 */
import { Packr } from 'msgpackr';
import { assert } from '../core/assert.js';
import { SquallError } from '../core/errors.js';
import type { Version } from '../core/ids.js';
import type {
  BlockPacket,
  DataPacket,
  MessageTimestamp,
  Packet,
  ReceiveReport,
  SmcEntry,
} from './types.js';

const TAG_DATA = 1;
const BLOCK_MAGIC = 0xb2;
/** Bytes of a block packet before its block bytes. */
export const BLOCK_HEADER_BYTES = 36;

/** A packet that is not a well-formed multicast packet (truncated, corrupt, wrong version). */
export class MulticastDecodeError extends SquallError {
  constructor(reason: string) {
    super(`malformed multicast packet: ${reason}`, 'MULTICAST_DECODE');
  }
}

const packr = new Packr({ useRecords: false, int64AsType: 'bigint', mapsAsObjects: false });

export function encodePacket(packet: Packet): Uint8Array {
  if (packet.kind === 'data') {
    const report = packet.report === null ? null : encodeReport(packet.report);
    const entries = packet.entries.map((e) =>
      e.kind === 'message'
        ? [e.index, e.timestamp.micros, e.timestamp.logical, e.payload]
        : [e.index, e.count],
    );
    return packr.pack([TAG_DATA, packet.viewId, packet.fromRank, report, entries]);
  }
  const out = new Uint8Array(encodedBlockBytes(packet));
  encodeBlockInto(packet, out, 0);
  return out;
}

/** The encoded size of a block packet. */
export function encodedBlockBytes(packet: BlockPacket): number {
  return BLOCK_HEADER_BYTES + packet.bytes.byteLength;
}

/**
 * Writes a block packet at `target[offset ..]` (encodedBlockBytes(packet) bytes): the one copy
 * of the block's bytes that the sending side makes.
 */
export function encodeBlockInto(packet: BlockPacket, target: Uint8Array, offset: number): void {
  assert(packet.fromRank <= 0xffff && packet.viewId <= 0xffff_ffff, 'block header fields fit');
  const view = new DataView(target.buffer, target.byteOffset + offset, BLOCK_HEADER_BYTES);
  view.setUint8(0, BLOCK_MAGIC);
  view.setUint8(1, 0);
  view.setUint16(2, packet.fromRank, true);
  view.setUint32(4, packet.viewId, true);
  view.setUint32(8, packet.senderIndex, true);
  view.setUint32(12, packet.index, true);
  view.setFloat64(16, packet.timestamp.micros, true);
  view.setUint32(24, packet.timestamp.logical, true);
  view.setUint32(28, packet.totalBytes, true);
  view.setUint32(32, packet.block, true);
  target.set(packet.bytes, offset + BLOCK_HEADER_BYTES);
}

function encodeReport(r: ReceiveReport): unknown[] {
  return [
    r.receivedCounts, r.contiguousCount, r.deliveredCount,
    BigInt(r.persistedVersion), r.stabilityFrontierMicros,
  ];
}

export function decodePacket(bytes: Uint8Array): Packet {
  if (bytes.byteLength > 0 && bytes[0] === BLOCK_MAGIC) return decodeBlock(bytes);
  let value: unknown;
  try {
    value = packr.unpack(bytes);
  } catch (error) {
    throw new MulticastDecodeError(`not msgpack (${(error as Error).message})`);
  }
  if (!Array.isArray(value)) throw new MulticastDecodeError('not a tuple');
  if (value[0] === TAG_DATA) return decodeData(value);
  throw new MulticastDecodeError(`unknown tag ${String(value[0])}`);
}

function uint(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new MulticastDecodeError(`${what} is not a non-negative integer`);
  }
  return value;
}

function big(value: unknown, what: string): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value)) return BigInt(value);
  throw new MulticastDecodeError(`${what} is not an integer`);
}

function bytesOf(value: unknown, what: string): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new MulticastDecodeError(`${what} is not bytes`);
  return value;
}

function timestampOf(wall: unknown, logical: unknown): MessageTimestamp {
  const logicalCount = uint(logical, 'logical');
  if (logicalCount > 0xffff_ffff) throw new MulticastDecodeError('logical is not a uint32');
  return { micros: uint(wall, 'micros'), logical: logicalCount };
}

function decodeData(v: unknown[]): DataPacket {
  if (v.length !== 5) throw new MulticastDecodeError('data packet has the wrong length');
  const report = v[3] === null ? null : decodeReport(v[3]);
  if (!Array.isArray(v[4])) throw new MulticastDecodeError('entries is not a list');
  const entries: SmcEntry[] = v[4].map((e: unknown) => {
    if (!Array.isArray(e)) throw new MulticastDecodeError('entry is not a tuple');
    if (e.length === 4) {
      return {
        kind: 'message',
        index: uint(e[0], 'index'),
        timestamp: timestampOf(e[1], e[2]),
        payload: bytesOf(e[3], 'payload'),
      };
    }
    if (e.length === 2) {
      const count = uint(e[1], 'null count');
      if (count === 0) throw new MulticastDecodeError('empty null run');
      return { kind: 'null', index: uint(e[0], 'index'), count };
    }
    throw new MulticastDecodeError('entry has the wrong length');
  });
  return {
    kind: 'data',
    viewId: uint(v[1], 'viewId'),
    fromRank: uint(v[2], 'fromRank'),
    report,
    entries,
  };
}

function decodeReport(value: unknown): ReceiveReport {
  if (!Array.isArray(value) || value.length !== 5 || !Array.isArray(value[0])) {
    throw new MulticastDecodeError('report has the wrong shape');
  }
  return {
    receivedCounts: value[0].map((c: unknown) => uint(c, 'receivedCount')),
    contiguousCount: uint(value[1], 'contiguousCount'),
    deliveredCount: uint(value[2], 'deliveredCount'),
    persistedVersion: big(value[3], 'persistedVersion') as Version,
    stabilityFrontierMicros: uint(value[4], 'stabilityFrontierMicros'),
  };
}

function decodeBlock(bytes: Uint8Array): BlockPacket {
  if (bytes.byteLength < BLOCK_HEADER_BYTES) {
    throw new MulticastDecodeError(`block packet of ${bytes.byteLength} bytes is shorter than its header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, BLOCK_HEADER_BYTES);
  if (view.getUint8(1) !== 0) throw new MulticastDecodeError('block packet has an unknown format');
  return {
    kind: 'block',
    viewId: view.getUint32(4, true),
    fromRank: view.getUint16(2, true),
    senderIndex: view.getUint32(8, true),
    index: view.getUint32(12, true),
    timestamp: timestampOf(view.getFloat64(16, true), view.getUint32(24, true)),
    totalBytes: view.getUint32(28, true),
    block: view.getUint32(32, true),
    bytes: bytes.subarray(BLOCK_HEADER_BYTES),
  };
}

