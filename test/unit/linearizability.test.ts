// Proves the linearizability checker tells linearizable key-value histories from ones that are
// not (hand-made classics, unknown-outcome operations, per-key partitions), answers 'unknown'
// rather than guessing when its budget runs out, and accepts every history generated from a real
// sequential execution while catching a single corrupted read in it.
import test from 'ava';
import { checkLinearizable, HistoryRecorder, kvModel, type KvInput, type KvOutput, type Operation } from '../support/linearizability.js';
import { SeededRandom } from '../../src/core/random.js';

type Op = Operation<KvInput, KvOutput>;
const put = (client: number, key: string, value: string, call: number, ret: number | undefined): Op =>
  ({ client, input: { op: 'put', key, value }, output: ret === undefined ? undefined : undefined, callTime: call, returnTime: ret });
const get = (client: number, key: string, output: string | null | undefined, call: number, ret: number | undefined): Op =>
  ({ client, input: { op: 'get', key }, output, callTime: call, returnTime: ret });
const cas = (client: number, key: string, expected: string | undefined, value: string, output: boolean, call: number, ret: number): Op =>
  ({ client, input: { op: 'cas', key, expected, value }, output, callTime: call, returnTime: ret });

const verdict = (history: Op[], steps?: number) => checkLinearizable(kvModel, history, steps).verdict;

test('sequential history is linearizable; a stale read after a completed write is not', (t) => {
  t.is(verdict([put(0, 'x', '1', 0, 1), get(1, 'x', '1', 2, 3)]), 'linearizable');
  t.is(verdict([put(0, 'x', '1', 0, 1), get(1, 'x', null, 2, 3)]), 'not-linearizable');
  t.is(verdict([get(1, 'x', null, 0, 1), put(0, 'x', '1', 2, 3)]), 'linearizable');
  t.is(verdict([get(1, 'x', '1', 0, 1), put(0, 'x', '1', 2, 3)]), 'not-linearizable', 'a read cannot see a later write');
});

test('a read concurrent with a write may see either value', (t) => {
  t.is(verdict([put(0, 'x', '1', 0, 10), get(1, 'x', '1', 2, 3)]), 'linearizable');
  t.is(verdict([put(0, 'x', '1', 0, 10), get(1, 'x', null, 2, 3)]), 'linearizable');
});

test('two reads may not see a concurrent write flip back (new then old)', (t) => {
  const history = [put(0, 'x', '1', 0, 10), get(1, 'x', '1', 1, 2), get(2, 'x', null, 3, 4)];
  t.is(verdict(history), 'not-linearizable');
  const fine = [put(0, 'x', '1', 0, 10), get(1, 'x', null, 1, 2), get(2, 'x', '1', 3, 4)];
  t.is(verdict(fine), 'linearizable');
});

test('compare-and-set answers must agree with one order', (t) => {
  t.is(verdict([put(0, 'x', 'a', 0, 1), cas(1, 'x', 'a', 'b', true, 2, 3), get(2, 'x', 'b', 4, 5)]), 'linearizable');
  t.is(verdict([put(0, 'x', 'a', 0, 1), cas(1, 'x', 'a', 'b', false, 2, 3)]), 'not-linearizable');
  // Two concurrent CAS from 'a': exactly one may win.
  t.is(verdict([put(0, 'x', 'a', 0, 1), cas(1, 'x', 'a', 'b', true, 2, 5), cas(2, 'x', 'a', 'c', true, 3, 6)]), 'not-linearizable');
  t.is(verdict([put(0, 'x', 'a', 0, 1), cas(1, 'x', 'a', 'b', true, 2, 5), cas(2, 'x', 'a', 'c', false, 3, 6)]), 'linearizable');
  t.is(verdict([cas(1, 'x', undefined, 'b', true, 0, 1), get(2, 'x', 'b', 2, 3)]), 'linearizable', 'expected absent');
});

