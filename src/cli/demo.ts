/**
 * `squall demo` (what `npm start` runs): a real 3-node group on loopback, on the membership
 * service. Nodes 2 and 3 are separate processes running `squall node --membership` with the
 * key-value store of examples/kv-store; this process is node 1 and drives the workload through the
 * public API: ordered puts with every member's reply, delivered/persisted waits, a timed workload
 * of 16-byte keys and 64-byte values, p2p reads from each member, an application error coming
 * back as RemoteError, a temporal query answered alike by every replica, the replicas' state
 * digests, then kill -9 of node 3 and the view change that removes it while the others serve on,
 * and node 3 started again over its data dir, rejoining with what it missed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../config/load.js';
import { formatHlc } from '../core/hlc.js';
import type { NodeId } from '../core/ids.js';
import { Group, type Replicated } from '../group/group.js';
import { freeUdpPorts, localConfigToml } from '../group/local.js';
import { RemoteError } from '../../decorators/errors.js';
import { UsageError, type CliIo, type Command } from './command.js';
import { parseArgs } from './args.js';
import { describeNode, loadApp } from './node.js';
import type { KvStore } from '../../examples/kv-store/app.js';

const NODE_COUNT = 3;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const ms = (nanos: bigint): number => Number(nanos) / 1e6;
const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
const fmt = (n: number): string => (n < 10 ? n.toFixed(2) : n.toFixed(1));

function startChild(cli: string, config: string, app: string, index: number, io: CliIo, membership: boolean, extra: string[] = []): ChildProcess {
  const child = spawn(process.execPath, [cli, 'node', '--config', config, '--app', app, ...(membership ? ['--membership'] : []), ...extra], {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const prefix = (stream: NodeJS.ReadableStream, print: (line: string) => void): void => {
    let buffered = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) print(`  [node ${index} process] ${line}`);
    });
  };
  prefix(child.stdout!, (l) => io.out(l));
  prefix(child.stderr!, (l) => io.err(l));
  return child;
}

export interface WorkloadResult {
  readonly count: number;
  readonly rate: number;
  /** Sorted latencies in ms to delivered() (every call) and to persisted() (if waited for). */
  readonly delivered: number[];
  readonly persisted: number[];
}

/**
 * A closed loop of `outstanding` workers putting 16-byte keys and 64-byte values for `seconds`;
 * each worker waits for its call's delivered() and, if `until` is 'persisted', persisted(),
 * before its next call. `progress` is called about every 500 ms with the recent rate.
 */
export async function workload(
  kv: Replicated<KvStore>,
  options: { outstanding: number; seconds: number; until: 'delivered' | 'persisted'; progress?: (elapsedS: number, rate: number) => void },
): Promise<WorkloadResult> {
  const delivered: number[] = [];
  const persisted: number[] = [];
  const value = 'v'.repeat(64);
  let sequence = 0;
  let done = 0;
  const started = process.hrtime.bigint();
  const end = started + BigInt(Math.round(options.seconds * 1e9));
  let lastReport = started;
  let lastCount = 0;
  const worker = async (): Promise<void> => {
    while (process.hrtime.bigint() < end) {
      const key = `key-${String(sequence++ % 100_000).padStart(12, '0')}`; // 16 bytes
      const t0 = process.hrtime.bigint();
      const results = kv.ordered.put(key, value);
      await results.delivered();
      delivered.push(ms(process.hrtime.bigint() - t0));
      if (options.until === 'persisted') {
        await results.persisted();
        persisted.push(ms(process.hrtime.bigint() - t0));
      }
      done++;
      const now = process.hrtime.bigint();
      if (options.progress !== undefined && now - lastReport >= 500_000_000n) {
        options.progress(Number(now - started) / 1e9, ((done - lastCount) * 1e9) / Number(now - lastReport));
        lastReport = now;
        lastCount = done;
      }
    }
  };
  await Promise.all(Array.from({ length: options.outstanding }, worker));
  const elapsedS = Number(process.hrtime.bigint() - started) / 1e9;
  delivered.sort((a, b) => a - b);
  persisted.sort((a, b) => a - b);
  return { count: done, rate: done / elapsedS, delivered, persisted };
}

