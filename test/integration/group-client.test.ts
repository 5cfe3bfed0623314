// Proves an external Client (not a member) works against a real 3-node group on loopback: it
// learns the view from a contact (skipping one that does not answer), makes p2p calls to every
// member, makes ordered calls relayed by a member and gets every member's reply and the version;
// an application exception comes back per member as RemoteError; and a retried relayed call (the
// same idempotency key sent again through another member) is answered with the first replies and
// is not applied twice.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Client,
  Group,
  NoSuchShardError,
  NotMemberError,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  RemoteError,
  fixedEvenShards,
  nodeId,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
} from '../../src/index.js';
import { freeUdpPorts, localGroupConfigs, localGroupKeyFile } from '../../src/group/local.js';

@replicated({ name: 'ClientTestTally' })
class Tally {
  declare readonly [ORDERED_METHODS]: 'add';
  declare readonly [P2P_METHODS]: 'total';
  @persistent() sum = new Persistent(() => 0);
  @ordered() add(n: number): number {
    if (n < 0) throw new RangeError('only positive amounts');
    this.sum.value += n;
    return this.sum.value;
  }
  @p2p() total(): number {
    return this.sum.value;
  }
}

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-client-'));
let groups: Group[] = [];
let client: Client;

test.before(async () => {
  const configs = await localGroupConfigs(3, { dataRoot });
  const layout = { ClientTestTally: oneSubgroup(fixedEvenShards(1, 3)) };
  groups = await Promise.all(configs.map((c) => Group.start(c, { types: [Tally], layout })));
  const [silent] = await freeUdpPorts(1);
  client = await Client.connect({
    contacts: [`127.0.0.1:${silent}`, groups[2]!.transport.address],
    requestTimeoutMs: 1000,
    keyFile: localGroupKeyFile(dataRoot),
  });
});

test.after.always(async () => {
  await client?.close();
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
});

test.serial('the client learns the view and calls ordered and p2p', async (t) => {
  t.deepEqual(client.view.memberIds, [0, 1, 2]);
  const tally = client.subgroup(Tally);
  const result = await tally.ordered.add(5);
  t.deepEqual([...result.replies.keys()].sort(), [0, 1, 2]);
  t.deepEqual(await Promise.all(result.replies.values()), [5, 5, 5]);
  t.true(result.version > 0n && result.timestamp.micros > 0);
  for (const node of [0, 1, 2]) t.is(await tally.p2p(node).total(), 5);
  const failed = await tally.ordered.add(-1);
  for (const reply of failed.replies.values()) {
    const error = await t.throwsAsync(reply, { instanceOf: RemoteError });
    t.is(error?.remoteName, 'RangeError');
  }
});

test.serial('a retried relayed call is answered with its first replies and applied once', async (t) => {
  const before = await client.subgroup(Tally).p2p(0).total();
  const first = await client.relayOnce<number>(Tally, 0, 0, nodeId(0), 'add', [10], 9001);
  const retry = await client.relayOnce<number>(Tally, 0, 0, nodeId(1), 'add', [10], 9001);
  t.deepEqual(await Promise.all(first.replies.values()), [before + 10, before + 10, before + 10]);
  t.deepEqual(await Promise.all(retry.replies.values()), [before + 10, before + 10, before + 10]);
  const after = await client.subgroup(Tally).ordered.add(1);
  t.deepEqual(await Promise.all(after.replies.values()), [before + 11, before + 11, before + 11], 'the retry did not add 10 again');
});

test.serial('when the relaying member does not answer, the client retries through the next sender', async (t) => {
  const endpoint = (client as unknown as { endpoint: { injectFault(f: object): void } }).endpoint;
  const before = await client.subgroup(Tally).p2p(1).total();
  endpoint.injectFault({ failPeer: groups[0]!.transport.address });
  try {
    const result = await client.subgroup(Tally).ordered.add(2);
    t.deepEqual(await Promise.all(result.replies.values()), [before + 2, before + 2, before + 2]);
  } finally {
    endpoint.injectFault({ restorePeer: groups[0]!.transport.address });
  }
});

