/**
 * A raft-ordered shard under the deterministic simulator: three members run the real RaftCore
 * (through raft-sim.ts's miniature driver, with all of its Raft invariants checked after every
 * step) and, on top, the real ShardMachine with a key-value application. Clients register
 * sessions, then put, compare-and-set and get, retrying the same (client, seq) at other members
 * when a reply is late (leader crashed, request or reply lost, partition), while the fault injector
 * crashes members, partitions them and loses messages.
 *
 * Checked:
 *   at most once          no (client, seq) runs at two log indices (a retry of a call that already
 *                         ran is answered from the session's cached reply);
 *   same reply            a duplicate is answered with exactly the reply the call produced;
 *   linearizability       the clients' history (ordered puts, CAS, gets, and ReadIndex gets served
 *                         at any member) is linearizable for the key-value model
 *                         (test/support/linearizability.ts); calls whose reply never came count
 *                         as "may or may not have happened";
 *   ordered times         timestamps strictly increase along the applied log;
 *   replica agreement     replicas at the same applied index hold identical key-value state;
 *   liveness              after faults stop, every client completes new calls.
 *   reconfigured          a view change (at a random time while faults run) moves the shard from
 *                         members [1, 2, 3] to [1, 2, 4]: member 4 starts outside the Raft
 *                         configuration and every leader steps it toward the view with the
 *                         group layer's rule (`nextVoterStep`, as RaftOrderingEngine.setMembers
 *                         does): add 4 as a learner, promote it, remove 3. Clients then call the
 *                         view's members. After the faults stop the configuration must be
 *                         exactly [1, 2, 4], with every check above holding throughout.
 * Mutations (`--flag mutation=...`): `noDedup` runs retries again; `localReads` serves gets from
 * local state without ReadIndex; `noReconfigure` ignores the view change. The checks must catch
 * all three.
 */
import { SeededRandom } from '../../src/core/random.js';
import { compareHlc, hlc, type Hlc } from '../../src/core/hlc.js';
import { nextVoterStep, voterPlanInputOf } from '../../src/membership/voter-plan.js';
import { RaftProposalError } from '../../src/raft/errors.js';
import { ShardMachine, encodeRegister, type ShardCall } from '../../src/raft/shard-core.js';
import type { Entry, Message, ReadState } from '../../src/raft/types.js';
import { checkLinearizable, HistoryRecorder, kvModel, type KvInput, type KvOutput } from '../support/linearizability.js';
import type { SeedOptions, SeedResult } from './protocol.js';
import { describeRaftMessage, makeRaftCheckers, RaftSimNode, RaftWorld, type RaftSimApp } from './raft-sim.js';
import { InvariantViolation, Simulation, type NodeContext } from './simulation.js';

/** The shard's members before and after the view change (node 4 exists from the start). */
const MEMBERS = [1, 2, 3];
const MEMBERS_AFTER = [1, 2, 4];
const NODES = [1, 2, 3, 4];
const FAULTS_UNTIL_MS = 4000;
const LIVENESS_MS = 6000;
const CLIENTS = 4;
const REPLY_TIMEOUT_MS = 150;

type Mutation = 'noDedup' | 'localReads' | 'noReconfigure';

const text = new TextEncoder();
const untext = new TextDecoder();

/** Facts shared by every replica, for the cross-replica checks. */
class ShardWorld {
  ranAt = new Map<string, number>(); // "client:seq" → log index where it ran
  replyOf = new Map<string, string>(); // "client:seq" → the reply it produced
  stampAt = new Map<number, Hlc>(); // log index → timestamp of the call there
  stateAt = new Map<number, string>(); // applied index → key-value digest
  duplicatesAnswered = 0;
  expired = 0;
}

/** What a member tells a client: the outcome of a call or registration. */
type Answer =
  | { kind: 'reply'; reply: string }
  | { kind: 'registered'; client: number }
  | { kind: 'expired' }
  | { kind: 'read'; value: string | null };