/**
 * Writes configs for a local group of NODE_COUNT nodes and starts nodes 1.. as `squall node`
 * child processes hosting the kv-store app; node 0's config file is returned for this process.
 */
export async function startLocalNodes(
  dataRoot: string, sync: 'durable' | 'nosync', io: CliIo, membership = false, encryption = true, app = 'app.js', writeAheadLog = false,
) {
  const cli = fileURLToPath(new URL('./main.js', import.meta.url));
  const appPath = fileURLToPath(new URL(`../../examples/kv-store/${app}`, import.meta.url));
  const ports = await freeUdpPorts(NODE_COUNT);
  const files = ports.map((_, i) => {
    const file = join(dataRoot, `node${i}.toml`);
    // A shared 2-core VM can stall a process for hundreds of ms under the workload: a 2 s failure
    // timeout keeps the demo from removing a live node. A killed node is detected sooner: its
    // closed port answers with ICMP port unreachable (tens of ms, transport.port_unreachable_reports).
    const timeouts = '[timeouts]\nheartbeat_ms = 100\nfailure_timeout_ms = 2000\n';
    writeFileSync(file, localConfigToml(i, ports, { dataRoot, sync, encryption, writeAheadLog, ...(membership ? { firstId: 1, extraToml: timeouts } : {}) }));
    return file;
  });
  const firstId = membership ? 1 : 0;
  const children = files.slice(1).map((file, i) => startChild(cli, file, appPath, firstId + i + 1, io, membership));
  /**
   * Starts child `i` (0 = node firstId + 1) again over its config and its data dir (the configs
   * say persistence.reset = true for a clean first start; the restart overrides it).
   */
  const restart = (i: number): ChildProcess =>
    (children[i] = startChild(cli, files[i + 1]!, appPath, firstId + i + 1, io, membership, ['--persistence.reset=false']));
  const stop = async (): Promise<void> => {
    for (const child of children) if (child.connected) child.disconnect();
    const exited = (c: ChildProcess): boolean => c.exitCode !== null || c.signalCode !== null;
    await Promise.all(children.map((c) => (exited(c) ? null : new Promise((r) => c.once('exit', r)))));
  };
  return { appPath, configFile: files[0]!, stop, children, restart };
}

async function runDemo(args: string[], io: CliIo): Promise<number> {
  const { flags, switches, overrides } = parseArgs(args, ['seconds', 'sync'], ['keep']);
  if (overrides.length > 0) throw new UsageError(`unknown argument ${overrides[0]}`);
  const seconds = Number(flags.get('seconds') ?? '3');
  if (!(seconds > 0 && seconds <= 60)) throw new UsageError('--seconds must be a number in (0, 60]');
  const sync = flags.get('sync') ?? 'durable';
  if (sync !== 'durable' && sync !== 'nosync') throw new UsageError('--sync must be "durable" or "nosync"');
  const dataRoot = mkdtempSync(join(tmpdir(), 'squall-demo-'));
  io.out(`Squall demo: a replicated key-value store (examples/kv-store/app.ts) on ${NODE_COUNT} nodes on loopback.`);
  io.out(`Configs, LMDB data and the group key (group.key) in ${dataRoot}; persistence.sync = "${sync}".`);
  io.out('Every packet between the nodes is sealed with AES-GCM under that key (transport.key_file).');
  const nodes = await startLocalNodes(dataRoot, sync, io, true);
  io.out(`Nodes 2 and 3 run as separate processes ("squall node --membership --config nodeN.toml --app ${nodes.appPath}");`);
  io.out(`this process is node 1 and makes the calls.\n`);
  let group: Group | undefined;
  try {
    const app = await loadApp(nodes.appPath);
    const t0 = Date.now();
    group = await Group.start(loadConfig(nodes.configFile), { types: app.types, layout: app.layout, membership: true });
    io.out(`1. The group is up after ${Date.now() - t0} ms. The founders are group.members; the membership`);
    io.out(`   service (a Raft log among them) installs every view:`);
    for (const line of describeNode(group)) io.out(`  ${line}`);
    const kv = group.subgroup(app.types[0] as typeof KvStore);
    await explain(kv, io, seconds);
    const dead = await failure(group, kv, nodes.children[1]!, io);
    await restartFromDisk(group, kv, dead, () => nodes.restart(1), io);
    return 0;
  } finally {
    await group?.close();
    await nodes.stop();
    if (!switches.has('keep')) rmSync(dataRoot, { recursive: true, force: true });
  }
}

