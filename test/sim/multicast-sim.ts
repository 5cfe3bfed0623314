/**
 * The multicast cores under the deterministic simulator: one shard whose nodes crash, restart,
 * get partitioned and lose, duplicate and reorder packets, while a workload multicasts SMC and
 * RDMC messages. `npm run sim -- multicast --seeds N`.
 *
 * What stands in for the layers around the core (each the smallest honest model):
 *  - the transport: a per-link, per-view reliable channel (sequence numbers, acks, retransmission
 *    on a timeout), because retransmission is the transport's job, not the core's;
 *  - the membership layer: an oracle that notices when the set of live nodes differs from the
 *    view, wedges the survivors, lets a random slice of in-flight traffic land, gathers their
 *    receive states, computes the trim, applies it, and installs the next view on every live
 *    node (restarted nodes join with empty state), handing survivors their cut-off messages to
 *    re-send first. It talks to the nodes directly: agreeing on the trim is not under test here.
 *
 * Invariants, checked at every delivery or view change (InvariantViolation fails the seed):
 *  - total order: in each view every node's deliveries are a prefix of one sequence;
 *  - virtual synchrony: survivors of a view end it with identical deliveries;
 *  - global stability: outside the ragged edge, a delivered message is held by every live member;
 *  - exactly once and FIFO: no node delivers a message twice, and each origin's messages arrive
 *    in submission order, across views and re-sends;
 *  - versions strictly increase at each node, across views;
 *  - time stability: no delivery is stamped below a stability frontier the node already published
 *    (in any view: the frontier is kept across views, as the driver keeps it);
 *  - stamps kept: a message is delivered with the HLC stamp it was first sent with, re-sends too;
 *  - nothing lost: after faults stop, every message submitted by a node still in its submitting
 *    incarnation is delivered (by itself, and hence, by total order, by the final view).
 */
import { nodeId, viewId, type Version } from '../../src/core/ids.js';
import { MulticastCore } from '../../src/multicast/multicast-core.js';
import { multicastLimits, type MulticastLimits } from '../../src/multicast/config.js';
import { computeTrim } from '../../src/multicast/ragged-edge.js';
import { decodePacket, encodePacket } from '../../src/multicast/codec.js';
import { RDMC_ALGORITHMS } from '../../src/multicast/rdmc-schedule.js';
import type { Delivery, ResendMessage } from '../../src/multicast/types.js';
import { makePayload, readPayload } from '../support/multicast-net.js';
import { InvariantViolation, Simulation, type NodeContext, type SimNode } from './simulation.js';
import type { SeedOptions, SeedResult } from './protocol.js';

export type McMessage =
  | { readonly kind: 'pkt'; readonly view: number; readonly seq: number; readonly bytes: Uint8Array }
  | { readonly kind: 'ack'; readonly view: number; readonly seq: number };

const RETRANSMIT_MS = 40;

interface Link {
  nextSeq: number;
  readonly unacked: Map<number, { bytes: Uint8Array; sentAtMs: number }>;
}

/** Shared knowledge for the checks: what was submitted, what each node delivered. */
class World {
  view = { id: 1, members: [] as number[] };
  changing = false;
  viewChanges = 0;
  readonly submitted: { origin: number; incarnation: number; seq: number }[] = [];
  readonly nextSeq = new Map<number, number>();
  /** Per view: the delivery sequence (ids) as first seen by any node. */
  readonly reference = new Map<number, string[]>();
  delivered = 0;
  largeDelivered = 0;
  trimDelivered = 0;
  resent = 0;
  /** RDMC repairs counted from cores at the end of their view. */
  rdmcRepairs = 0;
  slowMembership = false;
  /** The HLC micros each message was stamped with when its origin's core accepted it. */
  readonly stamps = new Map<string, number>();
  constructor(
    readonly limits: MulticastLimits,
    /** Nodes that send when they are members; the others only receive. */
    readonly senderIds: readonly number[],
    /**
     * `--flag mutation=drop-resend` (forget cut-off messages) or `restamp-resend` (re-send them
     * with new stamps): deliberately broken view changes, to test the checks.
     */
    readonly mutation: string | undefined,
  ) {}
}

export class MulticastSimNode implements SimNode<McMessage> {
  core: MulticastCore | null = null;
  view = -1;
  /** Deliveries of this incarnation in the current view (ids). */
  viewDeliveries: string[] = [];
  readonly deliveredIds = new Set<string>();
  private lastVersion = -1n;
  private readonly lastSeqByOrigin = new Map<number, number>();
  private links = new Map<number, Link>();
  private readonly appQueue: Uint8Array[] = [];
  /** The time-based stability frontier this node's core last published in this view. */
  private viewFrontierMicros = 0;
  /** The highest frontier published in any view of this incarnation (as the driver keeps it). */
  private frontierMicros = 0;

