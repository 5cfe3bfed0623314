// The fault harness itself, tested on UDP echo processes: it must kill, pause, restart and clean
// up real processes, tell deaths it caused from crashes, and (where the machine allows) partition
// nodes in network namespaces silently and heal them. If any of this silently did nothing, the
// cluster fault runs built on it would prove nothing.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HarnessError, ProcessCluster } from '../cluster/process-cluster.js';
import { NetLab } from '../cluster/netns.js';

const echoNode = join(dirname(fileURLToPath(import.meta.url)), '../support/cluster-echo-node.js');

/** Sends `text` to host:port from `socket` and resolves true if the echo comes back in time. */
function ping(socket: Socket, host: string, port: number, text: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const onMessage = (message: Buffer): void => {
      if (message.toString() !== `echo:${text}`) return;
      clearTimeout(timer);
      socket.off('message', onMessage);
      resolve(true);
    };
    const timer = setTimeout(() => {
      socket.off('message', onMessage);
      resolve(false);
    }, timeoutMs);
    socket.on('message', onMessage);
    socket.send(text, port, host);
  });
}

/** ping, tried up to `tries` times: one datagram may be lost, or met by a process still waking. */
async function pingAnswered(socket: Socket, host: string, port: number, text: string, tries = 3): Promise<boolean> {
  for (let i = 0; i < tries; i++) if (await ping(socket, host, port, text, 2000)) return true;
  return false;
}

async function boundSocket(host = '127.0.0.1'): Promise<Socket> {
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, host, resolve));
  return socket;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('kill -9, pause/resume, restart, and an unexpected crash are told apart', async (t) => {
  const cluster = new ProcessCluster();
  const socket = await boundSocket();
  try {
    const a = cluster.add({ name: 'a', command: process.execPath, args: [echoNode, '127.0.0.1'] });
    const b = cluster.add({ name: 'b', command: process.execPath, args: [echoNode, '127.0.0.1', '0', '--crash-after-ms', '300'] });
    a.start();
    b.start();
    const port = Number((await a.waitForLine(/^listening \S+ (\d+)/, 10_000))[1]);
    t.true(await pingAnswered(socket, '127.0.0.1', port, 'one'), 'a answers before the pause');

    // Paused: the datagram waits in the socket buffer and is answered only after SIGCONT.
    a.pause();
    t.false(await ping(socket, '127.0.0.1', port, 'two', 400));
    const late = new Promise<boolean>((resolve) =>
      socket.once('message', (m) => resolve(m.toString() === 'echo:two')),
    );
    a.resume();
    t.true(await late, 'the datagram sent while paused is answered after SIGCONT');

    // b dies by itself: recorded as unexpected, with its last words.
    const crash = await b.waitForExit(10_000);
    t.is(crash.code, 3);
    t.false(crash.expected);
    t.true(crash.tail.some((l) => l.includes('crashing on purpose')), `b's last words in its tail: ${crash.tail.join(' | ')}`);

    // a is killed by the harness (even while paused): expected, by SIGKILL.
    const pid = a.pid!;
    a.pause();
    const killed = await a.kill();
    t.is(killed?.signal, 'SIGKILL');
    t.true(killed?.expected, 'the kill is recorded as expected');
    t.false(alive(pid));

    // Restart gives a new incarnation that serves again.
    a.start();
    t.is(a.incarnation, 2);
    const port2 = Number((await a.waitForLine(/^listening \S+ (\d+)/, 10_000))[1]);
    t.true(await pingAnswered(socket, '127.0.0.1', port2, 'three'), 'the restarted a answers');

    t.deepEqual(
      cluster.unexpectedExits().map((e) => [e.name, e.code]),
      [['b', 3]],
    );
    t.throws(() => cluster.add({ name: 'a', command: 'true', args: [] }), { instanceOf: HarnessError });
  } finally {
    socket.close();
    await cluster.close();
  }
  t.true(cluster.processes.every((p) => !p.running), 'close() ended every process');
});

