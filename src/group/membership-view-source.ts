/**
 * MembershipViewSource: the ViewSource seam (view-source.ts) over a MembershipDriver
 * (src/runtime/membership-driver.ts). Views come from the membership log: view 0 from the
 * founders (`group.members`), then one view per committed change (a failed member removed, a
 * clean leave). The membership driver owns each local shard's MulticastDriver and runs wedge →
 * receive state → committed trim → applyTrim → persist → installView; the group takes the
 * drivers from `multicast(shard)` and re-attaches its replicas when an install brings new ones.
 *
 * Deliveries reach the group through `attach(sink)`; ones that arrive before the group attached
 * (possible between start() and the group's construction) are held and replayed in order.
 *
 * A node that `group.members` does not list joins: it asks the founders (then `group.seeds`) until
 * one welcomes it, and pulls the state of each shard it enters, in chunks, from a member of that
 * shard (the sink's PersistentRegistry: serializeSuffix → applyChunk) before its deliveries start.
 */
import { createHash } from 'node:crypto';
import type { PersistentRegistry } from '../../persistence/registry.js';
import { VersionNotFoundError, VersionTrimmedError } from '../../persistence/errors.js';
import { ConfigError, SquallError } from '../core/errors.js';
import { nodeId } from '../core/ids.js';
import type { ReplicatedClassInfo } from '../../decorators/metadata.js';
import type { SquallConfig } from '../config/schema.js';
import {
  compilePolicies, encodePolicies, runAllocator, type Allocator, type LayoutPolicies,
} from '../membership/layout.js';
import type { View } from '../membership/view.js';
import { multicastLimitsForProfile } from './limits.js';
import { persistedRaftVoters } from './raft-shard.js';
import {
  MembershipDriver, type RemovedFromGroupError as DriverRemovedError, type ShardRef, type ShardStateStore,
} from '../runtime/membership-driver.js';
import type { MulticastDelivery, MulticastDriver } from '../runtime/multicast-driver.js';
import { MembershipStore } from '../runtime/membership-store.js';
import type { Transport } from '../transport/transport.js';
import { staticMembersFromConfig, type ViewListener, type ViewSource } from './view-source.js';

/** What the group hands the membership view source (Group.start builds it). */
export interface MembershipViewSourceOptions {
  readonly config: SquallConfig;
  readonly transport: Transport;
  readonly allocator: Allocator;
  /** Hash of the hosted types and layout policies (layoutHashOf): joiners must match it. */
  readonly layoutHash: string;
  /** Progress lines of the membership driver (committed entries, effects, suspicions). */
  readonly log?: (line: string) => void;
}

/** Where the group takes deliveries and the persist step of a view change. */
export interface MembershipSink {
  deliver(shard: ShardRef, delivery: MulticastDelivery): void;
  /** A delivery the shard's transferred state already holds: answer its caller, apply nothing. */
  inState(shard: ShardRef, delivery: MulticastDelivery): void;
  /** The persistent state of a local shard, for state transfer (undefined: not hosted here). */
  registry(shard: ShardRef): PersistentRegistry | undefined;
  /** Everything delivered so far is durable (called before a new view installs). */
  persist(): Promise<void>;
}

export class MembershipViewSource implements ViewSource {
  readonly driver: MembershipDriver;
  /**
   * True if this node's data dir held a view record: it restarts (rejoins a running group, or
   * takes part in a total restart) over the state it persisted, instead of starting empty.
   */
  readonly restarted: boolean;
  private readonly store: MembershipStore;
  private readonly listeners: ViewListener[] = [];
  private readonly removedListeners: ((error: DriverRemovedError) => void)[] = [];
  private sink: MembershipSink | undefined;
  private early: { shard: ShardRef; delivery: MulticastDelivery }[] = [];
  private started = false;
  /** Set once the membership log removed this node (it failed, was suspected, or left). */
  removed: DriverRemovedError | undefined;

