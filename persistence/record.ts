/**
 * The layout of one log record (one version of one field), as stored in LMDB under its sequence
 * number and as shipped in state transfer:
 *
 *   offset  bytes  field
 *   0       1      kind: 1 full value, 2 delta against the previous version
 *   1       8      version (int64, big-endian)
 *   9       12     timestamp: the sender's HLC (see src/core/hlc.ts)
 *   21      12     effective time: max of this and every earlier timestamp in the log
 *   33      8      base sequence: the full record a delta chain starts from (float64)
 *   41      ...    payload (codec bytes)
 *
 * The effective time is non-decreasing along the log even if sender timestamps are not, which
 * is what lets a temporal query binary-search (see README.md, "Time").
 */
import { decodeHlc, type Hlc } from '../src/core/hlc.js';
import { assert } from '../src/core/assert.js';
import type { Version } from '../src/core/ids.js';

export const RECORD_FULL = 1;
export const RECORD_DELTA = 2;
export const RECORD_HEADER_BYTES = 41;

// Buffer's writeBigInt64BE/readBigInt64BE do bigint arithmetic per call (measured: the largest
// single cost of an append); a DataView's setBigInt64/getBigInt64 do not.
const scratchBytes = new Uint8Array(8);
const scratchView = new DataView(scratchBytes.buffer);

export interface RecordHeader {
  kind: number;
  version: Version;
  time: Hlc;
  effectiveTime: Hlc;
  baseSeq: number;
}

export function encodeRecord(header: RecordHeader, payload: Uint8Array): Buffer {
  const record = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.byteLength);
  record[0] = header.kind;
  scratchView.setBigInt64(0, header.version);
  record.set(scratchBytes, 1);
  writeHlc(record, header.time, 9);
  writeHlc(record, header.effectiveTime, 21);
  record.writeDoubleBE(header.baseSeq, 33);
  record.set(payload, RECORD_HEADER_BYTES);
  return record;
}

/** Same bytes as encodeHlc(), without a DataView per call (this is on the append path). */
function writeHlc(record: Buffer, time: Hlc, offset: number): void {
  record.writeUInt32BE(Math.floor(time.micros / 0x1_0000_0000), offset);
  record.writeUInt32BE(time.micros >>> 0, offset + 4);
  record.writeUInt32BE(time.logical, offset + 8);
}

export function recordKind(record: Buffer): number {
  return record[0]!;
}
export function recordVersion(record: Buffer): Version {
  scratchBytes.set(record.subarray(1, 9));
  return scratchView.getBigInt64(0) as Version;
}
export function recordTime(record: Buffer): Hlc {
  return decodeHlc(record, 9);
}
export function recordEffectiveTime(record: Buffer): Hlc {
  return decodeHlc(record, 21);
}
/** Effective time compared with (micros, logical) without allocating. */
export function compareRecordEffectiveTime(
  record: Buffer,
  micros: number,
  logical: number,
): number {
  const recordMicros = record.readUInt32BE(21) * 0x1_0000_0000 + record.readUInt32BE(25);
  if (recordMicros !== micros) return recordMicros < micros ? -1 : 1;
  return record.readUInt32BE(29) - logical;
}
export function recordBaseSeq(record: Buffer): number {
  return record.readDoubleBE(33);
}
/** A view of the payload; copy it if the record buffer is transient. */
export function recordPayload(record: Buffer): Buffer {
  return record.subarray(RECORD_HEADER_BYTES);
}

/** Checks that bytes look like a record (used on data from disk and from other nodes). */
export function checkRecord(record: Buffer): void {
  assert(record.byteLength >= RECORD_HEADER_BYTES, `a record needs ${RECORD_HEADER_BYTES} bytes`);
  const kind = record[0];
  assert(kind === RECORD_FULL || kind === RECORD_DELTA, `unknown record kind ${kind}`);
  assert(recordVersion(record) >= 0n, 'record versions are non-negative');
}

export function readHeader(record: Buffer): RecordHeader {
  return {
    kind: recordKind(record),
    version: recordVersion(record),
    time: recordTime(record),
    effectiveTime: recordEffectiveTime(record),
    baseSeq: recordBaseSeq(record),
  };
}