/** The key-value application and the client-facing side of one member (one incarnation). */
class KvShardApp implements RaftSimApp {
  machine = new ShardMachine({ clientsMax: 16, repliesPerClientMax: 64 });
  kv = new Map<string, string>();
  node!: RaftSimNode;
  /** Calls proposed here, by "client:seq", and registrations by log index → answer callbacks. */
  waiters = new Map<string, (a: Answer) => void>();
  registrations = new Map<number, (a: Answer) => void>();
  reads = new Map<number, { key: string; answer: (a: Answer) => void }>();
  readyReads: { index: number; key: string; answer: (a: Answer) => void }[] = [];
  private readId: number;
  private lastStamp: Hlc = hlc(0);

  constructor(
    private readonly ctx: NodeContext<Message>,
    private readonly world: ShardWorld,
    private readonly mutation: Mutation | undefined,
  ) {
    this.readId = 500_000_000 + ctx.incarnation * 1_000_000;
  }

  restore(data: Uint8Array | undefined): void {
    this.kv = new Map();
    this.machine = new ShardMachine({ clientsMax: 16, repliesPerClientMax: 64 });
    if (data === undefined) return;
    const split = new DataView(data.buffer, data.byteOffset, data.length).getUint32(0);
    this.machine.restore(data.subarray(4, 4 + split));
    for (const [k, v] of JSON.parse(untext.decode(data.subarray(4 + split))) as [string, string][]) this.kv.set(k, v);
  }

  snapshot(): Uint8Array {
    const m = this.machine.snapshot();
    const kv = text.encode(JSON.stringify([...this.kv].sort()));
    const out = new Uint8Array(4 + m.length + kv.length);
    new DataView(out.buffer).setUint32(0, m.length);
    out.set(m, 4);
    out.set(kv, 4 + m.length);
    return out;
  }

  appended(entries: readonly Entry[]): void {
    this.machine.observeAppended(entries);
  }

  apply(entry: Entry): void {
    const outcome = this.machine.apply(entry);
    switch (outcome.kind) {
      case 'none':
        break;
      case 'registered':
        this.registrations.get(outcome.index)?.({ kind: 'registered', client: outcome.client });
        this.registrations.delete(outcome.index);
        break;
      case 'call': {
        const key = `${outcome.call.client}:${outcome.call.seq}`;
        this.checkRanOnce(key, outcome.index);
        this.checkStamp(outcome.index, outcome.timestamp);
        const reply = this.execute(JSON.parse(untext.decode(outcome.call.payload)) as KvInput);
        this.machine.completed(text.encode(reply));
        const known = this.world.replyOf.get(key);
        if (known === undefined) this.world.replyOf.set(key, reply);
        this.answer(key, { kind: 'reply', reply });
        break;
      }
      case 'duplicate': {
        const key = `${outcome.call.client}:${outcome.call.seq}`;
        let reply = untext.decode(outcome.reply);
        if (this.mutation === 'noDedup') {
          // Broken on purpose: run the retry again.
          this.checkRanOnce(key, outcome.index);
          reply = this.execute(JSON.parse(untext.decode(outcome.call.payload)) as KvInput);
        } else if (this.world.replyOf.get(key) !== reply) {
          throw new InvariantViolation('same reply', `n${this.ctx.id}: retry of ${key} answered ${reply}, the call produced ${this.world.replyOf.get(key)}`);
        }
        this.world.duplicatesAnswered++;
        this.answer(key, { kind: 'reply', reply });
        break;
      }
      case 'expired':
        this.world.expired++;
        this.answer(`${outcome.call.client}:${outcome.call.seq}`, { kind: 'expired' });
        break;
    }
    this.checkState(entry.index);
    this.serveReadyReads();
  }

  readState(rs: ReadState): void {
    const read = this.reads.get(rs.id);
    if (read === undefined) return;
    this.reads.delete(rs.id);
    this.readyReads.push({ index: rs.index, ...read });
    this.serveReadyReads();
  }

  /** Client entry points: propose here if leader; else say who the leader is (0: unknown). */
  register(answer: (a: Answer) => void): { redirect: number } | undefined {
    return this.propose(encodeRegister(), (index) => this.registrations.set(index, answer));
  }

  call(call: ShardCall, answer: (a: Answer) => void): { redirect: number } | undefined {
    const now = hlc(this.ctx.nowMs() * 1000);
    const { data } = this.machine.stamp(call, now);
    return this.propose(data, () => this.waiters.set(`${call.client}:${call.seq}`, answer));
  }

