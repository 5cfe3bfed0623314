/**
 * The total restart's decision under the deterministic simulator: the real pure core
 * (src/membership/restart.ts: restartQuorum, restartLeader, restartView, the acceptor steps and
 * RestartProposer, reconcileShard) driven by `RestartSimNode`, a miniature of the restart path of
 * src/runtime/membership-driver.ts. `npm run sim -- restart --seeds N [--flag mutation=singlePhase]`.
 *
 * The run: six nodes were members of the last view R (two shards of three: [1,2,3] and
 * [4,5,6]); every one of them crashed. Each disk holds the view record (R, or for one node on some
 * seeds R − 1: it crashed before recording R, which then only held versions of earlier views), the
 * acceptor state (none at first) and each shard's log: a prefix of the shard's one history, at
 * least as long as the acknowledged part (a write is acknowledged once durable on every member).
 * The nodes come back in a random order at random times, some only after the faults stop;
 * crashes (up to three down), restarts, partitions, loss and duplication run meanwhile; and each
 * seed draws a swarm profile that crashes the restart leader in the middle of its decision:
 * after sending its prepares, part-way through its accepts, or part-way through telling the
 * chosen decision, followed (on half the seeds) by the crash of the nodes it reached.
 *
 * Checked (InvariantViolation fails the seed):
 *  - agreement: every node that adopts a restart decision adopts the same one (its epoch, view
 *    id and members), across all incarnations;
 *  - chosen only: a node adopts only a decision a quorum accepted (not with the mutation);
 *  - no acknowledged write lost: a shard member that finishes reconciling holds every
 *    acknowledged version, and its log is a prefix of the shard's history (nothing invented);
 *  - identical replicas: once faults stop, within LIVENESS_MS every node has adopted the
 *    decision (or, not in its view, learned it) and every member of each shard of the restart
 *    view has reconciled to the identical log.
 *
 * The model leaves out what the membership simulator covers (membership-sim.ts): after adopting,
 * a node runs as a member of the restart view; a later crash of it is a member crash of a running
 * group, so on restart it serves its adopted decision and its reconciled logs.
 *
 * `--flag mutation=singlePhase` is the decision before ballots: the leader decides alone once the
 * quorum is back and tells the others, and a node that holds a decision hands it on. The ava test
 * checks that the agreement check catches it within a few seeds.
 */
import { nodeId, viewId as makeViewId, type NodeId } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import { defaultAllocator, flexibleEvenShards, oneSubgroup } from '../../src/membership/layout.js';
import {
  RestartProposer, acceptorAccept, acceptorPrepare, ballotQuorums, compareInstances, nextBallot, quorumRuleOf, reconcileShard,
  restartLeadStep, restartView, type AcceptorReply, type Ballot, type QuorumRule, type RestartAcceptorState, type RestartInstance,
} from '../../src/membership/restart.js';
import {
  movesToLogView, peerSameId, restartLogRule, type LogSummary, type LogWait, type RestartFrom,
} from '../../src/membership/restart-log.js';
import type { ShardTrim } from '../../src/membership/view-change-core.js';
import { initialView, votersOf } from '../../src/membership/view-change-core.js';
import type { Allocator } from '../../src/membership/layout.js';
import {
  buildHistory, commitIndex, divergentRound, raftConsistent, summaryOf, votersAt, type History, type LogEntry,
} from './restart-history.js';
import { View } from '../../src/membership/view.js';
import type { SeedOptions, SeedResult } from './protocol.js';
import { InvariantViolation, Simulation, type NodeContext, type SimNode } from './simulation.js';

const NODES = [1, 2, 3, 4, 5, 6];
const SHARDS = 2;
const TICK_MS = 10;
const HELLO_EVERY_TICKS = 3;
/** A node heard from within this long counts as back (the driver: 3 s). */
const BACK_MS = 300;
/** Once the quorum is back, the leader waits this long for the others (group.restart_grace_ms). */
const GRACE_MS = 60;
const BALLOT_TIMEOUT_MS = 200;
const FAULTS_UNTIL_MS = 2500;
const LIVENESS_MS = 4000;
const R_ID = 7;
const SLOW_ACCEPT_MS = 150;
const EPOCH = '0';

const allocator = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(SHARDS, 1, 3)) });

/** A restart decision as the simulated nodes carry it (the driver's RestartDecisionRecord). */
interface SimDecision {
  readonly viewId: number;
  readonly fromViewId: number;
  /** The view it restarts from, as `viewKey` names it (two log-derived views may share an id). */
  readonly from: string;
  readonly members: readonly number[];
  /** Per shard, its members in the restart view. */
  readonly shards: readonly (readonly number[])[];
  readonly epoch: string;
}

type Msg =
  | { k: 'hello' | 'wait'; inst: RestartInstance; view: View; log?: LogSummary; sealTrims?: readonly ShardTrim[]; tentative?: true }
  | { k: 'decided'; d: SimDecision }
  | { k: 'prepare'; inst: RestartInstance; b: Ballot }
  | { k: 'accept'; inst: RestartInstance; b: Ballot; d: SimDecision }
  | { k: 'paxos'; b: Ballot; r: AcceptorReply<SimDecision> }
  | { k: 'latest'; shard: number; epoch: string }
  | { k: 'latestIs'; shard: number; epoch: string; kept: number }
  | { k: 'pull'; shard: number; epoch: string; after: number; target: number }
  | { k: 'state'; shard: number; epoch: string; suffix: number[]; after: number };

const key = (d: SimDecision): string => `${d.viewId}/${d.epoch}/[${d.members}]`;
const viewKey = (v: View): string => `${v.id}[${v.memberIds}]`;

type Profile = 'none' | 'afterPrepare' | 'midAccept' | 'midChosen';

/**
 * `--flag newer=<kind>`: views after R that some nodes recorded just before the crash.
 *  - minority: R + 1, recorded by one or two nodes (not a whole shard: it delivered nothing);
 *  - majority: R + 1, recorded by every member of one shard or more (that shard delivered in it);
 *  - chain: R + 2 recorded by one or two nodes on top of a majority-recorded R + 1.
 * `--flag newerLeads`: node 1, the lowest-ranked, is one of the newer record's holders (so it
 * leads the restart once back). `--flag newerRecord` is `newer=minority`.
 */
type Newer = 'minority' | 'majority' | 'chain';

class World {
  nodes: readonly number[] = NODES;
  allocator: Allocator = allocator;
  shardCount = SHARDS;
  /** `--flag history=...`: the membership log the disks hold (undefined: logs are not modelled). */
  membershipLog: History | undefined;
  /** Accepts to the predecessor's members outside the last view are slow (secondWave). */
  slowOutsideView = false;
  /** `history=diverge`: the two views with one id the two sides of the log seal. */
  divergent: { readonly a: View; readonly b: View } | undefined;
  votersCount = 3;
  readonly views = new Map<number, View>();
  /** Per shard, its history: version i is history[i]. */
  readonly history: number[][] = [];
  /** Per shard, how many versions were acknowledged before the crash (on every member). */
  readonly acked: number[] = [];
  readonly chosen = new Set<string>();
  adopted: { key: string; by: number; from: string } | undefined;
  readonly learned = new Set<number>();
  readonly crashAfterActing = new Set<number>();
  /** The newest view that delivered anything (a decision restarting from before it skips it). */
  deliveredViewId = R_ID;
  /** `viewKey` of that view, when it is one of the membership log's (history flags). */
  deliveredKey: string | undefined;
  /** Run once, when the first decision is chosen (newer records may arrive just then). */
  onFirstChosen: (() => void) | undefined;
  readonly reconciled = new Map<string, readonly number[]>();
  profile: Profile = 'none';
  secondCrash = false;
  profileFired = false;
  mutation: string | undefined;
  sim!: Simulation<Msg, RestartSimNode>;
  stats = { ballots: 0, refused: 0, adoptedValues: 0, chosen: 0, adoptions: 0, pulls: 0, leaderCrashes: 0, fromLog: 0, tentative: 0, logWaits: 0 };

