/**
 * MembershipDriver: runs one node's membership layer over the Transport, with real timers. It
 * composes the pure cores exactly as the membership simulation does (test/sim/membership-sim.ts
 * and its node, test/support/membership-sim-node.ts, are this file's blueprint and proof):
 *
 *  - the membership log: a RaftDriver among the configured voters (the first `votersCount`
 *    founders, a fixed set: see "Limits" in README.md). A voter feeds the committed membership
 *    entries from its own Raft; any other node pulls them from the voters (`fetch`). Either way
 *    the entries reach the ViewChangeCore in log order, by Raft index;
 *  - proposals: the core's `ready().proposals` go to the Raft leader (a voter that leads proposes;
 *    everyone else sends `propose` to the leader it knows, or to a voter, which forwards once);
 *  - FailureDetectorCore over `hb` messages (with the sender's address, so that a restarted
 *    process is never taken for the member it replaced); transport `peer-failed` events and
 *    messages from a member's id under another address count as failures at once;
 *  - ViewChangeCore: suspicions → suspect(); `wedge` → wedge every MulticastDriver of the view and
 *    report receiveState(); `deliver` → applyTrim per shard, persist (the `persist` hook), then
 *    delivered(); `install` → installView / create / close the MulticastDrivers of the new view,
 *    start state transfers, reset the failure detector, emit `view`;
 *  - joins: a node that is not a member calls `join` on its seeds until one welcomes it with the
 *    view it joined in and that view's seal index; state transfer (chunked, pulled by the joiner
 *    from the shard's source) runs before the joiner's held deliveries are handed over.
 *
 * The effects of the core run one at a time in order on an async chain (creating a multicast
 * driver connects sessions), while ticks, heartbeats and log entries keep arriving.
 */
import { randomBytes } from 'node:crypto';
import { Packr } from 'msgpackr';
import { SquallError, TimeoutError } from '../core/errors.js';
import {
  nodeId, viewId as makeViewId, type NodeId, type ShardIndex, type SubgroupId, type ViewId,
} from '../core/ids.js';
import { FailureDetectorCore } from '../membership/failure-detector-core.js';
import { SerialPump } from '../membership/serial-pump.js';
import { nextVoterStep, voterPlanInputOf } from '../membership/voter-plan.js';
import type { Allocator } from '../membership/layout.js';
import {
  NodeIdInUseError, ViewChangeCore, decodeEntry, encodeEntry, initialView, votersOf,
  type MembershipEntry, type ReceiveReportMessage, type StateTransfer, type ViewChangeEffect,
} from '../membership/view-change-core.js';
import {
  RestartProposer, acceptorAccept, acceptorPrepare, ballotQuorums, keptVersion, nextBallot, quorumRuleOf, reconcileShard,
  restartAcceptorOf, restartLeadStep, restartLeader, restartQuorum, restartView, type AcceptorReply, type Ballot,
  type PeerVersion, type ProposerStep, type QuorumRule, type RaftVoters, type RestartAcceptorState, type RestartInstance, type RestartTrim,
} from '../membership/restart.js';
import {
  movesToLogView, peerSameId, replaySeals, restartLogRule, type LogRule, type LogSummary, type RestartFrom,
} from '../membership/restart-log.js';
import { decodeView, encodeView, type View } from '../membership/view.js';
import type { MulticastLimits } from '../multicast/config.js';
import { computeTrim } from '../multicast/ragged-edge.js';
import { RaftProposalError } from '../raft/errors.js';
import { MemoryStorage, loadInitialState, persistedConf, type RaftStorage } from '../raft/storage.js';
import type { MembershipRecord, RestartDecisionRecord } from './membership-store.js';
import { EntryType, type Entry, type Snapshot } from '../raft/types.js';
import { WRAPPED_TRANSPORT, type RequestContext, type Transport, type TransportAddress, type TransportSession } from '../transport/transport.js';
import {
  MulticastDriver, forgetMulticastSession, prepareMulticastTransport, type MulticastDelivery, type MulticastView,
} from './multicast-driver.js';
import { RaftDriver } from './raft-driver.js';
import { TransferGate } from './transfer-gate.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

/** The request type of membership messages (src/transport/request-types.ts). */
export const MEMBERSHIP_REQUEST_TYPE = REQUEST_TYPES.membership;

/** Identifies a shard of the layout. */
export interface ShardRef {
  readonly subgroupId: SubgroupId;
  readonly shardIndex: ShardIndex;
}

/**
 * The replicated state of this node's shards, for state transfer. Versions are the multicast
 * versions of delivered messages (view id << 32 | position): they only grow.
 */
export interface ShardStateStore {
  /** The newest version this node holds for the shard (-1n if none). */
  latestVersion(shard: ShardRef): bigint;
  /** Every version above `afterVersion`, in chunks, in order (may be built lazily). */
  stateChunks(shard: ShardRef, afterVersion: bigint): Iterable<Uint8Array>;
  /** Applies one chunk from another node's stateChunks(); re-applying one is harmless. */
  applyStateChunk(shard: ShardRef, chunk: Uint8Array): void;
  /** Drops every version above `version` (restart reconciliation); resolves once durable. */
  truncate?(shard: ShardRef, version: bigint): Promise<void>;
  /**
   * The newest version at or below `version` this node holds (-1n: none), or undefined if it
   * cannot tell (history trimmed). Replicas record the same versions for the same calls, so a
   * joiner whose latest version the source lacks holds versions the group never delivered.
   */
  floorVersion?(shard: ShardRef, version: bigint): bigint | undefined;
}

export interface MembershipDriverOptions {
  readonly self: NodeId;
  readonly transport: Transport;
  readonly allocator: Allocator;
  /**
   * A hash of the registered types and their method signatures and of the layout policies:
   * a joiner whose hash differs is refused (JoinRefusedError), since it would compute other views.
   */
  readonly layoutHash: string;
  /** The founding members with their addresses (every node passes the same list). */
  readonly founders: readonly { readonly id: NodeId; readonly address: TransportAddress }[];
  /** True on a founder starting a new group; a node that joins later (or restarts) passes false. */
  readonly found: boolean;
  /** Members' addresses to ask for a join (any member will do). */
  readonly seeds?: readonly TransportAddress[];
  /** How many founders replicate the membership log (default 3). */
  readonly votersCount?: number;
  readonly raftStorage?: RaftStorage;
  /**
   * The membership log's Raft storage of an epoch (MembershipStore.raftStorage); takes
   * precedence over raftStorage. An epoch is one Raft group: '0' from the founding; a total
   * restart's decision names a new one (restart view id, leader, time: two decisions never share
   * a Raft state, an aborted restart's included).
   * view's id after a total restart.
   */
  readonly raftStorageFor?: (epoch: string) => RaftStorage;
  /** The view record this node persisted in an earlier run: it restarts (see restart()). */
  readonly record?: MembershipRecord;
  /** Makes a view record durable: on every install (before its multicast) and after a trim. */
  readonly saveRecord?: (record: MembershipRecord) => Promise<void>;
  /** How long a total restart waits for a majority of the last view and of each shard (60 s). */
  readonly restartTimeoutMs?: number;
  /** Once that majority is back, how long the restart leader waits for the others (1 s). */
  readonly restartGraceMs?: number;
  /**
   * At a total restart: the voters of this node's raft-ordered shards of its `recorded` view as its
   * persisted Raft logs hold them. The restart also waits for a majority of those (restart.ts RaftVoters), since a
   * raft shard whose configuration lagged the view could not elect a leader otherwise.
   */
  readonly raftVoters?: (recorded: View) => Promise<readonly RaftVoters[]>;
  readonly tickMs?: number;
  readonly heartbeatMs?: number;
  readonly failureTimeoutMs?: number;
  readonly joinTimeoutMs?: number;
  /** Re-propose a membership change or trim that has not committed after this long (default 50). */
  readonly proposalRetryMs?: number;
  readonly multicastLimits?: MulticastLimits;
  /** The limits of a shard's layout profile (the group's `[subgroup.<profile>]`); else multicastLimits. */
  readonly multicastLimitsFor?: (profile: string) => MulticastLimits;
  readonly state?: ShardStateStore;
  /** Ordered deliveries of this node's shards, in order (held while a state transfer runs). */
  readonly onDeliver?: (shard: ShardRef, delivery: MulticastDelivery) => void;
  /**
   * A delivery that a state transfer already brought in (TransferGate): not applied again, but
   * its sender may still await this node's reply.
   */
  readonly onInState?: (shard: ShardRef, delivery: MulticastDelivery) => void;
  /** Persist everything delivered up to the trims before the next view is installed. */
  readonly persist?: (viewId: ViewId) => Promise<void>;
  /** How long one state-transfer call may take before the joiner asks again. */
  readonly stateTransferTimeoutMs?: number;
  /** Progress lines (committed entries, effects, suspicions), for operators and debugging. */
  readonly log?: (line: string) => void;
}

/**
 * This node was removed from the group (it failed, was suspected, left, or stopped after an
 * internal error). Not the group layer's NodeRemovedError, which names another member that left
 * before it replied.
 */
export class RemovedFromGroupError extends SquallError {
  constructor(node: NodeId, viewIdValue: ViewId, reason: string) {
    super(
      `node ${node} is no longer a member: removed in view ${viewIdValue} (${reason}). ` +
        'Fix: start the node again so that it rejoins as a new member (it receives state by transfer).',
      'REMOVED_FROM_GROUP',
    );
  }
}

/** A total restart did not find enough of the last view's members back in time. */
export class RestartTimeoutError extends SquallError {
  constructor(
    viewIdValue: number, missing: readonly NodeId[], short: string, timeoutMs: number, previous?: QuorumRule, log?: string,
  ) {
    super(
      `restart of view ${viewIdValue}: after ${timeoutMs} ms, members [${missing.join(', ')}] are not back` +
        `${short ? ` and ${short} lack a majority` : ''}` +
        (previous !== undefined
          ? `, and the nodes back do not hold half of view ${previous.viewId} [${previous.members.join(', ')}] (the view ` +
            'before, which a restart must hear from in case it decided first)'
          : '') +
        (log !== undefined ? `, and it waits for ${log}` : '') +
        '. The group resumes once a majority of the view and of every shard restarted from their data dirs. ' +
        'Fix: start those nodes with their data dirs, or raise group.restart_timeout_s.',
      'RESTART_TIMEOUT',
    );
  }
}

/** A member refused this node's join for a reason that retrying cannot fix. */
export class JoinRefusedError extends SquallError {
  constructor(by: TransportAddress, reason: string) {
    super(`join refused by ${by}: ${reason}`, 'JOIN_REFUSED');
  }
}

type Listener = {
  view: (view: View) => void;
  removed: (error: RemovedFromGroupError) => void;
  /** This node's clean leave was refused (it would have left a minority). */
  leaveRefused: () => void;
};