test('waitForLine times out with the process output in the error', async (t) => {
  const cluster = new ProcessCluster();
  try {
    const a = cluster.add({ name: 'quiet', command: process.execPath, args: [echoNode, '127.0.0.1'] });
    a.start();
    await a.waitForLine(/^listening/, 10_000);
    const error = await t.throwsAsync(a.waitForLine(/never printed/, 200), { instanceOf: HarnessError });
    t.regex(error!.message, /quiet: no line matching .* within 200 ms; last lines:\n {2}listening/);
  } finally {
    await cluster.close();
  }
});

const netns = NetLab.available();

test('network namespaces: partitions drop silently, one-way cuts, isolate, heal, cleanup', async (t) => {
  if (!netns.ok) {
    // Not root or no iproute2: the lab must refuse with a clear error rather than pretend.
    t.throws(() => NetLab.create({ count: 2 }), { instanceOf: HarnessError, message: /not available here/ });
    t.log(`namespaces unavailable (${netns.reason}); checked the refusal only`);
    return;
  }
  const lab = NetLab.create({ count: 3 });
  const cluster = new ProcessCluster();
  const sockets: Socket[] = [];
  try {
    const ports: number[] = [0];
    for (let node = 1; node <= 3; node++) {
      const p = cluster.add({
        name: `n${node}`,
        command: process.execPath,
        args: [echoNode, lab.address(node), '7000'],
        netns: lab.netns(node),
      });
      p.start();
      ports.push(Number((await p.waitForLine(/^listening \S+ (\d+)/, 10_000))[1]));
    }
    // The harness reaches every node through the bridge.
    const host = await boundSocket(lab.hostAddress);
    sockets.push(host);
    for (let node = 1; node <= 3; node++) t.true(await ping(host, lab.address(node), 7000, `h${node}`, 2000));

    // Node-to-node traffic: a short-lived process in one node's namespace sends to another node
    // and waits for the echo (a round trip, so a cut in either direction shows as false).
    const reach = (from: number, to: number, timeoutMs = 1500): boolean => {
      const script =
        `const s=require('dgram').createSocket('udp4');const t=setTimeout(()=>{console.log('no');process.exit(0)},${timeoutMs});` +
        `s.on('message',()=>{console.log('yes');clearTimeout(t);process.exit(0)});s.send('x',7000,'${lab.address(to)}')`;
      return (
        execFileSync('ip', ['netns', 'exec', lab.netns(from), process.execPath, '-e', script], { encoding: 'utf8' }).trim() ===
        'yes'
      );
    };
    t.true(reach(1, 2));
    t.true(reach(2, 3));

    lab.partition([[1], [2, 3]]);
    t.false(reach(1, 2, 500), 'partitioned: 1 cannot reach 2');
    t.false(reach(2, 1, 500), 'partitioned: 2 cannot reach 1');
    t.true(reach(2, 3), 'same side still talks');
    t.true(await ping(host, lab.address(1), 7000, 'still-host', 2000), 'the harness still reaches every node');

    lab.partition([[3]], { oneWay: true });
    t.false(reach(3, 1, 500), 'one-way: 3 → 1 dropped');
    t.true(
      await ping(host, lab.address(1), 7000, 'from-host', 2000),
      'one-way partition leaves other paths alone',
    );

    lab.heal();
    t.true(reach(1, 2));
    t.true(reach(3, 1));

    lab.isolate(2);
    t.false(reach(1, 2, 500));
    t.false(await ping(host, lab.address(2), 7000, 'isolated', 400));
    lab.rejoin(2);
    t.true(reach(1, 2));

    t.throws(() => lab.partition([[1], [1]]), { instanceOf: HarnessError, message: /two sides/ });
    t.throws(() => lab.address(9), { instanceOf: HarnessError, message: /no node 9/ });
  } finally {
    for (const s of sockets) s.close();
    await cluster.close();
    lab.close();
  }
  const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  t.false(left.includes(lab.prefix), `namespaces left behind: ${left}`);
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  t.false(links.includes(lab.prefix), 'bridge or veth left behind');
});
