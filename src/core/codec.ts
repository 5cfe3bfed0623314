/**
 * The internal codec for Squall's own protocol messages (Raft, ordering, membership, runtime
 * envelopes): msgpackr without class-transformer, records or extensions for application classes,
 * so a message costs one pack and one unpack.
 *
 * Carries: null, undefined, booleans, numbers, strings, bigint (64-bit ranges; Version and other
 * 64-bit ids), arrays, plain objects (string keys), Uint8Array/Buffer, Date. A Map arrives as a
 * plain object; class instances arrive as plain objects. Application values travel as bytes the
 * user-boundary codec (decorators/codec.ts) produced, nested here as a Uint8Array.
 *
 * Ownership:
 * - encodeMessage returns a fresh view the caller owns; msgpackr never writes over it later.
 * - decodeMessage MAY ALIAS ITS INPUT: every binary field of the result (a Buffer) is a view into
 *   `bytes`, not a copy. If `bytes` will be reused (a receive slab, a pooled buffer), either
 *   finish with the message first or use decodeMessageCopy.
 * - Key order is insertion order: equal messages built in different orders encode differently.
 *   Do not hash these bytes for replica comparison (use decorators/snapshot.ts).
 */
import { Packr } from 'msgpackr';

const aliasing = new Packr({ useRecords: false, int64AsType: 'bigint' });
const copying = new Packr({ useRecords: false, int64AsType: 'bigint', copyBuffers: true });

/** Encodes a protocol message. The returned bytes belong to the caller. */
export function encodeMessage(message: unknown): Uint8Array {
  return aliasing.pack(message);
}

/**
 * Decodes a protocol message. Binary fields alias `bytes` (see the header): do not reuse
 * `bytes` while the message is alive. Throws msgpackr's Error on malformed input.
 */
export function decodeMessage<T = unknown>(bytes: Uint8Array): T {
  return aliasing.unpack(bytes) as T;
}

/** Like decodeMessage, but binary fields are copies: `bytes` may be reused at once. */
export function decodeMessageCopy<T = unknown>(bytes: Uint8Array): T {
  return copying.unpack(bytes) as T;
}
