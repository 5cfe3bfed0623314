/**
 * The membership protocol under the deterministic simulator, with the real cores composed:
 * RaftCore (membership log), FailureDetectorCore, ViewChangeCore and one MulticastCore per shard,
 * driven by `MembershipSimNode` (test/support/membership-sim-node.ts, the blueprint of the
 * runtime driver). `npm run sim -- membership --seeds N [--flag mutation=skipTrimAgreement]`.
 *
 * The run: founders 1–5 (Raft voters 1, 2, 3; layout: one type, one subgroup of two shards of
 * 2–3 nodes), nodes 6 and 7 start later and join; clean leaves (the leaver rejoins later);
 * crashes (at most one node down) with restarts from the simulated disk (Raft state persisted
 * before send; the restarted node rejoins as a new member); partitions, isolations, one-way
 * cuts, loss, duplication and reordering; a workload of ordered messages to every shard.
 *
 * Checked at the moment each thing happens (InvariantViolation fails the seed):
 *  - same view: every node that installs view N installs byte-identical bytes (encodeView);
 *  - total order: within a view and shard, every member's deliveries are a prefix of one sequence;
 *  - virtual synchrony: members that install view N+1 from view N delivered the identical
 *    sequence in each shard of N;
 *  - no delivered message missing: once a member installed N+1, nobody delivers in N beyond that
 *    final sequence, and the final sequence holds everything anyone delivered in N;
 *  - exactly once per shard per membership, versions strictly increasing per node and shard;
 *  - state: every member of a shard that starts view N with known state (survivors, and joiners
 *    once the transfer arrives) has the same digest and count of all messages delivered;
 *  - minority: a node on a minority side of its view (by the network's partition) for longer
 *    than the failure-detection time neither delivers nor installs a view;
 *  - liveness: once faults stop, within LIVENESS_MS every node is a member of one installed view
 *    of exactly the started nodes, and a new message from every sender of every shard is
 *    delivered by every member of the shard.
 */
import { nodeId } from '../../src/core/ids.js';
import { defaultAllocator, flexibleEvenShards, oneSubgroup } from '../../src/membership/layout.js';
import { encodeView, type View } from '../../src/membership/view.js';
import { multicastLimits } from '../../src/multicast/config.js';
import { makePayload } from '../support/multicast-net.js';
import {
  MembershipSimNode, type MemMessage, type MembershipObserver, type MembershipSimConfig,
} from '../support/membership-sim-node.js';
import type { ViewChangeEffect } from '../../src/membership/view-change-core.js';
import type { SeedOptions, SeedResult } from './protocol.js';
import { InvariantViolation, Simulation } from './simulation.js';

const FOUNDERS = [1, 2, 3, 4, 5];
const JOINERS = [6, 7];
const ALL = [...FOUNDERS, ...JOINERS];
const VOTERS = [1, 2, 3];
const TICK_MS = 10;
const FAULTS_UNTIL_MS = 3000;
const LIVENESS_MS = 6000;
const HEARTBEAT_TICKS = 3;
const TIMEOUT_TICKS = 20;
/** How long a minority side may keep delivering before its failure detector must have stopped it. */
/** A calm group waits this long after a fault ends before the next one (twice the detection time). */
const SETTLE_AFTER_FAULT_MS = 2 * TIMEOUT_TICKS * TICK_MS;
const MINORITY_GRACE_MS = Math.ceil(TIMEOUT_TICKS * TICK_MS * 1.1) + 4 * TICK_MS + 20;

type Sim = Simulation<MemMessage, MembershipSimNode>;

class World implements MembershipObserver {
  readonly views = new Map<number, string>();
  /** `${view}:${shard}` → the delivery sequence as far as any member got. */
  readonly reference = new Map<string, string[]>();
  /** `${view}:${shard}` → the final sequence of the first member that installed view + 1. */
  readonly finals = new Map<string, readonly string[]>();
  readonly stateAtStart = new Map<string, { digest: number; count: number }>();
  readonly minoritySince = new Map<number, number>();
  readonly markers = new Map<string, Set<string>>();
  stats = { installs: 0, deliveries: 0, atTrim: 0, removed: 0, left: 0, refused: 0, partitioned: 0, stateTransfers: 0, stateLost: 0, maxView: 0, cuts: 0 };
  sim!: Sim;
  latest: View | undefined;
  /** When the last crash was restarted or the last partition healed. */
  lastFaultEndMs = 0;

