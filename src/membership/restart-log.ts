/**
 * The total restart's membership-log rule, the pure part (restart.ts has the decision itself).
 *
 * The hole it closes: views U = [1..5], U + 1 = [1, 2, 3], U + 2 = [1, 2]; node 3 acknowledged
 * U's wedge but crashed before it recorded U + 1; everything crashed after U + 2 delivered. Nodes
 * 3, 4 and 5 hold records of U and are a quorum of U, and none of them knows a newer view: a
 * restart from their records alone decides from U while U + 2 delivered. No rule carried by
 * newer records reaches them. The membership log does: every view was sealed by entries of it,
 * and a view delivers only once its seal committed (members apply committed entries only).
 *
 * So a restarting node reports its log (`LogSummary`): last term and index, its persisted commit
 * index, the voters of the configuration it holds, and what the entries after its view record's
 * seal index seal (`replaySeals`: the same ViewChangeCore every member runs, fed those entries).
 * The restart then (`restartLogRule`):
 *  - waits until the nodes back hold a log of the epoch (when no node back holds one, it waits for
 *    the voters of the newest recorded view) and a **majority of the voters of the most
 *    up-to-date log's own configuration** (last term, then last index). Those nodes would elect
 *    that log's holder in a Raft election: it has every vote it counts, from nodes whose logs are
 *    not more up-to-date. Raft's Leader Completeness then says that log holds every committed
 *    entry. That property needs what the membership log's Raft does: configuration changes of
 *    one voter at a time (voter-plan.ts: learner, promote, remove; never two voters at once),
 *    each appended only once the one before committed (raft-core.ts `pendingConfIndex`: a
 *    leader refuses a change while one is uncommitted), and a new leader that commits a no-op of
 *    its term before any change (raft-core.ts `becomeLeader` sets `pendingConfIndex` to that
 *    no-op: the fix of the single-server-change bug, thesis errata). An empty configuration (a
 *    log that never had one) counts as no log.
 *  - restarts from the newest view that log seals or that any node recorded (restart.ts,
 *    `R`). A view sealed by committed entries is in that log; so no decision restarts from
 *    before a view that delivered. A less up-to-date log back may seal a view with a higher id
 *    than that log's newest (a seal the more up-to-date log's leader overwrote before reaching
 *    it): that view is uncommitted, and `R` is it, tentative (below). Otherwise a node that
 *    promised a ballot of that view's instance, then crashed with everyone else, and whose
 *    record is older, could not find the instance again once a more up-to-date log is back:
 *    every ballot of an older instance is refused by it, for good (found by the simulator's
 *    `history=diverge` second crash wave).
 *
 * A view that log seals only by **uncommitted** entries delivered nothing (no member applied its
 * seal). There is at most one: a seal of `V + 1` needs the wedge acknowledgements of `V`'s
 * survivors, which they propose only after installing `V`, i.e. after `V`'s seal committed. It is
 * the case restart.ts handles for a view `R + 1` recorded by a minority (its ballots meet every
 * quorum of `V`: the replay reports `V`'s rule), with one difference: two logs may hold
 * different uncommitted suffixes, so two leaders may derive two different views with the same
 * id. The instance (view id, epoch) does not tell them apart, and a quorum of one need not meet
 * a quorum of the other. So a ballot of a log-derived view whose seal no node back knows to be
 * committed (its persisted commit index does not reach it) also needs its acceptances from a
 * quorum of the predecessor (`tentative`; restart.ts `ballotQuorums`): both views' ballots then
 * meet in every quorum of the predecessor, which their promisers meet, as do an older instance's.
 */
import type { Allocator } from './layout.js';
import { quorumRuleOf, type QuorumRule } from './restart.js';
import { ViewChangeCore, type MembershipEntry, type ShardTrim } from './view-change-core.js';
import type { View } from './view.js';

/** A view the entries of a log seal, as the replay reports it. */
export interface SealedView {
  readonly view: View;
  /** The log index of the entry that sealed it. */
  readonly sealIndex: number;
  /** The trims of the round that sealed it: its predecessor's, every shard's that needed one. */
  readonly trims: readonly ShardTrim[];
  /** Its predecessor's quorum rule (restart.ts ballotQuorums). */
  readonly previous: QuorumRule;
}

