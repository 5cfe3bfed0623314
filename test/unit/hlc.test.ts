// Proves the hybrid logical clock's contract: timestamps strictly increase, never trail the wall
// clock or an observed timestamp, and their 12-byte encoding sorts like the timestamps.
import test from 'ava';
import {
  compareHlc,
  decodeHlc,
  encodeHlc,
  hlc,
  hlcAtOrBefore,
  HybridLogicalClock,
  HLC_MAX,
} from '../../src/core/hlc.js';
import type { Clock } from '../../src/core/clock.js';
import { SeededRandom } from '../../src/core/random.js';
import { AssertionError } from '../../src/core/errors.js';

class FakeClock implements Clock {
  micros = 1_000_000n;
  nowMs(): number {
    return Number(this.micros / 1000n);
  }
  wallMicros(): bigint {
    return this.micros;
  }
}

test('now() strictly increases and follows the wall clock when it moves', (t) => {
  const wall = new FakeClock();
  const clock = new HybridLogicalClock(wall);
  const a = clock.now();
  t.deepEqual(a, hlc(1_000_000, 0));
  const b = clock.now(); // wall clock did not move: logical counter
  t.deepEqual(b, hlc(1_000_000, 1));
  wall.micros = 1_000_500n;
  t.deepEqual(clock.now(), hlc(1_000_500, 0));
  wall.micros = 900_000n; // wall clock stepped back: HLC does not
  t.true(compareHlc(clock.now(), hlc(1_000_500, 0)) > 0);
});

test('observe() moves past a timestamp from a clock that runs ahead', (t) => {
  const wall = new FakeClock();
  const clock = new HybridLogicalClock(wall);
  const ahead = hlc(5_000_000, 7);
  const seen = clock.observe(ahead);
  t.deepEqual(seen, hlc(5_000_000, 8));
  t.true(compareHlc(clock.now(), seen) > 0);
  wall.micros = 6_000_000n;
  t.deepEqual(clock.observe(hlc(10, 0)), hlc(6_000_000, 0));
});

test('random events: monotonic, and the encoding sorts like compareHlc', (t) => {
  const random = new SeededRandom(11);
  const wall = new FakeClock();
  const clock = new HybridLogicalClock(wall);
  let last = clock.now();
  const all = [last];
  for (let i = 0; i < 2000; i++) {
    wall.micros += BigInt(random.int(3)) - (random.next() < 0.1 ? 2n : 0n);
    const next = random.next() < 0.3
      ? clock.observe(hlc(Number(wall.micros) + random.int(50), random.int(4)))
      : clock.now();
    t.true(compareHlc(next, last) > 0);
    t.true(next.micros >= Number(wall.micros) || next.micros >= last.micros);
    last = next;
    all.push(next);
  }
  for (let i = 0; i < 500; i++) {
    const a = all[random.int(all.length)]!;
    const b = all[random.int(all.length)]!;
    t.is(Math.sign(Buffer.compare(encodeHlc(a), encodeHlc(b))), Math.sign(compareHlc(a, b)));
    t.deepEqual(decodeHlc(encodeHlc(a)), a);
  }
  t.deepEqual(decodeHlc(encodeHlc(HLC_MAX)), HLC_MAX);
});

test('hlcAtOrBefore covers every event in the millisecond of a Date; ranges are checked', (t) => {
  t.deepEqual(hlcAtOrBefore(new Date(5)), hlc(5000, 0xffff_ffff));
  t.true(compareHlc(hlc(5000, 123), hlcAtOrBefore(new Date(5))) < 0);
  t.throws(() => hlc(-1), { instanceOf: AssertionError });
  t.throws(() => hlc(1, 2 ** 32), { instanceOf: AssertionError });
});
