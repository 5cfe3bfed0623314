/**
 * A membership log with its views, as the restart simulator's `--flag history=...` disks hold it
 * (restart-sim.ts), and the unit tests of src/membership/restart-log.ts build it too.
 *
 * `buildHistory` writes the log of a chain of view changes that each remove nodes: per round from
 * view V, a change entry removing them (in V), the `wedged` acknowledgement of every survivor, and
 * the trim of every shard that needs one; after each seal, the voter configuration steps toward
 * the new view's voters (voter-plan.ts nextVoterStep, one conf entry per step). The views come
 * from the real ViewChangeCore (replaySeals over the log), so the log seals exactly them.
 * Logs hold a prefix of this one log (no divergent suffixes).
 */
import { nodeId, type NodeId, type SubgroupId, type ShardIndex, type ViewId } from '../../src/core/ids.js';
import type { Allocator } from '../../src/membership/layout.js';
import { replaySeals, type LogSummary, type SealedView } from '../../src/membership/restart-log.js';
import { votersOf, type MembershipEntry } from '../../src/membership/view-change-core.js';
import { nextVoterStep } from '../../src/membership/voter-plan.js';
import type { View } from '../../src/membership/view.js';

/** One entry of the simulated membership Raft log: a membership entry or a configuration step. */
export type LogEntry =
  | { readonly index: number; readonly term: number; readonly kind: 'entry'; readonly entry: MembershipEntry }
  | {
    readonly index: number; readonly term: number; readonly kind: 'conf';
    /** The Raft configuration step (raft/types.ts ConfChange) and the voters after it. */
    readonly op: 'addVoter' | 'addLearner' | 'remove'; readonly node: number; readonly voters: readonly number[];
  };

export interface History {
  /** views[0] is the first view (sealed at index 0); views[i] was sealed at seals[i]. */
  readonly views: readonly View[];
  readonly seals: readonly number[];
  /** From index 1: the founding voters' conf entries (as RaftCore bootstraps a group), then the rounds. */
  readonly log: readonly LogEntry[];
}

/** The entries of one round from `view` that remove `removed` (trims of `trimOf(senders)`). */
export function roundEntries(view: View, removed: readonly number[], trimOf: (senders: number) => number[]): MembershipEntry[] {
  const entries: MembershipEntry[] = [
    { kind: 'change', changes: removed.map((n) => ({ kind: 'remove', node: nodeId(n), viewId: view.id })) },
  ];
  const survives = (n: NodeId): boolean => !removed.includes(Number(n));
  for (const n of view.memberIds) if (survives(n)) entries.push({ kind: 'wedged', viewId: view.id, node: n });
  for (const type of view.layout.types) {
    for (const subgroup of type.subgroups) {
      subgroup.shards.forEach((shard, index) => {
        if (shard.mode === 'raft' || shard.senders.length === 0 || !shard.members.some(survives)) return;
        entries.push({
          kind: 'trim', viewId: view.id as ViewId, subgroupId: subgroup.subgroupId as SubgroupId,
          shardIndex: index as ShardIndex, trim: trimOf(shard.senders.length),
        });
      });
    }
  }
  return entries;
}

/**
 * The log of the rounds `removals` (each the nodes one round removes) from `first`, the term
 * going up by one at the rounds `newTermAt` says. Voters: the first `votersCount` members.
 */
