// Restart from the data dirs with real processes (issue 9): 3 nodes of the kv-store example, each
// a child process (this file, forked with GRST_CHILD set) running Group.start(config,
// { membership: true }). Puts from all three, each acknowledged once persisted() resolved; then
// every node is killed with SIGKILL at once (more puts in flight) and all three restart from
// their data dirs: the group resumes in a new view of the same three members, every
// acknowledged put is present on every node, the replicas' digests are equal, and new puts
// work. Then one node is killed and restarted alone while the others serve: it rejoins the
// running group, gets what it lacks, and ends with the others' digest.
import 'reflect-metadata';
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Group, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { parseConfig } from '../../src/config/load.js';
import { freeUdpPorts, localConfigToml } from '../../src/group/local.js';
import { ChildNode, startChildGroup, waitUntil } from '../support/child-node.js';
import { KvStore } from '../../examples/kv-store/app.js';

// GRST_MODE=raft: the one shard is raft-ordered; its members resume their Raft log at the restart.
const layoutOf = (mode: string | undefined) => ({ KvStore: oneSubgroup(fixedEvenShards(1, 3, mode === 'raft' ? { mode: 'raft' } : {})) });
// Generous for a loaded machine: a false suspicion would turn the test into a different one.
const TOML = '[timeouts]\nheartbeat_ms = 50\nfailure_timeout_ms = 1500';

type Request =
  | { id: number; op: 'put'; key: string; value: string }
  | { id: number; op: 'state' };
interface NodeState { viewId: number; members: number[]; digest: string; entries: [string, string][] }

if (process.env['GRST_CHILD'] !== undefined) {
  const config = parseConfig(process.env['GRST_CHILD'], 'child.toml');
  const log = process.env['GRST_LOG'] !== undefined
    ? (line: string) => process.stderr.write(`[node ${config.node.id}] ${line}\n`)
    : undefined;
  const group = await startChildGroup(() => Group.start(config, { types: [KvStore], layout: layoutOf(process.env['GRST_MODE']), membership: log ? { log } : true }));
  const kv = group.subgroup(KvStore);
  process.on('message', (message: Request) => {
    void (async () => {
      try {
        if (message.op === 'put') {
          const results = kv.ordered.put(message.key, message.value);
          await results;
          await results.persisted();
          process.send!({ id: message.id, result: true });
        } else {
          const entries = [...kv.versions('entries').value.entries()].sort(([a], [b]) => a.localeCompare(b));
          const state: NodeState = {
            viewId: group.view.id, members: group.view.memberIds.map(Number), digest: kv.digest(), entries,
          };
          process.send!({ id: message.id, result: state });
        }
      } catch (error) {
        process.send!({ id: message.id, error: String(error) });
      }
    })();
  });
  process.on('disconnect', () => process.exit(0));
  process.send!({ ready: true });
} else {
  const { default: test } = await import('ava');
  type ExecutionContext = import('ava').ExecutionContext;

  class Node extends ChildNode<{ op: 'put'; key: string; value: string } | { op: 'state' }> {
    put(key: string, value: string): Promise<boolean> {
      return this.ask({ op: 'put', key, value });
    }
    state(): Promise<NodeState> {
      return this.ask({ op: 'state' });
    }
  }
  const waitFor = waitUntil;

  const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-restart-process-'));
  test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

  const killAllAndRestart = async (t: ExecutionContext, mode: 'ordered' | 'raft'): Promise<void> => {
    t.timeout(120_000);
    const ports = await freeUdpPorts(3);
    const file = fileURLToPath(import.meta.url);
    const spawn = (i: number, reset: boolean): Node => new Node(i + 1, fork(file, [], {
      env: {
        ...process.env,
        GRST_CHILD: localConfigToml(i, ports, { dataRoot: join(dataRoot, mode), firstId: 1, extraToml: TOML, reset }),
        GRST_MODE: mode,
      },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }));
    let nodes = [0, 1, 2].map((i) => spawn(i, true));
    const acked = new Map<string, string>();
    const put = async (node: Node, key: string, value: string): Promise<void> => {
      await node.put(key, value);
      acked.set(key, value);
    };
    try {
      await Promise.all(nodes.map((n) => n.ready));
      const before = await nodes[0]!.state();
      // Acknowledged puts from every node, some overwriting earlier keys.
      for (let round = 0; round < 10; round++) {
        await Promise.all(nodes.map((n, i) => put(n, `k${(round * 3 + i) % 20}`, `v${round}-${i}`)));
      }
      // More puts in flight while every node is killed: each may or may not survive.
      const inFlight = nodes.map((n, i) => n.put(`late${i}`, 'x').catch(() => false));
      for (const n of nodes) n.child.kill('SIGKILL');
      await Promise.all(inFlight);
      await Promise.all(nodes.map((n) => new Promise((resolve) => {
        if (n.child.exitCode !== null || n.child.signalCode !== null) resolve(undefined);
        else n.child.once('exit', resolve);
      })));

      const restartedAt = performance.now();
      nodes = [0, 1, 2].map((i) => spawn(i, false));
      await Promise.all(nodes.map((n) => n.ready));
      t.log(`total restart: all three serving ${(performance.now() - restartedAt).toFixed(0)} ms after the restart`);
      const states = await Promise.all(nodes.map((n) => n.state()));
      for (const s of states) {
        t.deepEqual(s.members, [1, 2, 3]);
        t.true(s.viewId > before.viewId, 'the group resumed in a new view');
        const entries = new Map(s.entries);
        for (const [key, value] of acked) t.is(entries.get(key), value, `acknowledged ${key} present`);
      }
      t.is(new Set(states.map((s) => s.digest)).size, 1, 'replicas are equal after the restart');
      t.is(new Set(states.map((s) => s.viewId)).size, 1);

      // New puts work in the resumed group.
      await Promise.all(nodes.map((n, i) => put(n, `after${i}`, 'y')));

      // One node restarts with its data dir while the others serve: it rejoins.
      nodes[2]!.child.kill('SIGKILL');
      await put(nodes[0]!, 'while-down', 'z').catch(() => undefined); // may wait for the view change
      nodes[2] = spawn(2, false);
      await nodes[2].ready;
      await put(nodes[1]!, 'rejoined', 'w');
      await waitFor('equal digests after the rejoin', async () => {
        const s = await Promise.all(nodes.map((n) => n.state()));
        return new Set(s.map((x) => x.digest)).size === 1 && s.every((x) => x.members.length === 3);
      }, 20_000);
      const final = await nodes[2].state();
      const entries = new Map(final.entries);
      for (const [key, value] of acked) t.is(entries.get(key), value, `acknowledged ${key} present on the rejoined node`);
    } finally {
      for (const n of nodes) n.child.kill('SIGKILL');
    }
  };

  test('3 processes: kill -9 of all, restart from the data dirs: every acknowledged put is there', (t) => killAllAndRestart(t, 'ordered'));
  // The shard's Raft log is its durable state: its members resume the Raft group (same
  // configuration, persisted term) and every acknowledged put is there, versions above the old.
  test('3 processes, a raft shard: kill -9 of all, restart: the Raft log resumes, every acknowledged put is there',
    (t) => killAllAndRestart(t, 'raft'));
}
