// Proves the shared core helpers keep their contracts: branded ids check ranges, versions pack
// and unpack without precision loss, the seeded PRNG replays from its seed, errors carry names.
import test from 'ava';
import { readU32BE, readU32LE } from '../../src/core/bytes.js';
import { SeededRandom } from '../../src/core/random.js';
import { makeVersion, versionPosition, versionViewId, viewId, nodeId } from '../../src/core/ids.js';
import { AssertionError, ConfigError, SquallError } from '../../src/core/errors.js';

test('versions pack view id and position into 64 bits and back', (t) => {
  const v = makeVersion(viewId(0xffff_fffe), 0xffff_ffff);
  t.is(v as bigint, 0xffff_fffe_ffff_ffffn);
  t.is(versionViewId(v) as number, 0xffff_fffe);
  t.is(versionPosition(v), 0xffff_ffff);
  t.true(makeVersion(viewId(2), 0) > makeVersion(viewId(1), 0xffff_ffff));
});

test('ids reject values outside uint32', (t) => {
  t.throws(() => nodeId(-1), { instanceOf: AssertionError });
  t.throws(() => nodeId(1.5), { instanceOf: AssertionError });
  t.throws(() => makeVersion(viewId(1), 2 ** 32), { instanceOf: AssertionError });
});

test('a seeded random replays exactly and forks independently', (t) => {
  const a = new SeededRandom(42);
  const b = new SeededRandom(42);
  const seqA = Array.from({ length: 100 }, () => a.nextUint32());
  const seqB = Array.from({ length: 100 }, () => b.nextUint32());
  t.deepEqual(seqA, seqB);
  t.notDeepEqual(seqA, Array.from({ length: 100 }, () => new SeededRandom(43).nextUint32()));
  const r = new SeededRandom(7);
  for (let i = 0; i < 1000; i++) {
    const x = r.int(10);
    t.true(x >= 0 && x < 10);
  }
});

test('errors are named after their class and carry a code', (t) => {
  const e = new ConfigError([{ key: 'transport.port', message: 'must be 0..65535, got 70000' }]);
  t.true(e instanceof SquallError);
  t.is(e.name, 'ConfigError');
  t.is(e.code, 'CONFIG');
  t.regex(e.message, /transport\.port: must be 0\.\.65535/);
});

test('readU32BE and readU32LE read a u32 at an offset, high bit included, as DataView does', (t) => {
  const bytes = Uint8Array.of(0xaa, 0xff, 0x01, 0x02, 0x80, 0x33);
  const view = new DataView(bytes.buffer);
  for (const at of [0, 1, 2]) {
    t.is(readU32BE(bytes, at), view.getUint32(at, false));
    t.is(readU32LE(bytes, at), view.getUint32(at, true));
  }
  t.is(readU32LE(bytes, 2), 0x33800201);
  t.is(readU32BE(bytes, 0), 0xaaff0102);
});
