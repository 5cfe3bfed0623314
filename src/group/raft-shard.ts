/**
 * Raft-ordered shards in the group layer (issue #12): a shard whose layout says `mode: 'raft'`
 * runs its replica over a RaftOrderingEngine (src/runtime/raft-ordering-engine.ts) instead of a
 * MulticastDriver. The replica, QueryResults, versions, timestamps and frontiers are the same
 * code either way (the OrderingEngine seam, src/runtime/ordering-engine.ts); this file only
 * builds the engine for a replica.
 *
 *   - Raft group id: the shard's multicast shard number + 1 (unique per node; 0 is the
 *     membership log), so several shards and the membership Raft share one endpoint.
 *   - With the membership service (`membership: true`), view changes change the Raft
 *     configuration (`RaftOrderingEngine.setMembers`): a member that left is removed, a node the
 *     allocator puts in the shard receives the state by the membership driver's transfer, then
 *     starts as a learner (`join`), catches up by log or snapshot and is promoted.
 *   - Raft log: directory `raft-<subgroupId>-<shardIndex>.mdb` in `persistence.data_dir`, one
 *     append-only file (LogFileStorage; a log an earlier version wrote there in LMDB is resumed
 *     as LMDB: openRaftLog), fdatasynced per flush with `persistence.sync = "durable"`. A static
 *     group always starts fresh (as its
 *     replicas do), so the file is wiped at start; so does a node that joins a running shard.
 *   - **Total restart** (membership service; src/membership/restart.ts): in the restart view,
 *     each member that holds the shard's Raft log resumes it (`resume`): the Raft group is the
 *     same one, restarted. Its configuration is the one in its log/snapshot (the voters of the
 *     last view, not the restart view's members: `voters` only seeds an empty log), its term
 *     and vote are the persisted hard state, and committed entries replay above the replica's
 *     persisted version (below it, they are skipped). A majority of each shard's members is
 *     back (the restart quorum), and so is a majority of the voters every member's log has
 *     (`persistedRaftVoters`, reported to the restart leader: the log's configuration can lag
 *     the view by a step), so a majority of its voters can elect a leader, whose log
 *     holds every committed call; the leader then steps the configuration to the restart view's
 *     members (`setMembers`, as after any view change: members not back are removed). Versions
 *     stay monotonic: a version is term << 32 | index, the index keeps growing in the same log
 *     and the term never goes down. A member without the log joins as a learner.
 *   - Timing: ticks of 10 ms; `timeouts.heartbeat_ms` and `timeouts.failure_timeout_ms` give the
 *     heartbeat and election timeouts (and one forwarding attempt's timeout);
 *     `timeouts.ordered_call_timeout_ms` bounds an ordered call; `raft.compact_every` sets when
 *     the log is compacted.
 *   - Compaction snapshot: the replica's persistent fields as state-transfer chunks (the same
 *     bytes a joiner receives) and its delivered version; a member that fell behind the
 *     compacted log gets them by InstallSnapshot. Plain (non-@persistent) fields are not in it.
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { VERSION_NONE, type NodeId, type Version } from '../core/ids.js';
import type { SquallConfig } from '../config/schema.js';
import type { View } from '../membership/view.js';
import { openRaftLog } from '../raft/open-log.js';
import { loadInitialState, persistedConf } from '../raft/storage.js';
import type { RaftVoters } from '../membership/restart.js';
import { RaftOrderingEngine, type EngineState } from '../runtime/raft-ordering-engine.js';
import type { Transport } from '../transport/transport.js';
import type { ShardReplica } from './replica.js';
import { driverShardNumber } from './wire.js';

/** p2p read modes (the optional fifth element of a P2PRequest). */
export type P2PReadMode = 'linearizable' | 'local';
export const P2P_READ_LINEARIZABLE = 0;
export const P2P_READ_LOCAL = 1;

export interface P2POptions {
  /**
   * For a raft-ordered shard: 'linearizable' (the default) makes the serving member wait for a
   * ReadIndex round through the leader, so the read sees every call committed before it was
   * made; 'local' answers from the member's state at once (it may lag the leader by the calls in
   * flight). Multicast shards always answer locally.
   */
  readonly read?: P2PReadMode;
}

const packr = new Packr({ useRecords: false });

/** The Raft group id of a shard on a node's endpoint (≥ 1; 0 is the membership log). */
export function raftGroupIdOf(subgroupId: number, shardIndex: number): number {
  return driverShardNumber(subgroupId, shardIndex) + 1;
}

/**
 * Starts the raft engine for `replica` (a member of a raft-mode shard in `view`). `joining`: the
 * shard runs already and this node was added by a view change (membership service): its replica
 * holds the state transferred up to some version, so it starts outside the Raft configuration,
 * and calls at or below that version, which Raft replays to it, are not delivered again.
 */