  /** A ballot chose `k`: Paxos chooses one decision per epoch (every seed's nodes restart one epoch). */
  onChosen(k: string): void {
    const other = [...this.chosen].find((c) => c !== k);
    if (other !== undefined) throw new InvariantViolation('restart agreement', `two decisions chosen: ${other} and ${k}`);
    this.chosen.add(k);
  }

  /** A node acted on a decision or an acceptance: the swarm profile may crash it now. */
  acted(node: number, what: string): void {
    if (this.crashAfterActing.delete(node)) this.sim.schedule(0, `profile: crash n${node} after ${what}`, () => this.sim.crash(node));
  }

  onAdopt(node: number, d: SimDecision): void {
    this.acted(node, 'adopting');
    const k = key(d);
    this.stats.adoptions++;
    if (this.mutation !== 'singlePhase' && !this.chosen.has(k)) {
      throw new InvariantViolation('chosen only', `n${node} adopts ${k}, which no quorum accepted`);
    }
    if (d.fromViewId < this.deliveredViewId || (d.fromViewId === this.deliveredViewId && this.deliveredKey !== undefined && d.from !== this.deliveredKey)) {
      throw new InvariantViolation('delivered view skipped', `n${node} adopts ${k}, a restart from view ${d.from}, but view ${this.deliveredKey ?? this.deliveredViewId} delivered`);
    }
    if (this.adopted === undefined) this.adopted = { key: k, by: node, from: d.from };
    else if (this.adopted.key !== k) {
      throw new InvariantViolation('restart agreement', `n${node} adopts ${k}, but n${this.adopted.by} adopted ${this.adopted.key}`);
    }
  }

  onReconciled(node: number, shard: number, log: readonly number[]): void {
    const history = this.history[shard]!;
    if (log.length < this.acked[shard]!) {
      throw new InvariantViolation('acknowledged write lost', `n${node} shard ${shard} ends with ${log.length} versions, ${this.acked[shard]} were acknowledged`);
    }
    log.forEach((v, i) => {
      if (history[i] !== v) throw new InvariantViolation('acknowledged write lost', `n${node} shard ${shard} version ${i} is ${v}, not ${history[i]}`);
    });
    this.reconciled.set(`${node}/${shard}`, log);
  }

  /** True if the swarm profile `at` crashes the leader now. */
  fires(at: Profile): boolean {
    return this.profile === at && !this.profileFired && !this.sim.isQuiesced;
  }

  /** How many of `n` recipients a leader that crashes part-way reaches: mostly 1 or 2. */
  partWay(n: number): number {
    return Math.min(n, this.sim.random.int(4) === 0 ? this.sim.random.int(n + 1) : 1 + this.sim.random.int(2));
  }

  /** The swarm profile: crash the leader in the middle of its decision (once per run). */
  maybeCrashLeader(node: RestartSimNode, at: Profile, recipients: readonly number[]): void {
    if (!this.fires(at)) return;
    this.profileFired = true;
    this.stats.leaderCrashes++;
    this.sim.schedule(0, `profile ${at}: crash leader n${node.id}`, () => this.sim.crash(node.id));
    this.sim.schedule(50 + this.sim.random.int(350), `profile: restart n${node.id}`, () => this.sim.restart(node.id));
    // The others (that ever started) come back meanwhile, so that a quorum may decide without them.
    for (const id of this.nodes) {
      if (id !== node.id && !recipients.includes(id) && !this.sim.isUp(id) && this.sim.incarnation(id) >= 0) {
        this.sim.schedule(1 + this.sim.random.int(30), `profile: restart n${id}`, () => this.sim.restart(id));
      }
    }
    // Then the nodes it reached: each as soon as it acted on what it got (adopted it, or, for an
    // accept, persisted its acceptance), or after 30–50 ms.
    if (this.secondCrash) {
      for (const other of recipients) {
        this.crashAfterActing.add(other);
        this.sim.schedule(30 + this.sim.random.int(20), `profile: crash n${other}`, () => {
          if (this.crashAfterActing.delete(other)) this.sim.crash(other);
        });
        this.sim.schedule(300 + this.sim.random.int(600), `profile: restart n${other}`, () => this.sim.restart(other));
      }
    }
  }
}

interface Reconciling {
  readonly shard: number;
  kept: number;
  answers: Map<number, number>;
  askedAtMs: number;
  done: boolean;
}

class RestartSimNode implements SimNode<Msg> {
  private last: View;
  private lastEpoch: string;
  private acceptor: RestartAcceptorState<SimDecision> | undefined;
  private decided: SimDecision | undefined;
  private adopted: SimDecision | undefined;
  /**
   * The decision this node hands on to hellos and ballots: once it adopted it durably (or, not in
   * its view, learned it). The driver hands a chosen decision on as soon as it learns it, which
   * only narrows the window the mutation needs; the miniature keeps it wide.
   */
  private handsOn: SimDecision | undefined;
  private readonly back = new Map<number, number>();
  private quorumSinceMs: number | undefined;
  private proposer: RestartProposer<SimDecision> | undefined;
  private ballotAtMs = 0;
  private nextRound = 1;
  private ticks = 0;
  /** Replies and self-steps waiting for their disk batch. */
  private readonly waiting = new Map<number, (() => void)[]>();
  private readonly logs = new Map<number, number[]>();
  private readonly reconciling = new Map<number, Reconciling>();
  /** `--flag history`: this node's membership log summary, and those heard in hellos. */
  private readonly ownLog: LogSummary | undefined;
  private readonly summaries = new Map<number, LogSummary>();
  private logWait: LogWait | undefined;
  /** `last` is a view only a log seals, by entries not known committed (restart-log.ts). */
  private tentative = false;
  private readonly slowSends: { atMs: number; to: number; msg: Msg }[] = [];
  /** `last` is a view only a log seals: the trims of the round that sealed it (restart-log.ts RestartFrom). */
  private sealTrims: readonly ShardTrim[] | undefined;

  constructor(readonly ctx: NodeContext<Msg>, private readonly world: World) {
    const record = ctx.disk.get<{ viewId: number; epoch: string }>('record')!;
    // (With history flags, world.views holds the view of each id that a node may have recorded.)
    this.last = world.views.get(record.viewId)!;
    this.lastEpoch = record.epoch;
    this.acceptor = ctx.disk.get('acceptor');
    this.adopted = ctx.disk.get('adopted');
    this.decided = this.adopted;
    this.handsOn = this.adopted;
    for (let s = 0; s < world.shardCount; s++) this.logs.set(s, [...(ctx.disk.get<number[]>(`shard:${s}`) ?? [])]);
    const h = world.membershipLog;
    if (h !== undefined) {
      const at = h.views.findIndex((v) => v.id === this.last.id);
      const log = ctx.disk.get<readonly LogEntry[]>('mlog') ?? [];
      this.ownLog = summaryOf({
        history: h, length: log.length, log, commit: ctx.disk.get<number>('commit') ?? 0, epoch: this.lastEpoch,
        record: this.last, recordSealIndex: h.seals[at]!, allocator: world.allocator, votersCount: world.votersCount,
      });
      this.summaries.set(ctx.id, this.ownLog);
    }
    if (this.adopted !== undefined) this.startReconciling();
  }

  get id(): number {
    return this.ctx.id;
  }

  private get instance(): RestartInstance {
    return { viewId: this.last.id, epoch: this.lastEpoch };
  }

