// Voter replacement's next step (src/membership/voter-plan.ts): add a learner, promote it once
// caught up, remove voters the view no longer wants, hand over if only the leader must go; and
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

test('voter 3 failed: learner 4, then voter 4 once caught up, then remove 3', (t) => {
  t.deepEqual(plan({ want: [1, 2, 4] }), { kind: 'addLearner', node: 4 });
  t.is(plan({ want: [1, 2, 4], learners: [4], matchIndex: (n) => (n === 4 ? 7 : 10) }), undefined,
    'a learner that lags is not promoted, and nothing is removed meanwhile');
  t.deepEqual(plan({ want: [1, 2, 4], learners: [4] }), { kind: 'addVoter', node: 4 });
  t.deepEqual(plan({ want: [1, 2, 4], voters: [1, 2, 3, 4] }), { kind: 'remove', node: 3 });
});

test('the leader itself left the view: it hands over last, never removes itself', (t) => {
  t.deepEqual(plan({ self: 1, want: [2, 3, 4], voters: [1, 2, 3, 4] }), { kind: 'transferLeadership', node: 2 });
  t.deepEqual(plan({ self: 1, want: [4, 5, 6], voters: [1, 2, 3] }), { kind: 'addLearner', node: 4 },
    'every voter replaced at once: add first');
  t.deepEqual(plan({ self: 1, want: [4, 5, 6], voters: [1, 2, 3, 4, 5, 6] }), { kind: 'remove', node: 2 });
});
