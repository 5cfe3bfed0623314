// Proves every RDMC relay schedule keeps its contract for many shard and message sizes (each
// member ends with every block, nobody sends a block it lacks or receives one twice), that the
// origin's upload is about one copy per block for binomial and chain (⌈log2 n⌉ for tree, n−1
// only for sequential), that step counts match the algorithms, and that the per-member transfer
// machine, fed blocks in a random order, relays per schedule and reassembles the message intact.
import test from 'ava';
import {
  RDMC_ALGORITHMS,
  checkSchedule,
  outgoingByRank,
  rdmcSchedule,
  type RdmcAlgorithm,
} from '../../src/multicast/rdmc-schedule.js';
import { RdmcTransferState } from '../../src/multicast/rdmc-transfer.js';
import { SeededRandom } from '../../src/core/random.js';

const SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17];
const BLOCKS = [1, 2, 3, 7, 16, 33];

test('every schedule delivers every block to every member, validly', (t) => {
  for (const algorithm of RDMC_ALGORITHMS) {
    for (const n of SIZES) {
      for (const blocks of BLOCKS) {
        const problems = checkSchedule(rdmcSchedule(algorithm, n, blocks));
        if (problems.length > 0) t.fail(`${algorithm} n=${n} blocks=${blocks}: ${problems[0]}`);
      }
    }
  }
  t.pass();
});

test('the origin sends each block about once, except for sequential and tree', (t) => {
  for (const n of SIZES.filter((x) => x >= 2)) {
    const log2 = Math.floor(Math.log2(n));
    for (const blocks of BLOCKS) {
      const originSends = (a: RdmcAlgorithm): number =>
        rdmcSchedule(a, n, blocks).steps.flat().filter((x) => x.from === 0).length;
      t.is(originSends('chain'), blocks, `chain n=${n}`);
      t.true(originSends('binomial') <= blocks + log2, `binomial n=${n} b=${blocks}`);
      t.is(originSends('tree'), blocks * Math.ceil(Math.log2(n)), `tree n=${n}`);
      t.is(originSends('sequential'), blocks * (n - 1), `sequential n=${n}`);
    }
  }
});

test('step counts: chain b+n−2, sequential b(n−1), tree b⌈log2 n⌉, binomial within b+log2 n+1', (t) => {
  for (const n of SIZES.filter((x) => x >= 2)) {
    for (const blocks of BLOCKS) {
      const steps = (a: RdmcAlgorithm): number => rdmcSchedule(a, n, blocks).steps.length;
      t.is(steps('chain'), blocks + n - 2);
      t.is(steps('sequential'), blocks * (n - 1));
      t.is(steps('tree'), blocks * Math.ceil(Math.log2(n)));
      const log2 = Math.floor(Math.log2(n));
      t.true(steps('binomial') <= blocks + log2 + 1, `binomial n=${n} b=${blocks}: ${steps('binomial')}`);
      // Each member sends at most two blocks per step (one to its hypercube partner, one to a twin).
      for (const step of rdmcSchedule('binomial', n, blocks).steps) {
        const perSender = new Map<number, number>();
        for (const x of step) perSender.set(x.from, (perSender.get(x.from) ?? 0) + 1);
        t.true(Math.max(...perSender.values()) <= (2 ** log2 === n ? 1 : 2));
      }
    }
  }
});

test('transfer machines relay by schedule and reassemble intact under random arrival order', (t) => {
  const random = new SeededRandom(11);
  for (const algorithm of RDMC_ALGORITHMS) {
    for (const n of [2, 3, 5, 8]) {
      const totalBytes = 1 + random.int(5000);
      const blockBytes = 97;
      const payload = Uint8Array.from({ length: totalBytes }, (_, i) => (i * 13 + 5) & 0xff);
      const blocks = Math.ceil(totalBytes / blockBytes);
      const outgoing = outgoingByRank(rdmcSchedule(algorithm, n, blocks));
      const states = outgoing.map((out, r) =>
        r === 0 ? new RdmcTransferState(totalBytes, blockBytes, out, payload) : new RdmcTransferState(totalBytes, blockBytes, out),
      );
      const wire: { to: number; block: number; bytes: Uint8Array }[] = [];
      const pump = (r: number): void => {
        for (const x of states[r]!.takeDueSends()) {
          wire.push({ to: x.to, block: x.block, bytes: states[r]!.blockView(x.block).slice() });
        }
      };
      pump(0);
      while (wire.length > 0) {
        const i = random.int(wire.length);
        const { to, block, bytes } = wire.splice(i, 1)[0]!;
        const fresh = states[to]!.receiveBlock(block, bytes);
        t.true(fresh, 'no block is ever sent to a member twice');
        t.false(states[to]!.receiveBlock(block, bytes), 'a duplicate is ignored');
        pump(to);
      }
      for (let r = 0; r < n; r++) {
        t.true(states[r]!.finished, `${algorithm} n=${n}: rank ${r} finished`);
        t.deepEqual(states[r]!.message(), payload);
      }
      if (algorithm === 'chain') t.is(outgoing[0]!.length, blocks);
    }
  }
});