  constructor(options: MembershipViewSourceOptions) {
    const { config } = options;
    const founders = staticMembersFromConfig(config, false).map((m) => ({ id: m.id, address: m.address }));
    const found = founders.some((f) => f.id === config.node.id);
    // Every profile the founders' layout names needs its [subgroup.<profile>] section: checked
    // here, before the driver builds multicast drivers with it (a ConfigError naming the key).
    const firstLayout = runAllocator(options.allocator, { previous: undefined, members: founders.map((f) => f.id) });
    for (const type of firstLayout.types) {
      for (const subgroup of type.subgroups) for (const shard of subgroup.shards) multicastLimitsForProfile(config, shard.profile);
    }
    const zero = founders.findIndex((f) => f.id === 0);
    if (zero >= 0 || config.node.id === 0) {
      // The membership log's Raft uses id 0 for "no node".
      throw new ConfigError([{
        key: zero >= 0 ? `group.members[${zero}]` : 'node.id',
        message: 'has node id 0, which the membership driver cannot use (its Raft log reserves 0 for "no node"). Fix: number the nodes from 1',
      }]);
    }
    const durable = config.persistence.sync === 'durable';
    this.store = MembershipStore.open(config.persistence.data_dir, { reset: config.persistence.reset, durable });
    const record = this.store.load();
    this.restarted = record !== undefined;
    this.driver = new MembershipDriver({
      self: nodeId(config.node.id),
      transport: options.transport,
      allocator: options.allocator,
      layoutHash: options.layoutHash,
      founders,
      found,
      seeds: [...new Set([...founders.map((f) => f.address), ...config.group.seeds])],
      state: this.stateStore(),
      votersCount: Math.min(config.group.voters, founders.length),
      heartbeatMs: config.timeouts.heartbeat_ms,
      failureTimeoutMs: config.timeouts.failure_timeout_ms,
      ...(record !== undefined ? { record } : {}),
      saveRecord: (r) => this.store.save(r),
      raftStorageFor: (epoch) => this.store.raftStorage(epoch, durable),
      restartTimeoutMs: config.group.restart_timeout_s * 1000,
      restartGraceMs: config.group.restart_grace_ms,
      raftVoters: (view) => persistedRaftVoters(config, view, nodeId(config.node.id)),
      multicastLimitsFor: (profile) => multicastLimitsForProfile(config, profile),
      onDeliver: (shard, delivery) => this.onDeliver(shard, delivery),
      onInState: (shard, delivery) => this.sink?.inState(shard, delivery),
      persist: () => this.sink?.persist() ?? Promise.resolve(),
      log: options.log ?? restartProgress(config),
    });
    this.driver.on('view', (view) => {
      if (!this.started) return; // the first view is start()'s result
      for (const listener of this.listeners) listener(view);
    });
    this.driver.on('removed', (error) => {
      this.removed = error;
      for (const listener of this.removedListeners) listener(error);
    });
  }

  current(): View | undefined {
    return this.started ? this.driver.current() : undefined;
  }

  on(_event: 'view', listener: ViewListener): void {
    this.listeners.push(listener);
  }

  async start(): Promise<View> {
    await this.driver.start();
    this.started = true;
    return this.driver.current();
  }

  /**
   * Calls `listener` once the membership log removed this node (failure, suspicion or leave), at
   * once if that already happened: a node can be removed while Group.start still waits for its
   * state or its peers (a joiner welcomed late), before anyone listened.
   */
  onRemoved(listener: (error: DriverRemovedError) => void): void {
    if (this.removed !== undefined) listener(this.removed);
    else this.removedListeners.push(listener);
  }

