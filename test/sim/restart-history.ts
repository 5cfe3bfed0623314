/**
 * A membership log with its views, as the restart simulator's `--flag history=...` disks hold it
 * (restart-sim.ts), and the unit tests of src/membership/restart-log.ts build it too.
 *
 * `buildHistory` writes the log of a chain of view changes that each remove nodes: per round from
 * view V, a change entry removing them (in V), the `wedged` acknowledgement of every survivor, and
 * the trim of every shard that needs one; after each seal, the voter configuration steps toward
 * the new view's voters (voter-plan.ts nextVoterStep, one conf entry per step). The views come
 * from the real ViewChangeCore (replaySeals over the log), so the log seals exactly them.
 * Logs hold a prefix of this one log, or (`divergentRound`) a prefix of one of two suffixes
 * that two leaders of different terms appended after the committed part of a last round.
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
  const survives = (n: NodeId): boolean => !removed.includes(Number(n));
  return [
    changeEntry(view, removed),
    ...view.memberIds.filter(survives).map((n): MembershipEntry => ({ kind: 'wedged', viewId: view.id, node: n })),
    ...trimEntries(view, survives, trimOf),
  ];
}

/** The change entry that removes `removed` from `view`. */
function changeEntry(view: View, removed: readonly number[]): MembershipEntry {
  return { kind: 'change', changes: removed.map((n) => ({ kind: 'remove', node: nodeId(n), viewId: view.id })) };
}

/** The trim of every shard of `view` that needs one (senders, and a member that `survives`). */
function trimEntries(view: View, survives: (n: NodeId) => boolean, trimOf: (senders: number) => number[]): MembershipEntry[] {
  const entries: MembershipEntry[] = [];
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

/**
 * A node's log summary (restart-log.ts): its prefix of `length` entries of the history's log (or
 * `log`, its own, when logs diverged) replayed from its record.
 */
export function summaryOf(input: {
  readonly history: History;
  readonly length: number;
  readonly log?: readonly LogEntry[];
  readonly commit: number;
  readonly epoch: string;
  readonly record: View;
  readonly recordSealIndex: number;
  readonly allocator: Allocator;
  readonly votersCount: number;
}): LogSummary {
  const prefix = input.log ?? input.history.log.slice(0, input.length);
  const sealed = sealsOf(input.record, input.recordSealIndex, prefix, input.allocator, input.votersCount);
  const last = prefix[prefix.length - 1];
  const conf = prefix.filter((e) => e.kind === 'conf');
  return {
    epoch: input.epoch, lastTerm: last?.term ?? 0, lastIndex: last?.index ?? 0, commit: Math.min(input.commit, prefix.length),
    voters: conf.length === 0 ? [] : (conf[conf.length - 1] as { voters: readonly number[] }).voters, sealed,
  };
}

/** What the membership entries of `log` after `sealIndex` seal from `view` (replaySeals). */
function sealsOf(view: View, sealIndex: number, log: readonly LogEntry[], allocator: Allocator, votersCount: number): SealedView[] {
  return replaySeals({
    view, sealIndex, allocator, votersCount,
    entries: log.filter((e) => e.kind === 'entry').map((e) => ({ index: e.index, entry: (e as { entry: MembershipEntry }).entry })),
  });
}

/** One side of a divergent round: a leader's entries after the committed part, and the view they seal. */
export interface Branch {
  readonly entries: readonly LogEntry[];
  readonly view: View;
  readonly sealIndex: number;
  readonly removed: readonly number[];
}

/**
 * A last round from `history`'s last view V whose log diverged, the way Raft logs do:
 *  - committed (`common`, on a majority of the voters): the change entry removing `removed`
 *    (it committed: the survivors propose their `wedged` entries only once they applied it) and
 *    the acknowledgements of the first `ackedCommon` nodes that survive both sides;
 *  - side `a`, term T + 1 (T: the history's last): a leader appended a further change removing
 *    `extraA` (if any), the other survivors' acknowledgements and the trims (`trimA`), reached a
 *    minority of the voters and crashed;
 *  - side `b`, term T + 2: a leader elected by a majority without side a's entries appended
 *    the same with `extraB` and `trimB`, which overwrote side a's on the nodes it reached.
 * Both sides seal a view with V's id + 1; their members differ when `extraA` and `extraB` do.
 * Nothing follows a seal: its members would step the voters only once it committed.
 */
export function divergentRound(input: {
  readonly history: History;
  readonly removed: readonly number[];
  readonly extraA: readonly number[];
  readonly extraB: readonly number[];
  readonly ackedCommon: number;
  readonly trimA: (senders: number) => number[];
  readonly trimB: (senders: number) => number[];
  readonly allocator: Allocator;
  readonly votersCount: number;
}): { readonly common: readonly LogEntry[]; readonly a: Branch; readonly b: Branch } {
  const h = input.history;
  const view = h.views[h.views.length - 1]!;
  const term = h.log[h.log.length - 1]?.term ?? 1;
  const inBoth = view.memberIds.filter((n) => ![...input.removed, ...input.extraA, ...input.extraB].includes(Number(n)));
  const acked = inBoth.slice(0, Math.min(input.ackedCommon, inBoth.length - 1));
  const common: LogEntry[] = [...h.log];
  const push = (log: LogEntry[], t: number, entry: MembershipEntry): void => {
    log.push({ index: log.length + 1, term: t, kind: 'entry', entry });
  };
  push(common, term, changeEntry(view, input.removed));
  for (const n of acked) push(common, term, { kind: 'wedged', viewId: view.id, node: n });
  const side = (t: number, extra: readonly number[], trimOf: (senders: number) => number[]): Branch => {
    const log = [...common];
    if (extra.length > 0) push(log, t, changeEntry(view, extra));
    const removed = [...input.removed, ...extra];
    const survives = (n: NodeId): boolean => !removed.includes(Number(n));
    for (const n of view.memberIds) if (survives(n) && !acked.includes(n)) push(log, t, { kind: 'wedged', viewId: view.id, node: n });
    for (const e of trimEntries(view, survives, trimOf)) push(log, t, e);
    const sealed = sealsOf(view, h.seals[h.seals.length - 1]!, log, input.allocator, input.votersCount);
    if (sealed.length !== 1 || sealed[0]!.sealIndex !== log.length) throw new Error(`side of term ${t} from view ${view.id} sealed ${sealed.length} views`);
    return { entries: log.slice(common.length), view: sealed[0]!.view, sealIndex: sealed[0]!.sealIndex, removed };
  };
  return { common, a: side(term + 1, input.extraA, input.trimA), b: side(term + 2, input.extraB, input.trimB) };
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
