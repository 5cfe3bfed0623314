/**
 * Byte-level reads shared by the hand-framed codecs (src/raft/codec.ts, src/group/wire.ts) and the
 * multicast driver's frame walk: no DataView per read.
 */

/** The big-endian u32 at bytes[at..at+4), which the caller has bounds-checked. */
export function readU32BE(bytes: Uint8Array, at: number): number {
  return ((bytes[at]! << 24) >>> 0) + (bytes[at + 1]! << 16) + (bytes[at + 2]! << 8) + bytes[at + 3]!;
}

/** The little-endian u32 at bytes[at..at+4), which the caller has bounds-checked. */
export function readU32LE(bytes: Uint8Array, at: number): number {
  return bytes[at]! + (bytes[at + 1]! << 8) + (bytes[at + 2]! << 16) + ((bytes[at + 3]! << 24) >>> 0);
}
