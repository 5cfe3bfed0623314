/**
 * The key-value store of `app.ts` on a raft-ordered shard (issue #12): the same class, a layout
 * whose one shard of 3 replicas says `mode: 'raft'`. Its members form a Raft group: a put commits
 * once a majority has it, so one dead replica of three does not stall the store (with the
 * default `mode: 'ordered'` a static group waits for every member). Run it like app.js:
 * `squall node --config nodeN.toml --app dist/examples/kv-store/raft.js` on each of 3 nodes.
 * p2p reads (`get`) are linearizable by default: the serving replica first confirms with the Raft
 * leader that it has applied everything committed before the read (`p2p(node, { read: 'local' })`
 * skips that).
 */
import { flexibleEvenShards, oneSubgroup } from '../../src/index.js';
import { KvStore } from './app.js';

export { KvStore };
export const types = [KvStore];
export const layout = { KvStore: oneSubgroup(flexibleEvenShards(1, 2, 3, { mode: 'raft' })) };
