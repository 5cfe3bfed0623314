/**
 * An external client: a process that is not a member reads and writes through Client.connect.
 * For a self-contained run, this file first starts a 3-node key-value group in-process (in a real
 * deployment the nodes run `squall node` and the client only knows one or more addresses). Run:
 *   node dist/examples/external-client.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Group, RemoteError } from '../src/index.js';
import { localGroupConfigs, localGroupKeyFile } from '../src/group/local.js';
import { KvStore, layout } from './kv-store/app.js';

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-client-example-'));
const configs = await localGroupConfigs(3, { dataRoot });
const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout })));
// The client holds the group key (every packet is sealed); a client without it is refused.
const client = await Client.connect({ contacts: [groups[1]!.transport.address], keyFile: localGroupKeyFile(dataRoot) });
try {
  console.log(`client learned view ${client.view.id}: members ${client.view.members.map((m) => `${m.id}@${m.address}`).join(', ')}`);
  const kv = client.subgroup(KvStore);
  const put = await kv.ordered.put('city', 'Ithaca');
  console.log(`ordered put relayed into the shard: version ${put.version}, replies ${JSON.stringify(await Promise.all(put.replies.values()))}`);
  for (const node of client.view.memberIds) console.log(`p2p get from node ${node}: ${await kv.p2p(node).get('city')}`);
  const failed = await kv.ordered.update('missing', 'x');
  const error = await failed.replies.get(client.view.memberIds[0]!)!.catch((e: unknown) => e);
  console.log(`update of a missing key: ${error instanceof RemoteError ? `RemoteError ${error.remoteName}` : String(error)}`);
} finally {
  await client.close();
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
}