  /** A linearizable read through ReadIndex (at any member; followers ask the leader). */
  read(key: string, answer: (a: Answer) => void): void {
    if (this.mutation === 'localReads') {
      answer({ kind: 'read', value: this.kv.get(key) ?? null });
      return;
    }
    const id = ++this.readId;
    if (this.node.act((core) => core.readIndex(id))) this.reads.set(id, { key, answer });
  }

  private propose(data: Uint8Array, onAccepted: (index: number) => void): { redirect: number } | undefined {
    const core = this.node.core;
    try {
      const { index } = core.propose(data);
      onAccepted(index);
      this.node.act(() => undefined); // pump the Ready
      return undefined;
    } catch (e) {
      if (e instanceof RaftProposalError) return { redirect: e.leader };
      throw e;
    }
  }

  private serveReadyReads(): void {
    const still: typeof this.readyReads = [];
    for (const r of this.readyReads) {
      if (this.machine.applied >= r.index) r.answer({ kind: 'read', value: this.kv.get(r.key) ?? null });
      else still.push(r);
    }
    this.readyReads = still;
  }

  private answer(key: string, a: Answer): void {
    const w = this.waiters.get(key);
    if (w === undefined) return;
    this.waiters.delete(key);
    w(a);
  }

  private execute(input: KvInput): string {
    switch (input.op) {
      case 'put':
        this.kv.set(input.key, input.value);
        return JSON.stringify(null);
      case 'get':
        return JSON.stringify(this.kv.get(input.key) ?? null);
      case 'cas': {
        const swapped = (this.kv.get(input.key) ?? undefined) === input.expected;
        if (swapped) this.kv.set(input.key, input.value);
        return JSON.stringify(swapped);
      }
    }
  }

  private checkRanOnce(key: string, index: number): void {
    const at = this.world.ranAt.get(key);
    if (at === undefined) this.world.ranAt.set(key, index);
    else if (at !== index) {
      throw new InvariantViolation('at most once', `n${this.ctx.id}: call ${key} ran at log index ${index} and before at ${at}`);
    }
  }

  private checkStamp(index: number, stamp: Hlc): void {
    if (compareHlc(stamp, this.lastStamp) <= 0 && this.lastStamp.micros > 0) {
      throw new InvariantViolation('ordered times', `n${this.ctx.id}: call at index ${index} has time ${stamp.micros}.${stamp.logical}, not after ${this.lastStamp.micros}.${this.lastStamp.logical}`);
    }
    this.lastStamp = stamp;
    const known = this.world.stampAt.get(index);
    if (known === undefined) this.world.stampAt.set(index, stamp);
    else if (compareHlc(known, stamp) !== 0) throw new InvariantViolation('ordered times', `index ${index} has two timestamps`);
  }

  private checkState(index: number): void {
    const digest = JSON.stringify([...this.kv].sort());
    const known = this.world.stateAt.get(index);
    if (known === undefined) this.world.stateAt.set(index, digest);
    else if (known !== digest) {
      throw new InvariantViolation('replica agreement', `n${this.ctx.id} at applied index ${index} holds ${digest}, another replica held ${known}`);
    }
  }
}

/** One sequential client: registers, then issues operations, retrying each until answered. */
class Client {
  id = 0;
  seq = 0;
  ackedBelow = 1;
  completedAfterQuiesce = 0;
  private leaderHint = 0;

  constructor(
    private readonly n: number,
    private readonly sim: Simulation<Message, RaftSimNode>,
    private readonly apps: () => Map<number, KvShardApp>,
    private readonly history: HistoryRecorder<KvInput, KvOutput>,
    private readonly lossRate: number,
    /** The shard's members in the current view. */
    private readonly members: () => readonly number[],
  ) {}

  start(): void {
    this.sim.schedule(10 + this.sim.random.int(50), `client ${this.n} start`, () => this.register(0));
  }

  private target(): number {
    const r = this.sim.random;
    const members = this.members();
    if (this.leaderHint !== 0 && r.next() < 0.8 && members.includes(this.leaderHint)) return this.leaderHint;
    return members[r.int(members.length)]!;
  }