type Wire =
  /** `inc`: the sender process's incarnation (random per driver): see `speaking`. */
  | { t: 'hb'; from: number; address: string; inc: string }
  | { t: 'report'; from: number; address: string; inc: string; message: ReceiveReportMessage }
  | { t: 'propose'; entry: Uint8Array; hops: number }
  | { t: 'fetch'; from: number }
  /**
   * `after`: sent by a node restarting over its data dir, the id of the last view its earlier
   * process recorded; a welcome into that view or an earlier one would be that process's.
   */
  | { t: 'join'; node: number; address: string; layoutHash: string; after?: number; inc: string }
  /** A founder without a view record asks whether the group already runs (see start()). */
  | { t: 'founding'; node: number; address: string; inc: string }
  | { t: 'stateOpen'; view: number; subgroupId: number; shardIndex: number; after: string }
  | { t: 'stateNext'; token: number }
  | { t: 'stateLatest'; view: number; subgroupId: number; shardIndex: number }
  /**
   * `epoch`: the membership-log epoch `view` was installed in (it names the restart instance);
   * `previous`: the quorum rule of `view`'s predecessor, when its record has one.
   */
  | {
    t: 'restartHello'; node: number; address: string; view: Uint8Array; epoch: string; trims?: MembershipRecord['trims'];
    previous?: QuorumRule; raftVoters?: readonly RaftVoters[]; log?: WireLogSummary;
    /** `view` is one only a membership log seals: the trims of the round that sealed it, and whether it is tentative. */
    sealedTrims?: RestartRun['sealedTrims']; tentative?: boolean;
  }
  /** A chosen restart decision (accepted by a quorum): every node of its view adopts it. */
  | { t: 'restartDecision'; decision: RestartDecisionRecord }
  /** The restart leader's phase 1 and 2 (src/membership/restart.ts); answered `restartPaxos`. */
  | { t: 'restartPrepare'; node: number; address: string; instance: RestartInstance; ballot: Ballot }
  | { t: 'restartAccept'; node: number; address: string; instance: RestartInstance; ballot: Ballot; decision: RestartDecisionRecord };

/** Answers to restartHello, restartPrepare and restartAccept. */
type RestartReply =
  | {
    t: 'restartWait'; node: number; address: string; view: Uint8Array; epoch: string; trims?: MembershipRecord['trims'];
    previous?: QuorumRule; raftVoters?: readonly RaftVoters[]; log?: WireLogSummary;
    /** `view` is one only a membership log seals: the trims of the round that sealed it, and whether it is tentative. */
    sealedTrims?: RestartRun['sealedTrims']; tentative?: boolean;
  }
  | { t: 'restartDecided'; decision: RestartDecisionRecord }
  | { t: 'restartPaxos'; reply: AcceptorReply<RestartDecisionRecord> }
  | { t: 'live' }
  | { t: 'notMember' };

/** A restarting node's own membership log, as its hellos carry it (restart-log.ts LogSummary). */
type WireLogSummary = Omit<LogSummary, 'sealed'> & {
  readonly sealed: readonly (Omit<LogSummary['sealed'][number], 'view'> & { readonly view: Uint8Array })[];
};

function decodeLogSummary(wire: WireLogSummary): LogSummary {
  return { ...wire, sealed: wire.sealed.map((s) => ({ ...s, view: decodeView(s.view) })) };
}

/** What a restarting node knows while the group agrees on the view to resume in. */
interface RestartRun {
  /** The newest view record known (this node's or one heard of) and the epoch it was installed in. */
  last: View;
  lastEpoch: string;
  /** The quorum rule of `last`'s predecessor in its epoch, if its record carries it (ballotQuorums). */
  previous: QuorumRule | undefined;
  trims: MembershipRecord['trims'];
  /** This node's own record: persisted again with the acceptor state. */
  readonly record: MembershipRecord;
  /** Nodes heard from (hello or answer) with their address and when. */
  readonly back: Map<NodeId, { address: TransportAddress; atMs: number }>;
  /** Each node's raft shard voters as its persisted logs hold them (this node's included). */
  readonly raftVoters: Map<NodeId, readonly RaftVoters[]>;
  /** Each node's membership log summary (this node's included; restart-log.ts). */
  readonly logs: Map<number, LogSummary>;
  /** The log rule as of this turn of the restart loop (restartLogRule). */
  logRule: LogRule | undefined;
  /**
   * `last` is a view only a membership log seals, by entries no node back knows committed: its
   * ballots also need acceptances from a quorum of its predecessor (restart-log.ts).
   */
  tentative: boolean;
  /** When `last` came from a log: the trims of the round that sealed it (its predecessor's). */
  sealedTrims: { readonly viewId: number; readonly trims: NonNullable<MembershipRecord['trims']>['trims'] } | undefined;
  quorumSinceMs: number | undefined;
  /** The chosen decision, once known (only a chosen one is acted on). */
  decided: RestartDecisionRecord | undefined;
  live: boolean;
  /** This node as an acceptor of the decision (persisted in the record before each answer). */
  acceptor: RestartAcceptorState<RestartDecisionRecord> | undefined;
  /** This node's ballot while it leads the decision. */
  proposer: RestartProposer<RestartDecisionRecord> | undefined;
  /** This node's own membership log summary, as its hellos carry it. */
  ownLog?: WireLogSummary;
  ballotStartedMs: number;
  /** The lowest round this node's next ballot may use (above every round it has seen refused). */
  nextRound: number;
}

/** A run that has heard from nobody yet and runs no ballot. */
function newRestartRun(
  known: Pick<RestartRun, 'last' | 'lastEpoch' | 'previous' | 'trims' | 'record' | 'raftVoters' | 'decided' | 'acceptor'> &
    Partial<Pick<RestartRun, 'logs'>>,
): RestartRun {
  return {
    logs: new Map(), ...known, back: new Map(), quorumSinceMs: undefined, live: false, proposer: undefined, ballotStartedMs: 0, nextRound: 1,
    logRule: undefined, tentative: false, sealedTrims: undefined,
  };
}

/** A ballot that neither got its decision chosen nor was refused is abandoned after this long. */
const BALLOT_TIMEOUT_MS = 1500;

/** Reconciliation of the restart view's shards: the trims of the view the group restarted from. */
interface Restarted {
  readonly viewId: number;
  readonly from: View;
  readonly trims: ReadonlyMap<string, RestartTrim>;
  /** This node delivered up to those trims itself before it went down. */
  readonly trimApplied: boolean;
  /** The decision, as answerOutsideRestart hands it on (with its trimsViewId). */
  readonly decision: RestartDecisionRecord;
  /**
   * Set once this node's shards of the restart view hold nothing past those trims (adoptRestart
   * truncated them): the restart view's record carries them, so that a crash before the
   * reconciliation ended does not lose them (a restart from that record applies them to the
   * nodes that never installed the restart view).
   */
  carried?: MembershipRecord['trims'];
}

type JoinReply =
  | { t: 'welcome'; view: Uint8Array; sealedAtIndex: number; epoch?: string }
  | { t: 'pending' }
  | { t: 'notMember' }
  | { t: 'refused'; code: string; message: string };

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const EMPTY = new Uint8Array(0);
const FETCH_BATCH = 256;
const FETCH_BACKOFF_MS = 1000;
const shardNumber = (s: ShardRef): number => s.subgroupId * 1024 + s.shardIndex;
const shardName = (s: ShardRef): string => `${s.subgroupId}/${s.shardIndex}`;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What the membership-log rule waits for, in words (progress lines, RestartTimeoutError). */
function describeLogWait(wait: LogRule['waiting']): string | undefined {
  if (wait === undefined) return undefined;
  return wait.kind === 'log'
    ? `a membership log: one of the voters [${wait.voters}] (no node back holds one)`
    : `a majority of the membership log's voters [${wait.voters}] (the configuration of node ${wait.holder}'s log, the most up-to-date back)`;
}

/** What a tentative view's restart waits for, in words: a quorum of its predecessor. */
function tentativeWait(previous: QuorumRule, back: ReadonlySet<NodeId>): string {
  return `a quorum of view ${previous.viewId} [${previous.members}], not back [${previous.members.filter((m) => !back.has(nodeId(m)))}] ` +
    '(a majority of it and of each of its shards: this view is sealed only by log entries not known committed, so its acceptances need one)';
}

interface ShardRun {
  readonly ref: ShardRef;
  driver: MulticastDriver;
  /** Holds deliveries while the shard's state is on its way, then skips those the state holds. */
  readonly gate: TransferGate;
  /** In the restart view: the version kept after truncation (set once truncated). */
  restartKept?: bigint;
}

export class MembershipDriver {
  private readonly options: MembershipDriverOptions;
  private readonly self: NodeId;
  private readonly transport: Transport;
  private readonly tickMs: number;
  /** The membership log's voters as of the installed view (the first votersCount members). */
  private voters: readonly NodeId[];
  private readonly votersCount: number;
  /**
   * Every node known to have been a voter: they hold the log even after leaving the voters (a
   * view change may remove all of them at once, and the Raft leader may then be a node that is
   * rejoining), so fetches and proposals go to them too.
   */
  private readonly logHolders = new Set<NodeId>();
  /** Raft id → address of every node Raft may talk to (grows with the views). */
  private readonly raftPeers = new Map<number, TransportAddress>();
  private raftStarting = false;
  private raft: RaftDriver | undefined;
  private core: ViewChangeCore | undefined;
  private fd: FailureDetectorCore | undefined;
  private status: 'new' | 'restarting' | 'joining' | 'member' | 'removed' | 'closed' = 'new';
  /** The membership log's epoch (see raftStorageFor). */
  private epoch = '0';
  private restarting: RestartRun | undefined;
  /**
   * What the view record says of the installed view's predecessor (`previous`) and the log index
   * that sealed it (`sealIndex`), kept by each rewrite; for a restart view, also the trims this
   * node was truncated to (Restarted.carried), until its own are committed.
   */
  private recordPrevious: Pick<MembershipRecord, 'previous' | 'sealIndex' | 'trims'> = {};
  private restarted: Restarted | undefined;
  private partitioned = false;
  /** Committed membership entries by Raft index; every index up to knownUpTo is known. */
  private readonly log = new Map<number, Uint8Array>();
  private knownUpTo = 0;
  private readonly fetching = new Set<NodeId>();
  private readonly fetchFailedAt = new Map<NodeId, number>();
  private readonly history: { view: View; sealedAtIndex: number }[] = [];
  private shards = new Map<string, ShardRun>();
  /**
   * This process's incarnation: random per driver, carried by heartbeats, reports and joins, so
   * that a member tells a node's new process (one that lost its data dir, or is retrying a join
   * its earlier process made) from the process it has been hearing.
   */
  private readonly incarnation = randomBytes(8).toString('hex');
  /** Per member of the installed view, the incarnation its heartbeats and reports carry. */
  private readonly speaking = new Map<NodeId, string>();
  /** Per node whose join this member passed to the core, the incarnation that asked (answerJoin). */
  private readonly joinAsks = new Map<NodeId, string>();
  private readonly sessions = new Map<TransportAddress, Promise<TransportSession>>();
  private readonly transfers = new Map<number, { chunks: Iterator<Uint8Array>; at: number }>();
  private transferToken = 1;
  private effects: Promise<void> = Promise.resolve();
  private readonly pumper = new SerialPump(() => this.pumpOnce(), () => this.status === 'member');
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: { [K in keyof Listener]: Listener[K][] } = { view: [], removed: [], leaveRefused: [] };
  /**
   * The transport the driver's Raft, multicast and membership handlers use: every request that
   * arrives through it proves its sender alive to the failure detector (a busy member's
   * multicast and Raft traffic count, not only its heartbeats).
   */
  private readonly watched: Transport;
  /** Member addresses of the installed view → node, for the activity above. */
  private memberByAddress = new Map<TransportAddress, NodeId>();
  private lastTickAtMs = 0;
  readonly counters = {
    heartbeatsSent: 0, messagesDropped: 0, sendErrors: 0, proposals: 0, installs: 0, stateChunks: 0,
    /** Ticks skipped because this node's event loop had stalled (see onTick). */
    stalls: 0,
    /**
     * Suspicions raised, by cause: a transport session to the member failed (its port reported
     * closed, or the transport's own timeout), or the failure detector's timeout ran out.
     */
    suspicionsTransport: 0, suspicionsTimeout: 0,
  };

