// The key-value example in raft mode with real processes (issue #12): three `squall node`
// processes run examples/kv-store/raft.js (one shard of 3 replicas, `mode: 'raft'`, static view);
// this process is an external Client. Puts are answered; node 0 (the member that campaigns
// first, normally the shard's Raft leader) is killed with SIGKILL; puts keep being served by the
// two survivors (relayed through either, retried at the other when the dead one does not answer),
// linearizable p2p reads on both survivors see the last put, and their state digests are equal.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../../src/group/client.js';
import { freeUdpPorts, localConfigToml, localGroupKeyFile } from '../../src/group/local.js';
import { KvStore } from '../../examples/kv-store/raft.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cli = join(root, 'dist/src/cli/main.js');
const app = join(root, 'dist/examples/kv-store/raft.js');
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-raft-process-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

/** Starts `squall node`; resolves once it printed its shard line (Group.start returned). */
function startNode(index: number, ports: number[]): Promise<ChildProcess> {
  const file = join(dataRoot, `node${index}.toml`);
  writeFileSync(file, localConfigToml(index, ports, {
    dataRoot, extraToml: '[timeouts]\nheartbeat_ms = 20\nfailure_timeout_ms = 300',
  }));
  const child = spawn(process.execPath, [cli, 'node', '--config', file, '--app', app], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  return new Promise((done, fail) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (/mode raft/.test(out)) done(child);
    });
    child.stderr!.on('data', (chunk: Buffer) => { err += chunk.toString(); });
    child.once('exit', (code) => fail(new Error(`node ${index} exited with ${code}: ${err}`)));
  });
}

test('kv-store in raft mode, 3 processes: kill -9 of the first member, the survivors keep serving writes', async (t) => {
  t.timeout(90_000);
  const ports = await freeUdpPorts(3);
  const children: ChildProcess[] = [];
  let client: Client | undefined;
  try {
    const startedAt = Date.now();
    children.push(...await Promise.all([0, 1, 2].map((i) => startNode(i, ports))));
    t.log(`3 nodes up after ${Date.now() - startedAt} ms`);
    client = await Client.connect({
      contacts: ports.map((p) => `127.0.0.1:${p}`), keyFile: localGroupKeyFile(dataRoot), requestTimeoutMs: 1500,
    });
    const kv = client.subgroup(KvStore);
    for (let i = 0; i < 5; i++) {
      const { replies } = await kv.ordered.put(`k${i}`, `v${i}`);
      t.true(replies.size >= 2, 'replies from a majority at least');
    }
    t.is(await kv.p2p(2).get('k4'), 'v4');

    const killedAt = Date.now();
    children[0]!.kill('SIGKILL');
    let firstAfterKillMs = -1;
    let last = -1;
    for (let i = 0; i < 20; i++) {
      const { version, replies } = await kv.ordered.put('after', `w${i}`);
      if (firstAfterKillMs < 0) firstAfterKillMs = Date.now() - killedAt;
      t.true(version > last, 'versions keep increasing across the leader change');
      last = Number(version);
      t.true([...replies.keys()].every((n) => n === 1 || n === 2), 'only survivors reply');
      for (const reply of replies.values()) t.is(await reply, i === 0 ? '' : `w${i - 1}`, 'the previous value');
    }
    t.log(`20 puts after the kill done ${Date.now() - killedAt} ms after it`);
    t.log(`first put after kill -9 answered ${firstAfterKillMs} ms after the kill (load ${(await import('node:os')).loadavg()[0]!.toFixed(1)})`);
    // Linearizable reads (the default) on both survivors see the last put at once.
    t.is(await kv.p2p(1).get('after'), 'w19');
    t.is(await kv.p2p(2).get('after'), 'w19');
    t.is(await kv.p2p(1).stateDigest(), await kv.p2p(2).stateDigest(), 'the survivors hold equal replicas');
  } finally {
    await client?.close();
    for (const child of children) child.kill('SIGKILL');
  }
});