  private fail(what: string, node: MembershipSimNode, detail: string): never {
    throw new InvariantViolation(what, `n${node.id}#${node.ctx.incarnation} (${node.address}): ${detail}`);
  }

  private checkMinority(node: MembershipSimNode, doing: string): void {
    const since = this.minoritySince.get(node.id);
    if (since !== undefined && this.sim.nowMs - since > MINORITY_GRACE_MS) {
      this.fail('minority side', node, `${doing} ${this.sim.nowMs - since} ms after being cut to a minority of view ` +
        `${node.core?.view.id} (${this.sim.network.describe()})`);
    }
  }

  delivered(node: MembershipSimNode, view: View, shard: string, key: string, version: bigint, atTrim: boolean): void {
    this.stats.deliveries++;
    if (atTrim) this.stats.atTrim++;
    this.checkMinority(node, `delivered ${key}`);
    const vk = `${view.id}:${shard}`;
    const mine = node.shards.get(shard)!.deliveries;
    const k = mine.length - 1;
    let reference = this.reference.get(vk);
    if (reference === undefined) this.reference.set(vk, (reference = []));
    if (k < reference.length && reference[k] !== key) {
      this.fail('total order', node, `view ${vk} delivery ${k} is ${key}, another member delivered ${reference[k]}`);
    }
    if (k === reference.length) reference.push(key);
    const final = this.finals.get(vk);
    if (final !== undefined && k >= final.length) {
      this.fail('no delivery missing at survivors', node,
        `delivered ${key} at ${k} in ${vk} after a survivor installed the next view with ${final.length} deliveries`);
    }
    let seen = node.everDelivered.get(shard);
    if (seen === undefined) node.everDelivered.set(shard, (seen = new Set()));
    if (seen.has(key)) this.fail('exactly once', node, `${key} delivered twice in shard ${shard}`);
    seen.add(key);
    const last = node.lastVersion.get(shard);
    if (last !== undefined && version <= last) this.fail('versions increase', node, `shard ${shard}: ${version} after ${last}`);
    node.lastVersion.set(shard, version);
    this.markers.get(key)?.add(`${node.id}`);
  }

  installed(node: MembershipSimNode, view: View, previous: View | undefined, finals: ReadonlyMap<string, readonly string[]>): void {
    this.stats.installs++;
    this.stats.maxView = Math.max(this.stats.maxView, view.id);
    if (previous !== undefined) this.checkMinority(node, `installed view ${view.id}`);
    const bytes = Buffer.from(encodeView(view)).toString('base64');
    const known = this.views.get(view.id);
    if (known === undefined) this.views.set(view.id, bytes);
    else if (known !== bytes) this.fail('same view', node, `view ${view.id} differs from another member's`);
    if (!view.isMember(nodeId(node.id))) this.fail('same view', node, `installed view ${view.id} without itself`);
    if (this.latest === undefined || this.latest.id < view.id) this.latest = view;
    if (previous === undefined) return;
    if (previous.id + 1 !== view.id) this.fail('consecutive views', node, `${previous.id} → ${view.id}`);
    for (const [shard, sequence] of finals) {
      const vk = `${previous.id}:${shard}`;
      const final = this.finals.get(vk);
      if (final === undefined) {
        const reference = this.reference.get(vk) ?? [];
        if (reference.length > sequence.length) {
          this.fail('no delivery missing at survivors', node,
            `ends ${vk} with ${sequence.length} deliveries, another member delivered ${reference.length}`);
        }
        this.finals.set(vk, [...sequence]);
      } else if (final.length !== sequence.length || final.some((key, i) => sequence[i] !== key)) {
        this.fail('virtual synchrony', node,
          `ends ${vk} with ${sequence.length} deliveries, another survivor ended it with ${final.length}`);
      }
    }
  }