  /** The quorum rule of the last view's predecessor, which its record carries (MembershipRecord `previous`). */
  private get previous(): QuorumRule | undefined {
    const before = this.world.views.get(this.last.id - 1);
    return before !== undefined ? quorumRuleOf(before) : undefined;
  }

  private afterSync(fn: () => void): void {
    const token = this.ctx.disk.sync();
    const list = this.waiting.get(token) ?? [];
    list.push(fn);
    this.waiting.set(token, list);
  }

  diskSynced(token: number): void {
    for (const [t, fns] of [...this.waiting].sort((a, b) => a[0] - b[0])) {
      if (t > token) break;
      this.waiting.delete(t);
      for (const fn of fns) fn();
    }
  }

  tick(): void {
    this.ticks++;
    const now = this.ctx.nowMs();
    while (this.slowSends.length > 0 && this.slowSends[0]!.atMs <= now) {
      const { to, msg } = this.slowSends.shift()!;
      this.ctx.send(to, msg);
    }
    if (this.adopted !== undefined) {
      for (const r of this.reconciling.values()) if (!r.done && now - r.askedAtMs > 100) this.askLatest(r);
      return;
    }
    if (this.decided !== undefined) return;
    if (this.ticks % HELLO_EVERY_TICKS === 0) {
      for (const m of this.acceptors()) if (Number(m) !== this.id) this.ctx.send(Number(m), this.hello('hello'));
    }
    this.applyLogRule(now);
    this.lead(now);
  }

  /** What this node restarts from (restart-log.ts RestartFrom). */
  private get from(): RestartFrom {
    return { view: this.last, sealTrims: this.sealTrims };
  }

  /** Moves to another view to restart from: a ballot of the one before is dropped. */
  private moveTo(view: View, epoch: string): void {
    this.last = view;
    this.lastEpoch = epoch;
    this.quorumSinceMs = undefined;
    this.proposer = undefined;
  }

  private backSet(now: number): Set<NodeId> {
    const set = new Set<NodeId>([nodeId(this.id)]);
    for (const [n, at] of this.back) if (now - at < BACK_MS) set.add(nodeId(n));
    return set;
  }

  private hello(k: 'hello' | 'wait'): Msg {
    return {
      k, inst: this.instance, view: this.last, ...(this.ownLog !== undefined ? { log: this.ownLog } : {}),
      ...(this.sealTrims !== undefined ? { sealTrims: this.sealTrims } : {}), ...(this.tentative ? { tentative: true } : {}),
    };
  }

  /**
   * The membership-log rule (restart-log.ts; the driver's applyLogRule): what the restart waits
   * for, and a move to the newest view the most up-to-date log back seals. `mutation=noLogRule`
   * is the restart before it (records only).
   */
  private applyLogRule(now: number): void {
    if (this.world.membershipLog === undefined || this.world.mutation === 'noLogRule') return;
    const rule = restartLogRule({
      summaries: this.summaries, back: new Set([...this.backSet(now)].map(Number)), epoch: this.lastEpoch,
      recordVoters: votersOf(this.last, this.world.votersCount).map(Number), required: true,
    });
    this.logWait = rule.waiting;
    const newest = rule.newest;
    // `mutation=firstSeal`: a node stays in the first view of an id it heard of (here and in hellos).
    if (newest === undefined || (this.world.mutation === 'firstSeal' ? newest.view.id <= this.last.id : !movesToLogView(rule, this.from))) return;
    this.ctx.trace(`n${rule.sealedBy}'s log seals ${viewKey(newest.view)}${rule.committed ? '' : ' (not known committed)'}: restart from it`);
    this.world.stats.fromLog++;
    if (!rule.committed) this.world.stats.tentative++;
    this.last = newest.view;
    this.sealTrims = newest.trims;
    this.tentative = !rule.committed;
    this.quorumSinceMs = undefined;
    this.proposer = undefined;
  }

  /** The restart leader's part (decideRestart in the driver). */
  private lead(now: number): void {
    const back = this.backSet(now);
    // `mutation=noTentative` drops the tentative rule's wait for a quorum of the predecessor too.
    const step = restartLeadStep({
      view: this.last, previous: this.previous, back, self: nodeId(this.id), nowMs: now, quorumSinceMs: this.quorumSinceMs, graceMs: GRACE_MS,
      log: this.logWait, tentative: this.tentative && this.world.mutation !== 'noTentative',
    });
    if (step.kind === 'wait' && this.logWait !== undefined && this.ticks % 50 === 0) this.world.stats.logWaits++;
    if (step.kind === 'follow') this.proposer = undefined;
    else this.quorumSinceMs = step.quorumSinceMs;
    if (step.kind !== 'decide') return;
    if (this.world.mutation === 'singlePhase') {
      const d = this.fresh(back);
      this.ctx.trace(`decides alone ${key(d)}`);
      this.world.chosen.add(key(d));
      this.tellChosen(d);
      return;
    }
    if (this.proposer !== undefined && now - this.ballotAtMs < BALLOT_TIMEOUT_MS) return;
    const inst = this.instance;
    const b = nextBallot(this.acceptor, inst, this.nextRound, this.id);
    this.nextRound = b.round + 1;
    // `mutation=noTentative`: a tentative view's acceptances need no quorum of its predecessor.
    const tentative = this.tentative && this.world.mutation !== 'noTentative';
    const p = new RestartProposer<SimDecision>(inst, b, ballotQuorums(quorumRuleOf(this.last), this.previous, tentative),
      () => this.fresh(this.backSet(this.ctx.nowMs())));
    this.proposer = p;
    this.ballotAtMs = now;
    this.world.stats.ballots++;
    this.ctx.trace(`ballot ${b.round}.${b.node} for ${inst.viewId}`);
    const msg: Msg = { k: 'prepare', inst, b };
    this.acceptLocally(msg);
    const sent: number[] = [];
    for (const m of this.acceptors()) {
      if (Number(m) === this.id || !back.has(m)) continue;
      this.ctx.send(Number(m), msg);
      sent.push(Number(m));
    }
    this.world.maybeCrashLeader(this, 'afterPrepare', sent);
  }

  /**
   * Second-wave seeds (secondWave): the links to the predecessor's members outside the last view
   * are slow, so an accept reaches them SLOW_ACCEPT_MS later (unless this node crashes first).
   */
  private sendAccept(to: number, accept: Msg): void {
    if (!this.world.slowOutsideView || this.last.isMember(nodeId(to))) this.ctx.send(to, accept);
    else this.slowSends.push({ atMs: this.ctx.nowMs() + SLOW_ACCEPT_MS, to, msg: accept });
  }

  /**
   * Whom a hello and a ballot go to: the last view's members and its predecessor's (the driver's
   * runBallot and restart hellos). Two views a log seals under one id have one predecessor: their
   * leaders hear each other (and each other's logs) through it.
   */
  private acceptors(): NodeId[] {
    return [...new Set([...this.last.memberIds, ...(this.previous?.members ?? []).map((m) => nodeId(m))])];
  }

  private fresh(back: ReadonlySet<NodeId>): SimDecision {
    const addresses = new Map<NodeId, string>();
    for (const n of back) if (this.last.isMember(n)) addresses.set(n, `sim:${n}`);
    const view = restartView(this.last, addresses, this.world.allocator);
    const shards = view.layout.types[0]!.subgroups[0]!.shards.map((s) => s.members.map(Number));
    return { viewId: view.id, fromViewId: this.last.id, from: viewKey(this.last), members: view.memberIds.map(Number), shards, epoch: `${view.id}-${this.id}-${this.ctx.nowMs()}` };
  }

  /** This node as an acceptor of its own ballot: the answer counts once persisted. */
  private acceptLocally(msg: Extract<Msg, { k: 'prepare' | 'accept' }>): void {
    this.answerPaxos(msg, (reply) => this.onPaxos(this.id, reply));
  }