  constructor(options: MembershipDriverOptions) {
    this.options = options;
    this.self = options.self;
    this.transport = options.transport;
    this.watched = watchTransport(options.transport, (peer) => {
      const node = this.memberByAddress.get(peer);
      if (node !== undefined && this.status === 'member') this.fd!.heartbeatReceived(node);
    });
    this.tickMs = options.tickMs ?? 10;
    this.votersCount = options.votersCount ?? 3;
    this.voters = options.founders.slice(0, this.votersCount).map((f) => f.id);
    for (const f of options.founders) this.raftPeers.set(Number(f.id), f.address);
    for (const v of this.voters) this.logHolders.add(v);
  }

  // ---- Public API ---------------------------------------------------------------------------

  /** The installed view. Throws before start() resolved. */
  current(): View {
    if (this.core === undefined) throw new SquallError('no view yet: await start() first', 'NO_VIEW');
    return this.core.view;
  }

  on<K extends keyof Listener>(event: K, listener: Listener[K]): void {
    this.listeners[event].push(listener);
  }

  get isMember(): boolean {
    return this.status === 'member';
  }

  /**
   * The id of the restart view this node resumed in after a total restart (it adopted the chosen
   * decision), else undefined: a node that rejoined a running group, or never restarted.
   */
  get restartViewId(): number | undefined {
    return this.restarted?.viewId;
  }

  /** Whether this node leads the membership log's Raft group (it is then the group leader). */
  get isLeader(): boolean {
    return this.raft?.core.role === 'leader';
  }

  /** The multicast driver of a shard of the current view this node belongs to. */
  multicast(shard: ShardRef): MulticastDriver | undefined {
    return this.shards.get(shardName(shard))?.driver;
  }

  /** Whether this node still waits for the state of `shard`. */
  awaitingState(shard: ShardRef): boolean {
    return this.shards.get(shardName(shard))?.gate.waiting === true;
  }

  /**
   * Starts Raft (on a voter), the timers and the transport handler; a founder installs view 0, a
   * joiner asks its seeds until it is welcomed. Resolves once this node is a member; rejects with
   * JoinRefusedError (incompatible layout hash) or NodeIdInUseError / TimeoutError after
   * joinTimeoutMs.
   */
  async start(): Promise<void> {
    if (this.status !== 'new') throw new SquallError('start() was called twice', 'ALREADY_STARTED');
    this.watched.handle(MEMBERSHIP_REQUEST_TYPE, (request, context) => this.onRequest(request, context));
    prepareMulticastTransport(this.watched);
    this.timer = setInterval(() => this.onTick(), this.tickMs);
    if (this.options.record !== undefined) {
      await this.restart(this.options.record);
      return;
    }
    if (this.options.found) {
      // A founder without a view record whose group already runs lost its data dir (or was
      // started with persistence.reset): founding view 0 again would put a process that forgot
      // its Raft term and vote, and its shards' state, back as that member. It joins instead, as
      // a new member once the group removed its earlier process (answerJoin).
      if (!(await this.awaitFounders())) {
        if (this.voters.includes(this.self)) await this.startRaft(this.voters);
        await this.becomeMember(initialView(this.options.founders, this.options.allocator), 0);
        return;
      }
      this.options.log?.('start: the group already runs with an earlier process of this node; joining as a new member');
    } else if (this.voters.includes(this.self)) {
      await this.startRaft(this.voters);
    }
    this.status = 'joining';
    await this.join();
  }

  /**
   * A founder waits until every other founder's endpoint answers (retrying until
   * restartTimeoutMs): view 0's multicast connects to all of them at once, and a founder whose
   * process is still starting would fail that connect and be suspected at once (seen with
   * `squall demo` at load 12). Each is asked whether the group already runs with an earlier
   * process of this node (`founding`); true if one says so.
   */
  private async awaitFounders(): Promise<boolean> {
    const timeoutMs = this.options.restartTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    let running = false;
    const ask = pack({ t: 'founding', node: this.self, address: this.transport.address, inc: this.incarnation });
    await Promise.all(this.options.founders.filter((f) => f.id !== this.self).map(async (f) => {
      for (;;) {
        try {
          const session = await this.session(f.address);
          const answer = packr.unpack(await session.call(MEMBERSHIP_REQUEST_TYPE, ask, { timeoutMs: 1000 })) as { running?: boolean };
          if (answer.running === true) running = true;
          return;
        } catch {
          if (this.status === 'closed') throw new SquallError('closed while starting', 'CLOSED');
          if (Date.now() > deadline) throw new TimeoutError(`waiting for founder ${f.id} at ${f.address}`, timeoutMs);
          await sleep(50);
        }
      }
    }));
    return running;
  }

  /** Asks to leave the group cleanly; the `removed` event follows once the change commits. */
  leave(): void {
    if (this.status !== 'member') return;
    this.core!.leave();
    this.pump();
  }

  /** Stops timers, Raft and the multicast drivers; does not close the transport. */
  async close(): Promise<void> {
    if (this.status === 'closed') return;
    this.status = 'closed';
    if (this.timer) clearInterval(this.timer);
    await this.raft?.close();
    for (const run of this.shards.values()) await run.driver.close();
    this.shards.clear();
    for (const s of this.sessions.values()) s.then((x) => x.close(), () => undefined);
  }

  /**
   * Runs Raft here: as a founding voter (`founding` = the founding voters), or with no voters as a
   * node the leader is about to add (it is caught up as a learner, then promoted).
   */
  private async startRaft(founding: readonly NodeId[]): Promise<void> {
    if (this.raft !== undefined || this.raftStarting) return;
    this.raftStarting = true;
    try {
      this.raft = await RaftDriver.start({
        id: this.self, peers: this.raftPeers, voters: founding.map(Number), transport: this.watched,
        storage: this.options.raftStorageFor?.(this.epoch) ?? this.options.raftStorage ?? new MemoryStorage(),
        tickMs: this.tickMs,
        // A leader's failure is noticed by Raft's election timeout: keep it near the failure
        // detector's (a membership change waits for a new leader), but at least 5 ticks.
        core: { electionTicks: this.electionTicks(), heartbeatTicks: this.electionTicks() > 5 ? 2 : 1 },
        stateMachine: {
          apply: (entry: Entry) => this.onRaftEntry(entry),
          restore: (snapshot: Snapshot) => this.onRaftSnapshot(snapshot),
          snapshot: () => packr.pack([this.knownUpTo, [...this.log]]),
        },
      });
    } finally {
      this.raftStarting = false;
    }
  }

  /**
   * Voter replacement (the install effect's voters): the Raft leader moves the log's voter set
   * toward the view's first votersCount members one step at a time: add a missing one as a
   * learner, promote it once it has caught up, then remove voters that left the view. Called on
   * every tick; a step waits while an earlier one is uncommitted (proposeConfChange refuses).
   */
  private reconfigureVoters(): void {
    const raft = this.raft;
    if (raft === undefined || raft.core.role !== 'leader' || this.status !== 'member') return;
    const status = raft.core.status();
    const step = nextVoterStep(voterPlanInputOf(status, this.voters.map(Number)));
    if (step === undefined) return;
    if (step.kind === 'transferLeadership') {
      try {
        raft.transferLeadership(step.node);
      } catch (error) {
        if (!(error instanceof RaftProposalError)) throw error;
      }
      return;
    }
    this.options.log?.(`voters: ${step.kind} ${step.node} (want [${this.voters}], have [${status.conf.voters}])`);
    const change = { op: step.kind, node: step.node };
    raft.proposeConfChange(change).catch(() => undefined);
  }

  private electionTicks(): number {
    const timeoutTicks = Math.round((this.options.failureTimeoutMs ?? 500) / this.tickMs);
    return Math.min(10, Math.max(5, timeoutTicks));
  }

  // ---- Total restart (src/membership/restart.ts) -----------------------------------------------

  /**
   * A node with a view record restarts: it says hello to the members of its last view (and the
   * seeds). If one of them is a live member of a running group, this node rejoins it like any
   * joiner (its shards then transfer only what it lacks). If they are all restarting, the restart
   * leader decides the view to resume in once a majority of the last view and of every shard is
   * back; every node adopts that decision, founds the next membership-log epoch in it and
   * reconciles its shards (reconcile()). Throws RestartTimeoutError after restartTimeoutMs.
   */
  private async restart(record: MembershipRecord): Promise<void> {
    this.status = 'restarting';
    this.epoch = record.epoch;
    const recorded = decodeView(record.view);
    const ownLog = await this.readLogSummary(record, recorded);
    const run = newRestartRun({
      last: recorded, lastEpoch: record.epoch, previous: record.previous, trims: record.trims, record,
      raftVoters: new Map([[this.self, (await this.options.raftVoters?.(recorded)) ?? []]]), decided: undefined,
      acceptor: restartAcceptorOf(record.restart),
      logs: new Map(ownLog !== undefined ? [[Number(this.self), decodeLogSummary(ownLog)]] : []),
    });
    run.ownLog = ownLog;
    this.restarting = run;
    const timeoutMs = this.options.restartTimeoutMs ?? 60_000;
    const deadline = Date.now() + timeoutMs;
    let loggedAtMs = -Infinity;
    const hellos = new Set<TransportAddress>();
    const recordedViewId = run.last.id;
    this.options.log?.(`restart: last view ${run.last.id} [${run.last.memberIds}], epoch ${record.epoch}` +
      (record.restart?.accepted !== undefined ? `, accepted a decision of ballot ${record.restart.accepted.ballot.round}.${record.restart.accepted.ballot.node}` : ''));
    for (;;) {
      if (this.status !== 'restarting') throw new SquallError('closed while restarting', 'CLOSED');
      if (run.live) {
        this.options.log?.('restart: a live member answered; rejoining the running group');
        this.restarting = undefined;
        this.status = 'joining';
        await this.join(recordedViewId);
        return;
      }
      if (run.decided !== undefined) {
        this.restarting = undefined;
        await this.adoptRestart(run.decided, record);
        return;
      }
      this.applyLogRule(run);
      const quorum = restartQuorum(run.last, this.backSet(run), run.previous, this.raftVotersKnown(run), run.logRule?.waiting, run.tentative);
      if (Date.now() > deadline) {
        const short = [
          ...quorum.shortShards.map((x) => `${x.typeName}/${x.subgroupIndex}/${x.shardIndex} (${x.back} of ${x.needed})`),
          ...quorum.shortRaft.map((r) => `raft shard ${r.shard}'s voters [${r.voters}] (its log's configuration)`),
          ...(quorum.tentativeShort ? [tentativeWait(run.previous!, this.backSet(run))] : []),
        ].join(', ');
        throw new RestartTimeoutError(
          run.last.id, quorum.missing, short, timeoutMs, quorum.previousShort ? run.previous : undefined, describeLogWait(quorum.shortLog),
        );
      }
      // Also the members of the recorded view: when `last` is a view only a log seals, they hold
      // its predecessor's members, through whom two leaders of two seals of one id hear each other.
      const addresses = new Set([
        ...run.last.members.filter((m) => m.id !== this.self).map((m) => m.address),
        ...(run.last.id !== recordedViewId ? recorded.members.filter((m) => m.id !== this.self).map((m) => m.address) : []),
        ...(this.options.seeds ?? []),
      ]);
      addresses.delete(this.transport.address);
      // One hello outstanding per address: connecting to a node that is not up yet may take a
      // while, and must not hold up the others.
      for (const address of addresses) {
        if (hellos.has(address)) continue;
        hellos.add(address);
        void this.sayHello(run, address).finally(() => hellos.delete(address));
      }
      this.decideRestart(run);
      if (Date.now() - loggedAtMs >= 1000 && run.decided === undefined && !run.live) {
        loggedAtMs = Date.now();
        // The quorum computed at the top of this turn: nothing since changed who is back.
        const back = this.backSet(run);
        this.options.log?.(`restart: view ${run.last.id}: back [${[...back]}], waiting for ` +
          `[${quorum.missing}]${quorum.previousShort ? ` and half of view ${run.previous!.viewId} [${run.previous!.members}]` : ''}` +
          quorum.shortRaft.map((r) => ` and a majority of raft shard ${r.shard}'s voters [${r.voters}]`).join('') +
          (quorum.shortLog !== undefined ? ` and ${describeLogWait(quorum.shortLog)}` : '') +
          (quorum.tentativeShort ? ` and ${tentativeWait(run.previous!, back)}` : '') +
          `${quorum.ready ? ' (quorum reached)' : ''}, leader ${restartLeader(run.last, back)}`);
      }
      if (run.decided === undefined && !run.live) await sleep(100);
    }
  }

