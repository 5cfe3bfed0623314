/**
 * Group: a node's handle on a running Squall group (see README.md in this directory).
 *
 *   const group = await Group.start(config, {
 *     types: [KvStore], layout: { KvStore: oneSubgroup(fixedEvenShards(1, 3)) },
 *   });
 *   const kv = group.subgroup(KvStore);          // Replicated<KvStore>: this node is a member
 *   const replies = await kv.ordered.put('k', 'v');
 *   const value = await kv.p2p(otherNode).get('k');
 *   await group.close();
 *
 * Start: open the transport endpoint, take the first view from the ViewSource, open the
 * persistence store, build this node's replicas (one per shard it is in), reach every member,
 * create one multicast driver per local shard, then wait until every member has its drivers
 * (a frame for a shard whose driver does not exist yet would be dropped).
 */
import {
  buildCallProxy,
  type MethodParams,
  type MethodResult,
  type OrderedMethodName,
  type P2PApi,
} from '../../decorators/api.js';
import { decodeReply, encodeFrameworkError } from '../../decorators/codec.js';
import {
  replicatedClassInfo,
  type AnyClass,
  type MethodInfo,
  type ReplicatedClassInfo,
} from '../../decorators/metadata.js';
import { objectDigest } from '../../decorators/snapshot.js';
import type { P2PWriteCheck } from '../../decorators/dispatcher.js';
import { PersistenceStore } from '../../persistence/store.js';
import type { PersistentRegistry } from '../../persistence/registry.js';
import { decodeMessage, decodeMessageCopy, encodeMessage } from '../core/codec.js';
import { ConfigError, PayloadTooLargeError, SquallError } from '../core/errors.js';
import type { Hlc } from '../core/hlc.js';
import {
  makeVersion,
  nodeId,
  VERSION_NONE,
  type NodeId,
  type ShardIndex,
  type SubgroupId,
} from '../core/ids.js';
import type { SquallConfig } from '../config/schema.js';
import { defaultAllocator, type Allocator, type LayoutPolicies } from '../membership/layout.js';
import { describeInadequacy, encodeView, type ShardMembership, type View } from '../membership/view.js';
import { MULTICAST_REQUEST_TYPE_DEFAULT, MulticastDriver } from '../runtime/multicast-driver.js';
import type { RemovedFromGroupError } from '../runtime/membership-driver.js';
import { ShardGate } from './shard-gate.js';
import { SessionCache } from '../transport/session-cache.js';
import { Endpoint, endpointOptionsFromConfig } from '../transport/native-transport.js';
import type { Transport, TransportSession } from '../transport/transport.js';
import {
  GroupClosedError,
  GroupStartError,
  NoSuchShardError,
  NodeRemovedError,
  NotMemberError,
  OrderedCallInOrderedError,
  SubgroupInadequateError,
} from './errors.js';
import { QueryResults } from './query-results.js';
import { currentOrderedCall, ShardReplica, type ShardFrontier } from './replica.js';
import { StaticViewSource, type ViewSource } from './view-source.js';
import { layoutHashOf, MembershipViewSource } from './membership-view-source.js';
import { multicastLimitsForProfile } from './limits.js';
import { followRaftShardView, hasRaftShardLog, majoritySettled, P2P_READ_LOCAL, startRaftShard, type P2POptions } from './raft-shard.js';
import { RaftOrderingEngine } from '../runtime/raft-ordering-engine.js';
import {
  driverShardNumber,
  encodeOrderedCall,
  encodeOrderedReplies,
  forEachOrderedReply,
  hashKey,
  ORDERED_REPLY_TYPE,
  P2P_NOT_HOSTED,
  P2P_OK,
  P2P_REPLY_TOO_LARGE,
  P2P_REQUEST_TYPE,
  READY_TYPE,
  RELAY_OK,
  RELAY_REFUSED,
  RELAY_TYPE,
  STATUS_TYPE,
  VIEW_TYPE,
  type NodeStatus,
  type OrderedReply,
  type RelayRequest,
  type P2PRequest,
} from './wire.js';

/** Ordered calls on C: each method returns a QueryResults of its result. */
export type OrderedQueryApi<C> = {
  readonly [K in OrderedMethodName<C>]: (...args: MethodParams<C, K>) => QueryResults<MethodResult<C, K>>;
};

export interface GroupOptions {
  /** The @replicated classes this group hosts. */
  readonly types: readonly AnyClass[];
  /** Layout policy per type name (src/membership/layout.ts helpers), or a custom Allocator. */
  readonly layout: LayoutPolicies | Allocator;
  /** Where views come from; default: StaticViewSource over `group.members`. */
  readonly viewSource?: ViewSource;
  /**
   * Run the membership driver (MembershipViewSource): `group.members` are the founders of view 0,
   * a member that fails is removed by a view change and the others go on. `true`, or options
   * (`log` receives the driver's progress lines). Not together with `viewSource`.
   */
  readonly membership?: boolean | { readonly log?: (line: string) => void };
  /** The dispatcher's p2p write check (decorators/README.md); default 'persistent'. */
  readonly p2pWriteCheck?: P2PWriteCheck;
}

/** A shard this node replicates, with its typed call interfaces. */
export interface Replicated<T> {
  readonly typeName: string;
  readonly subgroupIndex: number;
  readonly shardIndex: ShardIndex;
  /** The shard's members in shard-rank order. */
  readonly members: readonly NodeId[];
  /** Ordered calls: delivered in one total order to every member of the shard. */
  readonly ordered: OrderedQueryApi<T>;
  /**
   * Read-only calls served by one member of this shard (this node included). On a raft-ordered
   * shard the read is linearizable unless `options.read` is 'local' (raft-shard.ts).
   */
  p2p(node: NodeId | number, options?: P2POptions): P2PApi<T>;
  /** The local Persistent<T> of a @persistent field: reads by version, index and time. */
  versions<K extends keyof T & string>(field: K): T[K];
  /** This replica's frontiers. */
  frontier(): ShardFrontier;
  /** Resolves once temporal reads at `time` are final on this replica. */
  whenStable(time: Hlc): Promise<void>;
  /** SHA-256 of the local replica's state (decorators/snapshot.ts): equal on equal replicas. */
  digest(): string;
}

