/**
 * Voter replacement as a pure rule: given the membership log's Raft configuration as the leader
 * sees it and the voters the installed view wants (its first `votersCount` members), the one next
 * step. Raft changes its configuration one server at a time (thesis §4.1), so the steps are:
 * remove voters the view no longer wants (other than the leader itself); add a wanted node as a
 * learner; promote a learner once its log matches the commit index; and, if only the leader itself
 * is left to remove, hand leadership to a wanted voter once every wanted one votes (only a leader
 * changes the configuration).
 * The runtime driver and the simulation both call it on every tick of the Raft leader.
 */
export type VoterStep =
  | { readonly kind: 'addLearner' | 'addVoter' | 'remove'; readonly node: number }
  | { readonly kind: 'transferLeadership'; readonly node: number };

export interface VoterPlanInput {
  /** The Raft leader's own id. */
  readonly self: number;
  readonly voters: readonly number[];
  readonly learners: readonly number[];
  /** The voters of the installed view, in rank order. */
  readonly want: readonly number[];
  /** Per node, the index its log is known to match. */
  readonly matchIndex: (node: number) => number;
  readonly commitIndex: number;
}

export function nextVoterStep(input: VoterPlanInput): VoterStep | undefined {
  const { self, voters, learners, want } = input;
  // Voters the view no longer wants go first: they left the view (failed, removed or left
  // cleanly), so their votes will not come. Adding before removing would make a quorum that
  // counts them ({1,2,3} + 4 with 3 gone needs 3 of 1, 2, 4: one more failure stalls the log
  // until the learner's promotion is undone, which Raft never does by itself).
  const extra = voters.find((n) => !want.includes(n) && n !== self);
  if (extra !== undefined) return { kind: 'remove', node: extra };
  const missing = want.find((n) => !voters.includes(n) && !learners.includes(n));
  if (missing !== undefined) return { kind: 'addLearner', node: missing };
  const ready = want.find((n) => learners.includes(n) && input.matchIndex(n) >= input.commitIndex);
  if (ready !== undefined) return { kind: 'addVoter', node: ready };
  if (!want.every((n) => voters.includes(n))) return undefined; // a learner is still catching up
  if (!want.includes(self) && voters.includes(self) && want.length > 0) {
    return { kind: 'transferLeadership', node: want[0]! };
  }
  return undefined;
}

/** What `nextVoterStep` needs, read from a Raft leader's `status()`, toward the voters `want`. */
export function voterPlanInputOf(
  status: {
    readonly id: number;
    readonly commit: number;
    readonly conf: { readonly voters: readonly number[]; readonly learners: readonly number[] };
    readonly progress: Readonly<Record<number, { readonly match: number }>>;
  },
  want: readonly number[],
): VoterPlanInput {
  return {
    self: status.id, voters: status.conf.voters, learners: status.conf.learners, want,
    matchIndex: (n) => status.progress[n]?.match ?? 0, commitIndex: status.commit,
  };
}