  /**
   * This node's membership log of its record's epoch, summarised for the restart (restart-log.ts):
   * last term and index, persisted commit, the configuration's voters, and what the entries after
   * the record's seal index seal. Undefined without a log on disk (no raftStorageFor).
   */
  private async readLogSummary(record: MembershipRecord, recorded: View): Promise<WireLogSummary | undefined> {
    const open = this.options.raftStorageFor;
    if (open === undefined) return undefined;
    const storage = open(record.epoch);
    try {
      const state = await loadInitialState(storage);
      const bytes = new Map<number, Uint8Array>();
      if (state.snapshot !== undefined) {
        const [, list] = packr.unpack(state.snapshot.data) as [number, [number, Uint8Array][]];
        for (const [index, entry] of list) bytes.set(index, entry);
      }
      for (const e of state.entries) if (e.type === EntryType.Normal && e.data.length > 0) bytes.set(e.index, e.data);
      const entries: { index: number; entry: MembershipEntry }[] = [];
      for (const [index, b] of [...bytes].sort((a, c) => a[0] - c[0])) {
        try {
          entries.push({ index, entry: decodeEntry(b) });
        } catch {
          this.counters.messagesDropped++;
        }
      }
      const last = state.entries[state.entries.length - 1];
      const sealed = record.sealIndex === undefined ? [] : replaySeals({
        view: recorded, sealIndex: record.sealIndex, entries, allocator: this.options.allocator, votersCount: this.votersCount,
      });
      const summary: WireLogSummary = {
        epoch: record.epoch,
        lastTerm: last?.term ?? state.snapshot?.meta.term ?? 0,
        lastIndex: last?.index ?? state.snapshot?.meta.index ?? 0,
        commit: state.hardState.commit,
        voters: persistedConf(state).voters,
        sealed: sealed.map((x) => ({ ...x, view: encodeView(x.view) })),
      };
      this.options.log?.(`restart: membership log of epoch ${record.epoch}: last term ${summary.lastTerm}, index ${summary.lastIndex}, ` +
        `commit ${summary.commit}, voters [${summary.voters}]` +
        (sealed.length > 0 ? `; it seals view${sealed.length > 1 ? 's' : ''} ${sealed.map((x) => x.view.id).join(', ')} past the record` : ''));
      return summary;
    } finally {
      await storage.close();
    }
  }

  /**
   * The membership-log rule (restart-log.ts) over the logs of the nodes back: what the restart
   * still waits for, and, when the most up-to-date log seals a view newer than every record
   * known, the restart moves to that view.
   */
  private applyLogRule(run: RestartRun): void {
    const rule = restartLogRule({
      summaries: run.logs, back: new Set([...this.backSet(run)].map(Number)), epoch: run.lastEpoch,
      recordVoters: votersOf(run.last, this.votersCount).map(Number), required: this.options.raftStorageFor !== undefined,
    });
    run.logRule = rule;
    const newest = rule.newest;
    if (newest === undefined || !movesToLogView(rule, this.restartFrom(run))) return;
    const same = newest.view.id === run.last.id;
    this.options.log?.(`restart: node ${rule.sealedBy}'s membership log (${rule.sealedBy === rule.holder ? 'the most up-to-date back' : `less up-to-date than node ${rule.holder}'s`}) ` +
      `seals view ${newest.view.id} [${newest.view.memberIds}] at index ${newest.sealIndex}${rule.committed ? '' : ', not known committed'}, ` +
      (same ? `another seal of view ${run.last.id} [${run.last.memberIds}] than the one this node heard of first` : `newer than every record (view ${run.last.id})`) +
      ': restarting from it');
    run.last = newest.view;
    run.previous = newest.previous;
    run.trims = undefined;
    run.sealedTrims = { viewId: newest.previous.viewId, trims: newest.trims };
    run.tentative = !rule.committed;
    run.quorumSinceMs = undefined;
    run.proposer = undefined;
  }

  /** What the restart runs from, as restart-log.ts tells two views of one id apart. */
  private restartFrom(run: RestartRun): RestartFrom {
    return { view: run.last, sealTrims: run.sealedTrims?.trims };
  }

  /** Every raft shard configuration a restarting node reported (this node's included). */
  private raftVotersKnown(run: RestartRun): RaftVoters[] {
    return [...run.raftVoters.values()].flat();
  }

  /** The members of the last view heard from in the last 3 s, and this node. */
  private backSet(run: RestartRun): Set<NodeId> {
    const now = Date.now();
    const back = new Set<NodeId>([this.self]);
    for (const [node, b] of run.back) if (now - b.atMs < 3000) back.add(node);
    return back;
  }

  private async ask(address: TransportAddress, message: Wire, timeoutMs = 500): Promise<RestartReply | undefined> {
    try {
      const session = await this.session(address);
      return packr.unpack(await session.call(MEMBERSHIP_REQUEST_TYPE, pack(message), { timeoutMs })) as RestartReply;
    } catch {
      this.sessions.delete(address);
      return undefined;
    }
  }

  private async sayHello(run: RestartRun, address: TransportAddress): Promise<void> {
    const reply = await this.ask(address, {
      t: 'restartHello', node: this.self, address: this.transport.address, ...this.restartKnows(run),
    });
    if (reply?.t === 'live') run.live = true;
    else if (reply?.t === 'restartDecided') this.learnDecision(run, reply.decision);
    else if (reply?.t === 'restartWait') this.learnPeer(run, reply);
  }

  /** What a restarting node tells the others of the newest record it knows. */
  private restartKnows(
    run: RestartRun,
  ): Pick<Extract<Wire, { t: 'restartHello' }>, 'view' | 'epoch' | 'trims' | 'previous' | 'raftVoters' | 'log' | 'sealedTrims' | 'tentative'> {
    const own = run.raftVoters.get(this.self) ?? [];
    return {
      view: encodeView(run.last), epoch: run.lastEpoch,
      ...(run.trims !== undefined ? { trims: run.trims } : {}),
      ...(run.previous !== undefined ? { previous: run.previous } : {}),
      ...(own.length > 0 ? { raftVoters: own } : {}),
      ...(run.ownLog !== undefined ? { log: run.ownLog } : {}),
      ...(run.sealedTrims !== undefined ? { sealedTrims: run.sealedTrims } : {}),
      ...(run.tentative ? { tentative: true } : {}),
    };
  }

  private learnPeer(run: RestartRun, peer: Extract<Wire, { t: 'restartHello' }> | Extract<RestartReply, { t: 'restartWait' }>): void {
    const { node, address, epoch, trims } = peer;
    run.back.set(nodeId(node), { address, atMs: Date.now() });
    if (peer.raftVoters !== undefined) run.raftVoters.set(nodeId(node), peer.raftVoters);
    if (peer.log !== undefined && !run.logs.has(node)) run.logs.set(node, decodeLogSummary(peer.log));
    const view = decodeView(peer.view);
    // `sealedTrims` set: the peer's view is one only a log seals (`tentative` if not known
    // committed), not a record.
    if (view.id === run.last.id && epoch === run.lastEpoch) {
      run.previous ??= peer.previous;
      const same = view.memberIds.join() === run.last.memberIds.join();
      if (peerSameId(this.restartFrom(run), { view, tentative: peer.tentative === true }) === 'adopt') {
        // A record or a known-committed seal of this view's id wins over the log's this node heard of.
        if (!same) {
          this.options.log?.(`restart: node ${node} holds view ${view.id} [${view.memberIds}] committed; ` +
            `restarting from it, not from [${run.last.memberIds}] (a seal of an uncommitted log suffix)`);
          run.last = view;
          run.previous = peer.previous ?? run.previous;
          run.trims = undefined;
          run.quorumSinceMs = undefined;
          run.proposer = undefined;
        }
        run.sealedTrims = same ? peer.sealedTrims ?? run.sealedTrims : peer.sealedTrims;
        run.tentative = false;
      } else if (same) run.sealedTrims ??= peer.sealedTrims;
    }
    if (view.id > run.last.id) {
      run.last = view;
      run.lastEpoch = epoch;
      run.previous = peer.previous;
      run.trims = undefined;
      run.sealedTrims = peer.sealedTrims;
      run.tentative = peer.tentative === true;
      run.quorumSinceMs = undefined;
      run.proposer = undefined; // a ballot of the older instance: its acceptors answer `stale` now
    }
    if (trims !== undefined && trims.viewId === run.last.id && run.trims?.viewId !== run.last.id) run.trims = trims;
    // A record of the restart view `last` carries the trims of the view it restarted from.
    else if (trims !== undefined && trims.viewId < run.last.id && view.id === run.last.id && epoch === run.lastEpoch) run.trims ??= trims;
  }

  /** A chosen decision: adopt it, or (not in its view: not back in time) join the group that resumed. */
  private learnDecision(run: RestartRun, decision: RestartDecisionRecord): void {
    if (run.decided !== undefined) return;
    if (decodeView(decision.view).addressOf(this.self) !== this.transport.address) {
      run.live = true;
      return;
    }
    run.decided = decision;
  }

  /**
   * The restart leader (the lowest-ranked member back) runs a ballot once the quorum is back and
   * the grace period passed (or all are), and again with a higher round when one is refused or
   * stalls (BALLOT_TIMEOUT_MS). A node that is not the leader only answers as an acceptor.
   */
  private decideRestart(run: RestartRun): void {
    if (run.decided !== undefined || run.live) return;
    const step = restartLeadStep({
      view: run.last, previous: run.previous, raftVoters: this.raftVotersKnown(run), log: run.logRule?.waiting, tentative: run.tentative,
      back: this.backSet(run), self: this.self,
      nowMs: Date.now(), quorumSinceMs: run.quorumSinceMs,
      graceMs: this.options.restartGraceMs ?? 1000,
    });
    if (step.kind === 'follow') run.proposer = undefined;
    else run.quorumSinceMs = step.quorumSinceMs;
    if (step.kind !== 'decide') return;
    if (run.proposer !== undefined && Date.now() - run.ballotStartedMs < BALLOT_TIMEOUT_MS) return;
    const instance: RestartInstance = { viewId: run.last.id, epoch: run.lastEpoch };
    const ballot = nextBallot(run.acceptor, instance, run.nextRound, Number(this.self));
    run.nextRound = ballot.round + 1;
    const proposer = new RestartProposer<RestartDecisionRecord>(
      instance, ballot, ballotQuorums(quorumRuleOf(run.last), run.previous, run.tentative), () => this.freshDecision(run),
    );
    run.proposer = proposer;
    run.ballotStartedMs = Date.now();
    this.options.log?.(`restart: leader runs ballot ${ballot.round}.${ballot.node} for view ${instance.viewId} (epoch ${instance.epoch})`);
    void this.runBallot(run, proposer, { t: 'restartPrepare', node: this.self, address: this.transport.address, instance, ballot });
  }

