// Proves the ordering core's safety and liveness under seeded random schedules of reordering,
// duplication and long hold-backs ("loss" that the transport later repairs), for several shard
// shapes, send algorithms, SMC/RDMC mixes and raw mode: every member delivers the same sequence,
// per-sender FIFO, nothing before global stability, no nulls, strictly increasing versions,
// intact payloads, bounded windows, frontiers that never go back (no delivery stamped below a
// published time-stability frontier), and everything sent is delivered once the network drains.
import test from 'ava';
import { MulticastNet, sequenceOf, type NetOptions } from '../support/multicast-net.js';
import { RDMC_ALGORITHMS } from '../../src/multicast/rdmc-schedule.js';
import type { MulticastLimits } from '../../src/multicast/config.js';

const SMALL_LIMITS: Partial<MulticastLimits> = {
  payloadBytesMax: 5000,
  smcPayloadBytesMax: 300,
  blockBytes: 256,
  windowSize: 4,
  packetBytesMax: 4096,
  sendQueueCountMax: 8,
};

function runRandom(options: NetOptions, steps: number, largeShare: number): MulticastNet {
  const net = new MulticastNet(options);
  const size = (): number =>
    net.rng.next() < largeShare ? 301 + net.rng.int(4700) : 1 + net.rng.int(300);
  for (let i = 0; i < steps; i++) {
    net.randomStep(size);
    for (const core of net.cores) {
      const buffered = core.bufferedCounts();
      if (buffered.ownInFlight > net.limits.windowSize) net.problems.push('window exceeded');
    }
  }
  net.drain();
  return net;
}

test('ordered: all members deliver the same sequence under reordering, duplication and hold-backs', (t) => {
  let seeds = 0;
  let delivered = 0;
  for (let seed = 1; seed <= 120; seed++) {
    const memberCount = 1 + (seed % 5);
    const senderRanks =
      seed % 3 === 0 && memberCount > 1
        ? Array.from({ length: memberCount }, (_, r) => r).filter((r) => r % 2 === 0)
        : undefined;
    const net = runRandom(
      {
        seed,
        memberCount,
        ...(senderRanks === undefined ? {} : { senderRanks }),
        limits: { ...SMALL_LIMITS, rdmcAlgorithm: RDMC_ALGORITHMS[seed % 4]! },
        faults: { duplicate: 0.1, holdBack: 0.05 },
      },
      600,
      0.15,
    );
    const problems = net.check(true);
    if (problems.length > 0) {
      t.fail(`seed ${seed} (${memberCount} members): ${problems.slice(0, 5).join('; ')}`);
      return;
    }
    seeds++;
    delivered += net.delivered[0]!.length;
  }
  t.is(seeds, 120);
  t.true(delivered > 1000, `delivered ${delivered} messages over all seeds`);
});

test('raw mode: per-sender FIFO, delivery on receipt, nothing lost or invented', (t) => {
  for (let seed = 1000; seed < 1040; seed++) {
    const net = runRandom(
      {
        seed,
        memberCount: 2 + (seed % 3),
        mode: 'raw',
        limits: { ...SMALL_LIMITS, rdmcAlgorithm: RDMC_ALGORITHMS[seed % 4]! },
        faults: { duplicate: 0.1, holdBack: 0.05 },
      },
      500,
      0.1,
    );
    const problems = net.check(true);
    if (problems.length > 0) {
      t.fail(`seed ${seed}: ${problems.slice(0, 5).join('; ')}`);
      return;
    }
    t.is(net.cores.reduce((n, c) => n + c.counters.nullsSent, 0), 0, 'raw mode sends no nulls');
  }
  t.pass();
});

test('wedge and ragged edge: survivors deliver identical sequences and re-send exactly the rest', (t) => {
  let resent = 0;
  let trimDeliveries = 0;
  for (let seed = 2000; seed < 2120; seed++) {
    const memberCount = 2 + (seed % 4);
    const senderRanks =
      seed % 5 === 0 ? [0, memberCount - 1] : Array.from({ length: memberCount }, (_, r) => r);
    const net = new MulticastNet({
      seed,
      memberCount,
      senderRanks,
      limits: { ...SMALL_LIMITS, rdmcAlgorithm: RDMC_ALGORITHMS[seed % 4]! },
      faults: { duplicate: 0.1, holdBack: 0.1 },
    });
    const size = (): number => (net.rng.next() < 0.1 ? 301 + net.rng.int(3000) : 1 + net.rng.int(300));
    const steps = 100 + net.rng.int(500);
    for (let i = 0; i < steps; i++) net.randomStep(size, 0.35);
    const failedCount = 1 + net.rng.int(memberCount - 1);
    const failed = [...Array(memberCount).keys()].sort(() => net.rng.next() - 0.5).slice(0, failedCount);
    const before = net.delivered.map((d) => d.length);
    const { trim, resend } = net.raggedEdge(failed);
    const problems = net.check(false);
    const survivors = net.alive;
    const sequences = survivors.map((r) => sequenceOf(net.delivered[r]!));
    for (const seq of sequences) {
      if (seq.join() !== sequences[0]!.join()) problems.push('survivors end the view with different deliveries');
    }
    // Each sender's delivered messages are exactly its first trim[s] real messages.
    net.senderRanks.forEach((rank, s) => {
      const delivered = net.delivered[survivors[0]!]!.filter((d) => d.senderIndex === s).map((d) => d.index);
      const expected = net.sent[rank]!.filter((m) => m.index < trim[s]!).map((m) => m.index);
      if (delivered.join() !== expected.join()) problems.push(`sender ${rank}: delivered ${delivered} expected ${expected}`);
      if (!survivors.includes(rank)) return;
      // A survivor re-sends every own message the trim cut off, in order, and nothing else.
      const cut = net.sent[rank]!.filter((m) => m.index >= trim[s]!).map((m) => `${rank}/${m.seq}`);
      const got = (resend.get(rank) ?? []).map(([r, q]) => `${r}/${q}`);
      if (cut.join() !== got.join()) problems.push(`sender ${rank}: resend ${got} expected ${cut}`);
      resent += got.length;
    });
    survivors.forEach((r) => (trimDeliveries += net.delivered[r]!.length - before[r]!));
    if (problems.length > 0) {
      t.fail(`seed ${seed} (${memberCount} members, failed ${failed}): ${problems.slice(0, 4).join('; ')}`);
      return;
    }
  }
  t.true(resent > 20, `some messages were cut off and re-sent (${resent})`);
  t.true(trimDeliveries > 20, `the trim delivered messages beyond stability (${trimDeliveries})`);
});