test.serial('Client.connect from a node config file; p2p to a node outside the shard and a shard the layout lacks are named errors', async (t) => {
  const { loadConfig } = await import('../../src/config/load.js');
  const { writeFileSync } = await import('node:fs');
  const members = groups.map((g, i) => `"${i}@${g.transport.address}"`).join(', ');
  const file = join(dataRoot, 'client.toml');
  const keyFile = JSON.stringify(localGroupKeyFile(dataRoot));
  writeFileSync(file, `[node]\nid = 0\nport = ${groups[0]!.transport.address.split(':')[1]}\n[group]\nmembers = [${members}]\n` +
    `[transport]\nkey_file = ${keyFile}\nrequest_timeout_ms = 3000\n`);
  const fromConfig = await Client.connect(loadConfig(file));
  try {
    t.deepEqual(fromConfig.view.memberIds, [0, 1, 2]);
    const tally = fromConfig.subgroup(Tally);
    const before = await tally.p2p(1).total();
    const result = await tally.ordered.add(1);
    t.deepEqual(await Promise.all(result.replies.values()), [before + 1, before + 1, before + 1]);
    t.throws(() => tally.p2p(7), { instanceOf: NotMemberError, message: /node 7 is not in shard 0 of ClientTestTally subgroup 0/ });
    t.throws(() => fromConfig.subgroup(Tally, 0, 3), {
      instanceOf: NoSuchShardError, message: /ClientTestTally subgroup 0 has no shard 3 in the layout: it has 1 \(indexes 0 to 0\)\. Fix: pass a shard index below 1/,
    });
    t.throws(() => fromConfig.subgroup(Tally, 2), { instanceOf: NoSuchShardError, message: /ClientTestTally has no subgroup 2 in the layout: it has 1/ });
  } finally {
    await fromConfig.close();
  }
});

test.serial('squall status prints the view, the layout with leaders, and every node\'s frontiers', async (t) => {
  const { main } = await import('../../src/cli/main.js');
  const { writeFileSync } = await import('node:fs');
  const members = groups.map((g, i) => `"${i}@${g.transport.address}"`).join(', ');
  const file = join(dataRoot, 'status.toml');
  const port = groups[0]!.transport.address.split(':')[1];
  const keyFile = JSON.stringify(localGroupKeyFile(dataRoot));
  writeFileSync(file, `[node]\nport = ${port}\n[group]\nmembers = [${members}]\n[transport]\nkey_file = ${keyFile}\n`);
  const out: string[] = [];
  const code = await main(['status', '--config', file], { out: (l) => out.push(l), err: (l) => out.push(l), env: {} });
  t.is(code, 0, out.join('\n'));
  const text = out.join('\n');
  t.regex(text, /^view 1: 0@127\.0\.0\.1:\d+, 1@/m);
  t.regex(text, /ClientTestTally subgroup 0 shard 0: members \[0, 1, 2\], leader 0, senders \[0, 1, 2\], mode ordered/);
  for (const node of [0, 1, 2]) t.regex(text, new RegExp(`node ${node} ClientTestTally/0/0: delivered 1:\\d+, persisted here 1:\\d+, persisted on all`));


  // A listed member that does not answer is printed with why; none answering is exit 1.
  const { freeUdpPorts } = await import('../../src/group/local.js');
  const [dead] = await freeUdpPorts(1);
  const withDead = join(dataRoot, 'status-dead.toml');
  writeFileSync(withDead, `[node]\nport = ${port}\n[group]\nmembers = [${members}, "3@127.0.0.1:${dead}"]\n[transport]\nkey_file = ${keyFile}\n`);
  const partly: string[] = [];
  t.is(await main(['status', '--config', withDead, '--timeout-ms', '1000'], { out: (l) => partly.push(l), err: (l) => partly.push(l), env: {} }), 0, partly.join('\n'));
  t.regex(partly.join('\n'), new RegExp(`node 3 \\(127\\.0\\.0\\.1:${dead}\\): unreachable: \\S`));
  t.regex(partly.join('\n'), /node 0 ClientTestTally\/0\/0: delivered/);
  const onlyDead = join(dataRoot, 'status-only-dead.toml');
  writeFileSync(onlyDead, `[node]\nid = 3\nport = ${dead}\n[group]\nmembers = ["3@127.0.0.1:${dead}"]\n[transport]\nkey_file = ${keyFile}\n`);
  const none: string[] = [];
  t.is(await main(['status', '--config', onlyDead, '--timeout-ms', '1000'], { out: (l) => none.push(l), err: (l) => none.push(l), env: {} }), 1, none.join('\n'));
  t.regex(none.join('\n'), /node 3 .*: unreachable/);
  const bad: string[] = [];
  t.is(await main(['status', '--config', file, '--timeout-ms', 'soon'], { out: (l) => bad.push(l), err: (l) => bad.push(l), env: {} }), 2);
  t.regex(bad.join('\n'), /--timeout-ms takes a whole number of milliseconds \(at least 1\), not "soon"/);
});
