// persistedRaftVoters: what a restarting node reports of its raft shards (the total restart waits
// for a majority of each): the voters its LMDB Raft log holds, for the raft shards it is in in its
// recorded view only. A log left behind by a shard it no longer serves is not read (its old
// configuration would hold the restart for nodes that may be gone for good).
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import { nodeId, viewId } from '../../src/core/ids.js';
import { localConfigToml } from '../../src/group/local.js';
import { persistedRaftVoters, raftShardPath } from '../../src/group/raft-shard.js';
import { defaultAllocator, fixedEvenShards, oneSubgroup, runAllocator } from '../../src/membership/layout.js';
import { View } from '../../src/membership/view.js';
import { LmdbStorage } from '../../src/raft/lmdb-storage.js';
import { EntryType, encodeConfChange, type ConfChange } from '../../src/raft/types.js';

async function writeLog(path: string, changes: ConfChange[]): Promise<void> {
  const storage = new LmdbStorage({ path, durable: false });
  storage.append(changes.map((cc, i) => ({ index: i + 1, term: 1, type: EntryType.ConfChange, data: encodeConfChange(cc) })));
  await storage.flush();
  await storage.close();
}

test('the voters of the raft shards of the recorded view, and no other log', async (t) => {
  const dataRoot = mkdtempSync(join(tmpdir(), 'squall-persisted-voters-'));
  try {
    const config = parseConfig(localConfigToml(0, [7001, 7002, 7003], { dataRoot, firstId: 1, encryption: false }), 'node.toml');
    const members = [1, 2, 3].map((i) => ({ id: nodeId(i), address: `127.0.0.1:${7000 + i}` }));
    const allocator = defaultAllocator({ KV: oneSubgroup(fixedEvenShards(1, 3, { mode: 'raft' })) });
    const layout = runAllocator(allocator, { previous: undefined, members: members.map((m) => m.id) });
    const view = new View({ id: viewId(4), members, joined: [], departed: [], failed: [], layout });
    const [shard] = view.shardsOf(nodeId(1));
    t.is(shard!.mode, 'raft');
    t.deepEqual(await persistedRaftVoters(config, view, nodeId(1)), [], 'no log yet: nothing to report');
    // The shard's log lags the view: voters {1, 2}, node 3 a learner.
    await writeLog(raftShardPath(config, shard!.subgroupId, shard!.shardIndex),
      [{ op: 'addVoter', node: 1 }, { op: 'addVoter', node: 2 }, { op: 'addLearner', node: 3 }]);
    // A log of a shard this node is not in (left behind by an earlier layout).
    await writeLog(raftShardPath(config, 99, 0), [{ op: 'addVoter', node: 7 }, { op: 'addVoter', node: 8 }]);
    t.deepEqual(await persistedRaftVoters(config, view, nodeId(1)), [{ shard: `${shard!.subgroupId}/0`, voters: [1, 2] }]);
    t.deepEqual(await persistedRaftVoters(config, view, nodeId(9)), [], 'a node not in the view serves no shard of it');
  } finally {
    rmSync(dataRoot, { recursive: true, force: true });
  }
});