  stateReady(node: MembershipSimNode, view: View, shard: string, digest: number, count: number, lost: boolean): void {
    if (lost) {
      this.stats.stateLost++;
      return;
    }
    const vk = `${view.id}:${shard}`;
    const known = this.stateAtStart.get(vk);
    if (known === undefined) this.stateAtStart.set(vk, { digest, count });
    else if (known.digest !== digest || known.count !== count) {
      this.fail('state digest', node, `starts ${vk} with ${count} messages (digest ${digest}), another member with ` +
        `${known.count} (digest ${known.digest})`);
    }
  }

  removed(_node: MembershipSimNode, _viewId: number, reason: string): void {
    this.stats.removed++;
    if (reason === 'left') this.stats.left++;
  }

  effect(_node: MembershipSimNode, effect: ViewChangeEffect): void {
    if (effect.kind === 'refused') this.stats.refused++;
    if (effect.kind === 'partitioned') this.stats.partitioned++;
    if (effect.kind === 'install') this.stats.stateTransfers += effect.stateTransfers.length;
  }

  /** After every step: who is on a minority side of its own view, since when. */
  trackMinority(sim: Sim): void {
    const groups = partitionGroups(sim.network.describe());
    for (const id of ALL) {
      const node = sim.node(id);
      const view = node?.state === 'member' ? node.core!.view : undefined;
      let minority = false;
      if (view !== undefined && groups !== undefined) {
        const mine = groups.find((g) => g.includes(id)) ?? [id];
        const together = view.memberIds.filter((m) => mine.includes(m)).length;
        minority = 2 * together <= view.memberIds.length;
      }
      if (!minority) this.minoritySince.delete(id);
      else if (!this.minoritySince.has(id)) this.minoritySince.set(id, sim.nowMs);
    }
  }
}

const groupsCache = new Map<string, number[][] | undefined>();
function partitionGroups(description: string): number[][] | undefined {
  if (groupsCache.has(description)) return groupsCache.get(description);
  const first = description.split(';')[0]!.trim();
  const groups = first.includes('|') || /^\d+(,\d+)*$/.test(first)
    ? first.split('|').map((g) => g.trim().split(',').filter((x) => x !== '').map(Number))
    : undefined;
  groupsCache.set(description, groups);
  return groups;
}

/**
 * Whether the group is calm: network healthy, every started node up, every member of the newest
 * view alive under its address and idle, and the view big enough (`membersMin`) that one more
 * failure or leave keeps a majority of it. See faults() for why disruptions wait for calm.
 */
function calm(sim: Sim, world: World, membersMin: number): boolean {
  if (sim.network.describe() !== 'healthy' || world.latest === undefined) return false;
  // The consequences of the last fault must have surfaced: a node cut off for a while may
  // still suspect a peer it did not hear from during the cut (seed 356: an isolation healed,
  // then the isolated node's late suspicion of a third node and a crash made three failures).
  if (sim.nowMs - world.lastFaultEndMs < SETTLE_AFTER_FAULT_MS) return false;
  if (ALL.some((id) => sim.incarnation(id) >= 0 && !sim.isUp(id))) return false;
  const view = world.latest;
  if (view.memberIds.length < membersMin) return false;
  return view.memberIds.every((m) => {
    const n = sim.node(m);
    return n !== undefined && n.state === 'member' && !n.partitioned && n.address === view.addressOf(m) &&
      n.core!.phase === 'idle';
  });
}

/**
 * Crashes, restarts, partitions, isolations and one-way cuts (loss and duplication come from the
 * simulator's own injector). A restarted node is a new process (it rejoins), so its old
 * incarnation counts as failed until a view without it is installed; a partition makes the side
 * without a majority go silent, and it is removed. Liveness (Derecho's premise, and this
 * design's) needs fewer than half of a view's members to fail before the next view is installed
 * (more, and the round waits forever for a dead survivor's receive report: only a total restart
 * helps). So a disruptive fault is injected only when the group is calm: network healthy, every
 * started node up, every member of the newest view alive under its address, every member idle.
 * One fault per calm period can still remove a minority; several in one view could not recover.
 * Safety is checked whatever happens; this only keeps the liveness check meaningful.
 */