async function explain(kv: Replicated<KvStore>, io: CliIo, seconds: number): Promise<void> {
  io.out(`\n2. An ordered call goes to every replica in one total order; each replica replies:`);
  const first = kv.ordered.put('greeting', 'hello');
  const replies = await first;
  const version = await first.version;
  io.out(`  kv.ordered.put("greeting", "hello") -> version ${version} (view ${version >> 32n}, ` +
    `position ${version & 0xffff_ffffn}), HLC time ${formatHlc(await first.timestamp)}`);
  for (const [node, previous] of replies) io.out(`    node ${node} replied ${JSON.stringify(previous)} (the previous value)`);

  io.out(`\n3. Waiting for the stages of one call (each a promise on its QueryResults):`);
  const start = process.hrtime.bigint();
  const staged = kv.ordered.put('greeting', 'hello again');
  const stamp = (): string => `${fmt(ms(process.hrtime.bigint() - start))} ms`;
  await staged.delivered();
  io.out(`  delivered()      after ${stamp()}: applied on this node`);
  await staged.localPersisted();
  io.out(`  localPersisted() after ${stamp()}: its version is in LMDB here`);
  await staged.persisted();
  io.out(`  persisted()      after ${stamp()}: durable on all 3 replicas`);

  io.out(`\n4. Workload: 16-byte keys, 64-byte values, 64 puts in flight for ${seconds} s, each waited to persisted():`);
  const load = await workload(kv, {
    outstanding: 64, seconds, until: 'persisted',
    progress: (at, rate) => io.out(`  ${at.toFixed(1)} s: ${Math.round(rate).toLocaleString('en-US')} puts/s persisted on all 3`),
  });
  io.out(`  ${load.count.toLocaleString('en-US')} puts, ${Math.round(load.rate).toLocaleString('en-US')} puts/s persisted on all 3 replicas`);
  io.out(`  latency p50/p99: delivered ${fmt(quantile(load.delivered, 0.5))}/${fmt(quantile(load.delivered, 0.99))} ms, persisted ${fmt(quantile(load.persisted, 0.5))}/${fmt(quantile(load.persisted, 0.99))} ms`);
  const single = await workload(kv, { outstanding: 1, seconds: Math.min(1, seconds), until: 'persisted' });
  io.out(`  one put at a time: p50 delivered ${fmt(quantile(single.delivered, 0.5))} ms, persisted ${fmt(quantile(single.persisted, 0.5))} ms (${single.count} puts)`);
  io.out(`  (a shared 2-core VM; load average ${(await import('node:os')).loadavg()[0]!.toFixed(1)}: numbers vary with load)`);

  io.out(`\n5. p2p reads are served by one member each, without ordering:`);
  for (const node of kv.members) io.out(`  kv.p2p(${node}).get("greeting") -> ${JSON.stringify(await kv.p2p(node).get('greeting'))}`);

  io.out(`\n6. An exception in a replicated method comes back as each replica's RemoteError:`);
  const failing = kv.ordered.update('no-such-key', 'x');
  for (const [node, reply] of failing.replies) {
    const error = await reply.then(() => undefined, (e: unknown) => e);
    if (error instanceof RemoteError) io.out(`  node ${node}: RemoteError ${error.remoteName}: ${error.remoteMessage}`);
    else io.out(`  node ${node}: unexpected ${String(error)}`);
  }

  io.out(`\n7. A temporal query: the value as of an HLC time, from every replica's version history:`);
  const red = kv.ordered.put('color', 'red');
  const redTime = await red.timestamp;
  await red.persisted();
  await kv.ordered.put('color', 'blue').persisted();
  await kv.whenStable(redTime);
  for (const node of kv.members) {
    const then = await retryNotStable(() => kv.p2p(node).getAt('color', redTime.micros));
    io.out(`  node ${node}: color at ${formatHlc(redTime)} = ${JSON.stringify(then)}, now = ${JSON.stringify(await kv.p2p(node).get('color'))}`);
  }

  io.out(`\n8. Replica state digests (SHA-256 of each replica's whole state):`);
  // persisted() means every replica made this version durable, so each has applied every call
  // up to it: with nothing else in flight, their states must be equal.
  await kv.ordered.put('last', 'call').persisted();
  for (const node of kv.members) io.out(`  node ${node}: ${await kv.p2p(node).stateDigest()}`);
}

