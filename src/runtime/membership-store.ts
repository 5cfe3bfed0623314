/**
 * What the membership layer keeps on disk, under the node's `persistence.data_dir`:
 *
 *  - `membership.mdb`: the **view record**: the last view this node installed (written, and
 *    fsynced, before any multicast driver of that view exists), the epoch of the membership log
 *    it belongs to, and the ragged trims committed for that view once this node delivered up to
 *    them. A node restarted with its data dir knows from it the last view it was part of.
 *  - `membership-raft-<epoch>.mdb`: the membership log's Raft state (hard state, entries,
 *    snapshot: `LmdbStorage`) of that epoch. An epoch is one Raft group: '0' from the founding,
 *    and each total restart's decision founds a new one (src/membership/restart.ts), never
 *    sharing a file with another decision; a node that rejoins a running group keeps its own.
 */
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import type { QuorumRule, StoredAcceptorState } from '../membership/restart.js';
import type { ShardTrim } from '../membership/view-change-core.js';
import { LmdbStorage } from '../raft/lmdb-storage.js';
import type { RaftStorage } from '../raft/storage.js';

export interface MembershipRecord {
  /** encodeView of the last installed view. */
  readonly view: Uint8Array;
  /**
   * The membership log's epoch: '0' for the founding, else the total restart's decision
   * (restart view id, leader, time) that founded its Raft group.
   */
  readonly epoch: string;
  /**
   * The committed trims of `view`, once this node delivered up to them (before the next install).
   * In the record of a total restart's view (until its own trims): those of the view the group
   * restarted from (`viewId` below the view's), which this node's state was truncated to before
   * the record was written; a restart from this record applies them to nodes that never installed it.
   */
  readonly trims?: { readonly viewId: number; readonly trims: readonly ShardTrim[] };
  /**
   * While a total restart is being decided: this node's acceptor state (the ballot it promised,
   * the decision it accepted; src/membership/restart.ts). Written before it answers; dropped by
   * the next install (which writes a record without it).
   */
  readonly restart?: StoredAcceptorState<RestartDecisionRecord>;
  /**
   * The quorum rule (members, shards' members) of the view installed before `view` in the same
   * epoch; absent for a founder's, a joiner's or a restart's first view, and in records written
   * before it existed (then a restart's ballots need a quorum of `view` only: the earlier rule).
   */
  readonly previous?: QuorumRule;
  /**
   * The membership-log index of the entry that sealed `view` (0: the first view of its epoch, or
   * a joiner's welcome view's seal). A total restart replays its log after it (restart-log.ts).
   * Absent in records written before it existed: their logs are not replayed.
   */
  readonly sealIndex?: number;
}

/** A total restart's decision as it travels and is persisted (encodeView bytes). */
export interface RestartDecisionRecord {
  /** The restart view. */
  readonly view: Uint8Array;
  /** The view the group restarts from. */
  readonly from: Uint8Array;
  /** The committed trims of `from`, per shard. */
  readonly trims: readonly { readonly subgroupId: number; readonly shardIndex: number; readonly trim: readonly number[] }[];
  /** The new membership-log epoch (`<view>-<leader>-<ms>`). */
  readonly epoch: string;
  /**
   * The view `trims` belong to when it is not `from`'s: the predecessor's, when `from` is a view
   * only a membership log seals (no node back installed it; restart-log.ts).
   */
  readonly trimsViewId?: number;
}

export const MEMBERSHIP_FILE = 'membership.mdb';
const RECORD_KEY = 'record';

export class MembershipStore {
  private readonly root: RootDatabase;
  private readonly dir: string;

  private constructor(dir: string, durable: boolean) {
    this.dir = dir;
    this.root = open({ path: join(dir, MEMBERSHIP_FILE), compression: false, noSync: !durable });
  }

  /**
   * Opens (creating) the store in `dataDir`; `reset` wipes the membership files first (with the
   * persistence store's `reset`). `durable: false` skips fsync (tests, `sync = "nosync"`).
   */
  static open(dataDir: string, options: { reset?: boolean; durable?: boolean } = {}): MembershipStore {
    mkdirSync(dataDir, { recursive: true });
    if (options.reset) {
      for (const name of readdirSync(dataDir)) {
        if (name.startsWith('membership')) rmSync(join(dataDir, name), { recursive: true, force: true });
      }
    }
    return new MembershipStore(dataDir, options.durable ?? true);
  }

  load(): MembershipRecord | undefined {
    const value = this.root.get(RECORD_KEY) as MembershipRecord | undefined;
    if (value === undefined) return undefined;
    return { ...value, view: Uint8Array.from(value.view) };
  }

  /** Resolves once the record is durable. */
  async save(record: MembershipRecord): Promise<void> {
    await this.root.put(RECORD_KEY, { ...record, view: Buffer.from(record.view) });
    await this.root.flushed;
  }

  /** The membership log's Raft storage of `epoch`; older epochs' files are deleted. */
  raftStorage(epoch: string, durable = true): RaftStorage {
    const name = `membership-raft-${epoch}.mdb`;
    for (const file of readdirSync(this.dir)) {
      if (file.startsWith('membership-raft-') && !file.startsWith(name)) {
        rmSync(join(this.dir, file), { recursive: true, force: true });
      }
    }
    return new LmdbStorage({ path: join(this.dir, name), durable });
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
