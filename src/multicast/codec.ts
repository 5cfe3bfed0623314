/**
 * Wire encoding of multicast packets: fixed little-endian binary layouts, one encode per packet
 * however many members it goes to. Decoding validates every length and range and throws
 * MulticastDecodeError for anything else, which a driver counts and drops.
 *
 *   data:  u8 0xd1 | u8 flags (bit 0: has report) | u16 fromRank | u32 viewId | u32 entryCount
 *          report (if flagged):
 *            u16 senderCount | u16 0 | u32 receivedCounts[senderCount] | u32 contiguousCount |
 *            u32 deliveredCount | i64 persistedVersion | f64 stabilityFrontierMicros
 *          entries, in index order:
 *            u8 1 | u32 index | f64 micros | u32 logical | u32 length | payload   (a message)
 *            u8 2 | u32 index | u32 count                                        (a null run)
 *   block: u8 0xb2 | u8 0 | u16 fromRank | u32 viewId | u32 senderIndex | u32 index |
 *          f64 micros | u32 logical | u32 totalBytes | u32 block | the block's bytes (to the end)
 *
 * Why not msgpack (the first version): the profile of the 100-byte benchmark spent about 12% of
 * a member's CPU in msgpack packing and unpacking plus the arrays it builds per message, and
 * a large share of its GC; a block went through msgpack's buffer and then into the frame (two
 * copies of up to a MiB). Here a payload is copied once into its packet, and a block once,
 * straight into the driver's frame (`encodeBlockInto`). micros travel as f64 (exact: they are
 * safe integers, src/core/hlc.ts). Positions, indices and counts are uint32 within a view.
 *
 * Decoded payloads and blocks are views into the input buffer, so the driver hands the core
 * ownership of the buffer it decodes.
 */
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

const DATA_MAGIC = 0xd1;
const BLOCK_MAGIC = 0xb2;
const FLAG_REPORT = 1;
const ENTRY_MESSAGE = 1;
const ENTRY_NULL = 2;
const DATA_HEADER_BYTES = 12;
const MESSAGE_HEADER_BYTES = 21;
const NULL_ENTRY_BYTES = 9;
/** Bytes of a block packet before its block bytes. */
export const BLOCK_HEADER_BYTES = 36;
const UINT32_MAX = 0xffff_ffff;
const LOGICAL_MAX = 0xffff_ffff;

/** A packet that is not a well-formed multicast packet (truncated, corrupt, wrong version). */
export class MulticastDecodeError extends SquallError {
  constructor(reason: string) {
    super(`malformed multicast packet: ${reason}`, 'MULTICAST_DECODE');
  }
}

const reportBytes = (senderCount: number): number => 4 + 4 * senderCount + 4 + 4 + 8 + 8;

