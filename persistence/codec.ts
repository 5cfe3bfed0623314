/**
 * How field values become bytes. A field's codec must be deterministic: equal values give equal
 * bytes on every replica (snapshots and replica digests compare bytes).
 */
import { Packr } from 'msgpackr';

export interface ValueCodec<T> {
  /** Bytes of the whole value. The caller owns the returned buffer. */
  encode(value: T): Uint8Array;
  /** A fresh value from bytes of encode(); must not keep a reference to `bytes`. */
  decode(bytes: Uint8Array): T;
}

/**
 * Delta mode (Derecho's IDeltaSupport): the value records its own changes, and each version
 * stores only those changes; a full copy is stored once the deltas since the last one add up to
 * its size (or every `checkpointEvery` versions, if set), so reading any version costs one
 * decode plus applyDelta calls over at most that many bytes.
 */
export interface DeltaCodec<T> extends ValueCodec<T> {
  /**
   * The changes made to `value` since the previous takeDelta() (or since it was decoded or
   * created), or null if there were none. Clears the recorded changes.
   */
  takeDelta(value: T): Uint8Array | null;
  /** Applies bytes from takeDelta() to `value` in place, without recording them as changes. */
  applyDelta(value: T, delta: Uint8Array): void;
  /** A counter that grows with every change to `value` (feeds FieldHooks.writeCount). */
  changeCount(value: T): number;
  /**
   * Optional: the bytes of a full record in the field's own log (checkpoints, and the first
   * record of a state-transfer suffix), read back only by decode(). Unlike encode() (snapshots
   * and digests compare its bytes across replicas, so it must be canonical) it need not be
   * canonical, only faithful: decode() must give back an equal value that also behaves alike
   * from then on (PersistentMap: the same iteration order). Default: encode().
   */
  encodeCheckpoint?(value: T): Uint8Array;
}

/**
 * The default codec: msgpack with msgpackr's extra types (Map, Set, Date, typed arrays, bigint
 * survive). Records are defined inline in every buffer, so a buffer decodes on its own.
 */
export function msgpackCodec<T>(): ValueCodec<T> {
  const packr = new Packr({ moreTypes: true });
  return {
    encode: (value) =>
      value instanceof Uint8Array && value.constructor === Uint8Array
        ? packUint8Array(value)
        : packr.pack(value),
    // msgpackr's decoded Buffers alias the input; copy so a value never points into LMDB's map.
    decode: (bytes) => packr.unpack(Uint8Array.prototype.slice.call(bytes)) as T,
  };
}

/**
 * For Uint8Array fields (Derecho's Bytes): the bytes are stored as they are, with no encoding
 * step. The field keeps a reference to the value it logged, so replace the array rather than
 * mutating it in place.
 */
export function bytesCodec(): ValueCodec<Uint8Array> {
  return {
    encode: (value) => value,
    decode: (bytes) => Uint8Array.prototype.slice.call(bytes),
  };
}

// msgpackr's type code for Uint8Array in its typed-array extension (0x74, 't'): the index of
// 'Uint8Array' in its list Int8Array, Uint8Array, ...
const TYPED_ARRAY_EXT = 0x74;
const UINT8_ARRAY_TYPE = 1;

/**
 * The bytes msgpackr (moreTypes) gives a plain Uint8Array, built directly: ext 0x74 holding the
 * type code then the bytes. msgpackr's general path costs about 1 µs per value here, most of an
 * append of a small Bytes field. A test checks the output equals packr.pack() at every size
 * class (ext8, ext16, ext32), so stored data does not depend on which path wrote it.
 */
function packUint8Array(value: Uint8Array): Buffer {
  const length = value.byteLength + 1; // the ext's data: type code + bytes
  let out: Buffer;
  let offset: number;
  if (length < 0x100) {
    out = Buffer.allocUnsafe(3 + length);
    out[0] = 0xc7;
    out[1] = length;
    offset = 2;
  } else if (length < 0x10000) {
    out = Buffer.allocUnsafe(4 + length);
    out[0] = 0xc8;
    out.writeUInt16BE(length, 1);
    offset = 3;
  } else {
    out = Buffer.allocUnsafe(6 + length);
    out[0] = 0xc9;
    out.writeUInt32BE(length, 1);
    offset = 5;
  }
  out[offset] = TYPED_ARRAY_EXT;
  out[offset + 1] = UINT8_ARRAY_TYPE;
  out.set(value, offset + 2);
  return out;
}
