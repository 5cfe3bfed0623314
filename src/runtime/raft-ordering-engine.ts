/**
 * RaftOrderingEngine: the ordering engine (ordering-engine.ts) of a raft-ordered shard. The
 * shard's members form one Raft group (a RaftShardDriver: client sessions, at-most-once retries,
 * leader-stamped HLC times); the group layer sends its ordered calls through it and receives them,
 * in log order, as OrderedDelivery objects like the multicast's.
 *
 *   send(payload)   wraps the payload with this node's id (the caller, to whom every member sends
 *                   its reply), calls the shard (forwarded to the leader from any member) and
 *                   resolves with the call's (term, index) and HLC once the leader applied it,
 *                   i.e. after it committed on a majority. A retried call that had already run
 *                   answers from the shard's reply cache with the first run's numbering: the
 *                   application's reply bytes are that numbering (see `execute`).
 *   persisted(v)    this member's registry made `v` durable: reported to the other members
 *                   (request type SHARD_REPORT_TYPE, muxed by group id) and combined into the
 *                   global persisted frontier: the minimum over the shard's current members.
 *   readBarrier()   ReadIndex through the leader: afterwards local state is linearizable.
 *
 * Frontiers. `delivered()` at the group layer waits for the caller's own replica to apply the
 * call, which comes after the leader's commit (durable on a majority) and apply. `persisted()`
 * waits for every current member's report: a dead member holds it back until a view change
 * removes the member (with a static view: for good; use `localPersisted()` or `delivered()`
 * there). The stability frontier for temporal reads is the last applied call's time: Raft
 * stamps strictly increase along the log, so no later call can be stamped at or before it.
 *
 * Raft ids are node id + 1 (Raft reserves 0 for "none"; a static group may have node 0).
 */
import { SquallError } from '../core/errors.js';
import { decodeHlc, encodeHlc, HLC_BYTES, type Hlc } from '../core/hlc.js';
import { VERSION_NONE, versionPosition, versionViewId, type NodeId, type Version } from '../core/ids.js';
import { nextVoterStep, voterPlanInputOf } from '../membership/voter-plan.js';
import { RaftProposalError } from '../raft/errors.js';
import type { RaftStorage } from '../raft/storage.js';
import { SessionCache } from '../transport/session-cache.js';
import type { Transport, TransportAddress } from '../transport/transport.js';
import type { EngineFrontiers, EngineReceipt, OrderedDelivery, OrderingEngine } from './ordering-engine.js';
import { RaftShardDriver, type ShardApplication, type ShardCallMeta } from './raft-shard-driver.js';
import { GROUP_PREFIX_BYTES, prefixedGroup, prefixGroup, RequestMux } from './request-mux.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

/** One-way frontier reports between a raft shard's members (muxed by the shard's group id). */
export const SHARD_REPORT_TYPE = REQUEST_TYPES.shardReport;

/** The replica state behind the engine, for Raft's log compaction and InstallSnapshot. */
export interface EngineState {
  /** The replica's whole state as bytes (taken synchronously between two applied calls). */
  snapshot(): Uint8Array;
  /** Brings the replica to a snapshot's state (a member that fell behind the compacted log). */
  restore(bytes: Uint8Array): void;
}

export interface RaftOrderingEngineOptions {
  readonly self: NodeId;
  /** The shard's members, each with its endpoint address. */
  readonly members: readonly NodeId[];
  readonly addresses: ReadonlyMap<NodeId, TransportAddress>;
  /** This shard's Raft group id on the shared endpoint: ≥ 1 (0 is the membership log). */
  readonly groupId: number;
  readonly transport: Transport;
  /** The Raft log and hard state; the engine closes it when it closes. */
  readonly storage: RaftStorage;
  readonly onDeliver: (delivery: OrderedDelivery) => void;
  readonly state: EngineState;
  /**
   * Join a running shard (a view change added this node): start outside the Raft configuration
   * and wait for the leader to add it as a learner, send it the log (or a snapshot) and promote
   * it. Default false: `members` are the founding voters.
   */
  readonly join?: boolean;
  /** Raft tick length (default 10 ms); heartbeat and election timeouts count in ticks. */
  readonly tickMs?: number;
  readonly heartbeatTicks?: number;
  readonly electionTicks?: number;
  /** Compact the log after this many applied entries (default 20,000). */
  readonly compactEvery?: number;
  /** send() gives up with TimeoutError after this long (default 10 s). */
  readonly callTimeoutMs?: number;
  /** One attempt at one member before trying the next (default 1 s). */
  readonly attemptTimeoutMs?: number;
  /** Reports not acknowledged are sent again after this long (default 100 ms). */
  readonly reportRetryMs?: number;
}

/** Bytes of the application's reply: the call's version (u64) and HLC. */
const RECEIPT_BYTES = 8 + HLC_BYTES;
/** Bytes of the caller id in front of a call's payload. */
const CALLER_BYTES = 4;
/** Bytes of a report body: from (u32), persisted version (i64). */
const REPORT_BYTES = 4 + 8;
const REPORT_ACK = Uint8Array.of(1);

