/**
 * Injected time. Drivers use SystemClock; the simulator supplies its own. Pure cores never read
 * a clock at all: time reaches them as ticks.
 */
export interface Clock {
  /** Milliseconds on a monotonic clock (not wall time). */
  nowMs(): number;
  /** Microseconds since the Unix epoch (wall time), for hybrid logical clocks. */
  wallMicros(): bigint;
}

export const SystemClock: Clock = {
  nowMs: () => performance.now(),
  wallMicros: () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)),
};