/** p2p calls into a subgroup this node is not a member of. */
export interface ExternalCaller<T> {
  readonly typeName: string;
  readonly subgroupIndex: number;
  p2p(node: NodeId | number, options?: P2POptions): P2PApi<T>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export class Group {
  readonly nodeId: NodeId;
  readonly transport: Transport;
  /** Malformed batches of ordered-call replies received (dropped). */
  readonly counters = { malformedReplies: 0 };
  private readonly store: PersistenceStore;
  private readonly viewSource: ViewSource;
  private readonly infos: ReadonlyMap<string, ReplicatedClassInfo>;
  private readonly replicas = new Map<string, ShardReplica>();
  private readonly calls = new Map<number, QueryResults<unknown>>();
  private readonly replyQueues = new Map<NodeId, OrderedReply[]>();
  private readonly viewListeners: ((view: View) => void)[] = [];
  private replyFlushScheduled = false;
  private nextCallId = 1;
  private ready = false;
  private closed = false;
  private currentView: View;
  /**
   * The transport the group's own multicast drivers use: holds frames of shards whose driver is
   * not up. Undefined with the membership view source, whose driver owns the multicast drivers.
   */
  private readonly gate: ShardGate | undefined;
  private readonly membership: MembershipViewSource | undefined;
  private readonly p2pWriteCheck: P2PWriteCheck;
  /** Set once the membership log removed this node: ordered calls throw it. */
  private removed: RemovedFromGroupError | undefined;
  private readonly removedListeners: ((error: RemovedFromGroupError) => void)[] = [];
  private readonly sessions: SessionCache;
  /** Raft shards this node entered by a view change whose engine is starting. */
  private readonly raftStarting = new Set<ShardReplica>();
  /** Ordered calls held until their subgroup is adequately provisioned (see awaitAdequate). */
  private readonly inadequateWaits = new Set<{ subgroupId: SubgroupId; release(error?: Error): void }>();

  private constructor(
    private readonly config: SquallConfig,
    options: GroupOptions,
    transport: Transport,
    store: PersistenceStore,
    view: View,
    viewSource: ViewSource,
    infos: ReadonlyMap<string, ReplicatedClassInfo>,
  ) {
    this.nodeId = nodeId(config.node.id);
    this.p2pWriteCheck = options.p2pWriteCheck ?? 'persistent';
    this.transport = transport;
    this.store = store;
    this.viewSource = viewSource;
    this.infos = infos;
    this.currentView = view;
    this.membership = viewSource instanceof MembershipViewSource ? viewSource : undefined;
    this.gate = this.membership === undefined ? new ShardGate(transport, MULTICAST_REQUEST_TYPE_DEFAULT) : undefined;
    this.sessions = new SessionCache(transport);
    // Removed (it left, or the others took it for failed): stop serving ordered calls, say why.
    this.membership?.onRemoved((error) => {
      this.removed = error;
      for (const results of this.calls.values()) results.failAll(error);
      this.calls.clear();
      for (const wait of [...this.inadequateWaits]) wait.release(error);
      for (const listener of this.removedListeners.splice(0)) listener(error);
    });
    viewSource.on('view', (next) => {
      // A node that joins at an address this node has a session to (a member restarted there,
      // faster than the session's peer-failure timeout): that session leads to the earlier
      // process; p2p calls and replies open a new one.
      for (const node of next.joined) {
        const address = next.addressOf(node);
        if (node !== this.nodeId && address !== undefined) this.sessions.forget(address);
      }
      this.currentView = next;
      for (const wait of [...this.inadequateWaits]) if (next.isSubgroupAdequate(wait.subgroupId)) wait.release();
      this.followShards(next);
      this.attachMembershipDrivers();
      this.failRemovedMembers(next);
      for (const listener of this.viewListeners) listener(next);
    });
    transport.handle(READY_TYPE, () => encodeMessage([this.ready ? 1 : 0]));
    transport.handle(P2P_REQUEST_TYPE, (request) => this.serveP2P(request));
    transport.handle(VIEW_TYPE, () => encodeView(this.currentView));
    transport.handle(RELAY_TYPE, (request) => this.relay(request));
    transport.handle(STATUS_TYPE, () => encodeMessage(this.status()));
    transport.handle(ORDERED_REPLY_TYPE, (request) => {
      // One copy of the frame (the replies' bytes alias it and may be kept by QueryResults),
      // not one allocation per reply.
      try {
        forEachOrderedReply(request.slice(), (callId, from, reply) => this.settleReply(callId, nodeId(from), reply));
      } catch {
        this.counters.malformedReplies++; // dropped: the caller's calls wait for the member as if it were slow
      }
      return new Uint8Array(0);
    });
    for (const membership of view.shardsOf(this.nodeId)) {
      const replica = this.makeReplica(membership, view);
      this.replicas.set(replicaKey(membership.typeName, membership.subgroupIndex), replica);
    }
  }

  /**
   * Starts this node's part of the group and resolves once every member of its first view is
   * running (see the file comment). Throws ConfigError (config, with the dotted keys),
   * DecoratorUsageError (a type without @replicated), LayoutPolicyError (bad layout),
   * GroupStartError (members unreachable within group.restart_timeout_s, or old data).
   */
  static async start(config: SquallConfig, options: GroupOptions): Promise<Group> {
    const infos = typeInfos(options);
    const allocator = typeof options.layout === 'function'
      ? (options.layout as Allocator)
      : defaultAllocator(options.layout as LayoutPolicies);
    if (options.membership && options.viewSource !== undefined) {
      throw new ConfigError([{ key: 'membership', message: 'and viewSource were both given to Group.start. Fix: pass one of them (membership runs its own view source)' }]);
    }
    const membership = options.membership ? options.membership : undefined;
    // The static source checks group.members before the endpoint opens (a config error first).
    let viewSource: ViewSource | undefined = options.viewSource ??
      (membership === undefined ? StaticViewSource.fromConfig(config, allocator) : undefined);
    // Sealed (AES-GCM, authenticated handshake) unless transport.encryption = false.
    const transport = await Endpoint.create(
      endpointOptionsFromConfig(config.transport, { host: config.node.host, port: config.node.port }),
    );
    if (viewSource === undefined) {
      try {
        viewSource = new MembershipViewSource({
          config, transport, allocator, layoutHash: layoutHashOf(infos, options.layout),
          ...(typeof membership === 'object' && membership.log !== undefined ? { log: membership.log } : {}),
        });
      } catch (error) {
        await closeTransport(transport);
        throw error;
      }
    }
    let store: PersistenceStore | undefined;
    let group: Group | undefined;
    try {
      const view = await viewSource.start();
      checkLayoutTypes(view, infos);
      checkAdequate(view, viewSource instanceof StaticViewSource);
      store = PersistenceStore.open({
        dataDir: config.persistence.data_dir,
        reset: config.persistence.reset,
        mapSizeBytes: config.persistence.map_size_mib * 1024 * 1024,
        syncMode: config.persistence.sync === 'durable' ? 'durable' : 'buffered',
        writeAheadLog: config.persistence.write_ahead_log,
      });
      group = new Group(config, options, transport, store, view, viewSource, infos);
      await group.connectMembers();
      await group.createDrivers();
      group.ready = true;
      await group.awaitMembersReady();
      // Removed while it started (e.g. welcomed into a view, then taken for failed before its
      // first heartbeats arrived): it is not a member, and Group.start says so.
      if (group.removed !== undefined) throw group.removed;
      return group;
    } catch (error) {
      if (group !== undefined) await group.close({ leave: false });
      else {
        await viewSource.close();
        await store?.close();
        await closeTransport(transport);
      }
      throw error;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Public API

  get view(): View {
    return this.currentView;
  }

  /** This node's rank in the current view. */
  get rank(): number {
    return this.currentView.rankOf(this.nodeId);
  }

  /** Every shard this node is in (type, subgroup, shard, rank, sender). */
  get shards(): readonly ShardMembership[] {
    return this.currentView.shardsOf(this.nodeId);
  }

  /** Calls `listener` for every view installed after this call. */
  on(event: 'view', listener: (view: View) => void): void;
  /**
   * Calls `listener` once this node is no longer a member (the group removed it as failed, it
   * left, or its membership driver stopped after an internal error), at once if it already is.
   * A removed node serves no more ordered calls (they fail with the same error); start it again
   * to rejoin as a new member. Only with `membership`: a static group never removes a node.
   */
  on(event: 'removed', listener: (error: RemovedFromGroupError) => void): void;
  on(event: 'view' | 'removed', listener: ((view: View) => void) | ((error: RemovedFromGroupError) => void)): void {
    if (event === 'view') this.viewListeners.push(listener as (view: View) => void);
    else if (this.removed !== undefined) (listener as (error: RemovedFromGroupError) => void)(this.removed);
    else this.removedListeners.push(listener as (error: RemovedFromGroupError) => void);
  }

  /** This node's shard of `Type`'s subgroup `index`. Throws NotMemberError if it has none. */
  subgroup<T extends object>(type: AnyClass<T>, index = 0): Replicated<T> {
    const info = this.infoOf(type);
    this.subgroupLayout(info.name, index);
    const replica = this.replicas.get(replicaKey(info.name, index)) as ShardReplica<T> | undefined;
    if (replica === undefined) {
      throw new NotMemberError(this.nodeId, info.name, index,
        `is not a member of any shard; use group.nonmember(${info.name}, ${index}) for p2p calls`);
    }
    return this.replicatedHandle(replica);
  }

  /** p2p access to `Type`'s subgroup `index` from any node (member or not). */
  nonmember<T extends object>(type: AnyClass<T>, index = 0): ExternalCaller<T> {
    const info = this.infoOf(type);
    this.subgroupLayout(info.name, index);
    return {
      typeName: info.name,
      subgroupIndex: index,
      p2p: (node, options) => this.p2pProxy<T>(info as ReplicatedClassInfo<T>, index, undefined, nodeId(node), options),
    };
  }

  /** The members of each shard of `Type`'s subgroup `index`, in shard-rank order. */
  members(type: AnyClass, index = 0): NodeId[][] {
    return this.subgroupLayout(this.infoOf(type).name, index).shards.map((s) => [...s.members]);
  }

  /** The shard a key belongs to in a hash-sharded subgroup (stable FNV-1a of the key). */
  shardOf(type: AnyClass, key: string | Uint8Array | number | bigint, index = 0): ShardIndex {
    const shards = this.subgroupLayout(this.infoOf(type).name, index).shards.length;
    return (hashKey(key) % shards) as ShardIndex;
  }

  /** This node's frontiers in its shard of `Type`'s subgroup `index`. */
  frontier(type: AnyClass, index = 0): ShardFrontier {
    return this.subgroup(type, index).frontier();
  }

  /** The current view and this node's frontiers in each of its shards (`squall status`). */
  status(): NodeStatus {
    return {
      node: this.nodeId,
      view: encodeView(this.currentView),
      shards: [...this.replicas.values()].map((r) => {
        const f = r.frontier();
        return {
          typeName: r.info.name,
          subgroupIndex: r.subgroupIndex,
          shardIndex: r.shardIndex,
          delivered: f.delivered,
          localPersisted: f.localPersisted,
          persisted: f.persisted,
          stableMicros: f.stableTime.micros,
        };
      }),
    };
  }

  /**
   * Leaves the group cleanly, then closes. With `membership: true` the other members install a
   * view without this node at once (no failure timeout); resolves false if no such view
   * committed within `timeoutMs` (this node closes anyway and is then removed as failed). With
   * the static view source there is nothing to leave: the same as close().
   */
  async leave(timeoutMs = 5_000): Promise<boolean> {
    const left = this.membership !== undefined && !this.closed ? await this.membership.leave(timeoutMs) : true;
    await this.close({ leave: false });
    return left;
  }

  /**
   * Stops the drivers, fails outstanding calls with GroupClosedError, closes store and socket.
   * With `membership: true` it first leaves cleanly (as leave(), waiting up to `leaveTimeoutMs`,
   * default 2000), so the others go on at once instead of after the failure timeout; pass
   * `{ leave: false }` to stop as if the process died (the others remove it as failed). A leave
   * that would leave fewer than a majority of the view is refused by the group: the node then
   * closes without it, and restarts from its data dir later like a failed one.
   */
  async close(options: { readonly leave?: boolean; readonly leaveTimeoutMs?: number } = {}): Promise<void> {
    if (this.closed) return;
    if (this.membership !== undefined && options.leave !== false && this.removed === undefined) {
      await this.membership.leave(options.leaveTimeoutMs ?? 2_000);
    }
    if (this.closed) return;
    this.closed = true;
    const error = new GroupClosedError('call outstanding at close');
    for (const results of this.calls.values()) results.failAll(error);
    for (const wait of [...this.inadequateWaits]) wait.release(error);
    this.calls.clear();
    for (const replica of this.replicas.values()) {
      replica.failWaiters(error);
      // The membership driver closes the drivers it owns (viewSource.close below).
      if (this.membership === undefined || replica.driverOrUndefined instanceof RaftOrderingEngine) {
        await replica.driverOrUndefined?.close();
      }
    }
    await this.viewSource.close();
    await this.store.close();
    await closeTransport(this.transport);
  }

  // ------------------------------------------------------------------------------------------
  // Handles

  private replicatedHandle<T extends object>(replica: ShardReplica<T>): Replicated<T> {
    const info = replica.info;
    // "Type.method" for errors, made once per method rather than per call.
    const labels = new Map([...info.ordered.values()].map((m) => [m, `${info.name}.${m.methodName}`]));
    const ordered = buildCallProxy(info, 'ordered', (method, bytes) =>
      this.orderedCall(replica, method.wireName, labels.get(method)!, bytes));
    return {
      typeName: info.name,
      subgroupIndex: replica.subgroupIndex,
      shardIndex: replica.shardIndex,
      members: this.shardMembers(replica),
      ordered: ordered as unknown as OrderedQueryApi<T>,
      p2p: (node, options) => this.p2pProxy(info, replica.subgroupIndex, replica, nodeId(node), options),
      versions: <K extends keyof T & string>(field: K): T[K] => {
        if (!info.persistentFields.some((f) => f.fieldName === field)) {
          const kept = info.persistentFields.map((f) => f.fieldName).join(', ') || 'none';
          throw new SquallError(
            `${info.name}.${field} is not a @persistent field, so it keeps no versions (the @persistent fields of ` +
              `${info.name}: ${kept}). Fix: ask for one of those, or declare ${field} @persistent.`,
            'NOT_PERSISTENT',
          );
        }
        return (replica.object as Record<string, unknown>)[field] as T[K];
      },
      frontier: () => replica.frontier(),
      whenStable: (time) => replica.whenStable(time),
      digest: () => objectDigest(replica.object),
    };
  }

  private orderedCall(
    replica: ShardReplica,
    wireName: string,
    label: string,
    args: Uint8Array,
    relayKey?: readonly [clientId: string, requestId: number],
  ): QueryResults<unknown> {
    const outer = currentOrderedCall();
    if (outer !== undefined) throw new OrderedCallInOrderedError(outer, label);
    if (this.closed) throw new GroupClosedError(label);
    if (this.removed !== undefined) throw this.removed;
    const callId = this.nextCallId++;
    const payload = encodeOrderedCall(callId, wireName, args, relayKey);
    // An inadequately provisioned subgroup takes no ordered calls: held until it is whole.
    const whole = this.currentView.isSubgroupAdequate(replica.subgroupId)
      ? undefined : this.awaitAdequate(replica.subgroupId, label);
    // The driver's receipt as it is: QueryResults reads only its timestamp (the version comes
    // with the delivery, numbered()), so no mapped copy per call.
    const sent: Promise<{ readonly timestamp: Hlc }> = whole === undefined ? replica.driver.send(payload) : whole.then(() => {
      results.addMembers(this.shardMembers(replica));
      return replica.driver.send(payload);
    });
    const results = new QueryResults<unknown>(label, this.shardMembers(replica), sent, replica.frontierWaits,
      () => this.calls.delete(callId));
    this.calls.set(callId, results);
    return results;
  }

  /**
   * A client's ordered call relayed into the shard with its idempotency key; answers with every
   * member's raw reply once all arrived (see wire.ts). A retry of the same key, through this or
   * another member, gets the replies of the first execution (ShardReplica dedupes).
   */
  private async relay(request: Uint8Array): Promise<Uint8Array> {
    const [clientId, requestId, subgroupId, shardIndex, wireName, args] =
      decodeMessageCopy<RelayRequest>(request);
    const replica = this.replicaOf(subgroupId, shardIndex);
    const shard = this.currentView.shard(subgroupId as SubgroupId, shardIndex as ShardIndex);
    if (replica === undefined || shard === undefined || !shard.senders.includes(this.nodeId)) {
      const why = `node ${this.nodeId} is not a sender of shard ${shardIndex} of subgroup ${subgroupId}`;
      return encodeMessage([RELAY_REFUSED, 'NOT_MEMBER', why]);
    }
    try {
      const label = `${replica.info.name}.${wireName} (relayed)`;
      const results = this.orderedCall(replica, wireName, label, args, [clientId, requestId]);
      const [version, timestamp] = await Promise.all([results.version, results.timestamp]);
      // A raft shard answers once a majority replied (a dead member must not hold the client).
      await (shard.mode === 'raft' ? majoritySettled([...results.replies.values()]) : Promise.allSettled(results.replies.values()));
      const replies = [...results.rawReplies].map(([node, bytes]) => [node, bytes]);
      return encodeMessage([RELAY_OK, version, timestamp.micros, timestamp.logical, replies]);
    } catch (error) {
      const code = error instanceof SquallError ? error.code : 'INTERNAL';
      return encodeMessage([RELAY_REFUSED, code, String((error as Error)?.message ?? error)]);
    }
  }

  /**
   * Resolves once a view lays out subgroup `subgroupId` adequately (every shard with the nodes and
   * senders its policy asks for); rejects with SubgroupInadequateError after
   * group.inadequate_wait_ms, or with the reason if this node is removed or the group closes.
   * The rest of the group takes calls meanwhile.
   */
  private awaitAdequate(subgroupId: SubgroupId, label: string): Promise<void> {
    const waitMs = this.config.group.inadequate_wait_ms;
    return new Promise<void>((resolve, reject) => {
      const wait = {
        subgroupId,
        release: (error?: Error): void => {
          clearTimeout(timer);
          this.inadequateWaits.delete(wait);
          if (error === undefined) resolve();
          else reject(error);
        },
      };
      const timer = setTimeout(() => {
        const view = this.currentView;
        wait.release(new SubgroupInadequateError(label, view.id, view.inadequaciesOf(subgroupId).map(describeInadequacy), waitMs));
      }, waitMs);
      this.inadequateWaits.add(wait);
    });
  }

  /** The replica's shard members in the current view (the view it started in lists them all). */
  private shardMembers(replica: ShardReplica): readonly NodeId[] {
    return this.currentView.shard(replica.subgroupId, replica.shardIndex)?.members ?? replica.members;
  }

  /** Replies awaited from members a new view no longer has will never come: NodeRemovedError. */
  private failRemovedMembers(view: View): void {
    for (const [callId, results] of this.calls) {
      results.failMembersWhere(
        (node) => !view.isMember(node),
        (node) => new NodeRemovedError(node, results.method),
      );
      if (results.complete) this.calls.delete(callId);
    }
  }

  private settleReply(callId: number, from: NodeId, reply: Uint8Array): void {
    const results = this.calls.get(callId);
    if (results === undefined) return;
    results.settleReply(from, reply);
    if (results.complete) this.calls.delete(callId);
  }

  /** A member's reply to `caller`: local at once, remote batched per destination per turn. */
  private sendReply(caller: NodeId, callId: number, reply: Uint8Array): void {
    if (caller === this.nodeId) {
      this.settleReply(callId, caller, reply);
      return;
    }
    let queue = this.replyQueues.get(caller);
    if (queue === undefined) this.replyQueues.set(caller, (queue = []));
    queue.push([callId, this.nodeId, reply]);
    if (this.replyFlushScheduled) return;
    this.replyFlushScheduled = true;
    setImmediate(this.flushRepliesBound);
  }

  /**
   * Sends the queued replies, one batch per caller. At the end of the turn (setImmediate), or
   * earlier when a shard's persisted frontier catches up with its deliveries (attached per
   * replica where it is created): that
   * notification also has the multicast driver send its persisted report, and both then leave in
   * the same transport flush (the reply's call is made a microtask after the driver's pump,
   * before the transport's flush), so the caller gets the reply and the report in one wake-up
   * instead of two. With fdatasync the frontier moves turns later: the turn's end comes first.
   */
  private flushReplies(): void {
    if (!this.replyFlushScheduled) return;
    this.replyFlushScheduled = false;
    for (const [to, replies] of this.replyQueues) {
      this.replyQueues.delete(to);
      void this.session(to)
        .then((s) => s.call(ORDERED_REPLY_TYPE, encodeOrderedReplies(replies)))
        .catch(() => undefined); // the caller's membership layer handles a lost member
    }
  }

  private readonly flushRepliesBound = (): void => this.flushReplies();
  /** Per shard registry, the replica whose deliveries its persisted frontier is compared with. */
  private readonly replyFlushReplicas = new Map<PersistentRegistry, ShardReplica>();

  private p2pProxy<T extends object>(
    info: ReplicatedClassInfo<T>,
    subgroupIndex: number,
    replica: ShardReplica | undefined,
    node: NodeId,
    options?: P2POptions,
  ): P2PApi<T> {
    const subgroup = this.subgroupLayout(info.name, subgroupIndex);
    const shardIndex = replica !== undefined
      ? replica.shardIndex
      : subgroup.shards.findIndex((s) => s.members.includes(node));
    if (shardIndex < 0 || !subgroup.shards[shardIndex]!.members.includes(node)) {
      throw new NotMemberError(node, info.name, subgroupIndex,
        replica !== undefined ? `is not in shard ${replica.shardIndex}` : 'is not in any shard');
    }
    const local = options?.read === 'local';
    const send = (method: MethodInfo, args: Uint8Array): Promise<unknown> =>
      this.p2pCall(info, subgroup.subgroupId, shardIndex, node, method, args, local);
    return buildCallProxy(info, 'p2p', send) as unknown as P2PApi<T>;
  }

  private async p2pCall(
    info: ReplicatedClassInfo,
    subgroupId: number,
    shardIndex: number,
    node: NodeId,
    method: MethodInfo,
    args: Uint8Array,
    local = false,
  ): Promise<unknown> {
    if (this.closed) throw new GroupClosedError(`${info.name}.${method.methodName}`);
    const what = `p2p call ${info.name}.${method.methodName} to node ${node}`;
    const requestMax = this.config.p2p.max_p2p_request_payload_size;
    if (args.byteLength > requestMax) {
      throw new PayloadTooLargeError(what, args.byteLength, requestMax, 'p2p.max_p2p_request_payload_size');
    }
    let response: Uint8Array;
    const request: P2PRequest = local
      ? [subgroupId, shardIndex, method.wireName, args, P2P_READ_LOCAL]
      : [subgroupId, shardIndex, method.wireName, args];
    if (node === this.nodeId) {
      response = await this.serveP2P(encodeMessage(request));
    } else {
      const session = await this.session(node);
      response = await session.call(P2P_REQUEST_TYPE, encodeMessage(request), {
        timeoutMs: this.config.transport.request_timeout_ms,
      });
    }
    const [status, body, limit] = decodeMessageCopy<[number, Uint8Array | number | string, number?]>(response);
    if (status === P2P_OK) return decodeReply(body as Uint8Array, node);
    if (status === P2P_REPLY_TOO_LARGE) {
      // The serving node's limit (its config) is the one that applies.
      throw new PayloadTooLargeError(`reply to ${what}`, body as number, limit ?? -1, 'p2p.max_p2p_reply_payload_size');
    }
    throw new NotMemberError(node, info.name, -1, String(body));
  }

  /** The p2p handler: runs a read-only call on the local replica. */
  private async serveP2P(request: Uint8Array): Promise<Uint8Array> {
    const [subgroupId, shardIndex, wireName, args, readMode] = decodeMessage<P2PRequest>(request);
    const replica = this.replicaOf(subgroupId, shardIndex);
    if (replica === undefined) {
      return encodeMessage([P2P_NOT_HOSTED, `does not host shard ${shardIndex} of subgroup ${subgroupId}`]);
    }
    let reply: Uint8Array;
    try {
      // A raft shard's linearizable read (the default): ReadIndex through the leader first.
      if (readMode !== P2P_READ_LOCAL && replica.driver?.readBarrier !== undefined) await replica.driver.readBarrier();
      reply = await replica.dispatcher.dispatch('p2p', wireName, args);
    } catch (error) {
      const framework = error instanceof SquallError ? error : new SquallError(String(error), 'INTERNAL');
      reply = encodeFrameworkError(framework);
    }
    if (reply.byteLength > this.config.p2p.max_p2p_reply_payload_size) {
      const limit = this.config.p2p.max_p2p_reply_payload_size;
      return encodeMessage([P2P_REPLY_TOO_LARGE, reply.byteLength, limit]);
    }
    return encodeMessage([P2P_OK, reply]);
  }

  // ------------------------------------------------------------------------------------------
  // Start

  private makeReplica(membership: ShardMembership, view: View): ShardReplica {
    const info = this.infos.get(membership.typeName)!;
    const registryName = `${membership.typeName}/${membership.subgroupIndex}/${membership.shardIndex}`;
    const registry = this.store.registry(registryName);
    const shard = view.shard(membership.subgroupId, membership.shardIndex)!;
    const replica = new ShardReplica(
      info,
      membership.subgroupIndex,
      membership.subgroupId,
      membership.shardIndex,
      shard.members,
      registry,
      this.nodeId,
      { current: () => this.currentView, onView: (listener) => this.on('view', listener) },
      (caller, callId, reply) => this.sendReply(caller, callId, reply),
      this.p2pWriteCheck,
    );
    replica.onOwnDelivered = (callId, version) => this.calls.get(callId)?.numbered(version);
    // (Only when the frontier caught up with this replica's deliveries, as the driver's report
    // does: behind, a write-ahead log's fdatasync ending mid-turn, the turn's end comes soon and
    // sends the turn's replies in one call.)
    // One listener per registry (a replica made again for it replaces the one it reads).
    if (!this.replyFlushReplicas.has(registry)) {
      registry.onPersisted((version) => {
        if (version >= this.replyFlushReplicas.get(registry)!.deliveredWaiters.current) this.flushReplies();
      });
    }
    this.replyFlushReplicas.set(registry, replica);
    // With the membership service, a node whose data dir holds a view record restarts over its
    // state: the driver reconciles it (truncates past the committed trim, pulls what it lacks).
    if (registry.latestVersion !== VERSION_NONE && this.membership?.restarted !== true) {
      if (this.membership !== undefined) {
        throw new GroupStartError(
          `${this.config.persistence.data_dir} holds versions of ${registryName} (up to ` +
            `${registry.latestVersion}) but no membership view record, so they cannot be ` +
            `reconciled with the group's (they were written by a static group, or the record was ` +
            `deleted). Fix: set persistence.reset = true, or use an empty data_dir.`,
        );
      }
      throw new GroupStartError(
        `${this.config.persistence.data_dir} already holds versions of ${registryName} (up to ` +
          `${registry.latestVersion}). A group started from a static member list always starts at ` +
          `view 1 and cannot reconcile replicas that persisted different suffixes (the membership ` +
          `service can: membership: true). Fix: set persistence.reset = true, or use an empty data_dir.`,
      );
    }
    // A raft shard's old versions are kept too (membership service only, above): a total restart
    // resumes its Raft log (createDrivers; raft-shard.ts, "Total restart"), and a node that
    // rejoins a running group starts an empty Raft log as a learner of the same Raft group, whose
    // versions (term << 32 | index) run on above the ones it holds.
    return replica;
  }

  private session(node: NodeId): Promise<TransportSession> {
    const address = this.currentView.addressOf(node);
    if (address === undefined) {
      return Promise.reject(new NotMemberError(node, 'the group', 0, 'is not a member of the current view'));
    }
    return this.sessions.get(address);
  }

  private deadlineMs(): number {
    return Date.now() + this.config.group.restart_timeout_s * 1000;
  }

  private peers(): NodeId[] {
    return this.currentView.memberIds.filter((n) => n !== this.nodeId);
  }

  /** Opens a session to every other member, retrying until group.restart_timeout_s. */
  private async connectMembers(): Promise<void> {
    const deadline = this.deadlineMs();
    await Promise.all(this.peers().map(async (node) => {
      for (;;) {
        try {
          await this.session(node);
          return;
        } catch (error) {
          if (this.closed) throw new GroupClosedError('Group.start');
          if (Date.now() > deadline) throw this.unreachable(node, error);
          await sleep(50);
        }
      }
    }));
  }

  private async createDrivers(): Promise<void> {
    const view = this.currentView;
    if (this.membership !== undefined) {
      this.membership.attach({
        deliver: (ref, delivery) => this.replicaOf(ref.subgroupId, ref.shardIndex)?.deliver(delivery),
        inState: (ref, delivery) => this.replicaOf(ref.subgroupId, ref.shardIndex)?.inState(delivery),
        registry: (ref) => this.replicaOf(ref.subgroupId, ref.shardIndex)?.registry,
        persist: async () => {
          await Promise.all([...this.replicas.values()].map((r) => r.persistDelivered()));
        },
      });
      this.attachMembershipDrivers();
      await this.awaitStateTransfers(this.membership);
      // Raft shards: founders (view 0) form the Raft group; a joiner joins it with its state; in
      // the view a total restart resumed in, a member with the shard's Raft log restarts it
      // (raft-shard.ts, "Total restart").
      const restartView = this.membership.driver.restartViewId === view.id;
      for (const replica of this.replicas.values()) {
        if (view.shard(replica.subgroupId, replica.shardIndex)!.mode !== 'raft') continue;
        const resume = restartView && hasRaftShardLog(this.config, replica.subgroupId, replica.shardIndex);
        replica.attachDriver(await startRaftShard(replica, view, this.config, this.transport, this.nodeId, view.id !== 0 && !resume, resume));
      }
      return;
    }
    const gate = this.gate!;
    for (const replica of this.replicas.values()) {
      const shard = view.shard(replica.subgroupId, replica.shardIndex)!;
      if (shard.mode === 'raft') {
        // The shard's members form a Raft group (raft-shard.ts): same replica, another engine.
        replica.attachDriver(await startRaftShard(replica, view, this.config, this.transport, this.nodeId));
        continue;
      }
      const addresses = new Map(shard.members.map((n) => [n, view.addressOf(n)!]));
      const shardNumber = driverShardNumber(replica.subgroupId, replica.shardIndex);
      const created = MulticastDriver.create({
        transport: gate,
        self: this.nodeId,
        shard: shardNumber,
        view: { viewId: view.id, members: shard.members, senders: shard.senders, addresses },
        mode: shard.mode === 'raw' ? 'raw' : 'ordered',
        limits: multicastLimitsForProfile(this.config, shard.profile),
        onDeliver: (delivery) => replica.deliver(delivery),
      });
      // The driver registered its shard synchronously inside create(): release held frames now,
      // before any other frame can arrive, so the core sees them in arrival order.
      gate.openShard(shardNumber);
      replica.attachDriver(await created);
    }
  }

  /**
   * With the membership view source, a view may move this node into a shard (the allocator
   * filled a gap with it) or out of one: a replica is built for each shard it enters (the
   * membership driver pulls the state into its registry and holds the deliveries meanwhile),
   * and the replica of a shard it left is dropped (its waiters fail with NotMemberError).
   */
  private followShards(view: View): void {
    if (this.membership === undefined) return;
    const mine = view.shardsOf(this.nodeId);
    for (const [key, replica] of this.replicas) {
      if (mine.some((m) => replicaKey(m.typeName, m.subgroupIndex) === key && m.shardIndex === replica.shardIndex)) continue;
      replica.failWaiters(new NotMemberError(this.nodeId, replica.info.name, replica.subgroupIndex,
        `left shard ${replica.shardIndex} in view ${view.id}`));
      if (replica.driverOrUndefined instanceof RaftOrderingEngine) void replica.driver.close();
      this.replicas.delete(key);
    }
    for (const m of mine) {
      const key = replicaKey(m.typeName, m.subgroupIndex);
      if (this.replicas.has(key)) continue;
      try {
        this.replicas.set(key, this.makeReplica(m, view));
      } catch (error) {
        // Re-entering a shard whose old versions this store holds: the restart protocol's job.
        process.emitWarning(`node ${this.nodeId} cannot serve ${key} shard ${m.shardIndex} in view ${view.id}: ${String(error)}`);
      }
    }
  }

  /**
   * With the membership view source: each replica sends through the membership driver's
   * multicast driver of its shard; a view that brought a new driver re-attaches it.
   */
  private attachMembershipDrivers(): void {
    if (this.membership === undefined) return;
    for (const replica of this.replicas.values()) {
      const ref = { subgroupId: replica.subgroupId, shardIndex: replica.shardIndex };
      if (this.currentView.shard(ref.subgroupId, ref.shardIndex)?.mode === 'raft') {
        this.followRaftShard(replica, this.membership); // its own engine, not the multicast driver
        continue;
      }
      const driver = this.membership.multicast(ref);
      if (driver !== undefined && driver !== replica.driverOrUndefined) replica.attachDriver(driver);
    }
  }

  /**
   * A raft shard after a view change: its engine follows the shard's members; a replica without
   * an engine yet (a shard this node entered) starts one in join mode once its state arrived.
   */
  private followRaftShard(replica: ShardReplica, membership: MembershipViewSource): void {
    const engine = replica.driverOrUndefined;
    if (engine instanceof RaftOrderingEngine) {
      followRaftShardView(engine, replica, this.currentView);
      return;
    }
    if (!this.ready || this.raftStarting.has(replica)) return; // Group.start starts founders' engines
    this.raftStarting.add(replica);
    void (async () => {
      const ref = { subgroupId: replica.subgroupId, shardIndex: replica.shardIndex };
      while (membership.awaitingState(ref) && !this.closed) await sleep(10);
      if (this.closed || !this.replicas.has(replicaKey(replica.info.name, replica.subgroupIndex))) return;
      const started = await startRaftShard(replica, this.currentView, this.config, this.transport, this.nodeId, true);
      if (this.closed) await started.close();
      else replica.attachDriver(started);
    })().catch((error: unknown) => process.emitWarning(`node ${this.nodeId}: raft shard ${replica.shardIndex} of ${replica.info.name} did not start: ${String(error)}`))
      .finally(() => this.raftStarting.delete(replica));
  }

  /** A joiner: waits until every local shard's state arrived by transfer. */
  private async awaitStateTransfers(membership: MembershipViewSource): Promise<void> {
    const deadline = this.deadlineMs();
    for (const replica of this.replicas.values()) {
      const ref = { subgroupId: replica.subgroupId, shardIndex: replica.shardIndex };
      while (membership.awaitingState(ref)) {
        if (this.closed) throw new GroupClosedError('Group.start');
        if (this.removed !== undefined) throw this.removed;
        if (Date.now() > deadline) {
          throw new GroupStartError(
            `the state of ${replica.info.name} shard ${replica.shardIndex} did not arrive within ` +
              `group.restart_timeout_s (${this.config.group.restart_timeout_s} s). Fix: check that ` +
              `the shard's members are reachable, or raise group.restart_timeout_s.`,
          );
        }
        await sleep(10);
      }
    }
  }

  /** Waits until every other member answers READY with 1 (its drivers exist). */
  private async awaitMembersReady(): Promise<void> {
    const deadline = this.deadlineMs();
    await Promise.all(this.peers().map(async (node) => {
      for (;;) {
        try {
          const session = await this.session(node);
          const answer = await session.call(READY_TYPE, new Uint8Array(0), { timeoutMs: 1000 });
          const [ready] = decodeMessage<[number]>(answer);
          if (ready === 1) return;
        } catch (error) {
          if (this.closed) throw new GroupClosedError('Group.start');
          if (Date.now() > deadline) throw this.unreachable(node, error);
        }
        if (Date.now() > deadline) throw this.unreachable(node, undefined);
        await sleep(20);
      }
    }));
  }

  private unreachable(node: NodeId, cause: unknown): GroupStartError {
    return new GroupStartError(
      `node ${node} (${this.currentView.addressOf(node)}) did not come up within ` +
        `group.restart_timeout_s (${this.config.group.restart_timeout_s} s). Fix: start every node ` +
        `listed in group.members, check their addresses, or raise group.restart_timeout_s.`,
      { cause },
    );
  }

  private replicaOf(subgroupId: number, shardIndex: number): ShardReplica | undefined {
    for (const r of this.replicas.values()) {
      if (r.subgroupId === subgroupId && r.shardIndex === shardIndex) return r;
    }
    return undefined;
  }

  private infoOf<T extends object>(type: AnyClass<T>): ReplicatedClassInfo<T> {
    const info = replicatedClassInfo(type);
    if (this.infos.get(info.name) !== (info as ReplicatedClassInfo)) {
      throw new NotMemberError(this.nodeId, info.name, 0,
        `was not given ${info.name} in Group.start's types, so it hosts no subgroup`);
    }
    return info;
  }

  private subgroupLayout(typeName: string, index: number) {
    const subgroup = this.currentView.subgroup(typeName, index);
    if (subgroup === undefined) {
      throw new NoSuchShardError(typeName, index, undefined, this.currentView.typeLayout(typeName)?.subgroups.length ?? 0);
    }
    return subgroup;
  }
}

/**
 * Closes the endpoint. Its socket is released when libuv runs the handles' close callbacks, at
 * the end of the current loop iteration; a timer fires after that, so the port is free again
 * when this resolves (a node restarted in the same process can bind it).
 */
async function closeTransport(transport: Transport): Promise<void> {
  await transport.close();
  await new Promise((resolve) => setTimeout(resolve, 1));
}

function replicaKey(typeName: string, subgroupIndex: number): string {
  return `${typeName}/${subgroupIndex}`;
}


function typeInfos(options: GroupOptions): Map<string, ReplicatedClassInfo> {
  const infos = new Map<string, ReplicatedClassInfo>();
  for (const type of options.types) {
    const info = replicatedClassInfo(type);
    infos.set(info.name, info as ReplicatedClassInfo);
  }
  if (typeof options.layout !== 'function') {
    const policies = options.layout instanceof Map ? [...options.layout.keys()] : Object.keys(options.layout);
    const problems: { key: string; message: string }[] = [];
    for (const name of policies) {
      if (!infos.has(name)) problems.push({ key: `layout.${name}`, message: `names a type that is not in types (${[...infos.keys()].join(', ')}). Fix: add the class to types or remove the policy` });
    }
    for (const name of infos.keys()) {
      if (!policies.includes(name)) problems.push({ key: `layout.${name}`, message: `is missing: ${name} is in types but has no layout policy. Fix: add e.g. ${name}: oneSubgroup(fixedEvenShards(1, 3))` });
    }
    if (problems.length > 0) throw new ConfigError(problems);
  }
  return infos;
}

function checkLayoutTypes(view: View, infos: ReadonlyMap<string, ReplicatedClassInfo>): void {
  for (const t of view.layout.types) {
    if (!infos.has(t.typeName)) {
      throw new ConfigError([{ key: `layout.${t.typeName}`, message: 'the allocator laid out a type that is not in types. Fix: add the class to types' }]);
    }
  }
}

/**
 * A static view never changes, so a shard short of nodes would stay unusable: refuse at start.
 * (A dynamic view source may start inadequate and wait for joins; that is its job.)
 */
function checkAdequate(view: View, isStatic: boolean): void {
  if (view.isAdequate || !isStatic) return;
  throw new ConfigError(view.layout.inadequate.map((i) => ({
    key: 'group.members',
    message: `lists ${view.members.length} nodes, too few for the layout: ${describeInadequacy(i)}. Fix: list more members or lower the layout's nodesMin`,
  })));
}