/** The raft id of a node (Raft reserves 0). */
export const raftIdOf = (node: NodeId): number => node + 1;

export class RaftOrderingEngine implements OrderingEngine {
  readonly counters = { reportsSent: 0, reportsReceived: 0, reportsMalformed: 0, malformedCalls: 0, snapshotsRestored: 0 };
  private shard!: RaftShardDriver;
  private members: readonly NodeId[];
  /** Raft id → address of every member, kept current by setMembers (the Raft driver reads it). */
  private readonly peers = new Map<number, TransportAddress>();
  private readonly reported = new Map<NodeId, Version>();
  /** What each peer acknowledged of our reports. */
  private readonly confirmed = new Map<NodeId, Version>();
  private readonly listeners: ((f: EngineFrontiers) => void)[] = [];
  private readonly sessions: SessionCache;
  private globalPersisted: Version = VERSION_NONE;
  private stabilityMicros = 0;
  private flushScheduled = false;
  private timer: NodeJS.Timeout | undefined;
  private unregister: (() => void) | undefined;
  private closed = false;

  private constructor(private readonly options: RaftOrderingEngineOptions) {
    this.members = options.members;
    this.sessions = new SessionCache(options.transport);
    for (const m of options.members) {
      this.reported.set(m, VERSION_NONE);
      this.peers.set(raftIdOf(m), options.addresses.get(m)!);
    }
  }

  /** Starts this member's Raft (the first member campaigns at once, to elect without waiting). */
  static async start(options: RaftOrderingEngineOptions): Promise<RaftOrderingEngine> {
    if (!Number.isInteger(options.groupId) || options.groupId < 1 || options.groupId > 0xffff_ffff) {
      throw new SquallError(`raft shard group id ${options.groupId} must be 1..2^32-1 (0 is the membership log)`, 'CONFIG');
    }
    const engine = new RaftOrderingEngine(options);
    const tickMs = options.tickMs ?? 10;
    const heartbeatTicks = options.heartbeatTicks ?? 5;
    engine.unregister = RequestMux.on(options.transport, SHARD_REPORT_TYPE, prefixedGroup)
      .register(options.groupId, (request) => engine.receiveReport(request));
    engine.shard = await RaftShardDriver.start({
      id: raftIdOf(options.self),
      peers: engine.peers,
      voters: options.join === true ? [] : options.members.map(raftIdOf),
      transport: options.transport,
      storage: options.storage,
      groupId: options.groupId,
      application: engine.application(),
      tickMs,
      compactEvery: options.compactEvery ?? 20_000,
      core: { heartbeatTicks, electionTicks: Math.max(options.electionTicks ?? 30, 2 * heartbeatTicks + 1) },
      callTimeoutMs: options.callTimeoutMs ?? 10_000,
      attemptTimeoutMs: options.attemptTimeoutMs ?? 1000,
    });
    if (options.join !== true && options.members[0] === options.self && options.members.length > 1) {
      engine.shard.raft.core.campaign();
    }
    engine.timer = setInterval(() => engine.onTimer(), options.reportRetryMs ?? 100);
    return engine;
  }

  /** The Raft driver underneath (role, leader, counters). */
  get raft(): RaftShardDriver['raft'] {
    return this.shard.raft;
  }

  /** The shard driver's counters (forwarded, retries, duplicates answered from the cache, ...). */
  get shardCounters(): RaftShardDriver['counters'] {
    return this.shard.counters;
  }

  async send(payload: Uint8Array): Promise<EngineReceipt> {
    const framed = new Uint8Array(CALLER_BYTES + payload.byteLength);
    new DataView(framed.buffer).setUint32(0, this.options.self);
    framed.set(payload, CALLER_BYTES);
    const { reply } = await this.shard.call(framed);
    const version = new DataView(reply.buffer, reply.byteOffset, reply.byteLength).getBigInt64(0) as Version;
    return { viewId: versionViewId(version), position: versionPosition(version), timestamp: decodeHlc(reply, 8) };
  }

  readBarrier(): Promise<void> {
    return this.shard.read();
  }

  persisted(version: Version): void {
    this.noteReport(this.options.self, version);
    this.scheduleFlush();
  }

  onFrontiers(listener: (f: EngineFrontiers) => void): void {
    this.listeners.push(listener);
  }

  /**
   * The shard's members changed (a view change): the persisted frontier covers these only, and
   * the Raft leader moves the configuration toward them one step at a time (add a new member as
   * a learner, promote it once its log matches, remove members that left: `nextVoterStep`, the
   * rule the membership log's voters follow), on its timer until they match.
   */
  setMembers(members: readonly NodeId[], addresses: ReadonlyMap<NodeId, TransportAddress> = new Map()): void {
    this.members = members;
    for (const m of members) {
      const address = addresses.get(m);
      if (address !== undefined) this.peers.set(raftIdOf(m), address);
    }
    this.reconfigure();
    this.recomputeGlobal();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.unregister?.();
    await this.shard?.close();
    await this.options.storage.close();
  }