  constructor(
    readonly ctx: NodeContext<McMessage>,
    private readonly world: World,
    private readonly sim: () => Simulation<McMessage, MulticastSimNode>,
  ) {}

  /** Nothing queued by the application, nothing of its own in flight, in the given view. */
  idleIn(view: number): boolean {
    if (this.view !== view || this.core === null || this.appQueue.length > 0) return false;
    return this.core.bufferedCounts().ownInFlight === 0;
  }

  /** The membership oracle installs a view here; `resend` goes out first, with its own stamps. */
  install(view: number, members: readonly number[], resend: readonly ResendMessage[]): void {
    const nodes = members.map(nodeId);
    this.core = new MulticastCore({
      viewId: viewId(view),
      members: nodes,
      senders: members.filter((m) => this.world.senderIds.includes(m)).map(nodeId),
      self: nodeId(this.ctx.id),
      mode: 'ordered',
      limits: this.world.limits,
      // Test-only mutation: the old driver's way, re-sending as new messages with new stamps.
      resend: this.world.mutation === 'restamp-resend' ? [] : resend,
    });
    if (this.world.mutation === 'restamp-resend') this.appQueue.unshift(...resend.map((m) => m.payload));
    this.view = view;
    this.viewDeliveries = [];
    this.viewFrontierMicros = 0;
    this.links = new Map(members.filter((m) => m !== this.ctx.id).map((m) => [m, { nextSeq: 0, unacked: new Map() }]));
    this.pump();
  }

  submit(payload: Uint8Array): void {
    this.appQueue.push(payload);
    this.pump();
  }

  deliver(from: number, message: McMessage): void {
    if (message.view !== this.view || this.core === null) return;
    if (message.kind === 'ack') {
      this.links.get(from)?.unacked.delete(message.seq);
      return;
    }
    this.ctx.send(from, { kind: 'ack', view: this.view, seq: message.seq });
    // A private copy: the core keeps views into what it decodes, and duplicates share bytes.
    this.core.receive(decodePacket(message.bytes.slice()));
    this.pump();
  }

  tick(): void {
    if (this.core === null) return;
    this.core.tick(this.ctx.nowMs() * 1000);
    const now = this.ctx.nowMs();
    for (const [peer, link] of this.links) {
      for (const [seq, entry] of link.unacked) {
        if (now - entry.sentAtMs < RETRANSMIT_MS) continue;
        entry.sentAtMs = now;
        this.ctx.send(peer, { kind: 'pkt', view: this.view, seq, bytes: entry.bytes });
      }
    }
    this.pump();
  }

  diskSynced(): void {}

  /** Feeds queued application messages to the core, then runs ready() and ships its output. */
  pump(): void {
    const core = this.core;
    if (core === null) return;
    while (this.appQueue.length > 0 && !core.isWedged) {
      const micros = this.ctx.nowMs() * 1000;
      const result = core.send(this.appQueue[0]!, { micros, logical: 0 });
      if (!result.accepted) break;
      const [origin, seq] = readPayload(this.appQueue[0]!)!;
      // First acceptance only: a re-send must not change the stamp.
      if (!this.world.stamps.has(`${origin}/${seq}`)) this.world.stamps.set(`${origin}/${seq}`, micros);
      this.appQueue.shift();
    }
    const ready = core.ready();
    for (const d of ready.deliveries) this.onDelivery(d);
    if (ready.stabilityFrontierMicros < this.viewFrontierMicros) {
      throw new InvariantViolation('time stability', `node ${this.ctx.id}: frontier went backwards`);
    }
    this.viewFrontierMicros = ready.stabilityFrontierMicros;
    this.frontierMicros = Math.max(this.frontierMicros, ready.stabilityFrontierMicros);
    for (const out of ready.packets) {
      const bytes = encodePacket(out.packet);
      for (const to of out.to) {
        const link = this.links.get(to)!;
        const seq = link.nextSeq++;
        link.unacked.set(seq, { bytes, sentAtMs: this.ctx.nowMs() });
        this.ctx.send(to, { kind: 'pkt', view: this.view, seq, bytes });
      }
    }
  }