  /**
   * Asks to leave cleanly and resolves once a view without this node committed (true), or after
   * `timeoutMs` without one (false: e.g. no majority of the voters is reachable).
   */
  leave(timeoutMs: number): Promise<boolean> {
    if (this.removed !== undefined) return Promise.resolve(true);
    if (!this.driver.isMember) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = (left: boolean): void => {
        clearTimeout(timer);
        resolve(left);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.onRemoved(() => done(true));
      // Refused: leaving would leave fewer than a majority of the view (the others are gone).
      this.driver.on('leaveRefused', () => done(false));
      this.driver.leave();
    });
  }

  /** The multicast driver of a shard of the current view this node is in. */
  multicast(shard: ShardRef): MulticastDriver | undefined {
    return this.driver.multicast(shard);
  }

  /** Routes deliveries to the group from now on (held ones first, in order). */
  attach(sink: MembershipSink): void {
    this.sink = sink;
    const early = this.early;
    this.early = [];
    for (const { shard, delivery } of early) sink.deliver(shard, delivery);
  }

  async close(): Promise<void> {
    await this.driver.close();
    await this.store.close();
  }

  /** Whether this node still waits for the state of `shard` (a joiner's transfer). */
  awaitingState(shard: ShardRef): boolean {
    return this.driver.awaitingState(shard);
  }

  /** State transfer over the group's registries; throws (the joiner retries) until attached. */
  private stateStore(): ShardStateStore {
    const registry = (shard: ShardRef): PersistentRegistry => {
      const found = this.sink?.registry(shard);
      if (found === undefined) {
        throw new SquallError(`shard ${shard.subgroupId}/${shard.shardIndex} has no replica here yet`, 'NO_STATE');
      }
      return found;
    };
    return {
      latestVersion: (shard) => registry(shard).latestVersion,
      stateChunks: (shard, afterVersion) => registry(shard).serializeSuffix(afterVersion),
      applyStateChunk: (shard, chunk) => registry(shard).applyChunk(chunk),
      truncate: (shard, version) => registry(shard).truncate(version),
      floorVersion: (shard, version) => floorVersion(registry(shard), version),
    };
  }

  private onDeliver(shard: ShardRef, delivery: MulticastDelivery): void {
    if (this.sink !== undefined) this.sink.deliver(shard, delivery);
    else this.early.push({ shard, delivery: { ...delivery, payload: delivery.payload.slice() } });
  }
}

/**
 * Without a `log` option, a restarting node still says what it waits for: the driver's
 * `restart:` lines (who is back, who is missing, the decision, each shard's reconciliation) go
 * to stderr when `logging.level` is info or more verbose.
 */
function restartProgress(config: SquallConfig): (line: string) => void {
  const verbose = ['info', 'debug', 'trace'].includes(config.logging.level);
  return (line) => {
    if (verbose && line.startsWith('restart:')) process.stderr.write(`squall node ${config.node.id}: ${line}\n`);
  };
}

/**
 * The newest version at or below `version` in any field of `registry` (-1n: none), or undefined
 * when a field's history was trimmed past it (then nobody can tell what lies below).
 */
function floorVersion(registry: PersistentRegistry, version: bigint): bigint | undefined {
  let floor = -1n;
  for (const name of registry.fieldNames()) {
    const field = registry.field(name)!;
    const latest = field.latestVersion();
    if (latest < 0n) continue;
    let found: bigint;
    if (version >= latest) found = latest;
    else {
      try {
        found = field.versionAt(version);
      } catch (error) {
        if (error instanceof VersionNotFoundError) continue;
        if (error instanceof VersionTrimmedError) return undefined;
        throw error;
      }
    }
    if (found > floor) floor = found;
  }
  return floor;
}

/**
 * SHA-256 over the hosted types (name, ordered and p2p wire names) and the layout policies: two
 * nodes with the same hash compute the same views. A custom Allocator function counts by name.
 */
export function layoutHashOf(
  infos: ReadonlyMap<string, ReplicatedClassInfo>,
  layout: LayoutPolicies | Allocator,
): string {
  const hash = createHash('sha256');
  for (const [name, info] of [...infos].sort(([a], [b]) => a.localeCompare(b))) {
    hash.update(`${name}|${[...info.ordered.keys()].join(',')}|${[...info.p2p.keys()].join(',')}\n`);
  }
  if (typeof layout === 'function') hash.update(`allocator:${layout.name}`);
  else hash.update(encodePolicies(compilePolicies(layout as LayoutPolicies)));
  return hash.digest('hex');
}