function faults(sim: Sim, world: World): void {
  const r = sim.random;
  const step = (): void => {
    if (sim.nowMs >= FAULTS_UNTIL_MS) return;
    sim.schedule(Math.max(1, Math.round(-Math.log(1 - r.next()) * 150)), 'fault', step);
    // Three members: a failure leaves two of three. Two would leave one of two: no majority.
    if (!calm(sim, world, 3)) return;
    const up = sim.upIds();
    const victim = up[r.int(up.length)]!;
    const roll = r.next();
    if (roll >= 0.45) world.stats.cuts++;
    const heal = (): void => sim.schedule(100 + r.int(500), 'heal', () => {
      sim.network.heal();
      world.lastFaultEndMs = sim.nowMs;
    });
    if (roll < 0.45) {
      sim.crash(victim);
      sim.schedule(30 + r.int(400), `restart n${victim}`, () => {
        sim.restart(victim);
        world.lastFaultEndMs = sim.nowMs;
      });
    } else if (roll < 0.65) {
      sim.network.isolate(victim, ALL);
      sim.note(`partition ${sim.network.describe()}`);
      heal();
    } else if (roll < 0.85) {
      // A random split: either side may hold the view's or the voters' majority, or neither.
      const shuffled = ALL.map((id) => ({ id, k: r.next() })).sort((a, b) => a.k - b.k).map((x) => x.id);
      const cut = 1 + r.int(ALL.length - 1);
      sim.network.partition([shuffled.slice(0, cut), shuffled.slice(cut)]);
      sim.note(`partition ${sim.network.describe()}`);
      heal();
    } else {
      const other = up.filter((id) => id !== victim);
      if (other.length === 0) return;
      sim.network.blockOneWay(victim, other[r.int(other.length)]!);
      sim.note(`partition ${sim.network.describe()}`);
      heal();
    }
  };
  sim.schedule(100, 'fault', step);
}

function workload(sim: Sim, world: World): void {
  const r = sim.random;
  const leaveRate = [0, 0.002, 0.005][r.int(3)]!;
  let lastLeaveMs = -1000;
  const step = (): void => {
    sim.schedule(2 + r.int(10), 'submit', step);
    if (sim.nowMs >= FAULTS_UNTIL_MS) return;
    const members = sim.upIds().filter((id) => sim.node(id)!.state === 'member');
    if (members.length === 0) return;
    const node = sim.node(members[r.int(members.length)]!)!;
    const shards = [...node.shards.keys()].sort();
    if (shards.length > 0) {
      const size = r.next() < 0.1 ? 301 + r.int(1500) : 6 + r.int(200);
      node.submit(shards[r.int(shards.length)]!, (seq) => makePayload(node.id, seq, size));
    }
    // Clean leaves respect the same premise as failures: a leave in a group of two, or next to a
    // failure in a group of three, leaves a view whose remaining failure is half of it (clean
    // leavers do not count toward the majority), and that group waits forever (found by seeds
    // 100 and 267). So a node leaves only when the group is calm, at least five strong (a crash
    // in the same round still leaves three of four), and no other leave is under way.
    if (r.next() < leaveRate && sim.nowMs - lastLeaveMs >= 1000 && calm(sim, world, 5)) {
      lastLeaveMs = sim.nowMs;
      node.leave();
    }
  };
  sim.schedule(20, 'submit', step);
  for (const id of JOINERS) sim.schedule(200 + r.int(2000), `start joiner n${id}`, () => sim.start(id));
}

