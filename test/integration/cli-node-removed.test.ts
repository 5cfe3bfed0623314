// `squall node --membership` says so and ends when the group removes it: three node processes run
// the kv-store example; node 3 is stopped (SIGSTOP) past the failure timeout, the others install
// a view without it, and once it runs again it learns of its removal, prints why on stderr and
// exits with status 3 (before, it went on idling as if it were a member).
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
function startNode(index: number, ports: number[]): Promise<NodeProcess> {
  const file = join(dataRoot, `node${index}.toml`);
  writeFileSync(file, localConfigToml(index, ports, {
    dataRoot, firstId: 1, extraToml: '[timeouts]\nheartbeat_ms = 50\nfailure_timeout_ms = 1000',
  }));
  const child = spawn(process.execPath, [cli, 'node', '--membership', '--config', file, '--app', app], { stdio: ['ignore', 'pipe', 'pipe'] });
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

test('squall node prints why and exits 3 once the group removed it', async (t) => {
  t.timeout(90_000);
  const ports = await freeUdpPorts(3);
  const nodes: NodeProcess[] = [];
  try {
    nodes.push(...await Promise.all([0, 1, 2].map((i) => startNode(i, ports))));
    const third = nodes[2]!;
    third.child.kill('SIGSTOP');
    // Well past the 1 s failure timeout: the others remove it meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 4000));
    third.child.kill('SIGCONT');
    const code = await Promise.race([third.exited, new Promise((resolve) => setTimeout(() => resolve('still running'), 30_000))]);
    t.is(code, 3, `exit status (stderr: ${third.err.slice(-500)})`);
    t.regex(third.err, /node 3 is no longer a member: removed in view \d+ \(failed\)/);
    t.is(nodes[0]!.child.exitCode, null, 'the others go on');
    t.is(nodes[1]!.child.exitCode, null);
  } finally {
    for (const n of nodes) {
      if (n.child.exitCode === null && n.child.signalCode === null) {
        n.child.kill('SIGCONT');
        n.child.kill('SIGKILL');
        await n.exited;
      }
    }
  }
});
