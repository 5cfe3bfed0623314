/**
 * Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014; Derecho's HLC.hpp).
 *
 * A timestamp is wall-clock microseconds plus a logical counter that orders events which share a
 * microsecond or which happened "after" a message stamped ahead of the local wall clock. Sender
 * timestamps travel with ordered messages, so every replica stamps a version with the same time
 * and indexes one history by the same times.
 *
 * This module is pure: the wall clock arrives through an injected Clock, and the clock never reads
 * Date or performance itself.
 */
import { assert } from './assert.js';
import type { Clock } from './clock.js';

/**
 * An HLC timestamp. `micros` is microseconds since the Unix epoch (an integer below 2^53, exact in
 * a double until the year 2255); `logical` is a uint32 counter. Compare with compareHlc(), never
 * field by field by hand.
 */
export interface Hlc {
  readonly micros: number;
  readonly logical: number;
}

/** The number of bytes encodeHlc() writes: 8 for micros, 4 for the logical counter. */
export const HLC_BYTES = 12;
const LOGICAL_MAX = 0xffff_ffff;

/** Before every real timestamp. */
export const HLC_ZERO: Hlc = Object.freeze({ micros: 0, logical: 0 });
/** After every real timestamp (used as "no limit"). */
export const HLC_MAX: Hlc = Object.freeze({
  micros: Number.MAX_SAFE_INTEGER,
  logical: LOGICAL_MAX,
});

/** Checks the ranges and returns a timestamp (not frozen: freezing costs on the hot path). */
export function hlc(micros: number, logical = 0): Hlc {
  // Checked first without building messages: this runs for every version.
  const valid =
    Number.isSafeInteger(micros) && micros >= 0 &&
    Number.isInteger(logical) && logical >= 0 && logical <= LOGICAL_MAX;
  if (valid) return { micros, logical };
  assert(
    Number.isSafeInteger(micros) && micros >= 0,
    `HLC micros must be a non-negative safe integer, got ${micros}`,
  );
  assert(
    Number.isInteger(logical) && logical >= 0 && logical <= LOGICAL_MAX,
    `HLC logical counter must be a uint32, got ${logical}`,
  );
  return { micros, logical };
}

/** Negative if a is before b, zero if equal, positive if after. */
export function compareHlc(a: Hlc, b: Hlc): number {
  if (a.micros !== b.micros) return a.micros < b.micros ? -1 : 1;
  return a.logical - b.logical;
}

export function maxHlc(a: Hlc, b: Hlc): Hlc {
  return compareHlc(a, b) >= 0 ? a : b;
}

/** The latest timestamp at or before a wall-clock instant (logical counter at its maximum). */
export function hlcAtOrBefore(instant: Date | number): Hlc {
  const micros = typeof instant === 'number' ? instant : instant.getTime() * 1000;
  return hlc(Math.floor(micros), LOGICAL_MAX);
}

/**
 * Writes the 12-byte big-endian form at `offset`. Byte order equals time order, so encoded
 * timestamps can be LMDB keys or compared with Buffer.compare.
 */
export function encodeHlc(
  time: Hlc,
  target: Uint8Array = new Uint8Array(HLC_BYTES),
  offset = 0,
): Uint8Array {
  const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
  view.setUint32(offset, Math.floor(time.micros / 0x1_0000_0000));
  view.setUint32(offset + 4, time.micros >>> 0);
  view.setUint32(offset + 8, time.logical);
  return target;
}

export function decodeHlc(source: Uint8Array, offset = 0): Hlc {
  assert(source.byteLength >= offset + HLC_BYTES, 'an encoded HLC needs 12 bytes');
  const view = new DataView(source.buffer, source.byteOffset, source.byteLength);
  const micros = view.getUint32(offset) * 0x1_0000_0000 + view.getUint32(offset + 4);
  return hlc(micros, view.getUint32(offset + 8));
}

export function formatHlc(time: Hlc): string {
  return `${time.micros}.${time.logical}`;
}

/**
 * The clock itself. `now()` stamps a local or send event; `observe()` merges a timestamp received
 * in a message. Both return a timestamp strictly greater than every one this clock returned or
 * observed before, and never behind the wall clock.
 */
export class HybridLogicalClock {
  private last: Hlc = HLC_ZERO;

  constructor(private readonly clock: Clock) {}

  /** The latest timestamp issued or observed (HLC_ZERO before the first). */
  get latest(): Hlc {
    return this.last;
  }

  now(): Hlc {
    const wallMicros = this.wallMicros();
    this.last =
      wallMicros > this.last.micros ? hlc(wallMicros, 0) : this.successor(this.last);
    return this.last;
  }

  observe(received: Hlc): Hlc {
    const wallMicros = this.wallMicros();
    const top = maxHlc(this.last, received);
    this.last = wallMicros > top.micros ? hlc(wallMicros, 0) : this.successor(top);
    return this.last;
  }

  private successor(time: Hlc): Hlc {
    // The counter only grows while the wall clock lags the largest timestamp seen; overflowing
    // 2^32 events in one microsecond means a peer's clock is wildly ahead. Move to the next
    // microsecond rather than wrap.
    if (time.logical < LOGICAL_MAX) return hlc(time.micros, time.logical + 1);
    return hlc(time.micros + 1, 0);
  }

  private wallMicros(): number {
    const micros = Number(this.clock.wallMicros());
    if (!Number.isSafeInteger(micros) || micros < 0) assert(false, `wall clock gave ${micros} µs`);
    return micros;
  }
}