  /** The leader's own decision when no acceptor of the quorum accepted one: restartView over the nodes back. */
  private freshDecision(run: RestartRun): RestartDecisionRecord {
    const addresses = new Map<NodeId, string>();
    for (const node of this.backSet(run)) {
      if (!run.last.isMember(node)) continue;
      addresses.set(node, node === this.self ? this.transport.address : run.back.get(node)!.address);
    }
    const view = restartView(run.last, addresses, this.options.allocator);
    // The trims of `last` when a record has them; for a view only a log seals (no node back
    // installed it, so none delivered in it), those of the round that sealed it; for a restart
    // view that never delivered, those its record carries (of the view it restarted from).
    const carried = run.trims !== undefined && run.trims.viewId < run.last.id ? run.trims : undefined;
    const known = run.trims?.viewId === run.last.id ? run.trims : run.sealedTrims ?? carried;
    const trims = (known?.trims ?? []).map((t) => ({ subgroupId: t.subgroupId, shardIndex: t.shardIndex, trim: [...t.trim] }));
    return {
      view: encodeView(view), from: encodeView(run.last), trims, epoch: `${view.id}-${this.self}-${Date.now()}`,
      ...(known !== undefined && known.viewId !== run.last.id ? { trimsViewId: known.viewId } : {}),
    };
  }

  /**
   * Sends one phase of a ballot to this node (first, persisted) and every member of the last view
   * (or of its predecessor, whose quorums phase 1 must meet) that is back.
   */
  private async runBallot(run: RestartRun, proposer: RestartProposer<RestartDecisionRecord>, message: Wire): Promise<void> {
    const own = await this.answerPaxos(message as Extract<Wire, { t: 'restartPrepare' | 'restartAccept' }>);
    this.onBallotReply(run, proposer, this.self, own);
    const targets = new Set([...run.last.memberIds.map(Number), ...(run.previous?.members ?? [])]);
    targets.delete(Number(this.self));
    await Promise.all([...this.backSet(run)].filter((n) => targets.has(Number(n))).map(async (node) => {
      const address = run.back.get(node)?.address ?? run.last.addressOf(node);
      const reply = address !== undefined ? await this.ask(address, message, 1000) : undefined;
      if (reply !== undefined) this.onBallotReply(run, proposer, node, reply);
    }));
  }

  private onBallotReply(run: RestartRun, proposer: RestartProposer<RestartDecisionRecord>, from: NodeId, reply: RestartReply): void {
    if (run.proposer !== proposer || run.decided !== undefined) return;
    if (reply.t === 'restartDecided') return this.learnDecision(run, reply.decision);
    if (reply.t === 'live') {
      run.live = true;
      return;
    }
    if (reply.t !== 'restartPaxos') return;
    const step: ProposerStep<RestartDecisionRecord> = proposer.onReply(Number(from), reply.reply);
    const ballot = proposer.ballot;
    switch (step.kind) {
      case 'wait':
        return;
      case 'retry':
        run.nextRound = Math.max(run.nextRound, step.nextRound);
        run.proposer = undefined;
        this.options.log?.(`restart: ballot ${ballot.round}.${ballot.node} refused (${reply.reply.kind})`);
        return;
      case 'accept':
        this.options.log?.(`restart: ballot ${ballot.round}.${ballot.node} proposes view ${decodeView(step.decision.view).id} ` +
          `[${decodeView(step.decision.view).memberIds}]${step.adopted ? ' (accepted before: adopted)' : ''}`);
        void this.runBallot(run, proposer, {
          t: 'restartAccept', node: this.self, address: this.transport.address, instance: proposer.instance, ballot, decision: step.decision,
        });
        return;
      case 'chosen': {
        const view = decodeView(step.decision.view);
        this.options.log?.(`restart: ballot ${ballot.round}.${ballot.node} chose view ${view.id} [${view.memberIds}] ` +
          `(failed [${view.failed}], ${step.decision.trims.length} committed trims)`);
        run.decided = step.decision;
        // Tell every node that is back at once: the new view's failure detector is running here.
        for (const m of view.members) {
          if (m.id !== this.self) this.post(m.address, { t: 'restartDecision', decision: step.decision });
        }
      }
    }
  }

  /**
   * This node as an acceptor of a restart decision: answers after persisting its new promise or
   * acceptance. A node that knows the chosen decision (or runs in a view after it) answers with
   * that instead.
   */
  private async answerPaxos(message: Extract<Wire, { t: 'restartPrepare' | 'restartAccept' }>): Promise<RestartReply> {
    const run = this.restarting;
    if (this.status !== 'restarting' || run === undefined || run.decided !== undefined) {
      return this.answerOutsideRestart(message.node, message.address);
    }
    const own: RestartInstance = { viewId: run.last.id, epoch: run.lastEpoch };
    const step = message.t === 'restartPrepare'
      ? acceptorPrepare(run.acceptor, own, message.instance, message.ballot)
      : acceptorAccept(run.acceptor, own, message.instance, message.ballot, message.decision);
    run.acceptor = step.state;
    if (step.persist) {
      const { restart: _, ...record } = run.record;
      await this.options.saveRecord?.({ ...record, ...(step.state !== undefined ? { restart: step.state } : {}) });
    }
    return { t: 'restartPaxos', reply: step.reply };
  }

  private answerRestartHello(hello: Extract<Wire, { t: 'restartHello' }>): RestartReply {
    const run = this.restarting;
    if (this.status === 'restarting' && run !== undefined && run.decided === undefined) {
      this.learnPeer(run, hello);
      return { t: 'restartWait', node: this.self, address: this.transport.address, ...this.restartKnows(run) };
    }
    return this.answerOutsideRestart(hello.node, hello.address);
  }

  /**
   * A node that knows the chosen decision hands it on: one still restarting, or a member of the
   * restart view (to a node the view names that missed it, the leader having gone down
   * meanwhile); any other member says the group is live (the asker joins it).
   */
  private answerOutsideRestart(node: number, address: string): RestartReply {
    const run = this.restarting;
    if (this.status === 'restarting' && run?.decided !== undefined) return { t: 'restartDecided', decision: run.decided };
    if (this.status !== 'member') return { t: 'notMember' };
    const restarted = this.restarted;
    if (restarted !== undefined && this.core!.view.id === restarted.viewId &&
      this.core!.view.addressOf(nodeId(node)) === address) {
      return { t: 'restartDecided', decision: restarted.decision };
    }
    return { t: 'live' };
  }

  /** Founds the membership log's next epoch in the restart view and becomes a member of it. */
  private async adoptRestart(decided: RestartDecisionRecord, record: MembershipRecord): Promise<void> {
    const view = decodeView(decided.view);
    const from = decodeView(decided.from);
    this.epoch = decided.epoch;
    const trimsViewId = decided.trimsViewId ?? from.id;
    this.restarted = {
      viewId: view.id, from,
      trims: new Map(decided.trims.map((t) => [`${t.subgroupId}/${t.shardIndex}`, { viewId: trimsViewId, trim: [...t.trim] }])),
      trimApplied: record.trims?.viewId === trimsViewId, decision: decided,
    };
    // The decision stays answerable (answerOutsideRestart) while this node starts.
    this.restarting = newRestartRun({
      last: from, lastEpoch: record.epoch, previous: undefined, trims: undefined, record, raftVoters: new Map(), decided, acceptor: undefined,
    });
    this.status = 'restarting';
    this.voters = votersOf(view, this.votersCount);
    for (const v of this.voters) this.logHolders.add(v);
    for (const m of view.members) this.raftPeers.set(Number(m.id), m.address);
    if (this.voters.includes(this.self)) await this.startRaft(this.voters);
    // Past the committed trims before the restart view's record is written, which then carries
    // them (see Restarted.carried; reconcile() finds nothing more to truncate).
    const store = this.options.state;
    let trimmed = true;
    for (const s of store !== undefined ? view.shardsOf(this.self) : []) {
      try {
        await this.keepTrimmed(s, view);
      } catch (error) {
        trimmed = false; // reconcile() tries again; the record does not claim it
        this.options.log?.(`restart: shard ${shardName(s)} not truncated yet: ${(error as Error).message}`);
      }
    }
    if (trimmed && decided.trims.length > 0) {
      this.restarted.carried = {
        viewId: trimsViewId,
        trims: decided.trims.map((t) => ({ subgroupId: t.subgroupId as SubgroupId, shardIndex: t.shardIndex as ShardIndex, trim: [...t.trim] })),
      };
    }
    this.options.log?.(`restart: resuming in view ${view.id} [${view.memberIds}], voters [${this.voters}]`);
    this.restarting = undefined;
    await this.becomeMember(view, 0);
  }

  /**
   * Reconciles one shard of the restart view: truncate past the committed trim, learn the other
   * members' kept versions, pull the suffix this node lacks from the lowest-ranked member holding
   * the newest, then hand over the deliveries held meanwhile (as a joiner does).
   */
  private async reconcile(run: ShardRun): Promise<void> {
    const store = this.options.state;
    const name = shardName(run.ref);
    for (;;) {
      if (this.status !== 'member' || this.shards.get(name) !== run) return;
      // The members of the shard now: a member that fails meanwhile is removed by a view change,
      // after which this node asks the rest (the run carries over into the next view).
      const current = this.core!.view;
      const members = current.shard(run.ref.subgroupId, run.ref.shardIndex)?.members ?? [];
      try {
        if (store === undefined) run.restartKept ??= -1n;
        if (store !== undefined && run.restartKept === undefined) run.restartKept = await this.keepTrimmed(run.ref, current);
        const kept = run.restartKept ?? -1n;
        const peers: PeerVersion[] = [];
        for (const m of members) {
          if (m === this.self) continue;
          const session = await this.session(current.addressOf(m)!);
          const answer = packr.unpack(await session.call(MEMBERSHIP_REQUEST_TYPE, pack({
            t: 'stateLatest', view: current.id, subgroupId: run.ref.subgroupId, shardIndex: run.ref.shardIndex,
          }), { timeoutMs: 1000 })) as { kept: string | null };
          if (answer.kept === null) throw new SquallError(`node ${m} is not reconciled yet`, 'NO_STATE');
          peers.push({ node: m, kept: BigInt(answer.kept) });
        }
        const plan = reconcileShard(kept, peers);
        if (plan.kind === 'pull') {
          this.options.log?.(`restart: shard ${name} pulls ${plan.after} → ${plan.target} from node ${plan.from}`);
          await this.pullState(run, current, [plan.from], 1);
          if (run.gate.waiting) throw new SquallError(`pull from node ${plan.from} failed`, 'NO_STATE');
        } else {
          this.options.log?.(`restart: shard ${name} holds the newest version (${kept})`);
          this.release(run);
        }
        return;
      } catch {
        await sleep(100);
      }
    }
  }

