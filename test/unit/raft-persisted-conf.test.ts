// persistedConf: the configuration a persisted Raft log holds (what a restarted RaftCore starts
// with, and what a total restart waits for a majority of): the snapshot's, then every conf change
// entry after it in order, committed or not; nothing but the conf entries counts.
import test from 'ava';
import { RaftCore } from '../../src/raft/raft-core.js';
import { SeededRandom } from '../../src/core/random.js';
import { persistedConf } from '../../src/raft/storage.js';
import { EntryType, encodeConfChange, type ConfChange, type Entry } from '../../src/raft/types.js';

const conf = (index: number, cc: ConfChange): Entry => ({ index, term: 2, type: EntryType.ConfChange, data: encodeConfChange(cc) });
const normal = (index: number): Entry => ({ index, term: 2, type: EntryType.Normal, data: new Uint8Array([index]) });

test('the snapshot configuration, then each conf change after it', (t) => {
  const state = {
    hardState: { term: 2, vote: 1, commit: 11 },
    snapshot: { meta: { index: 10, term: 2, conf: { voters: [1, 2, 3], learners: [] } }, data: new Uint8Array() },
    entries: [normal(11), conf(12, { op: 'remove', node: 3 }), normal(13), conf(14, { op: 'addLearner', node: 4 })],
  };
  t.deepEqual(persistedConf(state), { voters: [1, 2], learners: [4] });
  // The same as the core restarted over that state.
  const core = new RaftCore({ id: 1, random: new SeededRandom(1) }, state);
  t.deepEqual(core.conf, persistedConf(state));
});

test('no snapshot: the conf entries of the log alone; an empty log has no voters', (t) => {
  const entries = [conf(1, { op: 'addVoter', node: 2 }), conf(2, { op: 'addVoter', node: 1 }), normal(3)];
  t.deepEqual(persistedConf({ hardState: { term: 2, vote: 0, commit: 3 }, snapshot: undefined, entries }), { voters: [1, 2], learners: [] });
  t.deepEqual(persistedConf({ hardState: { term: 0, vote: 0, commit: 0 }, snapshot: undefined, entries: [] }).voters, []);
});