export function buildHistory(input: {
  readonly first: View;
  readonly removals: readonly (readonly number[])[];
  readonly allocator: Allocator;
  readonly votersCount: number;
  readonly newTermAt?: (round: number) => boolean;
  readonly trimOf?: (senders: number) => number[];
}): History {
  const log: LogEntry[] = [];
  const views: View[] = [input.first];
  const seals = [0];
  let voters: number[] = [];
  let learners: number[] = [];
  let term = 1;
  for (const node of votersOf(input.first, input.votersCount).map(Number).sort((a, b) => a - b)) {
    voters = [...voters, node];
    log.push({ index: log.length + 1, term, kind: 'conf', op: 'addVoter', node, voters });
  }
  const trimOf = input.trimOf ?? ((n: number) => Array.from({ length: n }, () => 1));
  input.removals.forEach((removed, round) => {
    if (input.newTermAt?.(round) === true) term++;
    const view = views[views.length - 1]!;
    for (const entry of roundEntries(view, removed, trimOf)) log.push({ index: log.length + 1, term, kind: 'entry', entry });
    const sealed = replaySeals({
      view, sealIndex: seals[seals.length - 1]!, allocator: input.allocator, votersCount: input.votersCount,
      entries: log.filter((e) => e.kind === 'entry').map((e) => ({ index: e.index, entry: (e as { entry: MembershipEntry }).entry })),
    });
    if (sealed.length !== 1) throw new Error(`round ${round} from view ${view.id} sealed ${sealed.length} views`);
    views.push(sealed[0]!.view);
    seals.push(sealed[0]!.sealIndex);
    // The voters step toward the new view's, one conf entry per step (all caught up).
    const want = votersOf(sealed[0]!.view, input.votersCount).map(Number);
    for (let i = 0; i < 20; i++) {
      const step = nextVoterStep({ self: voters.find((v) => want.includes(v)) ?? voters[0]!, voters, learners, want, matchIndex: () => log.length, commitIndex: log.length });
      if (step === undefined || step.kind === 'transferLeadership') break;
      if (step.kind === 'remove') voters = voters.filter((v) => v !== step.node);
      else if (step.kind === 'addLearner') learners = [...learners, step.node];
      else {
        learners = learners.filter((v) => v !== step.node);
        voters = [...voters, step.node];
      }
      log.push({ index: log.length + 1, term, kind: 'conf', op: step.kind, node: step.node, voters: [...voters] });
    }
  });
  return { views, seals, log };
}

/** The voters in effect at `index` (the newest conf entry at or below it). */
export function votersAt(history: History, index: number): readonly number[] {
  let voters: readonly number[] = [];
  for (const e of history.log) {
    if (e.index > index) break;
    if (e.kind === 'conf') voters = e.voters;
  }
  return voters;
}

/**
 * The highest index stored on a majority of the voters in effect there, given each node's log
 * length (Raft commits a prefix).
 */
export function commitIndex(history: History, lengths: ReadonlyMap<number, number>): number {
  let commit = 0;
  for (const e of history.log) {
    const voters = votersAt(history, e.index);
    const holding = voters.filter((v) => (lengths.get(v) ?? 0) >= e.index).length;
    if (2 * holding > voters.length) commit = e.index;
  }
  return commit;
}

/** A node's log summary (restart-log.ts): its prefix of `length` entries replayed from its record. */
export function summaryOf(input: {
  readonly history: History;
  readonly length: number;
  readonly commit: number;
  readonly epoch: string;
  readonly record: View;
  readonly recordSealIndex: number;
  readonly allocator: Allocator;
  readonly votersCount: number;
}): LogSummary {
  const prefix = input.history.log.slice(0, input.length);
  const sealed: SealedView[] = replaySeals({
    view: input.record, sealIndex: input.recordSealIndex, allocator: input.allocator, votersCount: input.votersCount,
    entries: prefix.filter((e) => e.kind === 'entry').map((e) => ({ index: e.index, entry: (e as { entry: MembershipEntry }).entry })),
  });
  const last = prefix[prefix.length - 1];
  return {
    epoch: input.epoch, lastTerm: last?.term ?? 0, lastIndex: last?.index ?? 0, commit: Math.min(input.commit, input.length),
    voters: input.length === 0 ? [] : votersAt(input.history, input.length), sealed,
  };
}

/**
 * Raises log lengths until the log is one Raft could have left: each conf entry followed by
 * another was committed first (raft-core.ts pendingConfIndex), and each seal followed by another
 * round was committed first (the next round's acknowledgements come from nodes that installed
 * the view). `raise(node, atLeast)` picks the new length. Returns the lengths.
 */
export function raftConsistent(history: History, lengths: Map<number, number>, pick: (count: number) => number): Map<number, number> {
  const lastConf = Math.max(0, ...history.log.filter((e) => e.kind === 'conf').map((e) => e.index));
  const must = [
    ...history.log.filter((e) => e.kind === 'conf' && e.index < lastConf).map((e) => e.index),
    ...history.seals.slice(1, -1),
  ].sort((a, b) => a - b);
  for (const index of must) {
    const voters = votersAt(history, index);
    for (;;) {
      const short = voters.filter((v) => (lengths.get(v) ?? 0) < index);
      if (2 * (voters.length - short.length) > voters.length) break;
      const node = short[pick(short.length)]!;
      lengths.set(node, index + pick(history.log.length - index + 1));
    }
  }
  return lengths;
}
