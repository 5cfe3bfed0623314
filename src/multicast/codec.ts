/**
 * Wire encoding of multicast packets: msgpack tuples (compact, no field names), one encode per
 * packet however many members it goes to. Decoding validates the shape and every number's range,
 * and throws MulticastDecodeError for anything else, which a driver counts and drops.
 *
 *   data:  [1, viewId, fromRank, report | null, [entry...]]
 *          report = [receivedCounts[], contiguousCount, deliveredCount,
 *                    persistedVersion, frontierMicros]
 *          entry  = [index, micros, logical, payload]   (a message; micros, logical = HLC)
 *                 | [index, count]                          (a null run)
 *   block: [2, viewId, fromRank, senderIndex, index, micros, logical, totalBytes, block, bytes]
 *
 * Decoded payloads are views into the input buffer (msgpackr does not copy), so the driver hands
 * the core ownership of the buffer it decodes.
 */
import { Packr } from 'msgpackr';
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
const TAG_BLOCK = 2;

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
  const p = packet;
  return packr.pack([
    TAG_BLOCK, p.viewId, p.fromRank, p.senderIndex, p.index,
    p.timestamp.micros, p.timestamp.logical, p.totalBytes, p.block, p.bytes,
  ]);
}

function encodeReport(r: ReceiveReport): unknown[] {
  return [
    r.receivedCounts, r.contiguousCount, r.deliveredCount,
    BigInt(r.persistedVersion), r.stabilityFrontierMicros,
  ];
}

export function decodePacket(bytes: Uint8Array): Packet {
  let value: unknown;
  try {
    value = packr.unpack(bytes);
  } catch (error) {
    throw new MulticastDecodeError(`not msgpack (${(error as Error).message})`);
  }
  if (!Array.isArray(value)) throw new MulticastDecodeError('not a tuple');
  if (value[0] === TAG_DATA) return decodeData(value);
  if (value[0] === TAG_BLOCK) return decodeBlock(value);
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

function decodeBlock(v: unknown[]): BlockPacket {
  if (v.length !== 10) throw new MulticastDecodeError('block packet has the wrong length');
  return {
    kind: 'block',
    viewId: uint(v[1], 'viewId'),
    fromRank: uint(v[2], 'fromRank'),
    senderIndex: uint(v[3], 'senderIndex'),
    index: uint(v[4], 'index'),
    timestamp: timestampOf(v[5], v[6]),
    totalBytes: uint(v[7], 'totalBytes'),
    block: uint(v[8], 'block'),
    bytes: bytesOf(v[9], 'block bytes'),
  };
}

