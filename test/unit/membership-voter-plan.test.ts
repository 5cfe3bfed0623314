// Voter replacement's next step (src/membership/voter-plan.ts): remove voters the view no longer
// wants, add a learner, promote it once caught up, hand over if only the leader must go; and
// nothing while a learner catches up or when the configuration already matches.
import test from 'ava';
import { nextVoterStep, type VoterPlanInput } from '../../src/membership/voter-plan.js';

const plan = (over: Partial<VoterPlanInput>): ReturnType<typeof nextVoterStep> =>
  nextVoterStep({
    self: 1, voters: [1, 2, 3], learners: [], want: [1, 2, 3],
    matchIndex: () => 10, commitIndex: 10, ...over,
  });

test('the configuration already matches: no step', (t) => {
  t.is(plan({}), undefined);
});

test('voter 3 failed: remove 3 first, then learner 4, then voter 4 once caught up', (t) => {
  t.deepEqual(plan({ want: [1, 2, 4] }), { kind: 'remove', node: 3 },
    'a departed voter goes before anything is added (its vote will not come)');
  t.deepEqual(plan({ want: [1, 2, 4], voters: [1, 2] }), { kind: 'addLearner', node: 4 });
  t.is(plan({ want: [1, 2, 4], voters: [1, 2], learners: [4], matchIndex: (n) => (n === 4 ? 7 : 10) }), undefined,
    'a learner that lags is not promoted');
  t.deepEqual(plan({ want: [1, 2, 4], voters: [1, 2], learners: [4] }), { kind: 'addVoter', node: 4 });
  t.is(plan({ want: [1, 2, 4], voters: [1, 2, 4] }), undefined);
});

test('a voter that departs while a learner catches up is removed at once, not after the promotion', (t) => {
  // View [2, 3, 4, 5] after node 1 left: want 2, 3, 4; then 4 fails while still a learner.
  t.deepEqual(plan({ self: 2, want: [2, 3, 5], voters: [1, 2, 3], learners: [4] }), { kind: 'remove', node: 1 });
  t.deepEqual(plan({ self: 2, want: [2, 3, 5], voters: [2, 3], learners: [4] }), { kind: 'addLearner', node: 5 });
});

test('the leader itself left the view: it hands over last, never removes itself', (t) => {
  t.deepEqual(plan({ self: 1, want: [2, 3, 4], voters: [1, 2, 3, 4] }), { kind: 'transferLeadership', node: 2 });
  t.deepEqual(plan({ self: 1, want: [4, 5, 6], voters: [1, 2, 3] }), { kind: 'remove', node: 2 },
    'every voter replaced at once: the others go first, the leader stays until it can hand over');
  t.deepEqual(plan({ self: 1, want: [4, 5, 6], voters: [1] }), { kind: 'addLearner', node: 4 });
  t.is(plan({ self: 1, want: [4, 5, 6], voters: [1, 4, 5], learners: [6], matchIndex: (n) => (n === 6 ? 3 : 10) }), undefined,
    'no hand-over while a wanted learner catches up');
  t.deepEqual(plan({ self: 1, want: [4, 5, 6], voters: [1, 4, 5, 6] }), { kind: 'transferLeadership', node: 4 });
});