/**
 * The views the entries after a view record's seal index seal, oldest first: the entries run
 * through a ViewChangeCore that starts in the record's view, as every member's core would apply
 * them (committed or not: the caller decides what to trust). A core stops applying once its own
 * node is removed, so each round is replayed as the lowest-ranked member of its view that
 * survives it. Entries at or below `sealIndex` are skipped; `entries` in log order.
 */
export function replaySeals(input: {
  readonly view: View;
  readonly sealIndex: number;
  readonly entries: readonly { readonly index: number; readonly entry: MembershipEntry }[];
  readonly allocator: Allocator;
  readonly votersCount: number;
}): SealedView[] {
  const out: SealedView[] = [];
  let view = input.view;
  let at = input.sealIndex;
  for (;;) {
    let next: SealedView | 'removed' | undefined = 'removed';
    for (const self of view.memberIds) {
      next = replayRound(view, at, self, input);
      if (next !== 'removed') break;
    }
    if (next === undefined || next === 'removed') return out;
    out.push(next);
    view = next.view;
    at = next.sealIndex;
  }
}

/** One round from `view` (sealed at `at`) as member `self`: the next view, 'removed', or none. */
function replayRound(
  view: View, at: number, self: View['memberIds'][number],
  input: Pick<Parameters<typeof replaySeals>[0], 'entries' | 'allocator' | 'votersCount'>,
): SealedView | 'removed' | undefined {
  const core = new ViewChangeCore({
    self, view, allocator: input.allocator, votersCount: input.votersCount, proposalRetryTicks: 1, appliedIndex: at,
    // Never called: the replaying core never wedges, so it never computes a trim of its own.
    computeTrim: () => [],
  });
  let trims: readonly ShardTrim[] = [];
  for (const { index, entry } of input.entries) {
    if (index <= at) continue;
    core.committed(index, entry);
    for (let round = 0; round < 2; round++) {
      for (const effect of core.ready().effects) {
        if (effect.kind === 'removed') return 'removed';
        if (effect.kind === 'deliver') {
          trims = core.roundTrims;
          core.delivered(effect.viewId);
        }
        if (effect.kind === 'install') {
          return { view: effect.view, sealIndex: effect.sealedAtIndex, trims, previous: quorumRuleOf(view) };
        }
      }
    }
  }
  return undefined;
}

/** What one restarting node's membership log says (its restart hello carries it). */
export interface LogSummary {
  /** The epoch of the log (that of the node's view record). */
  readonly epoch: string;
  readonly lastTerm: number;
  readonly lastIndex: number;
  /** The commit index the node persisted: every entry up to it committed. */
  readonly commit: number;
  /** The voters of the newest configuration the log holds (committed or not). */
  readonly voters: readonly number[];
  /** What the entries after the node's record's seal index seal (replaySeals). */
  readonly sealed: readonly SealedView[];
}

/** Negative, zero or positive as log `a` is less, as or more up-to-date than `b` (Raft §5.4.1). */
export function compareLogs(a: Pick<LogSummary, 'lastTerm' | 'lastIndex'>, b: Pick<LogSummary, 'lastTerm' | 'lastIndex'>): number {
  return a.lastTerm !== b.lastTerm ? a.lastTerm - b.lastTerm : a.lastIndex - b.lastIndex;
}

/** What the restart still waits for under the log rule. */
export type LogWait =
  /** No node back holds a log of the epoch: wait for one of these (the recorded view's voters). */
  | { readonly kind: 'log'; readonly voters: readonly number[] }
  /** Fewer than a majority of the most up-to-date log's configuration are back. */
  | { readonly kind: 'voters'; readonly voters: readonly number[]; readonly holder: number };

export interface LogRule {
  /** Undefined once the rule is met. */
  readonly waiting: LogWait | undefined;
  /** The node back whose log of the epoch is the most up-to-date (lowest id among equals). */
  readonly holder: number | undefined;
  /**
   * The newest view that log seals past its holder's record (undefined: none), or one with a
   * higher id that a less up-to-date log back seals (when the holder's seals nothing past its
   * record, any: the caller compares with the records; see restartLogRule).
   */
  readonly newest: SealedView | undefined;
  /** The node whose log seals `newest`. */
  readonly sealedBy: number | undefined;
  /** `newest` is the holder's and its seal is at or below a commit index some node back persisted. */
  readonly committed: boolean;
}

/**
 * The log rule over the summaries of the nodes back (`summaries`: node → its summary; only
 * those of `epoch`, the newest record's, count). `recordVoters`: the voters of the newest
 * recorded view, waited for while no node back holds a log. `required` false (no node keeps its
 * membership log on disk) turns the wait off and leaves the rest.
 */