  private onDelivery(d: Delivery): void {
    const fail = (what: string, detail: string): never => {
      throw new InvariantViolation(what, `node ${this.ctx.id} view ${this.view}: ${detail}`);
    };
    const id = readPayload(d.payload);
    if (id === null) fail('intact payloads', `corrupt payload at position ${d.position}`);
    const [origin, seq] = id!;
    const key = `${origin}/${seq}`;
    if (this.deliveredIds.has(key)) fail('exactly once', `${key} delivered twice`);
    this.deliveredIds.add(key);
    if ((this.lastSeqByOrigin.get(origin) ?? -1) >= seq) fail('FIFO per origin', `${key} after a later one`);
    this.lastSeqByOrigin.set(origin, seq);
    if (d.timestamp.micros !== this.world.stamps.get(key)) {
      fail('stamps kept', `${key} delivered stamped ${d.timestamp.micros}, sent with ${this.world.stamps.get(key)}`);
    }
    if (d.timestamp.micros < this.frontierMicros) {
      fail('time stability', `${key} stamped ${d.timestamp.micros} < frontier ${this.frontierMicros}`);
    }
    const version = d.version as Version as bigint;
    if (version <= this.lastVersion) fail('versions increase', `${version} after ${this.lastVersion}`);
    this.lastVersion = version;
    const world = this.world;
    let reference = world.reference.get(this.view);
    if (reference === undefined) world.reference.set(this.view, (reference = []));
    const k = this.viewDeliveries.length;
    if (k < reference.length && reference[k] !== key) {
      fail('total order', `delivery ${k} is ${key}, another member delivered ${reference[k]}`);
    }
    if (k === reference.length) reference.push(key);
    this.viewDeliveries.push(key);
    world.delivered++;
    if (d.large) world.largeDelivered++;
    if (this.core!.isWedged) {
      world.trimDelivered++;
      return;
    }
    const sim = this.sim();
    for (const member of world.view.members) {
      const other = sim.node(member);
      if (other === undefined || other.view !== this.view || other.core === null) continue;
      if (other.core.receivedCount(d.senderIndex) <= d.index) {
        fail('global stability', `${key} delivered before node ${member} received it`);
      }
    }
  }
}

const LIMITS: Partial<MulticastLimits> = {
  payloadBytesMax: 3000,
  smcPayloadBytesMax: 300,
  blockBytes: 256,
  windowSize: 4,
  packetBytesMax: 4096,
  sendQueueCountMax: 8,
  rdmcRepairMicros: 10_000,
};

/** The membership oracle: a view change whenever live nodes and view members differ. */
function watchMembership(sim: Simulation<McMessage, MulticastSimNode>, world: World): void {
  // A slow failure detector (every third seed) leaves time for RDMC repair before the wedge.
  const intervalMs = (world.slowMembership ? 150 : 20) + sim.random.int(40);
  sim.schedule(intervalMs, 'membership check', () => {
    watchMembership(sim, world);
    if (world.changing) return;
    const up = sim.upIds();
    const current = world.view.members;
    const same = up.length === current.length && up.every((id) => current.includes(id)) &&
      up.every((id) => sim.node(id)!.view === world.view.id);
    if (same || up.length === 0) return;
    world.changing = true;
    const survivors = current.filter((id) => sim.node(id)?.view === world.view.id);
    for (const id of survivors) sim.node(id)!.core!.wedge();
    sim.schedule(sim.random.int(30), `ragged edge of view ${world.view.id}`, () => finishViewChange(sim, world, survivors));
  });
}

function finishViewChange(sim: Simulation<McMessage, MulticastSimNode>, world: World, wedged: number[]): void {
  const old = world.view.id;
  const survivors = wedged.filter((id) => sim.node(id)?.view === old);
  const resend = new Map<number, ResendMessage[]>();
  if (survivors.length > 0) {
    const trim = computeTrim(survivors.map((id) => sim.node(id)!.core!.receiveState().receivedCounts));
    for (const id of survivors) {
      const node = sim.node(id)!;
      const cut = node.core!.applyTrim(trim).resend;
      world.rdmcRepairs += node.core!.counters.rdmcRepairs;
      world.resent += cut.length;
      // Test-only mutation: forget what the trim cut off (the checks must notice).
      if (world.mutation !== 'drop-resend') resend.set(id, cut);
      node.pump();
    }
    const lengths = survivors.map((id) => sim.node(id)!.viewDeliveries.length);
    const reference = world.reference.get(old) ?? [];
    if (lengths.some((n) => n !== reference.length)) {
      throw new InvariantViolation(
        'virtual synchrony',
        `survivors ${survivors} of view ${old} delivered ${lengths}, the view's sequence has ${reference.length}`,
      );
    }
  }
  const members = sim.upIds();
  world.view = { id: old + 1, members };
  world.viewChanges++;
  sim.note(`view ${old + 1} = [${members}] after trim of [${survivors}]`);
  for (const id of members) sim.node(id)!.install(old + 1, members, resend.get(id) ?? []);
  world.changing = false;
}

function workload(sim: Simulation<McMessage, MulticastSimNode>, world: World, untilMs: number): void {
  sim.schedule(1 + sim.random.int(8), 'submit', () => {
    if (sim.nowMs < untilMs) workload(sim, world, untilMs);
    const up = sim.upIds().filter((id) => sim.node(id)!.view >= 0 && world.senderIds.includes(id));
    if (up.length === 0) return;
    const origin = up[sim.random.int(up.length)]!;
    const seq = world.nextSeq.get(origin) ?? 0;
    world.nextSeq.set(origin, seq + 1);
    const bytes = sim.random.next() < 0.1 ? 301 + sim.random.int(2600) : 1 + sim.random.int(290);
    world.submitted.push({ origin, incarnation: sim.incarnation(origin), seq });
    sim.node(origin)!.submit(makePayload(origin, seq, bytes));
  });
}