  private answerPaxos(msg: Extract<Msg, { k: 'prepare' | 'accept' }>, reply: (r: Msg) => void): void {
    if (this.decided !== undefined) {
      if (this.handsOn !== undefined) reply({ k: 'decided', d: this.handsOn });
      return;
    }
    // `mutation=perInstance`: the earlier acceptor, which started over in each newer instance.
    const state = this.world.mutation === 'perInstance' && this.acceptor !== undefined &&
      compareInstances(this.acceptor.instance, msg.inst) < 0 ? undefined : this.acceptor;
    // `mutation=ignoreNewer`: an acceptor that does not refuse an older instance than its record
    // (and, below, a node that does not move to a newer record it hears of).
    const own = this.world.mutation === 'ignoreNewer' ? msg.inst : this.instance;
    const step = msg.k === 'prepare'
      ? acceptorPrepare(state, own, msg.inst, msg.b)
      : acceptorAccept(state, own, msg.inst, msg.b, msg.d);
    this.acceptor = step.state;
    const out: Msg = { k: 'paxos', b: msg.b, r: step.reply };
    if (!step.persist) {
      reply(out);
      return;
    }
    this.ctx.disk.put('acceptor', step.state);
    this.afterSync(() => {
      reply(out);
      if (msg.k === 'accept') this.world.acted(this.id, 'accepting');
    });
  }

  private onPaxos(from: number, msg: Msg): void {
    if (msg.k === 'decided') {
      this.learn(msg.d);
      return;
    }
    if (msg.k !== 'paxos') return;
    const p = this.proposer;
    if (p === undefined || this.decided !== undefined || p.ballot.round !== msg.b.round || p.ballot.node !== msg.b.node) return;
    const step = p.onReply(from, msg.r);
    switch (step.kind) {
      case 'wait':
        return;
      case 'retry':
        this.world.stats.refused++;
        this.nextRound = Math.max(this.nextRound, step.nextRound);
        this.proposer = undefined;
        return;
      case 'accept': {
        if (step.adopted) this.world.stats.adoptedValues++;
        const accept: Msg = { k: 'accept', inst: p.instance, b: p.ballot, d: step.decision };
        this.acceptLocally(accept);
        const targets = this.acceptors().map(Number).filter((m) => m !== this.id && this.backSet(this.ctx.nowMs()).has(nodeId(m)));
        const cut = this.world.fires('midAccept') ? this.world.partWay(targets.length) : targets.length;
        targets.slice(0, cut).forEach((m) => this.sendAccept(m, accept));
        if (cut < targets.length) this.world.maybeCrashLeader(this, 'midAccept', targets.slice(0, cut));
        return;
      }
      case 'chosen':
        this.world.stats.chosen++;
        this.world.onFirstChosen?.();
        this.world.onFirstChosen = undefined;
        this.world.onChosen(key(step.decision));
        this.ctx.trace(`chosen ${key(step.decision)}`);
        this.tellChosen(step.decision);
    }
  }

  /** Tells every member of the decision's view (the leader may crash part-way: swarm profile). */
  private tellChosen(d: SimDecision): void {
    const targets = d.members.filter((m) => m !== this.id);
    const midChosen = this.world.fires('midChosen');
    const cut = midChosen ? this.world.partWay(targets.length) : targets.length;
    targets.slice(0, cut).forEach((m) => this.ctx.send(m, { k: 'decided', d }));
    if (midChosen) {
      this.world.maybeCrashLeader(this, 'midChosen', targets.slice(0, cut));
      return; // crashes at +0: adopts nothing itself
    }
    this.learn(d);
  }

  /** A chosen decision: adopt it (persisted) if this node is in its view, else join later. */
  private learn(d: SimDecision): void {
    if (this.decided !== undefined) return;
    this.decided = d;
    if (!d.members.includes(this.id)) {
      this.handsOn = d;
      this.world.learned.add(this.id);
      return;
    }
    this.ctx.disk.put('adopted', d);
    this.afterSync(() => {
      this.world.onAdopt(this.id, d);
      this.adopted = d;
      this.handsOn = d;
      this.startReconciling();
    });
  }

  private startReconciling(): void {
    this.world.learned.add(this.id);
    const d = this.adopted!;
    d.shards.forEach((members, shard) => {
      if (!members.includes(this.id) || this.reconciling.has(shard)) return;
      const done = this.ctx.disk.get<string>(`reconciled:${shard}`) === d.epoch;
      const r: Reconciling = { shard, kept: this.logs.get(shard)!.length, answers: new Map(), askedAtMs: -Infinity, done };
      this.reconciling.set(shard, r);
      if (done) this.world.onReconciled(this.id, shard, this.logs.get(shard)!);
      else if (members.length === 1) this.finish(r); // alone in its shard: nobody to ask
      else this.askLatest(r);
    });
  }

  private askLatest(r: Reconciling): void {
    r.askedAtMs = this.ctx.nowMs();
    const d = this.adopted!;
    for (const m of d.shards[r.shard]!) if (m !== this.id) this.ctx.send(m, { k: 'latest', shard: r.shard, epoch: d.epoch });
  }

  private onLatest(from: number, shard: number, kept: number): void {
    const r = this.reconciling.get(shard);
    if (r === undefined || r.done) return;
    r.answers.set(from, kept);
    const members = this.adopted!.shards[shard]!.filter((m) => m !== this.id);
    if (!members.every((m) => r.answers.has(m))) return;
    const plan = reconcileShard(BigInt(r.kept), members.map((m) => ({ node: nodeId(m), kept: BigInt(r.answers.get(m)!) })));
    if (plan.kind === 'current') {
      this.finish(r);
      return;
    }
    this.world.stats.pulls++;
    this.ctx.send(Number(plan.from), { k: 'pull', shard, epoch: this.adopted!.epoch, after: Number(plan.after), target: Number(plan.target) });
  }

  private finish(r: Reconciling): void {
    this.ctx.disk.put(`reconciled:${r.shard}`, this.adopted!.epoch);
    this.afterSync(() => {
      if (r.done) return;
      r.done = true;
      this.world.onReconciled(this.id, r.shard, this.logs.get(r.shard)!);
    });
  }

  deliver(from: number, msg: Msg): void {
    switch (msg.k) {
      case 'hello':
      case 'wait': {
        if (this.decided !== undefined) {
          if (this.handsOn !== undefined) this.ctx.send(from, { k: 'decided', d: this.handsOn });
          return;
        }
        this.back.set(from, this.ctx.nowMs());
        if (msg.log !== undefined) this.summaries.set(from, msg.log);
        if (msg.inst.viewId === this.last.id && this.world.mutation !== 'firstSeal' && peerSameId(this.from, { view: msg.view, tentative: msg.tentative === true }) === 'adopt') {
          // A record or known-committed seal of this view's id: it wins over this node's log's.
          if (msg.view.memberIds.join() !== this.last.memberIds.join()) this.moveTo(msg.view, msg.inst.epoch);
          this.last = msg.view;
          this.sealTrims = msg.sealTrims;
          this.tentative = false;
        }
        if (msg.inst.viewId > this.last.id && this.world.mutation !== 'ignoreNewer') {
          this.moveTo(msg.view, msg.inst.epoch);
          this.sealTrims = msg.sealTrims;
          this.tentative = msg.tentative === true;
        }
        if (msg.k === 'hello') this.ctx.send(from, this.hello('wait'));
        return;
      }
      case 'decided':
        this.learn(msg.d);
        return;
      case 'prepare':
      case 'accept':
        this.answerPaxos(msg, (reply) => this.ctx.send(from, reply));
        return;
      case 'paxos':
        this.onPaxos(from, msg);
        return;
      case 'latest': {
        const r = this.reconciling.get(msg.shard);
        if (this.adopted?.epoch !== msg.epoch || r === undefined) return;
        this.ctx.send(from, { k: 'latestIs', shard: msg.shard, epoch: msg.epoch, kept: r.kept });
        return;
      }
      case 'latestIs':
        if (this.adopted?.epoch === msg.epoch) this.onLatest(from, msg.shard, msg.kept);
        return;
      case 'pull': {
        const log = this.logs.get(msg.shard)!;
        if (this.adopted?.epoch !== msg.epoch || log.length < msg.target) return;
        this.ctx.send(from, { k: 'state', shard: msg.shard, epoch: msg.epoch, after: msg.after, suffix: log.slice(msg.after, msg.target) });
        return;
      }
      case 'state': {
        const r = this.reconciling.get(msg.shard);
        const log = this.logs.get(msg.shard)!;
        if (this.adopted?.epoch !== msg.epoch || r === undefined || r.done || log.length !== msg.after) return;
        log.push(...msg.suffix);
        this.ctx.disk.put(`shard:${msg.shard}`, [...log]);
        this.finish(r);
      }
    }
  }
}