  /** The ShardApplication the Raft shard runs: every member delivers each call in log order. */
  private application(): ShardApplication {
    return {
      execute: (payload: Uint8Array, meta: ShardCallMeta): Uint8Array => {
        const receipt = new Uint8Array(RECEIPT_BYTES);
        new DataView(receipt.buffer).setBigInt64(0, meta.version);
        encodeHlc(meta.timestamp, receipt, 8);
        if (payload.byteLength < CALLER_BYTES) {
          this.counters.malformedCalls++; // every member skips it alike
          return receipt;
        }
        const sender = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0) as NodeId;
        this.options.onDeliver({ sender, version: meta.version, timestamp: meta.timestamp, payload: payload.subarray(CALLER_BYTES) });
        this.advanceStability(meta.timestamp);
        return receipt;
      },
      snapshot: () => this.options.state.snapshot(),
      restore: (bytes) => {
        this.counters.snapshotsRestored++;
        this.options.state.restore(bytes);
      },
    };
  }

  private advanceStability(time: Hlc): void {
    // Later calls are stamped after `time`, so none is below time.micros: F = time.micros.
    if (time.micros > this.stabilityMicros) {
      this.stabilityMicros = time.micros;
      this.scheduleFlush();
    }
  }

  /**
   * Kept for any node: a member's report may arrive before this member installs the view that
   * adds it (the report is acknowledged, so it is not sent again until the frontier moves).
   */
  private noteReport(node: NodeId, version: Version): void {
    if (version <= (this.reported.get(node) ?? VERSION_NONE)) return; // old news
    this.reported.set(node, version);
    this.recomputeGlobal();
  }

  private recomputeGlobal(): void {
    let min: Version | undefined;
    for (const m of this.members) {
      const v = this.reported.get(m) ?? VERSION_NONE;
      if (min === undefined || v < min) min = v;
    }
    if (min !== undefined && min > this.globalPersisted) {
      this.globalPersisted = min;
      this.scheduleFlush();
    }
  }

  /** Once per event-loop turn: report our persisted frontier to peers, tell the listeners. */
  private scheduleFlush(): void {
    if (this.flushScheduled || this.closed) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.closed) return;
      this.sendReports();
      const frontiers: EngineFrontiers = {
        globalPersistedVersion: this.globalPersisted,
        stabilityFrontierMicros: this.stabilityMicros,
      };
      for (const listener of this.listeners) listener(frontiers);
    });
  }

  private sendReports(): void {
    const own = this.reported.get(this.options.self) ?? VERSION_NONE;
    if (own === VERSION_NONE) return;
    for (const peer of this.members) {
      if (peer === this.options.self || (this.confirmed.get(peer) ?? VERSION_NONE) >= own) continue;
      const address = this.peers.get(raftIdOf(peer));
      if (address === undefined) continue;
      const body = new Uint8Array(REPORT_BYTES);
      const view = new DataView(body.buffer);
      view.setUint32(0, this.options.self);
      view.setBigInt64(4, own);
      this.counters.reportsSent++;
      this.sessions.get(address)
        .then((s) => s.call(SHARD_REPORT_TYPE, prefixGroup(this.options.groupId, body), { timeoutMs: 1000 }))
        .then((ack) => {
          // An empty answer: the peer's engine is not registered yet; the retry timer resends.
          if (ack.byteLength > 0 && own > (this.confirmed.get(peer) ?? VERSION_NONE)) this.confirmed.set(peer, own);
        }, () => undefined);
    }
  }

  private onTimer(): void {
    if (this.closed) return;
    this.sendReports();
    this.reconfigure();
  }

  /** On the leader: the next step of the Raft configuration toward the shard's members. */
  private reconfigure(): void {
    const raft = this.shard?.raft;
    if (raft === undefined || this.closed || raft.core.role !== 'leader') return;
    const step = nextVoterStep(voterPlanInputOf(raft.core.status(), this.members.map(raftIdOf)));
    if (step === undefined) return;
    try {
      if (step.kind === 'transferLeadership') raft.transferLeadership(step.node);
      else raft.proposeConfChange({ op: step.kind, node: step.node }).catch(() => undefined);
    } catch (error) {
      if (!(error instanceof RaftProposalError)) throw error; // one change at a time: next tick
    }
  }

  private receiveReport(request: Uint8Array): Uint8Array {
    if (request.byteLength !== GROUP_PREFIX_BYTES + REPORT_BYTES) {
      this.counters.reportsMalformed++;
      return REPORT_ACK;
    }
    const view = new DataView(request.buffer, request.byteOffset + GROUP_PREFIX_BYTES, REPORT_BYTES);
    this.counters.reportsReceived++;
    this.noteReport(view.getUint32(0) as NodeId, view.getBigInt64(4) as Version);
    return REPORT_ACK;
  }
}