test('an operation with unknown outcome may take effect late or never, but not twice', (t) => {
  const pending = put(0, 'x', '1', 0, undefined);
  t.is(verdict([pending, get(1, 'x', '1', 5, 6)]), 'linearizable', 'took effect');
  t.is(verdict([pending, get(1, 'x', null, 5, 6)]), 'linearizable', 'never took effect (yet)');
  t.is(verdict([pending, get(1, 'x', '1', 5, 6), get(2, 'x', null, 7, 8)]), 'not-linearizable', 'seen, then unseen');
  t.is(verdict([pending, get(1, 'x', null, 5, 6), get(2, 'x', '1', 7, 8)]), 'linearizable', 'unseen, then seen');
});

test('histories are checked per key, and the failing key is reported', (t) => {
  const history = [put(0, 'a', '1', 0, 1), put(0, 'b', '1', 0, 1), get(1, 'a', '1', 2, 3), get(1, 'b', null, 2, 3)];
  const result = checkLinearizable(kvModel, history);
  t.is(result.verdict, 'not-linearizable');
  t.is(result.partitions, 2);
  t.true(result.failingPartition!.some((line) => line.includes('get(b)')));
  t.false(result.failingPartition!.some((line) => line.includes('get(a)')));
});

test('an exhausted budget answers unknown, never a guess', (t) => {
  const history: Op[] = [];
  for (let i = 0; i < 40; i++) history.push(put(i, 'x', String(i), 0, 100));
  history.push(get(99, 'x', 'never-written', 0, 100));
  t.is(verdict(history, 50), 'unknown');
});

/** Runs a random sequential execution, then stretches each operation's interval at random. */
function generatedHistory(seed: number): { history: Op[]; reads: number[] } {
  const random = new SeededRandom(seed);
  const keys = ['k0', 'k1', 'k2'];
  const state = new Map<string, string>();
  const history: Op[] = [];
  const reads: number[] = [];
  for (let i = 0; i < 60; i++) {
    const point = i * 10; // the linearization point of operation i
    const callTime = point - random.int(25);
    const returnTime = point + 1 + random.int(25);
    const key = keys[random.int(keys.length)]!;
    const roll = random.int(3);
    const client = random.int(5);
    if (roll === 0) {
      const value = `v${i}`;
      state.set(key, value);
      history.push({ client, input: { op: 'put', key, value }, output: undefined, callTime, returnTime });
    } else if (roll === 1) {
      reads.push(history.length);
      history.push({ client, input: { op: 'get', key }, output: state.get(key) ?? null, callTime, returnTime });
    } else {
      const expected = random.int(2) === 0 ? state.get(key) : 'nope';
      const swapped = (state.get(key) ?? undefined) === expected;
      if (swapped) state.set(key, `c${i}`);
      history.push({ client, input: { op: 'cas', key, expected, value: `c${i}` }, output: swapped, callTime, returnTime });
    }
  }
  return { history, reads };
}

test('every history from a real execution is linearizable; one corrupted read is caught', (t) => {
  for (let seed = 1; seed <= 60; seed++) {
    const { history, reads } = generatedHistory(seed);
    t.is(checkLinearizable(kvModel, history).verdict, 'linearizable', `seed ${seed}`);
    if (reads.length === 0) continue;
    const corrupted = history.map((op) => ({ ...op }));
    corrupted[reads[seed % reads.length]!]!.output = 'a value nobody wrote';
    t.is(checkLinearizable(kvModel, corrupted).verdict, 'not-linearizable', `seed ${seed} corrupted`);
  }
});

test('the recorder keeps unknown outcomes open and drops definite failures', (t) => {
  let now = 0;
  const recorder = new HistoryRecorder<KvInput, KvOutput>(() => now++);
  const a = recorder.invoke(0, { op: 'put', key: 'x', value: '1' });
  const b = recorder.invoke(1, { op: 'put', key: 'x', value: '2' });
  const c = recorder.invoke(2, { op: 'get', key: 'x' });
  recorder.ok(a, undefined);
  recorder.fail(b);
  recorder.unknown(c);
  const history = recorder.history();
  t.is(history.length, 2);
  t.deepEqual(history.map((op) => op.returnTime), [3, undefined]);
  t.is(checkLinearizable(kvModel, history).verdict, 'linearizable');
});