function describe(m: Msg): string {
  switch (m.k) {
    case 'hello':
    case 'wait':
      return `${m.k} ${m.inst.viewId}`;
    case 'decided':
      return `decided ${key(m.d)}`;
    case 'prepare':
      return `prepare ${m.inst.viewId} ${m.b.round}.${m.b.node}`;
    case 'accept':
      return `accept ${m.inst.viewId} ${m.b.round}.${m.b.node} ${key(m.d)}`;
    case 'paxos':
      return `paxos ${m.b.round}.${m.b.node} ${m.r.kind}${m.r.kind === 'promise' && m.r.accepted ? ` had ${key(m.r.accepted.decision)}` : ''}`;
    case 'latest':
      return `latest ${m.shard}`;
    case 'latestIs':
      return `latestIs ${m.shard} ${m.kept}`;
    case 'pull':
      return `pull ${m.shard} ${m.after}..${m.target}`;
    case 'state':
      return `state ${m.shard} +${m.suffix.length}`;
  }
}

export function runSeed(seed: number, options: SeedOptions = {}): SeedResult {
  const world = new World();
  world.mutation = options.flags?.['mutation'] as string | undefined;
  const swarm = new SeededRandom(seed ^ 0x7e57a7);
  world.profile = (['none', 'afterPrepare', 'midAccept', 'midChosen', 'midChosen'] as const)[swarm.int(5)]!;
  world.secondCrash = swarm.int(2) === 0;
  const kind = (options.flags?.['newerRecord'] !== undefined ? 'minority' : options.flags?.['newer']) as Newer | undefined;
  // With newer records, half the seeds bring them back just as the first decision is chosen, by a
  // leader that crashes while telling it, and the nodes it told crash too: the others have not
  // adopted it when they hear of the newer record (the case the header of restart.ts argues).
  const onChosen = kind !== undefined && kind !== 'majority' && swarm.int(2) === 0;
  if (onChosen) {
    world.profile = 'midChosen';
    world.secondCrash = true;
  }
  const historyKind = options.flags?.['history'] as HistoryKind | undefined;
  if (historyKind !== undefined) {
    world.nodes = HISTORY_NODES;
    world.shardCount = historyKind === 'scenario' || swarm.int(3) !== 0 ? 1 : 2;
    world.allocator = defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(world.shardCount, 1, HISTORY_NODES.length)) });
  }
  const founders = world.nodes.map((i) => ({ id: nodeId(i), address: `sim:${i}` }));
  const base = initialView(founders, world.allocator);
  for (const id of [R_ID - 1, R_ID, R_ID + 1, R_ID + 2]) {
    world.views.set(id, new View({ id: makeViewId(id), members: base.members, joined: [], departed: [], failed: [], layout: base.layout }));
  }
  const R = world.views.get(R_ID)!;
  const sim = new Simulation<Msg, RestartSimNode>({
    seed,
    nodeIds: world.nodes,
    startIds: [],
    createNode: (ctx) => new RestartSimNode(ctx, world),
    network: { delayMsMin: 1, delayMsMax: 12 },
    tickMs: TICK_MS,
    diskLatencyMs: [1, 6],
    keepUnreportedRate: 0.5,
    describeMessage: describe,
    checkers: [],
    recentMax: Number(options.flags?.['recent'] ?? 60),
    faults: {
      untilMs: FAULTS_UNTIL_MS, meanIntervalMs: 150, crashedMax: 3, lossRateMax: 0.3, duplicateRateMax: 0.2,
      // Seeds whose leader crashes part-way, and then the nodes it reached, crash nothing else:
      // those nodes stay down until the profile restarts them.
      weights: world.profile.startsWith('mid') && world.secondCrash
        ? { partition: 1, isolate: 1, heal: 3, lossy: 3 }
        : { crash: 3, restart: 4, partition: 1, isolate: 1, heal: 3, lossy: 3 },
    },
  });
  world.sim = sim;
  if (historyKind !== undefined) return runHistory(world, sim, swarm, historyKind, options);
  // The disks as the crash left them.
  const r = sim.random;
  const stale = swarm.int(3) === 0 ? 1 + r.int(NODES.length) : undefined;
  const shards = R.layout.types[0]!.subgroups[0]!.shards.map((s) => s.members.map(Number));
  shards.forEach((members, shard) => {
    const length = 3 + r.int(8);
    world.history[shard] = Array.from({ length }, (_, i) => shard * 1000 + i);
    const held = new Map(members.map((m) => [m, m === stale ? r.int(3) : r.int(length + 1)]));
    world.acked[shard] = Math.min(...held.values());
    for (const [m, n] of held) {
      sim.disk(m).put(`shard:${shard}`, world.history[shard]!.slice(0, n));
    }
  });
  // Newer records (`--flag newer=...`, see Newer): the case the header of
  // src/membership/restart.ts argues; they come back part-way through, or early when one leads.
  const records = new Map(NODES.map((id) => [id, id === stale ? R_ID - 1 : R_ID]));
  const newerHolders = new Set<number>();
  if (kind !== undefined) {
    const candidates = NODES.filter((id) => id !== stale);
    const pick = (n: number, from: readonly number[]): number[] => {
      const pool = [...from];
      const out: number[] = [];
      while (out.length < n && pool.length > 0) out.push(pool.splice(swarm.int(pool.length), 1)[0]!);
      return out;
    };
    const few = (): number[] => {
      // One or two nodes, never a whole shard, node 1 among them with newerLeads.
      const first = options.flags?.['newerLeads'] !== undefined && stale !== 1 ? 1 : pick(1, candidates)[0]!;
      const shardOf = shards.find((m) => m.includes(first))!;
      const second = swarm.int(2) === 0 ? pick(1, candidates.filter((id) => id !== first && !(shardOf.length === 2 && shardOf.includes(id)))) : [];
      return [first, ...second];
    };
    if (kind === 'majority' || kind === 'chain') {
      // Every member of one shard (or both) recorded R + 1 and it delivered there.
      const full = shards[swarm.int(shards.length)]!;
      const plus = swarm.int(3) === 0 ? NODES : [...full, ...pick(swarm.int(3), NODES.filter((id) => !full.includes(id)))];
      for (const id of plus) records.set(id, R_ID + 1);
      world.deliveredViewId = R_ID + 1;
    }
    const top = kind === 'chain' ? R_ID + 2 : R_ID + 1;
    for (const id of kind === 'majority' ? [] : few()) {
      records.set(id, top);
      newerHolders.add(id);
    }
    if (kind === 'majority') for (const id of records.keys()) if (records.get(id) === R_ID + 1 && swarm.int(2) === 0) newerHolders.add(id);
    if (options.flags?.['newerLeads'] !== undefined && kind === 'majority' && stale !== 1) {
      records.set(1, R_ID + 1);
      newerHolders.add(1);
    }
  }
  for (const id of NODES) {
    const disk = sim.disk(id);
    disk.put('record', { viewId: records.get(id)!, epoch: EPOCH });
    disk.completeSync(disk.sync());
  }
  // Come back in a random order; one or two only after the faults stop.
  // (Seeds whose leader crashes part-way bring every node back early: a second quorum without
  // the nodes it reached can then form.)
  const early = world.profile === 'midChosen' || world.profile === 'midAccept';
  const late = new Set(NODES.filter(() => r.int(4) === 0).slice(0, early ? 0 : 2));
  // Newer records come back part-way through, or (onChosen) as the first decision is chosen.
  for (const id of NODES) {
    if (onChosen && newerHolders.has(id) && swarm.int(4) !== 0) continue;
    const at = newerHolders.has(id) && swarm.int(3) !== 0 ? 300 + swarm.int(1500) : late.has(id) ? FAULTS_UNTIL_MS + 50 + r.int(500) : r.int(early ? 300 : 1500);
    sim.schedule(at, `start n${id}`, () => sim.start(id));
  }
  if (onChosen) {
    world.onFirstChosen = () => {
      for (const id of newerHolders) {
        if (sim.incarnation(id) < 0) sim.schedule(swarm.int(15), `start n${id} (newer record, as the decision is chosen)`, () => sim.start(id));
      }
    };
    // Nobody decided by the time the faults stop: they come back anyway.
    for (const id of newerHolders) sim.schedule(FAULTS_UNTIL_MS, `start n${id} if not yet`, () => { if (sim.incarnation(id) < 0) sim.start(id); });
  }
  return finish(world, sim, options, () =>
    `profile ${world.profile}${world.secondCrash ? '+1' : ''}, stale ${stale ?? '-'}, ` +
    `records ${NODES.map((id) => records.get(id)! - R_ID).join(',')}`);
}