export function encodePacket(packet: Packet): Uint8Array {
  if (packet.kind === 'block') {
    const out = new Uint8Array(encodedBlockBytes(packet));
    encodeBlockInto(packet, out, 0);
    return out;
  }
  checkHeader(packet.fromRank, packet.viewId);
  let size = DATA_HEADER_BYTES;
  if (packet.report !== null) size += reportBytes(packet.report.receivedCounts.length);
  for (const e of packet.entries) {
    size += e.kind === 'message' ? MESSAGE_HEADER_BYTES + e.payload.byteLength : NULL_ENTRY_BYTES;
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint8(0, DATA_MAGIC);
  view.setUint8(1, packet.report === null ? 0 : FLAG_REPORT);
  view.setUint16(2, packet.fromRank, true);
  view.setUint32(4, packet.viewId, true);
  view.setUint32(8, packet.entries.length, true);
  let at = DATA_HEADER_BYTES;
  if (packet.report !== null) at = writeReport(view, at, packet.report);
  for (const e of packet.entries) {
    if (e.kind === 'message') {
      view.setUint8(at, ENTRY_MESSAGE);
      view.setUint32(at + 1, e.index, true);
      view.setFloat64(at + 5, e.timestamp.micros, true);
      view.setUint32(at + 13, e.timestamp.logical, true);
      view.setUint32(at + 17, e.payload.byteLength, true);
      out.set(e.payload, at + MESSAGE_HEADER_BYTES);
      at += MESSAGE_HEADER_BYTES + e.payload.byteLength;
    } else {
      view.setUint8(at, ENTRY_NULL);
      view.setUint32(at + 1, e.index, true);
      view.setUint32(at + 5, e.count, true);
      at += NULL_ENTRY_BYTES;
    }
  }
  return out;
}

function checkHeader(fromRank: number, viewId: number): void {
  assert(
    Number.isInteger(fromRank) && fromRank >= 0 && fromRank <= 0xffff &&
      Number.isInteger(viewId) && viewId >= 0 && viewId <= UINT32_MAX,
    'packet header fields fit the wire (rank uint16, view id uint32)',
  );
}

function writeReport(view: DataView, start: number, r: ReceiveReport): number {
  let at = start;
  assert(r.receivedCounts.length <= 0xffff, 'a report has at most 65535 senders');
  view.setUint16(at, r.receivedCounts.length, true);
  view.setUint16(at + 2, 0, true);
  at += 4;
  for (const c of r.receivedCounts) {
    view.setUint32(at, c, true);
    at += 4;
  }
  view.setUint32(at, r.contiguousCount, true);
  view.setUint32(at + 4, r.deliveredCount, true);
  view.setBigInt64(at + 8, r.persistedVersion, true);
  view.setFloat64(at + 16, r.stabilityFrontierMicros, true);
  return at + 24;
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
  encodeBlockHeaderInto(packet, target, offset);
  target.set(packet.bytes, offset + BLOCK_HEADER_BYTES);
}

/**
 * Writes only a block packet's header at `target[offset ..]` (BLOCK_HEADER_BYTES): for a relay
 * that forwards a block in the very buffer it arrived in, whose bytes already follow.
 */
export function encodeBlockHeaderInto(packet: BlockPacket, target: Uint8Array, offset: number): void {
  checkHeader(packet.fromRank, packet.viewId);
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
}

export function decodePacket(bytes: Uint8Array): Packet {
  if (bytes.byteLength === 0) throw new MulticastDecodeError('empty packet');
  if (bytes[0] === BLOCK_MAGIC) return decodeBlock(bytes);
  if (bytes[0] === DATA_MAGIC) return decodeData(bytes);
  throw new MulticastDecodeError(`unknown packet tag 0x${bytes[0]!.toString(16)}`);
}

function need(bytes: Uint8Array, at: number, count: number, what: string): void {
  if (at + count > bytes.byteLength) {
    throw new MulticastDecodeError(`truncated at the ${what} (${bytes.byteLength} bytes)`);
  }
}

function timestampOf(micros: number, logical: number): MessageTimestamp {
  if (!Number.isSafeInteger(micros) || micros < 0 || logical > LOGICAL_MAX) {
    throw new MulticastDecodeError('timestamp micros is not a non-negative safe integer');
  }
  return { micros, logical };
}

function decodeData(bytes: Uint8Array): DataPacket {
  need(bytes, 0, DATA_HEADER_BYTES, 'header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const flags = view.getUint8(1);
  if ((flags & ~FLAG_REPORT) !== 0) throw new MulticastDecodeError(`unknown flags ${flags}`);
  const entryCount = view.getUint32(8, true);
  let at = DATA_HEADER_BYTES;
  let report: ReceiveReport | null = null;
  if ((flags & FLAG_REPORT) !== 0) {
    report = readReport(bytes, view, at);
    at += reportBytes(report.receivedCounts.length);
  }
  // Each entry takes at least NULL_ENTRY_BYTES: a count the bytes cannot hold is corrupt.
  if (entryCount > (bytes.byteLength - at) / NULL_ENTRY_BYTES) {
    throw new MulticastDecodeError(`${entryCount} entries cannot fit ${bytes.byteLength} bytes`);
  }
  const entries: SmcEntry[] = new Array(entryCount);
  for (let i = 0; i < entryCount; i++) {
    need(bytes, at, 1, 'entry kind');
    const kind = view.getUint8(at);
    if (kind === ENTRY_MESSAGE) {
      need(bytes, at, MESSAGE_HEADER_BYTES, 'message header');
      const length = view.getUint32(at + 17, true);
      const start = at + MESSAGE_HEADER_BYTES;
      need(bytes, start, length, 'payload');
      entries[i] = {
        kind: 'message',
        index: view.getUint32(at + 1, true),
        timestamp: timestampOf(view.getFloat64(at + 5, true), view.getUint32(at + 13, true)),
        payload: bytes.subarray(start, start + length),
      };
      at = start + length;
    } else if (kind === ENTRY_NULL) {
      need(bytes, at, NULL_ENTRY_BYTES, 'null run');
      const count = view.getUint32(at + 5, true);
      if (count === 0) throw new MulticastDecodeError('empty null run');
      entries[i] = { kind: 'null', index: view.getUint32(at + 1, true), count };
      at += NULL_ENTRY_BYTES;
    } else {
      throw new MulticastDecodeError(`unknown entry kind ${kind}`);
    }
  }
  if (at !== bytes.byteLength) throw new MulticastDecodeError('trailing bytes after the entries');
  return {
    kind: 'data',
    viewId: view.getUint32(4, true),
    fromRank: view.getUint16(2, true),
    report,
    entries,
  };
}

/** (A literal -1n is a BigInt negation at run time, once per report read.) */
const MINUS_ONE = -1n;

/** The report at `start` (it takes reportBytes(its sender count) bytes). */
function readReport(bytes: Uint8Array, view: DataView, start: number): ReceiveReport {
  need(bytes, start, 4, 'report');
  const senderCount = view.getUint16(start, true);
  need(bytes, start, reportBytes(senderCount), 'report');
  let at = start + 4;
  const receivedCounts: number[] = new Array(senderCount);
  for (let s = 0; s < senderCount; s++, at += 4) receivedCounts[s] = view.getUint32(at, true);
  const persistedVersion = view.getBigInt64(at + 8, true);
  const frontier = view.getFloat64(at + 16, true);
  if (persistedVersion < MINUS_ONE) throw new MulticastDecodeError('persistedVersion is below -1');
  if (!Number.isSafeInteger(frontier) || frontier < 0) {
    throw new MulticastDecodeError('stabilityFrontierMicros is not a non-negative safe integer');
  }
  const report: ReceiveReport = {
    receivedCounts,
    contiguousCount: view.getUint32(at, true),
    deliveredCount: view.getUint32(at + 4, true),
    persistedVersion: persistedVersion as Version,
    stabilityFrontierMicros: frontier,
  };
  return report;
}

function decodeBlock(bytes: Uint8Array): BlockPacket {
  need(bytes, 0, BLOCK_HEADER_BYTES, 'block header');
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