/** kill -9 of the last member's process; the view change that removes it; the rest serve on. */
async function failure(group: Group, kv: Replicated<KvStore>, victim: ChildProcess, io: CliIo): Promise<NodeId> {
  const dead = group.view.members.at(-1)!.id;
  io.out(`\n9. kill -9 of node ${dead}'s process; the others detect it and install a view without it:`);
  const removed = new Promise<void>((resolve) => {
    group.on('view', (view) => {
      if (!view.members.some((m) => m.id === dead)) resolve();
    });
  });
  const killedAt = process.hrtime.bigint();
  victim.kill('SIGKILL');
  await removed;
  io.out(`  after ${fmt(ms(process.hrtime.bigint() - killedAt))} ms: view ${group.view.id} = [${group.view.members.map((m) => m.id).join(', ')}]`);
  const after = kv.ordered.put('after-failure', 'still served');
  const replies = await after;
  await after.persisted();
  io.out(`  kv.ordered.put("after-failure", ...) -> replies from nodes [${[...replies.keys()].join(', ')}], persisted on both`);
  for (const node of replies.keys()) io.out(`  node ${node}: ${await kv.p2p(node).stateDigest()}`);
  return dead;
}

/**
 * The killed node's process starts again over its data dir: it finds its view record, asks the
 * running group to let it back in, and its shard pulls only the versions it lacks.
 */
async function restartFromDisk(group: Group, kv: Replicated<KvStore>, node: NodeId, restart: () => ChildProcess, io: CliIo): Promise<void> {
  io.out(`\n10. Node ${node} starts again over its data dir (same config): it rejoins the running group, and`);
  io.out(`    its replica pulls only the versions written while it was down:`);
  const back = new Promise<void>((resolve) => {
    group.on('view', (view) => {
      if (view.members.some((m) => m.id === node)) resolve();
    });
  });
  const startedAt = process.hrtime.bigint();
  restart();
  await back;
  io.out(`  after ${fmt(ms(process.hrtime.bigint() - startedAt))} ms: view ${group.view.id} = [${group.view.members.map((m) => m.id).join(', ')}]`);
  await kv.ordered.put('after-restart', 'all three again').persisted();
  io.out(`  kv.p2p(${node}).get("after-failure") -> ${JSON.stringify(await kv.p2p(node).get('after-failure'))} (written while it was down)`);
  for (const member of kv.members) io.out(`  node ${member}: ${await kv.p2p(member).stateDigest()}`);
}

async function retryNotStable<T>(call: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (!(error instanceof RemoteError) || error.remoteName !== 'TimeNotStableError' || attempt > 100) throw error;
      await sleep(20);
    }
  }
}

export const demoCommand: Command = {
  summary: 'run a 3-node replicated key-value store on loopback and show what it does',
  usage: `usage: squall demo [--seconds <n>] [--sync durable|nosync] [--keep]

Starts nodes 2 and 3 of a 3-node group as child processes ("squall node --membership") and runs node 1 in this
process, with the replicated key-value store of examples/kv-store. Node 1 makes ordered puts,
waits for delivered/persisted, runs a timed workload (--seconds, default 3), reads from each
member, shows an application error and a temporal query, prints the replicas' digests, kills
node 3 with SIGKILL and shows the view change that removes it while nodes 1 and 2 serve on,
starts node 3 again over its data dir (it rejoins and pulls what it missed), and the rest leave. --sync nosync skips fsync (persisted() then means written, not fsynced). --keep
keeps the configs and data in the temporary directory. Exit status: 0 done, 1 failed, 2 bad
arguments.`,
  run: runDemo,
};