  /**
   * Truncates this node's state of `ref` (a shard of the restart view `view`) past the committed
   * trim of the view the group restarted from (keptVersion) and returns the version kept. A raft
   * shard's versions are Raft's (term << 32 | index), all committed: no ragged trim applies to
   * them (src/group/raft-shard.ts, "Total restart"). Idempotent.
   */
  private async keepTrimmed(ref: ShardRef, view: View): Promise<bigint> {
    const store = this.options.state!;
    const name = shardName(ref);
    const restarted = this.restarted!;
    const latest = store.latestVersion(ref);
    const raft = view.shard(ref.subgroupId, ref.shardIndex)?.mode === 'raft';
    const kept = raft ? latest : keptVersion({ latest, trimApplied: restarted.trimApplied }, restarted.trims.get(name));
    if (kept < latest) {
      this.options.log?.(`restart: shard ${name} truncates ${latest} → ${kept} (past the committed trim)`);
      await store.truncate?.(ref, kept);
    }
    return kept;
  }

  // ---- Joining ------------------------------------------------------------------------------

  /**
   * Asks every seed at once, one call outstanding per seed, until one welcomes this node. A seed
   * that does not answer (a dead address in the list costs a whole connect timeout) must not
   * delay hearing the welcome from the others: the members start counting this node's silence
   * when they install the view it joined in.
   *
   * `after` (a restart over the data dir): the last view this node's earlier process recorded.
   * A welcome into that view or an earlier one is the earlier process's membership, which the
   * group may have ended since; this node must join anew, in a later view.
   */
  private async join(after?: number): Promise<void> {
    const seeds = [...new Set(this.options.seeds ?? this.options.founders.map((f) => f.address))]
      .filter((seed) => seed !== this.transport.address);
    const timeoutMs = this.options.joinTimeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    let lastProblem: Error | undefined;
    let welcome: { view: Uint8Array; sealedAtIndex: number; epoch: string } | undefined;
    let refused: JoinRefusedError | undefined;
    const asking = new Set<TransportAddress>();
    const ask = async (seed: TransportAddress): Promise<void> => {
      let reply: JoinReply;
      try {
        const session = await this.session(seed);
        const bytes = await session.call(MEMBERSHIP_REQUEST_TYPE, pack({
          t: 'join', node: this.self, address: this.transport.address, layoutHash: this.options.layoutHash,
          inc: this.incarnation, ...(after !== undefined ? { after } : {}),
        }), { timeoutMs: 1000 });
        reply = packr.unpack(bytes) as JoinReply;
      } catch (error) {
        lastProblem = error as Error;
        await sleep(50);
        return;
      }
      // A member that still lists the earlier process (not removed yet) answers pending.
      if (reply.t === 'welcome' && after !== undefined && decodeView(reply.view).id <= after) return;
      if (reply.t === 'welcome') welcome ??= { view: reply.view, sealedAtIndex: reply.sealedAtIndex, epoch: reply.epoch ?? '0' };
      else if (reply.t === 'refused' && reply.code === 'NODE_ID_IN_USE') lastProblem = new NodeIdInUseError(this.self, makeViewId(0));
      else if (reply.t === 'refused') refused ??= new JoinRefusedError(seed, reply.message);
    };
    while (this.status === 'joining') {
      if (welcome !== undefined) {
        this.epoch = welcome.epoch;
        await this.becomeMember(decodeView(welcome.view), welcome.sealedAtIndex);
        return;
      }
      if (refused !== undefined) {
        this.status = 'removed';
        throw refused;
      }
      if (Date.now() > deadline) throw lastProblem ?? new TimeoutError(`joining through ${seeds.join(', ')}`, timeoutMs);
      for (const seed of seeds) {
        if (asking.has(seed)) continue;
        asking.add(seed);
        void ask(seed).finally(() => asking.delete(seed));
      }
      await sleep(20);
    }
  }

  private answerJoin(request: Extract<Wire, { t: 'join' }>): JoinReply {
    if (this.status !== 'member') return { t: 'notMember' };
    if (request.layoutHash !== this.options.layoutHash) {
      return {
        t: 'refused', code: 'LAYOUT_MISMATCH',
        message: `node ${request.node} has layout hash ${request.layoutHash}, the group ${this.options.layoutHash}. ` +
          'Fix: run the same build (registered types, methods and layout policies) on every node.',
      };
    }
    const node = nodeId(request.node);
    const core = this.core!;
    const known = core.view.addressOf(node);
    if (known === request.address) {
      // A joiner let in that did not hear it asks again: welcome it into the view it joined in.
      // Only while it is still a member there (a view it was removed from since, e.g. view 0
      // that lists every founder as joined, would put it back into a view the group left), and
      // only into a view after the one a restarted process's earlier self recorded. Not if the
      // member there spoke as another process: this one lost its data dir (below).
      // A joiner without a record (`after` unset) must also be known here as the process that
      // was let in: it spoke here under this incarnation, or this member passed its join on. One
      // this member cannot place (a process that lost its data dir, whose earlier self joined
      // through another member and died before speaking here) gets 'pending' until the group
      // removed that earlier self; the same process retrying through another member then waits
      // for that removal too and joins anew (slower, never wrong). A joiner with a record is
      // placed by `after` below.
      const after = request.after ?? -1;
      const newProcess = this.spokeAsAnotherProcess(node, request.inc);
      const placed = request.after !== undefined || this.speaking.get(node) === request.inc || this.joinAsks.get(node) === request.inc;
      for (let i = this.history.length - 1; i >= 0 && !newProcess && placed; i--) {
        const h = this.history[i]!;
        if (h.view.id > after && h.view.joined.includes(node) && h.view.addressOf(node) === request.address) {
          return { t: 'welcome', view: encodeView(h.view), sealedAtIndex: h.sealedAtIndex, epoch: this.epoch };
        }
      }
      // This node may still be installing the view the joiner was let in (the core moved on,
      // the history has not): then the next ask is welcomed.
      const installing = this.history.at(-1)?.view.id !== core.view.id;
      if ((request.after !== undefined || newProcess) && !installing) {
        // The member at this address is the restarted node's earlier process: it is gone (its
        // address may still look alive, the new process's requests arrive from it). Remove it
        // now; the joiner asks again and is let in anew.
        if (!this.fd!.isSuspected(node)) {
          this.options.log?.(`join: node ${node} restarted ${newProcess && request.after === undefined ? 'without its data dir' : 'over its data dir'}; its earlier process is gone`);
        }
        this.fd!.peerFailed(node);
        this.pump();
      }
      return { t: 'pending' };
    }
    if (known !== undefined) {
      // The id is taken by a member under another address. If that member is this node's
      // restarted self, the old process is gone: let the failure detector act at once; either
      // way the joiner hears the id is in use and retries until the old member is removed.
      return { t: 'refused', code: 'NODE_ID_IN_USE', message: new NodeIdInUseError(node, core.view.id).message };
    }
    this.joinAsks.set(node, request.inc);
    try {
      core.requestJoin(node, request.address);
    } catch (error) {
      if (!(error instanceof NodeIdInUseError)) throw error;
    }
    this.pump();
    return { t: 'pending' };
  }

  // ---- Transport ------------------------------------------------------------------------------

  private session(address: TransportAddress): Promise<TransportSession> {
    let s = this.sessions.get(address);
    if (s === undefined) {
      s = this.transport.connect(address);
      this.sessions.set(address, s);
      const opened = s;
      const forget = (): void => {
        if (this.sessions.get(address) === opened) this.sessions.delete(address);
      };
      // Any end of the session forgets it: a session the peer disconnected (e.g. its transport
      // tore down the sessions of a dead process at this address after a new one had connected)
      // would otherwise fail every later message to that address, silently for one-way ones.
      s.then((session) => session.onEvent((event) => {
        // A session already replaced (see startView) speaks for an earlier process: ignore it.
        const current = this.sessions.get(address) === opened;
        forget();
        if (event.kind === 'peer-failed' && current) this.onPeerUnreachable(address, event.reason);
      }), forget);
    }
    return s;
  }

  /** One-way message: failures are counted (and a dead session reported), never thrown. */
  private post(address: TransportAddress | undefined, message: Wire): void {
    if (address === undefined || this.status === 'closed') return;
    const bytes = pack(message);
    this.session(address).then((s) => s.call(MEMBERSHIP_REQUEST_TYPE, bytes, { timeoutMs: 2000 })).catch(() => {
      this.counters.sendErrors++;
    });
  }

  private onPeerUnreachable(address: TransportAddress, reason: string): void {
    if (this.status !== 'member') return;
    const member = this.core!.view.members.find((m) => m.address === address);
    if (member === undefined) return;
    this.options.log?.(`session to node ${member.id} at ${address} failed: ${reason}`);
    this.fd!.peerFailed(member.id);
    this.pump();
  }

  private onRequest(request: Uint8Array, context: RequestContext): Uint8Array | Promise<Uint8Array> {
    let message: Wire;
    try {
      message = packr.unpack(request) as Wire;
    } catch {
      this.counters.messagesDropped++;
      return EMPTY;
    }
    if (this.status === 'closed') return EMPTY;
    switch (message.t) {
      case 'hb':
        this.fromPeer(message.from, message.address, message.inc);
        return EMPTY;
      case 'report':
        if (this.fromPeer(message.from, message.address, message.inc)) {
          this.core!.receive(nodeId(message.from), message.message);
          this.pump();
        }
        return EMPTY;
      case 'propose':
        this.proposeBytes(message.entry, message.hops);
        return EMPTY;
      case 'fetch':
        return this.serveFetch(message.from);
      case 'join':
        return pack(this.answerJoin(message));
      case 'founding':
        return pack({ running: this.runsWithEarlierProcessOf(message.node, message.inc) });
      case 'stateOpen':
        return pack(this.openTransfer(message));
      case 'stateNext':
        return pack(this.nextChunk(message.token));
      case 'stateLatest': {
        const run = this.shards.get(shardName({
          subgroupId: message.subgroupId as SubgroupId, shardIndex: message.shardIndex as ShardIndex,
        }));
        const kept = this.core?.view.id === message.view ? run?.restartKept : undefined;
        return pack({ kept: kept === undefined ? null : String(kept) });
      }
      case 'restartHello':
        return pack(this.answerRestartHello(message));
      case 'restartDecision':
        if (this.status === 'restarting' && this.restarting !== undefined) this.learnDecision(this.restarting, message.decision);
        return EMPTY;
      case 'restartPrepare':
      case 'restartAccept':
        return this.answerPaxos(message).then(pack);
      default:
        this.counters.messagesDropped++;
        void context;
        return EMPTY;
    }
  }

  /** A heartbeat or report from a member: true if it is from the member we know. */
  private fromPeer(from: number, address: string, inc: string): boolean {
    if (this.status !== 'member') return false;
    const expected = this.core!.view.addressOf(nodeId(from));
    if (expected === undefined) return false;
    if (expected !== address) {
      this.fd!.peerFailed(nodeId(from)); // another process under a member's id: the member is gone
      this.pump();
      return false;
    }
    this.speaking.set(nodeId(from), inc);
    this.fd!.heartbeatReceived(nodeId(from));
    return true;
  }

  /**
   * Whether the group runs here with `node` as a member whose process is not the asking one
   * (incarnation `inc`): a later view than the founders', or heartbeats from another incarnation
   * of it. Then the asker lost its data dir (a founder without a view record while its earlier
   * process was a member) and must not found view 0 again: it joins as a new member.
   */
  private runsWithEarlierProcessOf(node: number, inc: string): boolean {
    if (this.status !== 'member') return false;
    return this.core!.view.id > 0 || this.spokeAsAnotherProcess(nodeId(node), inc);
  }