export function runSeed(seed: number, options: SeedOptions = {}): SeedResult {
  const ids = [1, 2, 3, 4, 5].slice(0, 3 + (seed % 3));
  // Every fourth seed, only the odd-numbered nodes send.
  const senderIds = seed % 4 === 3 ? ids.filter((id) => id % 2 === 1) : ids;
  // Every fifth seed has a send queue shorter than the window, so a view change cuts off more
  // own messages than a new core's queue takes at once (re-sends then wait across ticks).
  const sendQueueCountMax = seed % 5 === 2 ? 2 : LIMITS.sendQueueCountMax!;
  const limits = multicastLimits({
    ...LIMITS, sendQueueCountMax, rdmcAlgorithm: RDMC_ALGORITHMS[seed % 4]!,
  });
  const mutation = options.flags?.['mutation'];
  const world = new World(limits, senderIds, typeof mutation === 'string' ? mutation : undefined);
  world.slowMembership = seed % 3 === 1;
  let sim!: Simulation<McMessage, MulticastSimNode>;
  sim = new Simulation<McMessage, MulticastSimNode>({
    seed,
    nodeIds: ids,
    createNode: (ctx) => new MulticastSimNode(ctx, world, () => sim),
    network: { delayMsMin: 1, delayMsMax: 15, lossRate: 0.01, duplicateRate: 0.01 },
    faults: {
      untilMs: 2500, meanIntervalMs: 250, crashedMax: Math.floor((ids.length - 1) / 2),
      lossRateMax: 0.2, duplicateRateMax: 0.1,
      weights: { crash: 2, restart: 2, partition: 1, isolate: 1, oneWay: 1, heal: 3, lossy: 2 },
    },
    describeMessage: (m) => `${m.kind} v${m.view} #${m.seq}${m.kind === 'pkt' ? ` ${m.bytes.length}B` : ''}`,
  });
  world.view = { id: 1, members: [...ids] };
  for (const id of ids) sim.node(id)!.install(1, ids, []);
  watchMembership(sim, world);
  workload(sim, world, 3000);
  const stepsMax = options.steps ?? 2_000_000;
  sim.run({ untilMs: 5000, stepsMax });
  // Then until the backlog drains (faults stopped at 2.5 s; the workload at 3 s).
  let drainedAtMs = -1;
  const drained = (): boolean => {
    if (world.changing) return false;
    drainedAtMs = sim.nowMs;
    const length = world.reference.get(world.view.id)?.length ?? 0;
    return world.view.members.every((id) => {
      const node = sim.node(id);
      return node !== undefined && node.idleIn(world.view.id) && node.viewDeliveries.length === length;
    });
  };
  // (Simulation.run moves the clock to untilMs even when stopWhen ends the run early, so the
  // time the backlog drained is recorded here.)
  sim.run({ untilMs: 60_000, stepsMax, stopWhen: drained });
  checkNothingLost(sim, world);
  for (const id of world.view.members) world.rdmcRepairs += sim.node(id)!.core!.counters.rdmcRepairs;
  return sim.result(
    `${ids.length} nodes (${senderIds.length} senders), ${world.submitted.length} submitted, ${world.delivered} deliveries ` +
      `(${world.largeDelivered} RDMC, ${world.trimDelivered} at ragged edges), ` +
      `${world.viewChanges} view changes, ${world.resent} re-sent, ${world.rdmcRepairs} RDMC repairs, ` +
      `${sim.stats.crashes} crashes, ` +
      `drained at ${drainedAtMs} ms`,
  );
}

function checkNothingLost(sim: Simulation<McMessage, MulticastSimNode>, world: World): void {
  const lost: string[] = [];
  for (const m of world.submitted) {
    const node = sim.node(m.origin);
    if (node === undefined || sim.incarnation(m.origin) !== m.incarnation) continue;
    if (!node.deliveredIds.has(`${m.origin}/${m.seq}`)) lost.push(`${m.origin}/${m.seq}`);
  }
  if (lost.length > 0) {
    throw new InvariantViolation('nothing lost', `${lost.length} messages never delivered by their origin: ${lost.slice(0, 5)}`);
  }
  const reference = world.reference.get(world.view.id) ?? [];
  for (const id of world.view.members) {
    const got = sim.node(id)!.viewDeliveries.length;
    if (got !== reference.length) {
      throw new InvariantViolation('liveness', `node ${id} delivered ${got} of ${reference.length} in the final view`);
    }
  }
}