export function restartLogRule(input: {
  readonly summaries: ReadonlyMap<number, LogSummary>;
  readonly back: ReadonlySet<number>;
  readonly epoch: string;
  readonly recordVoters: readonly number[];
  readonly required: boolean;
}): LogRule {
  const logs: { node: number; s: LogSummary }[] = [];
  let commit = 0;
  for (const node of [...input.back].sort((a, b) => a - b)) {
    const s = input.summaries.get(node);
    if (s === undefined || s.epoch !== input.epoch || s.lastIndex === 0 || s.voters.length === 0) continue;
    commit = Math.max(commit, s.commit);
    logs.push({ node, s });
  }
  // Most up-to-date first (lowest id among equals: the sort is stable).
  logs.sort((a, b) => compareLogs(b.s, a.s));
  const best = logs[0]?.s;
  const holder = logs[0]?.node;
  let newest = best?.sealed[best.sealed.length - 1];
  let sealedBy = newest !== undefined ? holder : undefined;
  const committed = newest !== undefined && newest.sealIndex <= commit;
  for (const { node, s } of logs.slice(1)) {
    const last = s.sealed[s.sealed.length - 1];
    if (last !== undefined && last.view.id > (newest?.view.id ?? -1)) {
      newest = last;
      sealedBy = node;
    }
  }
  const rule = { holder, newest, sealedBy, committed: committed && sealedBy === holder };
  if (!input.required) return { ...rule, waiting: undefined };
  if (best === undefined) return { ...rule, waiting: { kind: 'log', voters: input.recordVoters } };
  const present = best.voters.filter((v) => input.back.has(v)).length;
  if (2 * present > best.voters.length) return { ...rule, waiting: undefined };
  return { ...rule, waiting: { kind: 'voters', voters: best.voters, holder: holder! } };
}

/** A view a restart runs from, as far as the log rule tells two views of one id apart. */
export interface RestartFrom {
  readonly view: View;
  /** The trims of the round that sealed it, when only a log seals it (undefined: a record of it). */
  readonly sealTrims: readonly ShardTrim[] | undefined;
}

/** The same view sealed by the same round: its members and its round's trims. */
export function sameSeal(a: Pick<SealedView, 'view' | 'trims'>, b: Pick<SealedView, 'view' | 'trims'>): boolean {
  const trims = (x: readonly ShardTrim[]): string => x.map((t) => `${t.subgroupId}/${t.shardIndex}:${t.trim.join(',')}`).sort().join(' ');
  return a.view.id === b.view.id && a.view.memberIds.join() === b.view.memberIds.join() && trims(a.trims) === trims(b.trims);
}

/**
 * Whether a restarting node whose view is `last` moves to the newest view the rule's log seals:
 *  - when that view is newer (its id is higher), as soon as the log is heard of;
 *  - when it has `last`'s id but is another seal, once the rule is met and `last` is one only a
 *    log seals. Two logs can seal two views with one id (divergent uncommitted suffixes); the
 *    met rule's log holds every committed entry, so its seal is the one that may have committed
 *    and delivered, and a seal of a less up-to-date log never did. (A record of `last` is
 *    committed: a met rule's log seals the same view.) Without this the node stays in the view
 *    it heard of first, and its ballots can choose it while the other delivered.
 */
export function movesToLogView(rule: LogRule, last: RestartFrom): boolean {
  const newest = rule.newest;
  if (newest === undefined) return false;
  if (newest.view.id !== last.view.id) return newest.view.id > last.view.id;
  return rule.waiting === undefined && last.sealTrims !== undefined && !sameSeal(newest, { view: last.view, trims: last.sealTrims });
}

/**
 * What a restarting node does with a peer's view of its own view's id (a hello): `tentative`
 * tells whether the peer's is a view only a log seals by entries not known committed.
 *  - 'adopt': the peer's view is a record or known committed, and this node's is only a log's
 *    (committed or not): take the peer's (view, predecessor, trims) and drop the tentative flag.
 *    Two committed seals of one id cannot differ, so a committed one wins over a log's.
 *  - 'keep': anything else. A tentative peer view says nothing about this node's; a record of
 *    this node's own is committed already.
 */
export function peerSameId(own: RestartFrom, peer: { readonly view: View; readonly tentative: boolean }): 'adopt' | 'keep' {
  return !peer.tentative && own.sealTrims !== undefined ? 'adopt' : 'keep';
}