  /** Whether `node`'s heartbeats and reports here came from another incarnation than `inc`. */
  private spokeAsAnotherProcess(node: NodeId, inc: string): boolean {
    const heard = this.speaking.get(node);
    return heard !== undefined && heard !== inc;
  }

  // ---- Membership log ---------------------------------------------------------------------------

  private onRaftEntry(entry: Entry): void {
    if (entry.data.length === 0) return;
    this.log.set(entry.index, entry.data.slice());
    this.knownUpTo = Math.max(this.knownUpTo, entry.index);
    this.feed();
  }

  private onRaftSnapshot(snapshot: Snapshot): void {
    const [upTo, entries] = packr.unpack(snapshot.data) as [number, [number, Uint8Array][]];
    for (const [index, bytes] of entries) this.log.set(index, bytes);
    this.knownUpTo = Math.max(this.knownUpTo, upTo);
    this.feed();
  }

  private serveFetch(from: number): Uint8Array {
    const upTo = Math.min(this.knownUpTo, from + FETCH_BATCH - 1);
    const list: [number, Uint8Array][] = [];
    for (let i = from; i <= upTo; i++) {
      const bytes = this.log.get(i);
      if (bytes !== undefined) list.push([i, bytes]);
    }
    return packr.pack({ upTo: Math.max(upTo, from - 1), list });
  }

  /**
   * Whether this node's own Raft feeds it the log. A node that left the voters may never hear of
   * its removal from the configuration (the installed view decides), and one removed while it
   * lagged hears from no leader at all (found by the simulation): both fetch instead.
   */
  private fedByRaft(): boolean {
    const raft = this.raft;
    if (raft === undefined || raft.core.lead === 0 || !this.voters.includes(this.self)) return false;
    const { voters, learners } = raft.core.conf;
    return voters.includes(this.self) || learners.includes(this.self);
  }

  /**
   * A non-voter pulls the committed entries after knownUpTo from every voter at once (one call
   * outstanding per voter): a dead voter's calls time out without slowing the others. A voter
   * that failed is skipped for a while.
   */
  private fetch(): void {
    if (this.fedByRaft()) return;
    const now = Date.now();
    for (const voter of new Set([...this.voters, ...this.logHolders])) {
      const address = this.raftPeers.get(Number(voter));
      if (address === undefined || voter === this.self) continue;
      if (this.fetching.has(voter) || (this.fetchFailedAt.get(voter) ?? -Infinity) > now - FETCH_BACKOFF_MS) continue;
      this.fetching.add(voter);
      void this.fetchFrom(voter, address).finally(() => this.fetching.delete(voter));
    }
  }

  private async fetchFrom(voter: NodeId, address: TransportAddress): Promise<void> {
    try {
      const session = await this.session(address);
      const request = pack({ t: 'fetch', from: this.knownUpTo + 1 });
      const bytes = await session.call(MEMBERSHIP_REQUEST_TYPE, request, { timeoutMs: 500 });
      const reply = packr.unpack(bytes) as { upTo: number; list: [number, Uint8Array][] };
      // A reply covers (from - 1, upTo] completely, and `from` was at most knownUpTo + 1 then:
      // knownUpTo only grows, so it covers everything from the current knownUpTo on.
      if (reply.upTo > this.knownUpTo) {
        for (const [index, entry] of reply.list) if (index > this.knownUpTo) this.log.set(index, entry);
        this.knownUpTo = reply.upTo;
        this.feed();
      }
    } catch {
      this.counters.sendErrors++;
      this.fetchFailedAt.set(voter, Date.now());
    }
  }

  /** Feeds the known committed entries to the core in log order. */
  private feed(): void {
    const core = this.core;
    if (core === undefined || this.status !== 'member') return;
    for (let i = core.lastAppliedIndex + 1; i <= this.knownUpTo && this.core === core; i++) {
      const bytes = this.log.get(i);
      if (bytes === undefined) continue;
      let entry: MembershipEntry;
      try {
        entry = decodeEntry(bytes);
      } catch {
        this.counters.messagesDropped++;
        continue;
      }
      this.options.log?.(`committed ${i}: ${entry.kind}${entry.kind === 'wedged' ? ` ${entry.node}` : ''}`);
      core.committed(i, entry);
      this.pump();
    }
  }

  private propose(entry: MembershipEntry): void {
    this.counters.proposals++;
    this.proposeBytes(encodeEntry(entry), 0);
  }

  private proposeBytes(bytes: Uint8Array, hops: number): void {
    const raft = this.raft;
    if (raft !== undefined && raft.core.role === 'leader') {
      raft.propose(bytes).catch((error) => {
        if (!(error instanceof RaftProposalError)) this.counters.sendErrors++;
      });
      return;
    }
    if (hops > 1) return; // lost: the core proposes again after proposalRetryTicks
    const lead = raft?.core.lead ?? 0;
    const holders = [...new Set([...this.voters, ...this.logHolders])];
    const to = lead !== 0 && lead !== this.self ? lead : holders[Math.floor(Math.random() * holders.length)]!;
    if (to === this.self) return;
    this.post(this.raftPeers.get(Number(to)), { t: 'propose', entry: bytes, hops: hops + 1 });
  }

  // ---- The cores ------------------------------------------------------------------------------

  private onTick(): void {
    if (this.status === 'closed') return;
    // The failure detector counts this node's own ticks, so a stall of this event loop does not
    // count as the peers' silence, except on the first tick after it: timers run before the
    // loop reads the sockets, so the heartbeats that arrived meanwhile are not read yet. Skip
    // that one tick (the next one sees them).
    const nowMs = Date.now();
    const stalled = this.lastTickAtMs > 0 && nowMs - this.lastTickAtMs > Math.max(4 * this.tickMs, 50);
    this.lastTickAtMs = nowMs;
    if (stalled) this.counters.stalls++;
    if (this.status === 'member' && !stalled) {
      this.fd!.tick();
      this.core!.tick();
      this.pump();
      this.reconfigureVoters();
    }
    if (this.status === 'member') this.fetch();
  }

  private async becomeMember(view: View, sealedAtIndex: number): Promise<void> {
    const heartbeatTicks = Math.max(1, Math.round((this.options.heartbeatMs ?? 50) / this.tickMs));
    const timeoutTicks = Math.max(heartbeatTicks + 1, Math.round((this.options.failureTimeoutMs ?? 500) / this.tickMs));
    this.core = new ViewChangeCore({
      self: this.self, view, allocator: this.options.allocator, computeTrim,
      votersCount: this.voters.length, appliedIndex: sealedAtIndex,
      // Retries are cheap (a duplicate is a no-op when applied) and a proposal sent while the
      // log has no leader is lost: retry soon.
      proposalRetryTicks: Math.max(1, Math.round((this.options.proposalRetryMs ?? 50) / this.tickMs)),
    });
    this.fd = new FailureDetectorCore({ self: this.self, heartbeatTicks, timeoutTicks });
    this.status = 'member';
    // On the effect chain like every install: the timer may pump the cores (and queue a wedge)
    // while this view's multicast drivers are still connecting.
    const started = this.effects.then(() => this.startView(view, undefined, sealedAtIndex, []));
    this.effects = started.catch((error) => this.fail(error));
    await started;
    this.feed();
  }

  /** Drains the failure detector and the core (see SerialPump: never nested). */
  private pump(): void {
    this.pumper.run();
  }

  private pumpOnce(): void {
    if (this.status !== 'member') return;
    const fd = this.fd!.ready();
    if (!this.partitioned) {
      for (const to of fd.heartbeatsTo) {
        this.counters.heartbeatsSent++;
        this.post(this.core!.view.addressOf(to), { t: 'hb', from: this.self, address: this.transport.address, inc: this.incarnation });
      }
    }
    const core = this.core!;
    for (const s of fd.suspicions) {
      if (s.cause === 'transport') this.counters.suspicionsTransport++;
      else this.counters.suspicionsTimeout++;
      this.options.log?.(`suspect ${s.node} in view ${core.view.id}: ${s.cause}, silent ${s.silentTicks} ticks`);
      core.suspect(s.node);
    }
    const rd = core.ready();
    for (const p of rd.proposals) this.propose(p);
    for (const m of rd.messages) {
      const report: Wire = { t: 'report', from: this.self, address: this.transport.address, inc: this.incarnation, message: m.message };
      this.post(core.view.addressOf(m.to), report);
    }
    for (const effect of rd.effects) {
      this.effects = this.effects.then(() => this.applyEffect(effect)).catch((error) => this.fail(error));
    }
  }

  /**
   * An effect failed (a bug, or a resource this node cannot get: its disk, its transport). The
   * node has applied part of a view change and cannot take part in the next one, so it stops as
   * if removed: it says why (the `removed` event, with the cause), sends no more heartbeats, and
   * the others remove it by their failure timeout. Going on would leave the node in its old view
   * with no way out, and the group's next view change waiting for its wedge report.
   */
  private fail(error: unknown): void {
    if (this.status === 'closed') return; // shutting down: pending effects fail on a closed transport
    const message = error instanceof Error ? error.message : String(error);
    this.options.log?.(`effect failed: ${message}`);
    process.emitWarning(`membership driver of node ${this.self} failed: ${String(error)}`);
    if (this.status !== 'member') return; // joining or restarting: the caller's promise rejects
    const viewIdValue = this.core?.view.id ?? makeViewId(0);
    this.effects = this.effects
      .then(() => this.stopRemoved(viewIdValue, `it stopped after an internal error: ${message}`))
      .catch((closing) => process.emitWarning(`node ${this.self} stopping: ${String(closing)}`));
  }

  /**
   * Stops this node as a member (removed by the group, or stopped by fail()): no more heartbeats
   * or deliveries, the `removed` event with `reason`.
   */
  private async stopRemoved(viewIdValue: ViewId, reason: string): Promise<void> {
    if (this.status !== 'member') return;
    this.status = 'removed';
    // A removed node keeps serving Raft until the new leader takes it out of the
    // configuration; if it leads, it hands over first (only a leader reconfigures).
    const raft = this.raft;
    const heir = raft?.core.status().conf.voters.find((v) => v !== this.self && this.voters.includes(nodeId(v)));
    if (raft?.core.role === 'leader' && heir !== undefined) raft.transferLeadership(heir);
    const error = new RemovedFromGroupError(this.self, viewIdValue, reason);
    try {
      for (const run of this.shards.values()) await run.driver.close();
    } finally {
      this.shards.clear();
      for (const l of this.listeners.removed) l(error);
    }
  }