  /** Sends to a member over a lossy client link; the answer comes back over one too. */
  private send(to: number, what: string, request: (app: KvShardApp, answer: (a: Answer) => void) => { redirect: number } | undefined,
    onAnswer: (a: Answer) => void, onRedirectOrTimeout: () => void): void {
    const r = this.sim.random;
    let settled = false;
    const timeout = (): void => {
      if (settled) return;
      settled = true;
      onRedirectOrTimeout();
    };
    this.sim.schedule(REPLY_TIMEOUT_MS, `client ${this.n} timeout ${what}`, timeout);
    if (r.next() < this.lossRate) return; // request lost
    this.sim.schedule(1 + r.int(5), `client ${this.n} → n${to} ${what}`, () => {
      const app = this.apps().get(to);
      if (app === undefined || !this.sim.isUp(to)) return; // member down: the timeout retries
      const refused = request(app, (a) => {
        if (r.next() < this.lossRate) return; // reply lost
        this.sim.schedule(1 + r.int(5), `n${to} → client ${this.n} ${a.kind}`, () => {
          if (settled) return;
          settled = true;
          onAnswer(a);
        });
      });
      if (refused) {
        this.leaderHint = refused.redirect;
        this.sim.schedule(2 + r.int(10), `client ${this.n} redirected`, timeout);
      }
    });
  }

  private register(attempt: number): void {
    const to = this.target();
    this.send(to, 'register', (app, answer) => app.register(answer), (a) => {
      if (a.kind !== 'registered') return this.register(attempt + 1);
      this.leaderHint = to;
      this.id = a.client;
      this.seq = 0;
      this.ackedBelow = 1;
      this.next();
    }, () => this.register(attempt + 1));
  }

  private next(): void {
    const r = this.sim.random;
    const key = `k${r.int(3)}`;
    const roll = r.next();
    if (roll < 0.25) return this.readIndexGet(key);
    const input: KvInput = roll < 0.6
      ? { op: 'put', key, value: `${this.n}.${this.seq + 1}` }
      : roll < 0.85
        ? { op: 'cas', key, expected: r.int(2) ? undefined : `${r.int(CLIENTS)}.${r.int(this.seq + 2)}`, value: `${this.n}.${this.seq + 1}c` }
        : { op: 'get', key };
    this.seq++;
    const op = this.history.invoke(this.n, input);
    this.attempt({ client: this.id, seq: this.seq, ackedBelow: this.ackedBelow, payload: text.encode(JSON.stringify(input)) }, op, 0);
  }

  private attempt(call: ShardCall, op: number, tries: number): void {
    if (tries >= 12) {
      // Give up: it may or may not have happened; never ask again.
      this.history.unknown(op);
      this.ackedBelow = call.seq + 1;
      return this.after();
    }
    this.send(this.target(), `call ${call.client}:${call.seq}`, (app, answer) => app.call(call, answer), (a) => {
      if (a.kind === 'expired') {
        // The session is gone: the call may have run before; re-register and go on.
        this.history.unknown(op);
        return this.sim.schedule(5, `client ${this.n} re-register`, () => this.register(0));
      }
      if (a.kind !== 'reply') return;
      this.history.ok(op, JSON.parse(a.reply) as KvOutput);
      this.ackedBelow = call.seq + 1;
      this.after();
    }, () => this.attempt(call, op, tries + 1));
  }

  private readIndexGet(key: string, tries = 0): void {
    const op = this.history.invoke(this.n, { op: 'get', key });
    this.send(this.target(), `read ${key}`, (app, answer) => {
      app.read(key, answer);
      return undefined;
    }, (a) => {
      if (a.kind !== 'read') return;
      this.history.ok(op, a.value);
      this.after();
    }, () => {
      this.history.fail(op); // a read that never answered had no effect
      if (tries < 12) this.readIndexGet(key, tries + 1);
      else this.after();
    });
  }

  private after(): void {
    if (this.sim.isQuiesced) this.completedAfterQuiesce++;
    this.sim.schedule(1 + this.sim.random.int(20), `client ${this.n} next`, () => this.next());
  }
}