/** Runs the seed to the end: liveness, identical replicas, the result line (`describe` starts it). */
function finish(world: World, sim: Simulation<Msg, RestartSimNode>, options: SeedOptions, describe: () => string): SeedResult {
  const live = (): boolean => {
    if (!sim.isQuiesced || sim.nowMs < FAULTS_UNTIL_MS + 600) return false;
    if (!world.nodes.every((id) => world.learned.has(id))) return false;
    const d = [...sim.upIds()].map((id) => sim.node(id)!).find((n) => n['adopted'] !== undefined)?.['adopted'];
    if (d === undefined) return false;
    return d.shards.every((members, s) => members.every((m) => world.reconciled.has(`${m}/${s}`)));
  };
  sim.run({ untilMs: FAULTS_UNTIL_MS + LIVENESS_MS, stopWhen: live, ...(options.steps ? { stepsMax: options.steps } : {}) });
  const stepsCapped = options.steps !== undefined && sim.steps >= options.steps;
  if (!live() && !stepsCapped) {
    throw sim.failure(new InvariantViolation('liveness', `${LIVENESS_MS} ms after the faults stopped: learned [${[...world.learned].sort()}], ` +
      `adopted ${world.adopted?.key ?? 'nothing'}, reconciled [${[...world.reconciled.keys()].sort()}]`));
  }
  if (options.flags?.['dump'] !== undefined) throw sim.failure(new Error('--flag dump: the run passed; its events follow'));
  if (!stepsCapped) {
    // Identical replicas: every member of each shard of the restart view ends with one log.
    const d = sim.node(sim.upIds().find((id) => sim.node(id)!['adopted'] !== undefined)!)!['adopted']!;
    d.shards.forEach((members, s) => {
      const logs = members.map((m) => sim.node(m)!['logs'].get(s)!.join(','));
      if (new Set(logs).size > 1) {
        throw sim.failure(new InvariantViolation('identical replicas', `shard ${s}: ${members.map((m, i) => `n${m} [${logs[i]}]`).join(', ')}`));
      }
    });
  }
  const s = world.stats;
  return sim.result(
    `${describe()}, ballots ${s.ballots}, refused ${s.refused}, ` +
      `re-proposed ${s.adoptedValues}, chosen ${s.chosen}, adoptions ${s.adoptions}, pulls ${s.pulls}, leader crashes ${s.leaderCrashes}, ` +
      `crashes ${sim.stats.crashes}, faults ${sim.stats.faults}` +
      (world.membershipLog !== undefined ? `, restarts from a log's view ${s.fromLog} (tentative ${s.tentative}), log waits ${s.logWaits}` : '') +
      `; decided ${world.adopted?.key ?? '-'}` +
      (world.divergent !== undefined ? ` from side ${world.adopted?.from === viewKey(world.divergent.a) ? 'a' : world.adopted?.from === viewKey(world.divergent.b) ? 'b' : 'neither'}` : ''),
  );
}

/**
 * `--flag history=scenario|shrink|diverge`: the disks hold a membership log (restart-history.ts)
 * of view changes that each removed up to nearly half the view, from R (7 nodes, view 7).
 *  - scenario: the hole of restart-log.ts's header: R = [1..7], R + 1 = [1, 2, 3, 4], R + 2 =
 *    [1, 2, 3]; node 4 acknowledged R's wedge but crashed before recording R + 1; nodes 1, 2, 3
 *    recorded R + 2 (it delivered). Nodes 4..7 (records of R, a quorum of R) come back first.
 *  - shrink: one to three rounds of random removals (mostly the most a round may remove); after
 *    a round, on three seeds in four, a node that acknowledged the wedge but did not record the
 *    next view (removed in the round after); one shard (two on a third of the seeds); 3 to 5
 *    voters; random log lengths Raft could leave (each conf entry and each seal committed
 *    before the next: raftConsistent); records only of committed seals; the last seal committed
 *    on two seeds in three (else by chance: then it may be sealed by uncommitted entries only).
 *    The nodes with the newest records come back late on three seeds in four.
 *  - diverge: zero or one committed round, then a last round whose log diverged
 *    (restart-history.ts divergentRound): its change committed; a leader of term T + 1 appended
 *    one more removal, the acknowledgements and the trims on a minority of the voters (side a);
 *    a leader of term T + 2, elected without them, appended a different removal (or none) and
 *    its own acknowledgements and trims, overwriting side a's where it reached (side b; on a
 *    third of the seeds it reached a majority, so it committed and its members may record it).
 *    Each side's log seals a different view with the same id. The nodes holding side b come
 *    back late on half the seeds, so that side a's view is tried first.
 * Checked as always, with `delivered view skipped`: a shard of the newest view whose members all
 * recorded it delivered there (a decision from another view with its id skips it too).
 * `--flag mutation=noLogRule` restarts from records only; `mutation=noTentative` drops the
 * tentative accept quorum (a view only an uncommitted seal makes: restart-log.ts).
 */
type HistoryKind = 'scenario' | 'shrink' | 'diverge';
const HISTORY_NODES = [1, 2, 3, 4, 5, 6, 7];

/** The disks a history flag leaves: the log's views, each node's log, commit and record. */
interface Disks {
  readonly h: History;
  readonly logs: ReadonlyMap<number, readonly LogEntry[]>;
  readonly commits: ReadonlyMap<number, number>;
  /** Index in `h.views` of the view each node recorded. */
  readonly records: ReadonlyMap<number, number>;
  /** Nodes that come back late (after 500 ms). */
  readonly late: ReadonlySet<number>;
  /** `history=diverge` on half the seeds: the nodes holding side b's entries, for a second crash wave (see runHistory). */
  readonly wave?: ReadonlySet<number>;
  readonly describe: string;
}