export function runSeed(seed: number, options: SeedOptions = {}): SeedResult {
  const world = new World();
  const mutation = options.flags?.['mutation'] === 'skipTrimAgreement' ? 'skipTrimAgreement' : undefined;
  const config: MembershipSimConfig = {
    voters: VOTERS, all: ALL, founders: FOUNDERS,
    allocator: defaultAllocator({ KV: oneSubgroup(flexibleEvenShards(2, 2, 3)) }),
    limits: multicastLimits({
      payloadBytesMax: 2000, smcPayloadBytesMax: 300, blockBytes: 256, windowSize: 4, packetBytesMax: 4096,
      sendQueueCountMax: 8,
    }),
    heartbeatTicks: HEARTBEAT_TICKS, timeoutTicks: TIMEOUT_TICKS, proposalRetryTicks: 10, tickMs: TICK_MS,
    mutation,
  };
  const sim: Sim = new Simulation<MemMessage, MembershipSimNode>({
    seed,
    nodeIds: ALL,
    startIds: FOUNDERS,
    createNode: (ctx) => {
      const node = new MembershipSimNode(ctx, config, world);
      // Message ids stay unique across incarnations: each restart starts a new range.
      node.setPayloadSeq(ctx.incarnation * 1_000_000);
      return node;
    },
    network: { delayMsMin: 1, delayMsMax: 12, lossRate: 0.01, duplicateRate: 0.01 },
    tickMs: TICK_MS,
    diskLatencyMs: [1, 5],
    keepUnreportedRate: 0.5,
    describeMessage: describe,
    recentMax: Number(process.env['SIM_RECENT'] ?? 40),
    checkers: [(s) => world.trackMinority(s)],
    // Odd seeds: a crashed node's host answers "port unreachable", so its peers suspect it
    // within a message delay (the native transport's fast path); even seeds: only the timeout.
    portUnreachable: seed % 2 === 1,
    faults: {
      untilMs: FAULTS_UNTIL_MS, meanIntervalMs: 300, crashedMax: 1, lossRateMax: 0.15, duplicateRateMax: 0.1,
      // Crashes and partitions come from faults() above, which respects the liveness premise.
      weights: { lossy: 1 },
    },
  });
  world.sim = sim;
  workload(sim, world);
  faults(sim, world);
  // Liveness: once faults stop, one view of exactly the started nodes everywhere, then markers.
  let markersSentAtMs = -1;
  let markersFor: { key: string; shardMembers: number[] }[] = [];
  const settled = (): boolean => {
    if (!sim.isQuiesced) return false;
    const started = ALL.filter((id) => sim.incarnation(id) >= 0);
    const nodes = started.map((id) => sim.node(id));
    if (nodes.some((n) => n === undefined || n.state !== 'member' || n.core!.phase !== 'idle')) return false;
    const view = nodes[0]!.core!.view;
    if (nodes.some((n) => n!.core!.view.id !== view.id)) return false;
    if (view.memberIds.length !== started.length || !started.every((id) => view.isMember(nodeId(id)))) return false;
    return nodes.every((n) => [...n!.shards.values()].every((s) => !s.awaitingState));
  };
  let markersView = -1;
  const live = (): boolean => {
    // A view change after the markers went out (a suspicion raised just before the faults
    // stopped) may remove their sender, and its messages beyond the trim with it: start over in
    // the new view.
    if (markersSentAtMs >= 0 && ALL.some((id) => sim.node(id)?.core?.view.id !== undefined &&
      sim.node(id)!.core!.view.id !== markersView)) {
      sim.note(`liveness markers of view ${markersView} superseded`);
      markersSentAtMs = -1;
      markersFor = [];
    }
    if (markersSentAtMs < 0) {
      if (!settled()) return false;
      markersSentAtMs = sim.nowMs;
      const view = sim.node(ALL.find((id) => sim.isUp(id))!)!.core!.view;
      sim.note(`liveness markers sent in view ${view.id}`);
      markersView = view.id;
      for (const id of sim.upIds()) {
        const node = sim.node(id)!;
        for (const key of [...node.shards.keys()].sort()) {
          const seq = node.submit(key, (s) => makePayload(id, s, 16));
          if (seq === undefined) continue;
          const [sg, sh] = key.split('/').map(Number);
          const members = view.shard(sg as never, sh as never)!.members.map(Number);
          world.markers.set(`${id}/${seq}`, new Set());
          markersFor.push({ key: `${id}/${seq}`, shardMembers: members });
        }
      }
    }
    return markersFor.every((m) => m.shardMembers.every((n) => world.markers.get(m.key)!.has(`${n}`)));
  };
  sim.run({ untilMs: FAULTS_UNTIL_MS + LIVENESS_MS, stopWhen: live, ...(options.steps ? { stepsMax: options.steps } : {}) });
  const stepsCapped = options.steps !== undefined && sim.steps >= options.steps;
  if (!live() && !stepsCapped) {
    const states = ALL.map((id) => {
      const n = sim.node(id);
      if (n === undefined) return `n${id} ${sim.incarnation(id) < 0 ? 'never started' : 'down'}`;
      const raft = n.raft ? ` raft ${n.raft.role} t${n.raft.term} lead ${n.raft.lead} commit ${n.raft.commit}` : '';
      return `n${id}#${sim.incarnation(id)} ${n.state} view ${n.core?.view.id}:[${n.core?.view.memberIds}] ` +
        `phase ${n.core?.phase}${n.partitioned ? " PARTITIONED" : ""} applied ${n.core?.lastAppliedIndex} shards [${[...n.shards.keys()]}]${raft}`;
    });
    throw sim.failure(new InvariantViolation('liveness',
      `${LIVENESS_MS} ms after faults stopped: ${markersSentAtMs < 0 ? 'no common view of the live nodes' : `markers not delivered: ${markersFor.filter((m) => !m.shardMembers.every((n) => world.markers.get(m.key)!.has(`${n}`))).map((m) => `${m.key} to [${m.shardMembers}] got [${[...world.markers.get(m.key)!]}]`).join('; ')}`}` +
      `\n  ${states.join('\n  ')}`));
  }
  void markersFor;
  markersFor = [];
  const s = world.stats;
  return sim.result(
    `${s.maxView} views, ${s.installs} installs, ${s.deliveries} deliveries (${s.atTrim} at trims), ` +
      `${s.removed} removed (${s.left} left), ${s.refused} refused, ${s.partitioned} partitioned, ` +
      `${s.stateTransfers} state transfers, ${s.stateLost} stateless starts, crashes ${sim.stats.crashes} ` +
      `(port-unreachable answers ${sim.stats.unreachable}), ` +
      `partitions/cuts ${s.cuts}, settled at ${markersSentAtMs} ms`,
  );
}