  private async applyEffect(effect: ViewChangeEffect): Promise<void> {
    if (this.status !== 'member') return;
    this.options.log?.(`effect ${effect.kind} ${'viewId' in effect ? effect.viewId : effect.view.id}`);
    const core = this.core!;
    switch (effect.kind) {
      case 'wedge': {
        const reports = core.view.shardsOf(this.self).map((s) => {
          const run = this.shards.get(shardName(s))!;
          if (!run.driver.isWedged) run.driver.wedge();
          const received = run.driver.receiveState().receivedCounts;
          return { subgroupId: s.subgroupId, shardIndex: s.shardIndex, received };
        });
        core.wedged(effect.viewId, reports);
        break;
      }
      case 'deliver': {
        for (const s of core.view.shardsOf(this.self)) {
          const run = this.shards.get(shardName(s))!;
          // A shard without senders needs no trim (it has nothing to deliver).
          const trim = effect.trims.find((t) => shardName(t) === shardName(s))?.trim ??
            core.view.shard(s.subgroupId, s.shardIndex)!.senders.map(() => 0);
          if (!run.driver.isWedged) run.driver.wedge();
          run.driver.applyTrim(trim);
        }
        await this.options.persist?.(effect.viewId);
        // The trims are committed and applied: a total restart from this view truncates the
        // others to them (src/membership/restart.ts, keptVersion).
        await this.options.saveRecord?.({
          view: encodeView(core.view), epoch: this.epoch, ...this.recordPrevious,
          trims: { viewId: effect.viewId, trims: effect.trims },
        });
        core.delivered(effect.viewId);
        break;
      }
      case 'install':
        this.voters = effect.voters;
        for (const v of this.voters) this.logHolders.add(v);
        await this.startView(effect.view, effect.previous, effect.sealedAtIndex, effect.stateTransfers);
        break;
      case 'partitioned':
        // A minority side: stop delivering and go silent until a view is installed or removal.
        this.partitioned = true;
        for (const run of this.shards.values()) if (!run.driver.isWedged) run.driver.wedge();
        break;
      case 'removed':
        await this.stopRemoved(effect.viewId, effect.reason);
        return;
      case 'refused':
        if (effect.changes.some((c) => c.kind === 'leave' && c.node === this.self)) {
          for (const l of this.listeners.leaveRefused) l();
        }
        break;
    }
    this.pump();
  }

  /** Starts `view` here: multicast per shard (new, moved on, or closed), state transfers. */
  private async startView(
    view: View, previous: View | undefined, sealedAtIndex: number, transfers: readonly StateTransfer[],
  ): Promise<void> {
    // The new view's runs are built in `next` and published at once at the end: while this
    // install awaits (connects, installView), awaitingState() and multicast() must keep answering
    // for the shards (a joiner's Group.start took a half-built map for "state arrived").
    const old = this.shards;
    const next = new Map<string, ShardRun>();
    const pulls: (() => void)[] = [];
    this.partitioned = false;
    // Heartbeats of the new view first: connecting the multicast sessions below takes time, and
    // the other members' failure detectors already count it.
    this.fd!.resetView(view.id, view.memberIds);
    for (const node of this.speaking.keys()) if (!view.isMember(node)) this.speaking.delete(node);
    this.pump();
    // Before any multicast of the view exists: every member of a view that delivered anything
    // has recorded it (the total restart's argument, src/membership/restart.ts).
    // With the quorum rule of the view before it in this epoch (a restart's ballots of this view
    // must meet its quorums: src/membership/restart.ts, ballotQuorums).
    // The restart view's record also carries the trims this node's state was truncated to
    // (Restarted.carried): a restart from this record applies them to nodes that never installed it.
    const carried = this.restarted?.viewId === view.id ? this.restarted.carried : undefined;
    this.recordPrevious = {
      ...(previous !== undefined ? { previous: quorumRuleOf(previous) } : {}), sealIndex: sealedAtIndex,
      ...(carried !== undefined ? { trims: carried } : {}),
    };
    await this.options.saveRecord?.({ view: encodeView(view), epoch: this.epoch, ...this.recordPrevious });
    // A node that joins at an address this node has sessions to (an earlier process of it, e.g.
    // a member restarted there): those sessions lead nowhere, and their failure, a peer-failure
    // timeout later, must not count as the new member's. Open new ones.
    if (previous !== undefined) {
      for (const node of view.joined) {
        const address = view.addressOf(node);
        if (node === this.self || address === undefined) continue;
        const stale = this.sessions.get(address);
        this.sessions.delete(address);
        stale?.then((x) => x.close(), () => undefined);
        forgetMulticastSession(this.watched, address);
      }
    }
    const mine = view.shardsOf(this.self);
    for (const [key, run] of old) {
      if (!mine.some((s) => shardName(s) === key)) await run.driver.close();
    }
    for (const s of mine) {
      const layout = view.shard(s.subgroupId, s.shardIndex)!;
      const mview: MulticastView = {
        viewId: view.id, members: layout.members, senders: layout.senders,
        addresses: new Map(layout.members.map((m) => [m, view.addressOf(m)!])),
      };
      const limits = this.options.multicastLimitsFor?.(layout.profile) ?? this.options.multicastLimits;
      const before = old.get(shardName(s));
      if (before !== undefined) {
        await before.driver.installView(mview);
        next.set(shardName(s), before);
        continue;
      }
      // A shard this node enters: its state comes from the core's StateTransfer at an install,
      // or, for a node welcomed into `view`, from the shard's members that did not join with it.
      const transfer = previous !== undefined ? transfers.find((t) => shardName(t) === shardName(s)) : undefined;
      const sources = previous !== undefined
        ? (transfer?.from !== undefined ? [transfer.from] : [])
        : layout.members.filter((m) => !view.joined.includes(m));
      const reconciling = this.restarted?.viewId === view.id;
      const run: ShardRun = {
        ref: { subgroupId: s.subgroupId, shardIndex: s.shardIndex },
        driver: undefined as never, // set just below: onDeliver needs `run`
        gate: new TransferGate((sources.length > 0 && view.id !== 0) || reconciling, (d) => this.options.onInState?.(run.ref, d)),
      };
      run.driver = await MulticastDriver.create({
        transport: this.watched, self: this.self, shard: shardNumber(s), view: mview,
        mode: layout.mode === 'raw' ? 'raw' : 'ordered',
        ...(limits ? { limits } : {}),
        onDeliver: (d) => this.onDelivery(run, d),
        onPeerFailed: (node, error) => {
          if (this.status === 'member' && this.core!.view.isMember(node)) {
            this.options.log?.(`multicast: shard ${shardName(s)} lost node ${node}: ${error.message}`);
            this.fd!.peerFailed(node);
            this.pump();
          }
        },
      });
      next.set(shardName(s), run);
      if (reconciling) pulls.push(() => void this.reconcile(run));
      else if (run.gate.waiting) pulls.push(() => void this.pullState(run, view, sources));
    }
    for (const m of view.members) this.raftPeers.set(Number(m.id), m.address);
    this.memberByAddress = new Map(view.members.filter((m) => m.id !== this.self).map((m) => [m.address, m.id]));
    if (previous === undefined && view.id !== 0) this.voters = votersOf(view, this.votersCount);
    for (const v of this.voters) this.logHolders.add(v);
    if (this.voters.includes(this.self)) await this.startRaft([]);
    if (this.status === 'closed') {
      for (const run of next.values()) await run.driver.close(); // close() ran during the install
      return;
    }
    this.shards = next;
    for (const pull of pulls) pull();
    this.history.push({ view, sealedAtIndex });
    if (this.history.length > 16) this.history.shift();
    this.counters.installs++;
    for (const l of this.listeners.view) l(view);
  }

  private onDelivery(run: ShardRun, delivery: MulticastDelivery): void {
    if (!run.gate.admit(delivery)) return;
    this.options.onDeliver?.(run.ref, delivery);
  }

  // ---- State transfer -------------------------------------------------------------------------

  /**
   * Pulls the shard's state from `sources` (the first that answers), chunk by chunk, then hands
   * over the deliveries held meanwhile that are newer than the transferred state.
   */
  private async pullState(run: ShardRun, view: View, sources: readonly NodeId[], attemptsMax = Infinity): Promise<void> {
    const store = this.options.state;
    for (let attempt = 0; run.gate.waiting && this.status === 'member' && attempt < attemptsMax; attempt++) {
      const source = sources[attempt % sources.length]!;
      const address = view.addressOf(source);
      try {
        if (store !== undefined && address !== undefined) {
          const session = await this.session(address);
          const timeoutMs = this.options.stateTransferTimeoutMs ?? 10_000;
          const after = store.latestVersion(run.ref);
          const open = packr.unpack(await session.call(MEMBERSHIP_REQUEST_TYPE, pack({
            t: 'stateOpen', view: view.id, subgroupId: run.ref.subgroupId, shardIndex: run.ref.shardIndex,
            after: String(after),
          }), { timeoutMs })) as { token: number; from?: string } | { none: true };
          if ('none' in open) {
            throw new SquallError(`node ${source} has no state for ${shardName(run.ref)} yet`, 'NO_STATE');
          }
          // The source lacks this node's latest version: what this node holds above the source's
          // floor was never delivered by the group (e.g. it was absent from a total restart that
          // resumed from older state). Drop it; the chunks start there.
          const from = open.from !== undefined ? BigInt(open.from) : after;
          if (from < after) {
            this.options.log?.(`state: shard ${shardName(run.ref)} truncates ${after} → ${from} (node ${source} lacks the rest)`);
            await store.truncate?.(run.ref, from);
          }
          for (;;) {
            const ask = pack({ t: 'stateNext', token: open.token });
            const next = packr.unpack(await session.call(MEMBERSHIP_REQUEST_TYPE, ask, { timeoutMs })) as {
              chunk?: Uint8Array; done: boolean;
            };
            if (next.chunk !== undefined) {
              store.applyStateChunk(run.ref, next.chunk);
              this.counters.stateChunks++;
            }
            if (next.done) break;
          }
        }
        this.release(run);
        return;
      } catch {
        await sleep(100);
      }
    }
  }

  /** The shard's state is here: hand over the deliveries held meanwhile that are newer (TransferGate). */
  private release(run: ShardRun): void {
    const latest = this.options.state?.latestVersion(run.ref) ?? -1n;
    for (const delivery of run.gate.release(latest)) this.options.onDeliver?.(run.ref, delivery);
  }

  private openTransfer(request: Extract<Wire, { t: 'stateOpen' }>): { token: number; from: string } | { none: true } {
    const ref: ShardRef = {
      subgroupId: request.subgroupId as SubgroupId, shardIndex: request.shardIndex as ShardIndex,
    };
    const run = this.shards.get(shardName(ref));
    const store = this.options.state;
    // A member still reconciling the restart view serves what it kept (it has truncated).
    const serves = run !== undefined && (!run.gate.waiting || run.restartKept !== undefined);
    if (store === undefined || run === undefined || !serves) return { none: true };
    const token = this.transferToken++;
    const after = BigInt(request.after);
    const floor = store.floorVersion?.(ref, after);
    const from = floor !== undefined && floor < after ? floor : after;
    const chunks = store.stateChunks(ref, from)[Symbol.iterator]();
    this.transfers.set(token, { chunks, at: Date.now() });
    // Forget transfers abandoned by their joiner.
    for (const [t, x] of this.transfers) if (Date.now() - x.at > 60_000) this.transfers.delete(t);
    return { token, from: String(from) };
  }

  private nextChunk(token: number): { chunk?: Uint8Array; done: boolean } {
    const transfer = this.transfers.get(token);
    if (transfer === undefined) return { done: true };
    transfer.at = Date.now();
    const next = transfer.chunks.next();
    if (next.done) {
      this.transfers.delete(token);
      return { done: true };
    }
    return { chunk: next.value, done: false };
  }
}

/**
 * `transport` with every handler registered through it wrapped so that `heard(peer)` runs for
 * each request before the handler (the transport's address of the sender).
 */
function watchTransport(transport: Transport, heard: (peer: TransportAddress) => void): Transport {
  const handle: Transport['handle'] = (type, handler) =>
    transport.handle(type, (request, context) => {
      heard(context.peer);
      return handler(request, context);
    });
  return new Proxy(transport, {
    get(target, property) {
      if (property === 'handle') return handle;
      if (property === WRAPPED_TRANSPORT) return target;
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

function pack(message: Wire | JoinReply | object): Uint8Array {
  return Uint8Array.from(packr.pack(message));
}