/** Removals of `rounds` rounds from `members`, mostly the most a round may remove; `dead` as in shrink. */
function shrinkRemovals(swarm: SeededRandom, members: number[], rounds: number, dead: (number | undefined)[], deadRate: number): number[][] {
  const removals: number[][] = [];
  for (let j = 0; j < rounds && members.length >= 3; j++) {
    const most = Math.floor((members.length - 1) / 2);
    const count = swarm.int(3) === 0 ? 1 + swarm.int(most) : most;
    const removed = dead[j - 1] !== undefined ? [dead[j - 1]!] : [];
    while (removed.length < count) {
      const pool = members.filter((m) => !removed.includes(m));
      removed.push(pool[swarm.int(pool.length)]!);
    }
    removals.push(removed);
    members = members.filter((m) => !removed.includes(m));
    const next = j + 1 < rounds && members.length >= 3 && swarm.int(deadRate) !== 0;
    dead.push(next ? members[swarm.int(members.length)] : undefined);
  }
  return removals;
}

/** The disks of `history=scenario|shrink`: prefixes of one log. */
function linearDisks(world: World, swarm: SeededRandom, r: SeededRandom, kind: 'scenario' | 'shrink'): Disks {
  const nodes = HISTORY_NODES;
  const first = world.views.get(R_ID)!;
  /** dead[j]: a survivor of round j that acknowledged view j's wedge but did not record view j + 1. */
  const dead: (number | undefined)[] = [];
  let removals: number[][];
  if (kind === 'scenario') {
    removals = [[5, 6, 7], [4]];
    dead.push(4, undefined);
  } else {
    removals = shrinkRemovals(swarm, [...nodes], 1 + swarm.int(3), dead, 4);
  }
  world.votersCount = kind === 'scenario' ? 3 + 2 * swarm.int(2) : 3 + swarm.int(3);
  const h = buildHistory({ first, removals, allocator: world.allocator, votersCount: world.votersCount, newTermAt: () => swarm.int(2) === 0 });
  const final = h.views.length - 1;
  // Log lengths Raft could leave, the last seal committed when it must be.
  const everVoter = new Set(h.log.flatMap((e) => (e.kind === 'conf' ? e.voters : [])));
  const lengths = raftConsistent(h, new Map(nodes.map((n) => [n, everVoter.has(n) ? r.int(h.log.length + 1) : 0])), (k) => r.int(k));
  if (kind === 'scenario' || swarm.int(3) !== 0) {
    while (commitIndex(h, lengths) < h.seals[final]!) {
      const voters = [...everVoter].filter((v) => lengths.get(v)! < h.seals[final]!);
      lengths.set(voters[r.int(voters.length)]!, h.log.length);
    }
  }
  const commit = commitIndex(h, lengths);
  // Records: the last view a node installed (only views whose seal committed).
  const records = new Map<number, number>();
  for (const n of nodes) {
    const lastIn = Math.max(...h.views.map((v, i) => (v.isMember(nodeId(n)) ? i : -1)));
    const deadAfter = dead.indexOf(n);
    let rec: number;
    if (deadAfter >= 0) rec = deadAfter;
    else if (lastIn < final) rec = lastIn;
    else rec = h.seals[final]! <= commit && (kind === 'scenario' || r.int(5) !== 0) ? final : final - 1;
    records.set(n, rec);
  }
  const newest = Math.max(...records.values());
  const lateNewest = kind === 'scenario' || swarm.int(4) !== 0;
  return {
    h, records,
    logs: new Map(nodes.map((n) => [n, h.log.slice(0, lengths.get(n)!)])),
    commits: new Map(nodes.map((n) => [n, Math.min(lengths.get(n)!, r.int(commit + 1))])),
    late: new Set(nodes.filter((n) => lateNewest && records.get(n) === newest)),
    describe: `log ${h.log.length} commit ${commit}`,
  };
}

/** The disks of `history=diverge` (see HistoryKind). */
function divergeDisks(world: World, swarm: SeededRandom, r: SeededRandom): Disks {
  const nodes = HISTORY_NODES;
  const first = world.views.get(R_ID)!;
  // Second-wave seeds (secondWave): no committed round, one committed removal, and two sides
  // that remove two different pairs (so that each side's view has a quorum the other's lacks).
  const wave = swarm.int(2) === 0;
  // Zero or one committed round of one or two removals (the view keeps at least 5 members).
  const prefixRemovals = wave || swarm.int(2) === 0 ? [] : [pickFrom(swarm, nodes, 1 + swarm.int(2))];
  world.votersCount = 3 + swarm.int(3);
  const prefix = buildHistory({
    first, removals: prefixRemovals, allocator: world.allocator, votersCount: world.votersCount, newTermAt: () => swarm.int(2) === 0,
  });
  const V = prefix.views[prefix.views.length - 1]!;
  const members = V.memberIds.map(Number);
  // The last round: a committed removal, then one more on each side, different (one may be none).
  const most = Math.floor((members.length - 1) / 2);
  const removed = pickFrom(swarm, members, wave ? 1 : 1 + swarm.int(most - 1));
  const rest = members.filter((m) => !removed.includes(m));
  const room = most - removed.length;
  let extraA: number[] = [];
  let extraB: number[] = [];
  while (extraA.join() === extraB.join() || (wave && extraA.some((n) => extraB.includes(n)))) {
    extraA = pickFrom(swarm, rest, wave ? room : swarm.int(room + 1)).sort((a, b) => a - b);
    extraB = pickFrom(swarm, rest, wave ? room : swarm.int(room + 1)).sort((a, b) => a - b);
  }
  const ones = (n: number): number[] => Array.from({ length: n }, () => 1);
  const { common, a, b } = divergentRound({
    history: prefix, removed, extraA, extraB, ackedCommon: swarm.int(4), trimA: ones, trimB: (n) => ones(n).map(() => 1 + swarm.int(2)),
    allocator: world.allocator, votersCount: world.votersCount,
  });
  const h: History = { views: [...prefix.views, b.view], seals: [...prefix.seals, b.sealIndex], log: [...common, ...b.entries] };
  // The prefix: lengths Raft could leave, all of it committed (the round's change did).
  const hc: History = { views: prefix.views, seals: [...prefix.seals, common.length], log: common };
  const everVoter = new Set(common.flatMap((e) => (e.kind === 'conf' ? e.voters : [])));
  const lengths = raftConsistent(hc, new Map(nodes.map((n) => [n, everVoter.has(n) ? r.int(common.length + 1) : 0])), (k) => r.int(k));
  const voters = [...votersAt(hc, common.length)];
  while (commitIndex(hc, lengths) < common.length) {
    const short = voters.filter((v) => lengths.get(v)! < common.length);
    lengths.set(short[r.int(short.length)]!, common.length);
  }
  // Side a on a minority of the voters (its leader first), side b's leader elected without them.
  const aHolders = pickFrom(swarm, voters, 1 + swarm.int(Math.floor((voters.length - 1) / 2)));
  const bLeader = pickFrom(swarm, voters.filter((v) => !aHolders.includes(v)), 1)[0]!;
  const onA = new Map<number, number>();
  const onB = new Map<number, number>();
  const kA = swarm.int(4) === 0 ? 1 + r.int(a.entries.length) : a.entries.length;
  aHolders.forEach((n, i) => onA.set(n, i === 0 ? kA : 1 + r.int(kA)));
  const kB = swarm.int(4) === 0 ? 1 + r.int(b.entries.length) : b.entries.length;
  onB.set(bLeader, kB);
  for (const v of voters) if (v !== bLeader && !wave && r.int(2) === 0) onB.set(v, 1 + r.int(kB));
  if (!wave && swarm.int(3) === 0) {
    // Side b reached a majority with its seal: it committed.
    onB.set(bLeader, b.entries.length);
    const others = [...voters.filter((v) => v !== bLeader && !aHolders.includes(v)), ...aHolders];
    for (let i = 0; 2 * [...onB.values()].filter((k) => k === b.entries.length).length <= voters.length; i++) onB.set(others[i]!, b.entries.length);
  }
  for (const n of onB.keys()) onA.delete(n); // overwritten by side b
  const logs = new Map<number, readonly LogEntry[]>();
  for (const n of nodes) {
    if (onB.has(n)) logs.set(n, [...common, ...b.entries.slice(0, onB.get(n)!)]);
    else if (onA.has(n)) logs.set(n, [...common, ...a.entries.slice(0, onA.get(n)!)]);
    else logs.set(n, common.slice(0, lengths.get(n)!));
  }
  // Side b's commit: the highest index a majority of the voters holds.
  let commit = common.length;
  for (let k = 1; k <= b.entries.length; k++) if (2 * voters.filter((v) => (onB.get(v) ?? 0) >= k).length > voters.length) commit = common.length + k;
  // Records: V by every member whose acknowledgement is in a log (all but the change's removals,
  // which may have crashed before installing V); side b's view by a member holding its
  // committed seal, on four seeds in five.
  const records = new Map<number, number>();
  const last = h.views.length - 1;
  for (const n of nodes) {
    const lastIn = Math.max(...prefix.views.map((v, i) => (v.isMember(nodeId(n)) ? i : -1)));
    let rec = lastIn === last - 1 && removed.includes(n) && lastIn > 0 && r.int(3) === 0 ? lastIn - 1 : lastIn;
    if (b.sealIndex <= commit && b.view.isMember(nodeId(n)) && (onB.get(n) ?? 0) === b.entries.length && r.int(5) !== 0) rec = last;
    records.set(n, rec);
  }
  world.divergent = { a: a.view, b: b.view };
  const bLate = swarm.int(2) === 0;
  return {
    h, logs, records, ...(wave ? { wave: new Set(onB.keys()) } : {}),
    commits: new Map(nodes.map((n) => [n, Math.min(logs.get(n)!.length, r.int((onA.has(n) ? common.length : commit) + 1))])),
    late: new Set(nodes.filter((n) => (bLate && onB.has(n)) || records.get(n) === last)),
    describe: `side a ${viewKey(a.view)} on [${[...onA.keys()]}], side b ${viewKey(b.view)} on [${[...onB.keys()]}]` +
      `${b.sealIndex <= commit ? ' (committed)' : ''}, common ${common.length}`,
  };
}