export function startRaftShard(
  replica: ShardReplica,
  view: View,
  config: SquallConfig,
  transport: Transport,
  self: NodeId,
  joining = false,
  resume = false,
): Promise<RaftOrderingEngine> {
  const shard = view.shard(replica.subgroupId, replica.shardIndex)!;
  const path = raftShardPath(config, replica.subgroupId, replica.shardIndex);
  if (!resume) {
    rmSync(path, { force: true, recursive: true }); // a log directory, or an earlier version's LMDB file
    rmSync(`${path}-lock`, { force: true });
  }
  // Calls Raft replays at or below what the replica holds are not delivered again: a joiner's
  // transferred state, or a resumed member's own persisted versions (and what it pulled).
  const floor = joining || resume ? replica.registry.latestVersion : VERSION_NONE;
  const tickMs = 10;
  const heartbeatTicks = Math.max(1, Math.round(config.timeouts.heartbeat_ms / tickMs));
  return RaftOrderingEngine.start({
    self,
    members: shard.members,
    addresses: new Map(shard.members.map((n) => [n, view.addressOf(n)!])),
    groupId: raftGroupIdOf(replica.subgroupId, replica.shardIndex),
    transport,
    storage: openRaftLog({ path, durable: config.persistence.sync === 'durable' }),
    onDeliver: floor === VERSION_NONE
      ? (delivery) => replica.deliver(delivery)
      : (delivery) => {
        if (delivery.version! > floor) replica.deliver(delivery);
      },
    state: replicaState(replica),
    join: joining,
    tickMs,
    heartbeatTicks,
    electionTicks: Math.max(2 * heartbeatTicks + 1, Math.round(config.timeouts.failure_timeout_ms / tickMs)),
    callTimeoutMs: config.timeouts.ordered_call_timeout_ms,
    compactEvery: config.raft.compact_every,
    // A dead leader costs one attempt: about one failure timeout, as its election does.
    attemptTimeoutMs: Math.max(100, config.timeouts.failure_timeout_ms),
  });
}

/**
 * The directory of a raft shard's log on this node (openRaftLog: a LogFileStorage, or the LMDB
 * env an earlier version wrote there; the name is kept from then).
 */
export function raftShardPath(config: SquallConfig, subgroupId: number, shardIndex: number): string {
  return join(config.persistence.data_dir, `raft-${subgroupId}-${shardIndex}.mdb`);
}

/**
 * True if this node's data dir holds a Raft log of the shard (a total restart resumes it; see
 * the header). A node without one (it entered the shard in the restart view, or lost the file)
 * joins the resumed Raft group as a learner instead of founding another.
 */
export function hasRaftShardLog(config: SquallConfig, subgroupId: number, shardIndex: number): boolean {
  return existsSync(raftShardPath(config, subgroupId, shardIndex));
}

/**
 * The voters of this node's raft shard logs for the raft shards it is in in `view` (its recorded
 * view), as each log's configuration has them: a total restart also waits for a majority of these
 * (restart.ts `RaftVoters`), since a log whose configuration lagged the view could not elect a
 * leader with the view's majority. A log left behind by a shard the node no longer serves is not
 * read: its configuration says nothing of the restart.
 */
export async function persistedRaftVoters(config: SquallConfig, view: View, self: NodeId): Promise<RaftVoters[]> {
  const found: RaftVoters[] = [];
  for (const s of view.shardsOf(self)) {
    if (s.mode !== 'raft' || !hasRaftShardLog(config, s.subgroupId, s.shardIndex)) continue;
    const storage = openRaftLog({ path: raftShardPath(config, s.subgroupId, s.shardIndex), durable: false });
    try {
      const { voters } = persistedConf(await loadInitialState(storage));
      if (voters.length > 0) found.push({ shard: `${s.subgroupId}/${s.shardIndex}`, voters });
    } finally {
      await storage.close();
    }
  }
  return found;
}

/** The replica's state for Raft snapshots: [delivered version, state-transfer chunks]. */
function replicaState(replica: ShardReplica): EngineState {
  return {
    snapshot: () => packr.pack([replica.deliveredWaiters.current, [...replica.registry.serializeSuffix(VERSION_NONE)]]),
    restore: (bytes) => {
      const [deliveredRaw, chunks] = packr.unpack(bytes) as [bigint | number, Uint8Array[]];
      const delivered = BigInt(deliveredRaw) as Version;
      // Records at or below what this replica already holds are skipped: it keeps its prefix.
      for (const chunk of chunks) replica.registry.applyChunk(chunk);
      if (delivered !== VERSION_NONE) replica.deliveredWaiters.advance(delivered);
    },
  };
}

/**
 * Resolves once a majority of `replies` settled (either way). A client's call relayed into a raft
 * shard is answered then, with the replies that arrived: a dead minority must not hold it.
 */
export function majoritySettled(replies: readonly Promise<unknown>[]): Promise<void> {
  const needed = Math.floor(replies.length / 2) + 1;
  return new Promise((resolve) => {
    let settled = 0;
    const one = (): void => {
      if (++settled === needed) resolve();
    };
    for (const reply of replies) reply.then(one, one);
  });
}

/** The members of `replica`'s shard in `view` changed: tell its engine. */
export function followRaftShardView(engine: RaftOrderingEngine, replica: ShardReplica, view: View): void {
  const shard = view.shard(replica.subgroupId, replica.shardIndex);
  if (shard === undefined) return;
  engine.setMembers(shard.members, new Map(shard.members.map((n) => [n, view.addressOf(n)!])));
}
