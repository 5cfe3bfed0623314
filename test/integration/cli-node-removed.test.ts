// `squall node --membership` says so when the group removes it: three node processes run the
// kv-store example; node 3 is stopped (SIGSTOP) past the failure timeout, the others install a
// view without it, and once it runs again it learns of its removal and prints why on stderr. Then
// it joins the group again as a new member over its data dir (group.rejoin_after_removal, the
// default), or, with that off, exits with status 3 (before, it went on idling as a member).
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freeUdpPorts, localConfigToml } from '../../src/group/local.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cli = join(root, 'dist/src/cli/main.js');
const app = join(root, 'dist/examples/kv-store/app.js');
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-cli-node-removed-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

interface NodeProcess {
  readonly child: ChildProcess;
  out: string;
  err: string;
  readonly exited: Promise<number | null>;
}

/** Starts `squall node --membership` as node `index + 1`; resolves once it printed its node line. */
function startNode(index: number, ports: number[], args: string[] = []): Promise<NodeProcess> {
  const file = join(dataRoot, `node${index}.toml`);
  writeFileSync(file, localConfigToml(index, ports, {
    dataRoot, firstId: 1, extraToml: '[timeouts]\nheartbeat_ms = 50\nfailure_timeout_ms = 1000',
  }));
  const child = spawn(process.execPath, [cli, 'node', '--membership', '--config', file, '--app', app, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const node: NodeProcess = {
    child, out: '', err: '', exited: new Promise((done) => child.once('exit', (code) => done(code))),
  };
  child.stdout!.on('data', (chunk: Buffer) => { node.out += chunk.toString(); });
  child.stderr!.on('data', (chunk: Buffer) => { node.err += chunk.toString(); });
  return new Promise((done, fail) => {
    const poll = setInterval(() => {
      if (/KvStore subgroup 0 shard 0/.test(node.out)) {
        clearInterval(poll);
        done(node);
      }
    }, 20);
    void node.exited.then((code) => {
      clearInterval(poll);
      fail(new Error(`node ${index + 1} exited with ${code} before it started: ${node.err}`));
    });
  });
}

/** Stops node 3 past the failure timeout, so that the others remove it, and lets it run again. */
async function removeThird(nodes: NodeProcess[]): Promise<NodeProcess> {
  const third = nodes[2]!;
  third.child.kill('SIGSTOP');
  // Well past the 1 s failure timeout: the others remove it meanwhile.
  await new Promise((resolve) => setTimeout(resolve, 4000));
  third.child.kill('SIGCONT');
  return third;
}

async function killAll(nodes: NodeProcess[]): Promise<void> {
  for (const n of nodes) {
    if (n.child.exitCode === null && n.child.signalCode === null) {
      n.child.kill('SIGCONT');
      n.child.kill('SIGKILL');
      await n.exited;
    }
  }
}

test.serial('squall node rejoins as a new member once the group removed it, over its data dir', async (t) => {
  t.timeout(120_000);
  const ports = await freeUdpPorts(3);
  const nodes: NodeProcess[] = [];
  try {
    nodes.push(...await Promise.all([0, 1, 2].map((i) => startNode(i, ports))));
    const first = /node 3 up at \S+: view (\d+)/.exec(nodes[2]!.out)!;
    const third = await removeThird(nodes);
    // Back in a later view with all three members, as a new member, still running.
    const deadline = Date.now() + 60_000;
    let again: RegExpExecArray | null = null;
    while (again === null && Date.now() < deadline && third.child.exitCode === null) {
      again = /node 3 up at \S+: view (\d+), rank \d+ of 3/.exec(third.out.slice(first.index + first[0].length));
      if (again === null) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    t.truthy(again, `node 3 back in a view of 3 (stdout: ${third.out.slice(-500)}; stderr: ${third.err.slice(-500)})`);
    t.true(Number(again![1]) > Number(first[1]) + 1, `rejoined in view ${again![1]}, after the view that removed it`);
    t.regex(third.err, /node 3 is no longer a member: removed in view \d+ \(failed\)/);
    t.regex(third.err, /joining the group again as a new member/);
    t.is(third.child.exitCode, null, 'it runs on');
  } finally {
    await killAll(nodes);
  }
});

test.serial('with group.rejoin_after_removal = false squall node prints why and exits 3 once the group removed it', async (t) => {
  t.timeout(90_000);
  const ports = await freeUdpPorts(3);
  const nodes: NodeProcess[] = [];
  try {
    nodes.push(...await Promise.all([0, 1, 2].map((i) => startNode(i, ports, ['--group.rejoin_after_removal=false']))));
    const third = await removeThird(nodes);
    const code = await Promise.race([third.exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 30_000))]);
    t.is(code, 3, `exit status (stderr: ${third.err.slice(-500)})`);
    t.regex(third.err, /node 3 is no longer a member: removed in view \d+ \(failed\)/);
    t.is(nodes[0]!.child.exitCode, null, 'the others go on');
    t.is(nodes[1]!.child.exitCode, null);
  } finally {
    await killAll(nodes);
  }
});
