// Proves the generic simulator's own contracts, with a toy protocol: a seed replays to the same
// trace hash, different seeds diverge, a crash keeps only durable (or written-but-unreported)
// batches, partitions and one-way blocks cut exactly the links they name, duplication and loss
// happen at the configured rates, and a checker's failure names the seed to replay.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { SimDisk } from './disk.js';
import { InvariantViolation, SimFailure, Simulation, type NodeContext, type SimNode } from './simulation.js';

type Msg = { kind: 'ping'; n: number };

/** Each tick: writes a counter to disk, syncs, and after the sync pings every other node. */
class Toy implements SimNode<Msg> {
  counter: number;
  received: Array<[number, number]> = [];
  synced = 0;
  private pending = new Map<number, number>();
  constructor(readonly ctx: NodeContext<Msg>, readonly peers: number[]) {
    this.counter = ctx.disk.get<number>('counter') ?? 0;
  }
  tick(): void {
    this.counter++;
    this.ctx.disk.put('counter', this.counter);
    this.pending.set(this.ctx.disk.sync(), this.counter);
  }
  diskSynced(token: number): void {
    this.synced = this.pending.get(token)!;
    for (const p of this.peers) if (p !== this.ctx.id) this.ctx.send(p, { kind: 'ping', n: this.synced });
  }
  deliver(from: number, message: Msg): void {
    this.received.push([from, message.n]);
  }
}

function toySim(seed: number, extra: Partial<ConstructorParameters<typeof Simulation<Msg, Toy>>[0]> = {}) {
  const ids = [1, 2, 3];
  return new Simulation<Msg, Toy>({
    seed,
    nodeIds: ids,
    createNode: (ctx) => new Toy(ctx, ids),
    describeMessage: (m) => `ping ${m.n}`,
    ...extra,
  });
}

test('one seed replays to the same trace hash; another seed diverges', (t) => {
  const faults = {
    untilMs: 800, meanIntervalMs: 40, crashedMax: 1, lossRateMax: 0.3, duplicateRateMax: 0.2,
    weights: { crash: 1, restart: 1, partition: 1, oneWay: 1, heal: 1, lossy: 1 },
  };
  const hash = (seed: number): string => {
    const sim = toySim(seed, { faults });
    sim.run({ untilMs: 1000 });
    return sim.traceHash();
  };
  t.is(hash(5), hash(5));
  t.not(hash(5), hash(6));
});

test('a crash loses unsynced writes and keeps reported-durable ones', (t) => {
  const disk = new SimDisk();
  disk.put('a', 1);
  const first = disk.sync();
  disk.completeSync(first);
  disk.put('a', 2);
  disk.sync(); // written, never reported
  disk.put('b', 3); // never synced
  t.is(disk.get('a'), 2);
  disk.crash(() => false);
  t.is(disk.get('a'), 1);
  t.false(disk.has('b'));
  disk.put('a', 4);
  disk.sync();
  disk.put('a', 5);
  disk.sync();
  let calls = 0;
  disk.crash(() => ++calls === 1); // first unreported batch lands, the second does not
  t.is(disk.get('a'), 4);
});

test('a restarted node reads back what survived on its disk', (t) => {
  const sim = toySim(1, { keepUnreportedRate: 0 });
  sim.run({ untilMs: 200 });
  const before = sim.node(1)!.synced;
  t.true(before > 5);
  sim.crash(1);
  t.is(sim.node(1), undefined);
  sim.restart(1);
  t.is(sim.node(1)!.counter, before, 'exactly the last synced counter survives');
  t.is(sim.incarnation(1), 1);
});

test('partitions and one-way blocks cut exactly the named links, and heal', (t) => {
  const sim = toySim(2);
  sim.network.partition([[1], [2, 3]]);
  sim.network.blockOneWay(2, 3);
  sim.run({ untilMs: 300 });
  const from = (to: number) => new Set(sim.node(to)!.received.map(([f]) => f));
  t.deepEqual([...from(1)], []);
  t.deepEqual([...from(2)].sort(), [3]);
  t.deepEqual([...from(3)], []);
  sim.network.heal();
  sim.run({ untilMs: 600 });
  t.deepEqual([...from(1)].sort(), [2, 3]);
  t.deepEqual([...from(3)].sort(), [1, 2]);
});

test('loss and duplication follow the configured rates', (t) => {
  const sim = toySim(3, { network: { lossRate: 0.2, duplicateRate: 0.1 } });
  sim.run({ untilMs: 3000 });
  const s = sim.network.stats;
  t.true(s.sent > 1000);
  t.true(Math.abs(s.lost / s.sent - 0.2) < 0.05, `loss ${s.lost / s.sent}`);
  t.true(Math.abs(s.duplicated / (s.sent - s.lost) - 0.1) < 0.05);
});

test('a checker failure stops the run and names the seed and step to replay', (t) => {
  const sim = toySim(77, {
    checkers: [
      (s) => {
        if (s.node(2) !== undefined && s.node(2)!.counter >= 3) {
          throw new InvariantViolation('toy bound', 'counter reached 3');
        }
      },
    ],
  });
  const error = t.throws(() => sim.run({ untilMs: 1000 }), { instanceOf: SimFailure });
  t.is(error!.seed, 77);
  t.regex(error!.message, /SIM_SEED=77/);
  t.regex(error!.message, /toy bound/);
});

test('faults stop at untilMs: the network heals and every crashed node restarts', (t) => {
  let quiesced = 0;
  const sim = toySim(9, {
    faults: {
      untilMs: 500, meanIntervalMs: 20, crashedMax: 2, lossRateMax: 0.5, duplicateRateMax: 0,
      weights: { crash: 3, partition: 1, lossy: 1 },
    },
    onQuiesce: () => quiesced++,
  });
  sim.run({ untilMs: 499 });
  t.true(sim.stats.crashes > 0);
  sim.run({ untilMs: 700 });
  t.is(quiesced, 1);
  t.deepEqual(sim.upIds(), [1, 2, 3]);
  t.is(sim.network.describe(), 'healthy');
  t.is(sim.network.options.lossRate, 0);
});

/** This process's environment without SIM_SEED (which would run one seed). */
function withoutSimSeed(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.SIM_SEED;
  return env;
}

test('the sim command: bad arguments get the usage and exit 2; a run ends with its tally', (t) => {
  const runner = fileURLToPath(new URL('./run.js', import.meta.url));
  const run = (...args: string[]) => spawnSync(process.execPath, [runner, ...args], { encoding: 'utf8', env: withoutSimSeed() });
  for (const [args, says] of [
    [['--bogus'], /Unknown option '--bogus'/],
    [['nope'], /unknown protocol "nope"/],
    [[], /no protocol given/],
    [['raft', '--seeds', 'x'], /--seeds takes a whole number of at least 1, not "x"/],
  ] as const) {
    const result = run(...args);
    t.is(result.status, 2, args.join(' '));
    t.regex(result.stderr, says);
    t.regex(result.stderr, /usage: npm run sim -- <protocol>/);
  }
  const help = run('--help');
  t.is(help.status, 0);
  t.regex(help.stdout, /protocols: .*raft/);
  const ok = run('raft', '--seeds', '2', '--steps', '200');
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /sim: 2 seeds passed, 0 failed/);
});