/** `count` distinct elements of `from`, in the order drawn. */
function pickFrom(random: SeededRandom, from: readonly number[], count: number): number[] {
  const pool = [...from];
  const out: number[] = [];
  while (out.length < count && pool.length > 0) out.push(pool.splice(random.int(pool.length), 1)[0]!);
  return out;
}

/**
 * `history=diverge`, half the seeds: the nodes without side b's entries come back first (side a's
 * view may be decided); as the first decision is chosen, every node up crashes again (a second
 * total failure, its leader telling nobody); then side b's holders and the others come back at
 * once, and the nodes that accepted that decision only 1.5 s later. A ballot of side b's view
 * can then complete without them: it must meet them anyway (the tentative accept quorum), or two
 * decisions are chosen (`mutation=noTentative`). Side b's holders come back at the end of the
 * faults if nothing was chosen by then. No swarm profile crashes a leader on these seeds; side b
 * reached its leader only; a leader's accepts to the predecessor's members outside its view
 * take SLOW_ACCEPT_MS longer, so that few nodes hold the acceptance when the wave strikes.
 */
function secondWave(world: World, sim: Simulation<Msg, RestartSimNode>, sideB: ReadonlySet<number>): void {
  const r = sim.random;
  world.profile = 'none';
  world.secondCrash = false;
  world.slowOutsideView = true;
  for (const n of world.nodes) if (!sideB.has(n)) sim.schedule(r.int(300), `start n${n}`, () => sim.start(n));
  world.onFirstChosen = () => {
    const up = sim.upIds();
    sim.schedule(0, 'second wave: every node up crashes', () => {
      for (const n of up) if (sim.isUp(n)) sim.crash(n);
    });
    for (const n of world.nodes) {
      const accepted = sim.disk(n).get<RestartAcceptorState<SimDecision>>('acceptor')?.accepted !== undefined;
      const at = accepted ? 1500 + r.int(500) : 20 + r.int(200);
      sim.schedule(at, `second wave: ${sim.incarnation(n) < 0 ? 'start' : 'restart'} n${n}${accepted ? ' (accepted)' : ''}`, () => {
        if (sim.isUp(n)) return;
        if (sim.incarnation(n) < 0) sim.start(n);
        else sim.restart(n);
      });
    }
  };
  for (const n of sideB) sim.schedule(FAULTS_UNTIL_MS, `start n${n} if not yet`, () => { if (sim.incarnation(n) < 0) sim.start(n); });
}

function runHistory(
  world: World, sim: Simulation<Msg, RestartSimNode>, swarm: SeededRandom, kind: HistoryKind, options: SeedOptions,
): SeedResult {
  const r = sim.random;
  const nodes = HISTORY_NODES;
  const disks = kind === 'diverge' ? divergeDisks(world, swarm, r) : linearDisks(world, swarm, r, kind);
  const { h, records } = disks;
  world.membershipLog = h;
  for (const v of h.views) world.views.set(v.id, v);
  // The newest view a shard delivered in: every member of one of its shards recorded it.
  let delivered = 0;
  h.views.forEach((v, i) => {
    const shards = v.layout.types[0]!.subgroups[0]!.shards.filter((x) => x.members.length > 0);
    if (shards.some((x) => x.members.every((m) => records.get(Number(m))! >= i))) delivered = i;
  });
  world.deliveredViewId = h.views[delivered]!.id;
  world.deliveredKey = viewKey(h.views[delivered]!);
  // Shard data: what the delivered view's shard members acknowledged is on each of them.
  const deliveredShards = h.views[delivered]!.layout.types[0]!.subgroups[0]!.shards.map((x) => x.members.map(Number));
  for (let s = 0; s < world.shardCount; s++) {
    const length = 3 + r.int(8);
    world.history[s] = Array.from({ length }, (_, i) => s * 1000 + i);
    const holders = deliveredShards[s] ?? [];
    const acked = holders.length > 0 ? r.int(length + 1) : 0;
    world.acked[s] = acked;
    for (const n of nodes) {
      const held = holders.includes(n) ? acked + r.int(length - acked + 1) : r.int(acked + 1);
      sim.disk(n).put(`shard:${s}`, world.history[s]!.slice(0, held));
    }
  }
  for (const n of nodes) {
    const disk = sim.disk(n);
    disk.put('record', { viewId: h.views[records.get(n)!]!.id, epoch: EPOCH });
    disk.put('mlog', disks.logs.get(n)!);
    disk.put('commit', disks.commits.get(n)!);
    disk.completeSync(disk.sync());
  }
  const early = world.profile === 'midChosen' || world.profile === 'midAccept';
  if (disks.wave !== undefined) secondWave(world, sim, disks.wave);
  else {
    for (const n of nodes) {
      const at = disks.late.has(n) ? 500 + r.int(1500) : r.int(early ? 300 : 400);
      sim.schedule(at, `start n${n}`, () => sim.start(n));
    }
  }
  return finish(world, sim, options, () =>
    `history ${kind}: views ${h.views.map((v) => `${v.id}[${v.memberIds}]`).join(' ')}, voters ${world.votersCount}, ` +
    `${disks.describe}, records ${nodes.map((n) => records.get(n)).join(',')}, delivered ${world.deliveredKey}, ` +
    `profile ${world.profile}${world.secondCrash ? '+1' : ''}`);
}