function describe(m: MemMessage): string {
  switch (m.kind) {
    case 'raft': {
      const r = m.m;
      const extra = r.type === 'append' ? ` p${r.prevIndex} n${r.entries.length} c${r.commit}` : r.type === 'appendResp' ? ` i${r.index}${r.reject ? ' rej' : ''}` : '';
      return `raft ${r.type} t${r.term}${extra}`;
    }
    case 'fetch': return `fetch ${m.from}`;
    case 'entries': return `entries ..${m.upTo} n${m.list.length}`;
    case 'propose': return `propose ${m.bytes.length}B h${m.hops}`;
    case 'hb': return `hb ${m.address}`;
    case 'report': return `report v${m.msg.report.viewId} ${m.msg.report.subgroupId}/${m.msg.report.shardIndex} [${m.msg.report.received}]`;
    case 'join': return `join ${m.address}`;
    case 'welcome': return `welcome ${m.address} @${m.sealedAtIndex}`;
    case 'pkt': return `pkt ${m.ch} #${m.seq} ${m.bytes.length}B`;
    case 'ack': return `ack ${m.ch} #${m.seq}`;
    case 'state': return `state v${m.view} ${m.shard} ${m.count}${m.lost ? ' lost' : ''}`;
    case 'stateReq': return `stateReq v${m.view} ${m.shard}`;
    case 'stateNone': return `stateNone v${m.view} ${m.shard}`;
  }
}
