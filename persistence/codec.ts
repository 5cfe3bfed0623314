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
 * stores only those changes; every `checkpointEvery` versions a full copy is stored, so reading
 * any version costs one decode plus fewer than `checkpointEvery` applyDelta calls.
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
}

/**
 * The default codec: msgpack with msgpackr's extra types (Map, Set, Date, typed arrays, bigint
 * survive). Records are defined inline in every buffer, so a buffer decodes on its own.
 */
export function msgpackCodec<T>(): ValueCodec<T> {
  const packr = new Packr({ moreTypes: true });
  return {
    encode: (value) => packr.pack(value),
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
