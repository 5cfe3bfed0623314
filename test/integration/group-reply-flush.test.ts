// One put at a time (3 nodes in this process on loopback, 'nosync', 200 puts until persisted()):
// what each member sends per put. (1) A member's reply and its persisted report leave in one
// transport flush: the version is persisted in the turn of its delivery ('nosync': the LMDB
// commit runs in that turn); the group sends the turn's replies when the shard's persisted
// frontier moves (not only at the turn's end, a setImmediate later), and the multicast driver
// pumps its report in a microtask on persisted(): both calls then go before the transport's flush
// of that turn. (2) The persisted report goes at once only to the caller, whose message it
// covers (src/multicast/README.md, "reports alone"): a member makes 4 requests per put (its null
// run to each other member, the reply and the report to the caller), the caller 2 (its message to
// each member). Measured before: 5 and 4 requests, 6 send calls per member; now 4 and 2, 4 send
// calls (5 with the reply and report apart). In principle timing-dependent, but in one process
// the order of a member's own microtasks decides it.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Group, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { localGroupConfigs } from '../../src/group/local.js';
import { KvStore } from '../../examples/kv-store/app.js';

test('one put at a time: a member sends its reply and its persisted report in one flush, and the report only to the caller', async (t) => {
  t.timeout(120_000);
  const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-reply-flush-'));
  const configs = await localGroupConfigs(3, { dataRoot });
  const layout = { KvStore: oneSubgroup(fixedEvenShards(1, 3)) };
  const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout })));
  try {
    const kv = groups[0]!.subgroup(KvStore);
    for (let i = 0; i < 50; i++) await kv.ordered.put(`warm${i}`, 'v').persisted();
    const before = groups.map((g) => g.transport.stats());
    const puts = 200;
    for (let i = 0; i < puts; i++) {
      const results = kv.ordered.put(`key${i}`, `value${i}`);
      await results.persisted();
      const replies = await results;
      t.is(replies.size, 3);
    }
    const after = groups.map((g) => g.transport.stats());
    const perPut = (i: number, key: string): number => ((after[i]![key] ?? 0) - (before[i]![key] ?? 0)) / puts;
    t.true(perPut(0, 'requestsStarted') < 2.3, `caller: ${perPut(0, 'requestsStarted')} requests per put (4 with persisted reports to everyone)`);
    for (const member of [1, 2]) {
      t.true(perPut(member, 'requestsStarted') < 4.3, `member ${member}: ${perPut(member, 'requestsStarted')} requests per put`);
      const sendCalls = perPut(member, 'udpSendCalls');
      t.true(sendCalls < 4.5, `member ${member}: ${sendCalls.toFixed(2)} send calls per put (5 with reply and report apart)`);
    }
  } finally {
    await Promise.all(groups.map((g) => g.close()));
    rmSync(dataRoot, { recursive: true, force: true });
  }
});
