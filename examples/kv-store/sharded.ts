/**
 * The key-value store sharded: 6 nodes, one subgroup of 2 shards × 3 replicas (all nodes in this
 * process, on loopback). Keys are placed by `group.shardOf(KvStore, key)` (FNV-1a); a put is made
 * by a member of the key's shard, a get goes p2p to any member of that shard. Run:
 *   node dist/examples/kv-store/sharded.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Group, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { KvStore } from './app.js';

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-sharded-'));
const layout = { KvStore: oneSubgroup(fixedEvenShards(2, 3)) };
const configs = await localGroupConfigs(6, { dataRoot });
const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout })));
try {
  const any = groups[0]!;
  const shards = any.members(KvStore);
  console.log(`shards: ${shards.map((members, i) => `shard ${i} = nodes [${members.join(', ')}]`).join('; ')}`);
  const keys = ['apple', 'banana', 'cherry', 'damson', 'elder', 'fig', 'grape', 'hazel'];
  for (const key of keys) {
    const shard = any.shardOf(KvStore, key);
    const owner = groups[shards[shard]![0]!]!; // a member of the key's shard makes the put
    const results = owner.subgroup(KvStore).ordered.put(key, key.toUpperCase());
    const replies = await results;
    await results.persisted();
    console.log(`put ${key} -> shard ${shard}: replies from nodes [${[...replies.keys()].join(', ')}], version ${await results.version}`);
  }
  for (const [index, members] of shards.entries()) {
    const reader = groups[0]!.nonmember(KvStore).p2p(members[2]!);
    const size = await reader.size();
    const digests = await Promise.all(members.map((node) => groups[0]!.nonmember(KvStore).p2p(node).stateDigest()));
    console.log(`shard ${index}: ${size} keys, replica digests ${new Set(digests).size === 1 ? 'equal' : 'DIFFER'} (${digests[0]!.slice(0, 16)}…)`);
  }
  const fig = any.shardOf(KvStore, 'fig');
  console.log(`get fig from shard ${fig}: ${await any.nonmember(KvStore).p2p(shards[fig]![1]!).get('fig')}`);
} finally {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
}