export function runSeed(seed: number, options: SeedOptions = {}): SeedResult {
  const mutation = options.flags?.['mutation'] as Mutation | undefined;
  const world = new RaftWorld();
  const shard = new ShardWorld();
  const apps = new Map<number, KvShardApp>();
  const swarm = new SeededRandom(seed ^ 0x5a4d);
  const lossRate = [0, 0.02, 0.1][swarm.int(3)]!;
  const sim: Simulation<Message, RaftSimNode> = new Simulation<Message, RaftSimNode>({
    seed,
    nodeIds: NODES,
    createNode: (ctx) => {
      const app = new KvShardApp(ctx, shard, mutation);
      apps.set(ctx.id, app);
      const node = new RaftSimNode(ctx, world, undefined, {}, app);
      app.node = node;
      return node;
    },
    network: { delayMsMin: 1, delayMsMax: 12 },
    tickMs: 10,
    diskLatencyMs: [1, 6],
    keepUnreportedRate: 0.5,
    describeMessage: describeRaftMessage,
    checkers: makeRaftCheckers(world, NODES),
    faults: {
      untilMs: FAULTS_UNTIL_MS, meanIntervalMs: 150, crashedMax: 1, lossRateMax: 0.2, duplicateRateMax: 0.1,
      weights: { crash: 3, restart: 4, partition: 2, isolate: 2, oneWay: 1, heal: 3, lossy: 2 },
    },
  });
  const recorder = new HistoryRecorder<KvInput, KvOutput>(() => sim.nowMs);
  // apps holds each member's current incarnation (createNode replaces it on restart).
  let members: readonly number[] = MEMBERS;
  const clients = Array.from({ length: CLIENTS }, (_, i) => new Client(i + 1, sim, () => apps, recorder, lossRate, () => members));
  for (const c of clients) c.start();
  sim.schedule(300 + swarm.int(3000), 'view change: member 3 leaves the shard, 4 enters', () => {
    members = MEMBERS_AFTER;
  });
  const leaderConf = (): readonly number[] | undefined => {
    const leader = sim.upIds().map((id) => sim.node(id)!).find((n) => n.core.role === 'leader');
    return leader === undefined ? undefined : [...leader.core.conf.voters].sort();
  };
  // Every 20 ms, the leader (if any) takes the next step toward the view's members.
  const reconfigure = (): void => {
    const leader = sim.upIds().map((id) => sim.node(id)!).find((n) => n.core.role === 'leader');
    if (leader !== undefined && options.flags?.['mutation'] !== 'noReconfigure') {
      const step = nextVoterStep(voterPlanInputOf(leader.core.status(), members));
      if (step?.kind === 'transferLeadership') leader.act((c) => c.transferLeadership(step.node));
      else if (step !== undefined) leader.act((c) => c.proposeConfChange({ op: step.kind, node: step.node }));
    }
    sim.schedule(20, 'reconfigure', reconfigure);
  };
  sim.schedule(20, 'reconfigure', reconfigure);
  const reconfigured = (): boolean => leaderConf()?.join() === MEMBERS_AFTER.join();
  const live = (): boolean => sim.isQuiesced && reconfigured() && clients.every((c) => c.completedAfterQuiesce >= 3);
  sim.run({ untilMs: FAULTS_UNTIL_MS + LIVENESS_MS, stopWhen: live, ...(options.steps ? { stepsMax: options.steps } : {}) });
  const stepsCapped = options.steps !== undefined && sim.steps >= options.steps;
  if (!reconfigured() && !stepsCapped) {
    throw sim.failure(new InvariantViolation('reconfigured',
      `${LIVENESS_MS} ms after faults stopped, the leader's voters are [${leaderConf() ?? 'no leader'}], the view wants [${MEMBERS_AFTER}]`));
  }
  if (!live() && !stepsCapped) {
    throw sim.failure(new InvariantViolation('liveness',
      `${LIVENESS_MS} ms after faults stopped, clients completed [${clients.map((c) => c.completedAfterQuiesce)}] calls`));
  }
  const ops = recorder.history();
  const verdict = checkLinearizable(kvModel, ops, 2_000_000);
  if (verdict.verdict === 'not-linearizable') {
    throw sim.failure(new InvariantViolation('linearizability',
      `not linearizable; the failing key's operations:\n  ${(verdict.failingPartition ?? []).slice(0, 40).join('\n  ')}`));
  }
  return sim.result(
    `calls run ${shard.ranAt.size}, duplicates answered ${shard.duplicatesAnswered}, expired ${shard.expired}, ` +
      `history ${ops.length} ops (${verdict.verdict}), voters ${leaderConf()}, crashes ${sim.stats.crashes}, faults ${sim.stats.faults}, loss ${lossRate}`,
  );
}

