// Proves the examples run as documented: the sharded key-value store puts every key into the
// shard shardOf() names, gets replies only from that shard's members and ends with equal replica
// digests per shard; the external client learns the view, has its ordered put relayed with every
// member's reply, reads from every member and sees an application error as RemoteError.
import test from 'ava';
import { execFile } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function runExample(path: string): Promise<{ code: number; out: string; err: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [join(root, path)], { timeout: 60_000 }, (error, out, err) => {
      done({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, out, err });
    });
  });
}

test('examples/kv-store/sharded: 2 shards x 3 replicas, keys routed by shardOf, equal digests', async (t) => {
  const { code, out, err } = await runExample('dist/examples/kv-store/sharded.js');
  t.is(code, 0, err);
  t.regex(out, /shard 0 = nodes \[0, 1, 2\]; shard 1 = nodes \[3, 4, 5\]/);
  const puts = [...out.matchAll(/put \w+ -> shard (\d): replies from nodes \[([\d, ]+)\]/g)];
  t.is(puts.length, 8);
  for (const [, shard, nodes] of puts) t.is(nodes, shard === '0' ? '0, 1, 2' : '3, 4, 5');
  t.is(out.match(/replica digests equal/g)?.length, 2);
  t.regex(out, /get fig from shard \d: FIG/);
});

test('examples/external-client: relayed ordered put, p2p reads, RemoteError', async (t) => {
  const { code, out, err } = await runExample('dist/examples/external-client.js');
  t.is(code, 0, err);
  t.regex(out, /client learned view 1: members 0@127\.0\.0\.1:\d+, 1@/);
  t.regex(out, /ordered put relayed into the shard: version \d+, replies \["","",""\]/);
  t.is(out.match(/p2p get from node \d: Ithaca/g)?.length, 3);
  t.regex(out, /update of a missing key: RemoteError KeyMissingError/);
});

test('examples/simple-replicated-objects: Foo and Bar on disjoint nodes, cross reads by p2p', async (t) => {
  const { code, out, err } = await runExample('dist/examples/simple-replicated-objects.js');
  t.is(code, 0, err);
  t.regex(out, /Bar is replicated on nodes \[0, 1, 2\], Foo on nodes \[3, 4, 5\]/);
  t.regex(out, /foo\.changeState\(1\) -> node 3: true, node 4: true, node 5: true\n.*changeState\(1\) -> node 3: false, node 4: false, node 5: false/);
  t.regex(out, /reads Foo from node 5 \(p2p, not a Foo member\): 3/);
  t.regex(out, /reads Bar from node 0 \(p2p, not a Bar member\): "Write from node 1\. Another write\. "/);
  t.regex(out, /after clear: ""; Bar's log has 3 versions/);
});

test('examples/temporal-queries: every replica answers by version, index and time alike', async (t) => {
  const { code, out, err } = await runExample('dist/examples/temporal-queries.js');
  t.is(code, 0, err);
  const lines = out.split('\n').filter((l) => l.startsWith('node '));
  t.is(lines.length, 3);
  for (const line of lines) {
    t.regex(line, /by version 5,15,35,75; by index 5,15,35,75; by time 5,15,35,75; just before the 3rd call 15; latest 75$/);
  }
});

test('examples/overlapping-subgroups: nodes 1 and 2 replicate both types and call both', async (t) => {
  const { code, out, err } = await runExample('dist/examples/overlapping-subgroups.js');
  t.is(code, 0, err);
  t.regex(out, /Inventory on nodes \[0, 1, 2\], Orders on nodes \[1, 2, 3\]/);
  t.regex(out, /node 1 holds: Inventory and Orders/);
  t.regex(out, /node 3 holds: Orders\n/);
  t.regex(out, /took 3, 1 left; order #3 recorded on nodes \[1, 2, 3\]/);
  t.regex(out, /node 3 \(Orders only\) reads Inventory from node 0: 1 left/);
  t.regex(out, /node 0 \(Inventory only\) reads Orders from node 3: 3 orders/);
});
