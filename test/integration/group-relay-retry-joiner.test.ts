// Found by the kv chaos scenario (test/cluster/scenarios/kv.ts, seed 12 in network namespaces):
// replicas of one shard DIVERGED when a client retried a relayed call after a spare entered the
// shard by state transfer. Every replica kept the replies of relayed calls by idempotency key so
// that a retry is not run twice, but that table was not part of the state a joining replica
// received: the old members skipped the retry and the newcomer ran it (a write applied twice on
// one replica, an extra version in its history, members answering later calls differently).
// Fixed: the table of (client, request) pairs run is replicated state (src/group/relay-table.ts,
// a Persistent field of the shard's registry), so it travels with the state; the newcomer skips
// the retry too and, holding no copy of the first reply, answers RelayedReplyUnavailableError.
//
// Reproduced here deterministically: 3 founders in this process, one shard of 2 (node 3 a
// spare). A relayed call with key K is delivered; node 2 dies, the allocator moves node 3 into
// the shard with the state by transfer; the client retries K through node 1. Replicas must hold
// the same state and histories afterwards.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Client,
  Group,
  ORDERED_METHODS,
  Persistent,
  flexibleEvenShards,
  nodeId,
  oneSubgroup,
  ordered,
  persistent,
  replicated,
} from '../../src/index.js';
import { waitFor } from '../support/membership-local.js';
import { localGroupConfigs, localGroupKeyFile } from '../../src/group/local.js';

@replicated({ name: 'GroupRelayRetryTally' })
class Tally {
  declare readonly [ORDERED_METHODS]: 'add';
  @persistent() sum = new Persistent(() => 0);
  @ordered() add(n: number): number {
    this.sum.value += n;
    return this.sum.value;
  }
}

const layout = { GroupRelayRetryTally: oneSubgroup(flexibleEvenShards(1, 2, 2)) };
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-relay-retry-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

test('a relayed call retried after a spare entered the shard by state transfer is not applied again on the newcomer', async (t) => {
  t.timeout(90_000);
  const configs = await localGroupConfigs(3, {
    dataRoot, firstId: 1, extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  });
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [Tally], layout, membership: true })));
  const [g1, g2, g3] = groups as [Group, Group, Group];
  const client = await Client.connect({
    contacts: configs.map((c) => `${c.node.host}:${c.node.port}`),
    keyFile: localGroupKeyFile(dataRoot),
  });
  try {
    t.deepEqual(g1.members(Tally), [[nodeId(1), nodeId(2)]]);
    await client.relayOnce<number>(Tally, 0, 0, nodeId(1), 'add', [10], 77);
    await g1.subgroup(Tally).ordered.add(1);

    // Node 2 dies; node 3 takes its place with the state by transfer.
    await g2.transport.close();
    await waitFor('node 3 in the shard', () => g1.members(Tally)[0]!.includes(nodeId(3)) && g3.members(Tally)[0]!.includes(nodeId(3)));
    await waitFor('node 3 has the replica', () => {
      try {
        return g3.subgroup(Tally).versions('sum').value === 11;
      } catch {
        return false;
      }
    });
    await client.refreshView();

    // The client retries key 77 (its first answer was lost, say) through node 1.
    const retry = await client.relayOnce<number>(Tally, 0, 0, nodeId(1), 'add', [10], 77);
    t.is(await retry.replies.get(nodeId(1)), 10, 'node 1 answers as the first run did');
    await t.throwsAsync(retry.replies.get(nodeId(3))!, { message: /did not run retried call 77 .* keeps no copy of its first reply/ });
    t.is(g1.subgroup(Tally).versions('sum').value, 11, 'not run again on node 1');
    await g1.subgroup(Tally).ordered.add(0);
    await waitFor('equal delivered frontiers', () => g1.subgroup(Tally).frontier().delivered === g3.subgroup(Tally).frontier().delivered);
    t.is(g3.subgroup(Tally).versions('sum').value, g1.subgroup(Tally).versions('sum').value, 'node 3 holds what node 1 holds');
    t.is(g3.subgroup(Tally).digest(), g1.subgroup(Tally).digest());
  } finally {
    await client.close();
    await Promise.all(groups.map((g) => g.close().catch(() => undefined)));
  }
});
