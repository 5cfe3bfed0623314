// Proves `squall demo` (what `npm start` runs) works end to end: two `squall node` child
// processes and node 0 form a group, every step prints its result, the three replicas' digests
// are equal, every node leaves and the command exits 0. Also that `squall node` refuses missing
// or bad arguments with exit 2 and a message naming the flag, and a bad config with exit 1
// naming the key.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cli = join(root, 'dist/src/cli/main.js');

function squall(args: string[], timeoutMs = 60_000): Promise<{ code: number; out: string; err: string }> {
  return new Promise((done) => {
    execFile(process.execPath, [cli, ...args], { timeout: timeoutMs }, (error, out, err) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      done({ code, out, err });
    });
  });
}

test('squall demo runs a 3-process group: replies, stages, temporal query, equal digests, a kill -9 and the view change', async (t) => {
  const { code, out, err } = await squall(['demo', '--seconds', '0.3', '--sync', 'nosync', '--keep']);
  t.is(code, 0, err);
  const dataRoot = /Configs, LMDB data and the group key \(group\.key\) in (\S+);/.exec(out)![1]!;
  t.regex(out, /Every packet between the nodes is sealed with AES-GCM/);
  t.true(existsSync(join(dataRoot, 'group.key')), 'the demo wrote its group key');
  t.teardown(() => rmSync(dataRoot, { recursive: true, force: true }));
  t.regex(out, /node 1 replied "" \(the previous value\)/);
  t.regex(out, /persisted\(\)\s+after [\d.]+ ms: durable on all 3 replicas/);
  t.regex(out, /node 2: RemoteError KeyMissingError/);
  t.is(out.match(/color at [\d.]+ = "red", now = "blue"/g)?.length, 3);
  const [beforeKill, afterKillAndRestart] = out.split(/^9\. /m);
  const [afterKill, afterRestart] = afterKillAndRestart!.split(/^10\. /m);
  const digests = (text: string): string[] => [...text!.matchAll(/node \d: ([0-9a-f]{64})/g)].map((m) => m[1]!);
  t.is(digests(beforeKill!).length, 3);
  t.is(new Set(digests(beforeKill!)).size, 1, 'the replicas hold equal state');
  // Node 3 is killed; the other two install a view without it and keep serving, equal.
  t.regex(afterKill!, /after [\d.]+ ms: view \d+ = \[1, 2\]/);
  t.regex(afterKill!, /replies from nodes \[1, 2\], persisted on both/);
  t.is(digests(afterKill!).length, 2);
  t.is(new Set(digests(afterKill!)).size, 1, 'the survivors hold equal state');
  // Node 3 starts again over its data dir, rejoins, and holds what was written while it was down.
  t.regex(afterRestart!, /after [\d.]+ ms: view \d+ = \[1, 2, 3\]/);
  t.regex(afterRestart!, /kv\.p2p\(3\)\.get\("after-failure"\) -> "still served"/);
  t.is(digests(afterRestart!).length, 3);
  t.is(new Set(digests(afterRestart!)).size, 1, 'the restarted node holds what the others hold');
  t.regex(out, /\[node 2 process\] node 2 left the group/);

  // squall inspect reads a node's store: the history the demo wrote, value by version.
  const app = join(root, 'dist/examples/kv-store/app.js');
  // (node1/ is node 2's directory: the demo's nodes have ids 1..3.)
  const listing = await squall(['inspect', '--data', join(dataRoot, 'node1'), '--app', app]);
  t.is(listing.code, 0, listing.err);
  t.regex(listing.out, /KvStore\/0\/0 \(class KvStore v1\)\n  entries: \d+ version\(s\), \d+:0 \(\d+\) … \d+:\d+/);
  const first = await squall(['inspect', '--data', join(dataRoot, 'node1'), '--app', app, '--field', 'entries', '--index', '0']);
  t.regex(first.out, /entries at index 0, version \d+:0 \(\d+\): Map\(1\) \{ 'greeting' => 'hello' \}/);
  const latest = await squall(['inspect', '--data', join(dataRoot, 'node1'), '--app', app, '--field', 'entries']);
  t.regex(latest.out, /'color' => 'blue'/);
  // A write-ahead log in the data dir (a running node's, with persistence.write_ahead_log): read
  // from a copy and replayed there, the node's file left in place (cli-inspect-wal.test.ts has
  // logs with frames).
  const walFile = join(dataRoot, 'node1', 'squall.wal.3');
  writeFileSync(walFile, '');
  const withLog = await squall(['inspect', '--data', join(dataRoot, 'node1'), '--app', app]);
  t.true(existsSync(walFile), 'the node\'s log is left alone');
  rmSync(walFile);
  t.is(withLog.code, 0, withLog.err);
  t.regex(withLog.out, /holds a write-ahead log \(squall\.wal\.3\): its 0 frame\(s\) replayed over the snapshot/);
  t.regex(withLog.out, /KvStore\/0\/0 \(class KvStore v1\)/);
  const noData = await squall(['inspect', '--data', join(dataRoot, 'nowhere'), '--app', app]);
  t.is(noData.code, 2);
  t.regex(noData.err, /holds no squall\.mdb/);
});

test('squall node: missing flags exit 2 naming them; a bad config exits 1 naming the key', async (t) => {
  const noConfig = await squall(['node', '--app', 'x.js']);
  t.is(noConfig.code, 2);
  t.regex(noConfig.err, /--config <file> is required/);
  const dir = mkdtempSync(join(tmpdir(), 'squall-node-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'node.toml');
  writeFileSync(file, '[transport]\nencryption = false\n[group]\nmembers = ["0@127.0.0.1:7000"]\n');
  const noApp = await squall(['node', '--config', file, '--app', join(dir, 'missing.js')]);
  t.is(noApp.code, 2);
  t.regex(noApp.err, /cannot load the app module/);
  const badMember = await squall(['node', '--config', file, '--node.port=7001', '--app', join(root, 'dist/examples/kv-store/app.js')]);
  t.is(badMember.code, 1);
  t.regex(badMember.err, /ConfigError: invalid configuration:\n\s+node\.port: this node binds 127\.0\.0\.1:7001 but group\.members lists it at 127\.0\.0\.1:7000/);
  const help = await squall(['node', '--help']);
  t.is(help.code, 0);
  t.regex(help.out, /usage: squall node --config <file> --app <module\.js>/);
});
