/**
 * Key-value chaos: five real node processes (nodes/kv-node.ts) form a group on the membership
 * service, one shard of three replicas of `ChaosKv` plus two spares. Shard members run
 * closed-loop clients (puts and compare-and-set acknowledged at `persisted()`, ordered reads, p2p
 * reads); an external `Client` in the harness adds relayed puts and CAS with idempotency keys.
 * Meanwhile the harness kills a random member or the membership log's leader with SIGKILL,
 * pauses one past the failure timeout (SIGSTOP/SIGCONT), injects packet loss through the
 * transport, and (in network namespaces) partitions one node away; every node the group removed
 * is killed and replaced by a fresh node (new id, empty data directory) in the same slot, so the
 * group keeps five processes. Then it heals, lets the group settle, stops the clients and checks:
 *
 *   - linearizable: the ordered history (puts, CAS, ordered reads; writes acknowledged only at
 *     `persisted()`, calls without an answer kept open as possibly applied) per key, with a search
 *     budget: past it the verdict is "unknown", reported and not counted as a pass of that key;
 *   - p2p reads match the total order: the value a p2p read returned equals the key's value at
 *     the version the replica said it read from (checked against a final replica's history);
 *   - acknowledged writes present: the value of every acknowledged put at its version;
 *   - replicas identical: every live shard member has the same delivered frontier, state digest
 *     and version history (version, HLC time), and answers temporal reads alike;
 *   - partition safety: no ordered call issued on the isolated side completed while isolated,
 *     and what the isolated node delivered is a prefix of the majority's history;
 *   - members agree: no ordered call got different replies from different members;
 *   - liveness: after healing, ordered calls complete again; no process crashed except those
 *     the harness killed.
 *
 * `restartCheck` (`--restart-check`; on in npm test's fixed run since total restart from disk
 * landed): after the checks, SIGKILL every node, start each again over its own data directory
 * (reset off), and check every write acknowledged at `persisted()` against a restarted replica.
 */
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '../../../src/group/client.js';
import { freeUdpPorts, localGroupKeyFile } from '../../../src/group/local.js';
import { SeededRandom } from '../../../src/core/random.js';
import { checkLinearizable, kvModel, type KvInput, type KvOutput, type Operation } from '../../support/linearizability.js';
import { NetLab } from '../netns.js';
import { ProcessCluster, type ManagedProcess } from '../process-cluster.js';
import { crashViolations, firstOfEachKind, type RunReport, type Scenario, type ScenarioOptions } from '../scenario.js';
import { ChaosKv } from '../nodes/kv-node.js';

const kvNode = join(dirname(fileURLToPath(import.meta.url)), '../nodes/kv-node.js');
const slots = 5;
const heartbeatMs = 100;
const failureTimeoutMs = 1500;
const keys = 4;
const checkerSteps = 3_000_000;

/** The kv scenario's faults, in the order the seed's schedule draws them from. */
export const KV_FAULT_KINDS = ['kill', 'kill-leader', 'pause', 'loss', 'quiet', 'leave', 'partition'] as const;
export type KvFaultKind = (typeof KV_FAULT_KINDS)[number];

/** The kv nodes' persistence: nosync (default), durable (LMDB's synced commits), wal (durable, write-ahead log). */
export const KV_PERSISTENCE = ['nosync', 'durable', 'wal'] as const;
export type KvPersistence = (typeof KV_PERSISTENCE)[number];

export interface KvScenarioOptions extends ScenarioOptions {
  /** The nodes' persistence (default nosync). */
  persistence?: KvPersistence;
  /** Restart every node from disk at the end and check acknowledged writes again (needs #restart). */
  restartCheck?: boolean;
  /**
   * Draw faults only from these kinds (default: all; `partition` only in network namespaces).
   * A fault kind that needs namespaces without them is refused.
   */
  faultKinds?: readonly KvFaultKind[];
}

interface NodeReport {
  id: number;
  viewId: number;
  members: number[];
  shard: number[];
  leader: boolean;
  removed: boolean;
  delivered?: string;
  digest?: string;
  stableMicros?: number;
  versions?: [string, number, number][];
}

interface Invocation { o: string; c: number; op: 'put' | 'cas' | 'read'; key: string; value?: string; expected?: string; t: number }
interface Completion { o: string; out: unknown; v: string; t: number }
interface P2PRead { key: string; value: string; at: string; node: number; t0: number; t1: number }

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const now = (): number => performance.timeOrigin + performance.now();

/** One slot: a network namespace (or loopback) where successive node incarnations run. */
interface Slot {
  index: number;
  nodeId: number;
  process: ManagedProcess;
  removed: boolean;
}

async function ask(p: ManagedProcess, command: string, answer: RegExp, timeoutMs = 15_000): Promise<string> {
  const line = p.waitForNextLine(answer, timeoutMs);
  p.send(command);
  return (await line)[1] ?? '';
}

export const kvChaos: Scenario & { run(seed: number, options: KvScenarioOptions): Promise<RunReport> } = {
  name: 'kv',
  async run(seed, options: KvScenarioOptions) {
    const { faultMs, log, nodeEnv, network = 'auto', encryption = 'auto', persistence = 'nosync' } = options;
    const started = Date.now();
    const random = new SeededRandom(seed);
    const useNetns = network === 'netns' || (network === 'auto' && NetLab.available().ok);
    for (const kind of options.faultKinds ?? []) {
      if (!KV_FAULT_KINDS.includes(kind)) throw new Error(`kv scenario: unknown fault kind "${kind}"; use ${KV_FAULT_KINDS.join(', ')}`);
    }
    if (options.faultKinds?.includes('partition') && !useNetns) {
      throw new Error(`kv scenario: the partition fault needs network namespaces (root and iproute2; ${NetLab.available().reason}); drop it or use --network netns`);
    }
    const kinds = (options.faultKinds ?? KV_FAULT_KINDS).filter((k) => useNetns || k !== 'partition');
    const encrypted = encryption === 'on' || (encryption === 'auto' && random.int(2) === 0);
    const faults: Record<string, number> = {};
    const violations: string[] = [];
    const notes: string[] = [];
    const count = (kind: string): void => void (faults[kind] = (faults[kind] ?? 0) + 1);
    const runDir = mkdtempSync(join(tmpdir(), 'squall-chaos-kv-'));
    const keyFile = localGroupKeyFile(runDir);
    const cluster = new ProcessCluster();
    let lab: NetLab | null = null;
    let client: Client | undefined;
    let operations = 0;

    // Everything the nodes print that the checks need, gathered as it arrives (kills lose nothing).
    const invocations = new Map<string, Invocation>();
    const completions = new Map<string, Completion>();
    const p2pReads: P2PRead[] = [];
    const removedLines = new Map<number, string>();
    const disagreements: string[] = [];
    /** A membership driver that failed an effect (it stops as removed, with the cause): a bug. */
    const internalErrors: string[] = [];
    const partitionWindows: { node: number; from: number; to: number }[] = [];
    const minorityHistories: { node: number; versions: [string, number, number][] }[] = [];
    const listen = (line: string, nodeId: number): void => {
      if (line.startsWith('h inv ')) {
        const inv = JSON.parse(line.slice(6)) as Invocation;
        invocations.set(inv.o, inv);
      } else if (line.startsWith('h ok ')) {
        const ok = JSON.parse(line.slice(5)) as Completion;
        completions.set(ok.o, ok);
      } else if (line.startsWith('p2p ')) p2pReads.push(JSON.parse(line.slice(4)) as P2PRead);
      else if (line.startsWith('removed ')) {
        removedLines.set(nodeId, line.slice(8));
        if (line.includes('internal error')) internalErrors.push(`node ${nodeId}: ${line.slice(8)}`);
      } else if (/membership driver of node \d+ failed/.test(line)) internalErrors.push(`node ${nodeId}: ${line}`);
      else if (line.startsWith('disagree ')) disagreements.push(`node ${nodeId}: ${line.slice(9)}`);
    };

    try {
      if (useNetns) lab = NetLab.create({ count: slots });
      const loopbackPorts = lab ? [] : await freeUdpPorts(64);
      let nextPort = 0;
      const host = (slot: number): string => (lab ? lab.address(slot) : '127.0.0.1');
      const portFor = (nodeId: number): number => (lab ? 7200 + nodeId : loopbackPorts[nextPort++]!);
      const addresses = new Map<number, string>();
      let founders = '';
      const slotList: Slot[] = [];
      let nextNodeId = 1;

      const spawnNode = (slot: number): Slot => {
        const nodeId = nextNodeId++;
        const address = `${host(slot)}:${portFor(nodeId)}`;
        addresses.set(nodeId, address);
        const seeds = [...addresses.entries()].filter(([id]) => id !== nodeId).map(([, a]) => `"${a}"`);
        const toml = [
          '[node]', `id = ${nodeId}`, `host = "${host(slot)}"`, `port = ${address.split(':')[1]}`,
          '[group]', `members = [${founders}]`, `seeds = [${seeds.join(', ') || `"${address}"`}]`, 'restart_timeout_s = 30',
          '[transport]', ...(encrypted ? ['encryption = true', `key_file = ${JSON.stringify(keyFile)}`] : ['encryption = false']),
          `peer_failure_timeout_ms = ${failureTimeoutMs}`,
          '[timeouts]', `heartbeat_ms = ${heartbeatMs}`, `failure_timeout_ms = ${failureTimeoutMs}`,
          '[persistence]', `data_dir = ${JSON.stringify(join(runDir, `node${nodeId}`))}`, 'reset = true',
          ...(persistence === 'nosync' ? ['sync = "nosync"'] : ['sync = "durable"', `write_ahead_log = ${persistence === 'wal'}`]),
          '[logging]', 'level = "warn"',
        ].join('\n');
        mkdirSync(join(runDir, `node${nodeId}`), { recursive: true });
        const configFile = join(runDir, `node${nodeId}.toml`);
        writeFileSync(configFile, toml);
        const args = [kvNode, '--config-file', configFile, '--clients', '2', '--keys', String(keys), '--seed', String(seed * 101 + nodeId)];
        const p = cluster.add({ name: `node-${nodeId}`, command: process.execPath, args, netns: lab?.netns(slot), env: nodeEnv });
        p.onLine((line) => listen(line, nodeId));
        if (process.env['KV_CHAOS_TRACE'] === '1') p.onLine((line) => (line.startsWith('[') || /Warning|Error/.test(line)) && log(`node ${nodeId}: ${line}`));
        p.start();
        const s: Slot = { index: slot, nodeId, process: p, removed: false };
        slotList[slot - 1] = s;
        return s;
      };

      // Founders: all five listed in group.members, started together.
      founders = Array.from({ length: slots }, (_, i) => `"${i + 1}@${host(i + 1)}:${lab ? 7200 + i + 1 : loopbackPorts[i]!}"`).join(', ');
      for (let slot = 1; slot <= slots; slot++) spawnNode(slot);
      await Promise.all(slotList.map((s) => s.process.waitForLine(/^ready /, 60_000)));
      log(`group up: nodes ${slotList.map((s) => s.nodeId).join(', ')} (${encrypted ? 'sealed' : 'plaintext'}, ${lab ? 'netns' : 'loopback'})`);

      const reportOf = async (s: Slot, full = false): Promise<NodeReport> =>
        JSON.parse(await ask(s.process, full ? 'report full' : 'report', /^report (.*)$/)) as NodeReport;
      const live = (): Slot[] => slotList.filter((s) => s.process.running && !s.removed);
      /** The membership log's leader among `targets`, by what each reports, else `fallback`. */
      const leaderOf = (targets: Slot[], reports: NodeReport[], fallback: Slot): Slot =>
        targets[reports.findIndex((r) => r.leader)] ?? fallback;
      /** A random member of the shard among `targets` (by their own reports), else `fallback`. */
      const shardMemberOf = (targets: Slot[], reports: NodeReport[], fallback: Slot): Slot => {
        const shard = targets.filter((s, i) => reports[i]!.shard.includes(s.nodeId));
        return shard[random.int(Math.max(1, shard.length))] ?? fallback;
      };

      /** Kills nodes the group removed (they cannot come back under their id) and replaces them. */
      const replaceRemoved = async (): Promise<void> => {
        for (const s of [...slotList]) {
          const gone = !s.process.running;
          if (!gone && !removedLines.has(s.nodeId)) continue;
          if (!gone) {
            log(`node ${s.nodeId} was removed (${removedLines.get(s.nodeId)}): kill and replace`);
            await s.process.kill('SIGKILL');
          }
          const fresh = spawnNode(s.index);
          count('replacement-join');
          log(`replacement node ${fresh.nodeId} joins in slot ${s.index}`);
          // A joiner can be removed while it starts (it then says `removed`, and the next
          // settle round replaces it again).
          await fresh.process.waitForLine(/^(ready|removed) /, 45_000);
        }
      };

      /** Waits until every live node reports the same view holding exactly the live nodes. */
      /**
       * Waits until every live node reports the same view holding exactly the live nodes. A node
       * that the newest view lacks but that was never told (no `removed` line) after the timeout
       * is a violation; it is then killed and replaced so the run can go on.
       */
      const settle = async (timeoutMs: number, retry = true): Promise<void> => {
        const deadline = Date.now() + timeoutMs;
        let last = '';
        let reports: NodeReport[] = [];
        while (Date.now() < deadline) {
          reports = await Promise.all(live().map((s) => reportOf(s)));
          const ids = live().map((s) => s.nodeId).sort((a, b) => a - b).join(',');
          const views = new Set(reports.map((r) => `${r.viewId}:${[...r.members].sort((a, b) => a - b).join(',')}`));
          last = [...views].join(' | ');
          if (views.size === 1 && [...views][0]!.endsWith(`:${ids}`) && reports.every((r) => !r.removed)) return;
          if (live().some((s) => removedLines.has(s.nodeId))) await replaceRemoved();
          await sleep(300);
        }
        const newest = reports.reduce((a, b) => (b.viewId > a.viewId ? b : a), reports[0]!);
        const untold = reports.filter((r) => !newest.members.includes(r.id) && !r.removed);
        for (const r of untold) {
          violations.push(`removal-unnoticed: node ${r.id} still shows view ${r.viewId} (members ${r.members.join(',')}) ${timeoutMs} ms after the others installed view ${newest.viewId} without it, and was never told it was removed`);
          removedLines.set(r.id, 'never told');
        }
        if (untold.length > 0 && retry) {
          await replaceRemoved();
          return settle(timeoutMs, false);
        }
        violations.push(`liveness: the group did not settle on one view of the live nodes within ${timeoutMs} ms (views: ${last})`);
      };

      // The external client: relayed puts and CAS with idempotency keys, acknowledged when every
      // member's reply arrived (a relayed call has no persisted() to wait for).
      let clientRunning = true;
      client = await Client.connect({
        contacts: slotList.map((s) => addresses.get(s.nodeId)!),
        host: lab ? lab.hostAddress : '127.0.0.1',
        requestTimeoutMs: 4000,
        ...(encrypted ? { keyFile } : { encryption: false }),
      });
      const clientRandom = new SeededRandom(seed * 7 + 3);
      let clientSeq = 0;
      const clientLoop = (async () => {
        const kv = client!.subgroup(ChaosKv);
        let lastSeen = '';
        while (clientRunning) {
          const key = `k${clientRandom.int(keys)}`;
          const o = `c.${clientSeq++}`;
          const cas = clientRandom.int(2) === 0;
          const inv: Invocation = { o, c: 0, op: cas ? 'cas' : 'put', key, value: o, ...(cas ? { expected: lastSeen } : {}), t: now() };
          invocations.set(o, inv);
          try {
            const result = cas ? await kv.ordered.cas(key, lastSeen, o) : await kv.ordered.put(key, o);
            const [first] = await Promise.all([...result.replies.values()]);
            completions.set(o, { o, out: first, v: String(result.version), t: now() });
            if (first === true) lastSeen = o;
          } catch {
            // Unknown outcome: it stays open in the history. Learn the view again and go on.
            await sleep(100);
          }
          await sleep(5);
        }
      })();

      // Faults, one at a time, each undone (and removed nodes replaced) before the next.
      const faultEnd = Date.now() + faultMs;
      while (Date.now() < faultEnd) {
        const kind = kinds[random.int(kinds.length)]!;
        const targets = live();
        const target = targets[random.int(targets.length)]!;
        if (kind === 'kill') {
          count('kill');
          log(`kill -9 node ${target.nodeId}`);
          await target.process.kill('SIGKILL');
        } else if (kind === 'kill-leader') {
          const leader = leaderOf(targets, await Promise.all(targets.map((s) => reportOf(s))), target);
          count('kill-leader');
          log(`kill -9 the membership leader, node ${leader.nodeId}`);
          await leader.process.kill('SIGKILL');
        } else if (kind === 'pause') {
          const pauseMs = failureTimeoutMs + 500 + random.int(1000);
          count('pause');
          log(`SIGSTOP node ${target.nodeId} for ${pauseMs} ms`);
          target.process.pause();
          await sleep(pauseMs);
          target.process.resume();
          await sleep(500);
        } else if (kind === 'loss') {
          const loss = 0.05 + random.int(20) / 100;
          const holdMs = 500 + random.int(1500);
          count('loss');
          log(`loss ${loss.toFixed(2)} at node ${target.nodeId} for ${holdMs} ms`);
          target.process.send(`loss ${loss}`);
          await sleep(holdMs);
          target.process.send('loss 0');
        } else if (kind === 'quiet') {
          count('quiet');
          await sleep(500 + random.int(1000));
        } else if (kind === 'leave') {
          // A clean leave: the node's group.close() commits its departure and returns; the others
          // go on without it (no failure timeout), and a fresh node later takes its slot.
          // A shard member (a spare leaving changes no shard).
          const leaving = shardMemberOf(targets, await Promise.all(targets.map((s) => reportOf(s))), target);
          count('leave');
          log(`node ${leaving.nodeId} leaves cleanly`);
          leaving.process.expectExit();
          const left = leaving.process.waitForNextLine(/^left$/, 20_000);
          leaving.process.send('leave');
          try {
            await left;
            await leaving.process.waitForExit(10_000);
          } catch (error) {
            violations.push(`leave: node ${leaving.nodeId} did not finish leaving (group.close() and exit) within 30 s: ${(error as Error).message}`);
            await leaving.process.kill('SIGKILL');
          }
          removedLines.set(leaving.nodeId, 'left');
        } else {
          // Cut one node off from the others, long enough to be removed: half the time the
          // membership leader, else a member of the shard (a spare does no ordered calls, so
          // cutting it off tests less).
          const reports = await Promise.all(targets.map((s) => reportOf(s)));
          const alone = random.int(2) === 0 ? leaderOf(targets, reports, target) : shardMemberOf(targets, reports, target);
          const holdMs = failureTimeoutMs + 1000 + random.int(1500);
          count('partition');
          log(`partition node ${alone.nodeId} (slot ${alone.index}) from the rest for ${holdMs} ms`);
          const from = now();
          lab!.partition([[alone.index]]);
          await sleep(holdMs);
          const minority = await reportOf(alone, true).catch(() => undefined);
          const to = now();
          lab!.heal();
          partitionWindows.push({ node: alone.nodeId, from, to });
          if (minority?.versions) minorityHistories.push({ node: alone.nodeId, versions: minority.versions });
        }
        // Let the group notice (a removal takes the failure timeout) and replace what it removed.
        await sleep(failureTimeoutMs + 500);
        await replaceRemoved();
        await settle(30_000);
      }

      // Heal, let the group settle, check liveness, then stop the clients.
      lab?.heal();
      for (const s of live()) s.process.send('loss 0');
      await replaceRemoved();
      await settle(30_000);
      const calmFrom = now();
      await sleep(2000);
      const completedSinceCalm = [...completions.values()].filter((c) => c.t > calmFrom).length;
      if (completedSinceCalm === 0) violations.push('liveness: no ordered call completed in the 2 s after the group settled');
      clientRunning = false;
      await Promise.all(live().map((s) => ask(s.process, 'quiet', /^(quiet)$/, 20_000)));
      await Promise.race([clientLoop, sleep(10_000)]);

      // Replicas identical: same delivered frontier, digest, version history; temporal reads.
      let reports: NodeReport[] = [];
      const deadline = Date.now() + 15_000;
      for (;;) {
        reports = (await Promise.all(live().map((s) => reportOf(s)))).filter((r) => r.digest !== undefined);
        if (new Set(reports.map((r) => r.delivered)).size <= 1 || Date.now() > deadline) break;
        await sleep(200);
      }
      reports = (await Promise.all(live().map((s) => reportOf(s, true)))).filter((r) => r.digest !== undefined);
      const shardSlots = live().filter((s) => reports.some((r) => r.id === s.nodeId));
      if (reports.length < 2) violations.push(`liveness: only ${reports.length} live shard members at the end`);
      const [reference] = reports;
      for (const r of reports.slice(1)) {
        if (r.delivered !== reference!.delivered) violations.push(`replicas: node ${r.id} delivered ${r.delivered}, node ${reference!.id} ${reference!.delivered} (15 s after the clients stopped)`);
        else if (r.digest !== reference!.digest) violations.push(`replicas: node ${r.id} and node ${reference!.id} have different state digests at version ${r.delivered}`);
        const diff = firstDifference(r.versions!, reference!.versions!);
        if (diff !== undefined) violations.push(`version-history: node ${r.id} and node ${reference!.id} differ: ${diff}`);
      }
      if (reference?.versions && reference.versions.length > 1) {
        // Times of versions spread over the run, at most the least stable replica's frontier (a
        // later time may still change and is refused with TimeNotStableError).
        const stable = Math.min(...reports.map((r) => r.stableMicros ?? 0));
        const v = reference.versions.filter(([, micros]) => micros < stable);
        const times = v.length === 0 ? [] : [0.2, 0.5, 0.8, 1].map((f) => v[Math.min(v.length - 1, Math.floor(f * (v.length - 1)))]![1]);
        const queries = times.flatMap((micros) => Array.from({ length: keys }, (_, k) => [`k${k}`, micros] as [string, number]));
        const answers = await Promise.all(shardSlots.map(async (s) =>
          [s.nodeId, JSON.parse(await ask(s.process, `at ${JSON.stringify(queries)}`, /^at (.*)$/)) as string[]] as const));
        const [firstNode, firstAnswers] = answers[0] ?? [0, []];
        for (const [id, a] of answers.slice(1)) {
          queries.forEach(([key, micros], i) => {
            if (a[i] === firstAnswers[i]) return;
            violations.push(`temporal: getByTime(${micros}).${key} is "${a[i]}" on node ${id} and "${firstAnswers[i]}" on node ${firstNode}`);
          });
        }
        operations += queries.length * answers.length;
      }

      // Linearizability of the ordered history, per key.
      const history: Operation<KvInput, KvOutput>[] = [];
      for (const inv of invocations.values()) {
        const done = completions.get(inv.o);
        const input: KvInput = inv.op === 'put' ? { op: 'put', key: inv.key, value: inv.value! }
          : inv.op === 'cas' ? { op: 'cas', key: inv.key, expected: inv.expected === '' ? undefined : inv.expected, value: inv.value! }
          : { op: 'get', key: inv.key };
        const output: KvOutput = done === undefined ? undefined
          : inv.op === 'read' ? ((done.out as string) === '' ? null : (done.out as string)) : inv.op === 'cas' ? (done.out as boolean) : undefined;
        history.push({ client: inv.c, input, output, callTime: inv.t, returnTime: done?.t });
      }
      const verdict = checkLinearizable(kvModel, history, checkerSteps);
      const completed = history.filter((op) => op.returnTime !== undefined).length;
      operations += completed;
      if (verdict.verdict === 'not-linearizable') {
        violations.push(`linearizability: the history of one key is not linearizable (${verdict.failingPartition!.length} operations):\n    ${verdict.failingPartition!.slice(0, 40).join('\n    ')}`);
      } else if (verdict.verdict === 'unknown') {
        notes.push(`linearizability unknown: the search passed ${checkerSteps} steps`);
      }
      log(`history: ${history.length} operations, ${completed} acknowledged, ${history.length - completed} open; checker: ${verdict.verdict} in ${verdict.steps} steps`);

      // p2p reads and acknowledged writes against the total order (the longest-history replica).
      const firstVersion = (s: Slot): bigint => BigInt(reports.find((r) => r.id === s.nodeId)!.versions![0]?.[0] ?? '0');
      const base = [...shardSlots].sort((a, b) => (firstVersion(a) < firstVersion(b) ? -1 : firstVersion(a) > firstVersion(b) ? 1 : 0))[0];
      if (base !== undefined) {
        const latest = BigInt(reports.find((r) => r.id === base.nodeId)!.delivered!);
        const reads = p2pReads.filter((r) => BigInt(r.at) > 0n && BigInt(r.at) <= latest);
        const writes = [...completions.values()].filter((c) => invocations.get(c.o)!.op === 'put');
        // Many reads share a version: ask for each (key, version) once.
        const readQueries = [...new Set(reads.map((r) => `${r.key}@${r.at}`))];
        const readIndex = new Map(readQueries.map((q, i) => [q, i]));
        const answers = JSON.parse(await ask(base.process, `values ${JSON.stringify([
          ...readQueries.map((q) => q.split('@')),
          ...writes.map((w) => [invocations.get(w.o)!.key, w.v]),
        ])}`, /^values (.*)$/, 60_000)) as (string | null)[];
        reads.forEach((r) => {
          const expected = answers[readIndex.get(`${r.key}@${r.at}`)!];
          if (expected === null || expected === undefined) return;
          operations++;
          if (expected !== r.value) violations.push(`p2p-read: node ${r.node} answered ${r.key} = "${r.value}" at version ${r.at}, but the total order has "${expected}" there`);
        });
        const lost: { inv: Invocation; w: Completion; found: string }[] = [];
        writes.forEach((w, i) => {
          const found = answers[readQueries.length + i];
          if (found === null || found === undefined) return;
          operations++;
          const inv = invocations.get(w.o)!;
          if (found !== inv.value) lost.push({ inv, w, found });
        });
        if (lost.length > 0) {
          // Where each value really is, if anywhere: a wrong version number, or a lost write.
          const where = JSON.parse(await ask(base.process, `where ${JSON.stringify(lost.slice(0, 5).map(({ inv }) => [inv.key, inv.value]))}`, /^where (.*)$/, 60_000)) as (string | null)[];
          lost.forEach(({ inv, w, found }, i) => {
            const at = where[i];
            const v = (s: string): string => `${s} (view ${BigInt(s) >> 32n}, position ${BigInt(s) & 0xffffffffn})`;
            const how = inv.c === 0 ? 'relayed for the external client, every member replied' : 'persisted() resolved';
            violations.push(`acked-write: put(${inv.key}, ${inv.value}) was acknowledged (${how}) at version ${v(w.v)}, but node ${base.nodeId} has "${found}" there` +
              (at === undefined ? '' : at === null ? '; the value is nowhere in its history' : `; the value first appears at version ${v(at)}`));
          });
        }
        log(`p2p reads checked: ${reads.length} of ${p2pReads.length}; acknowledged puts checked: ${writes.length}`);
      }

      // Partition safety: nothing issued on the isolated side completed while it was isolated, and
      // what it delivered is a prefix of the majority's history.
      for (const w of partitionWindows) {
        for (const inv of invocations.values()) {
          const done = completions.get(inv.o);
          // A call issued a failure timeout into the cut cannot have been helped by the others.
          if (inv.c >= w.node * 100 && inv.c < w.node * 100 + 100 && inv.t > w.from + 200 && done !== undefined && done.t < w.to) {
            violations.push(`partition: node ${w.node}, cut off from the others, completed ${inv.op}(${inv.key}) ${(done.t - inv.t).toFixed(0)} ms after issuing it inside the partition`);
          }
        }
      }
      if (reference?.versions) {
        const majority = new Map(reference.versions.map(([v, micros, logical]) => [v, `${micros}.${logical}`]));
        const first = reference.versions[0]?.[0];
        for (const m of minorityHistories) {
          for (const [v, micros, logical] of m.versions) {
            if (first !== undefined && BigInt(v) < BigInt(first)) continue;
            if (majority.get(v) !== `${micros}.${logical}`) {
              violations.push(`partition: isolated node ${m.node} has version ${v} (time ${micros}.${logical}) that the majority's history ${majority.has(v) ? `has at time ${majority.get(v)}` : 'lacks'}`);
              break;
            }
          }
        }
      }
      for (const d of disagreements) violations.push(`replies: members answered one ordered call differently: ${d}`);
      for (const e of internalErrors) violations.push(`internal-error: a membership effect failed and the node stopped: ${e}`);

      if (options.restartCheck) {
        // Total restart from disk: every node killed at once, then started again over its own
        // data directory (reset off); every write acknowledged at persisted() must be there.
        const restarting = live();
        await Promise.all(restarting.map((s) => s.process.kill('SIGKILL')));
        count('total-restart');
        for (const s of restarting) {
          const file = join(runDir, `node${s.nodeId}.toml`);
          writeFileSync(file, readFileSync(file, 'utf8').replace('reset = true', 'reset = false'));
          s.process.start();
        }
        const back = await Promise.all(restarting.map((s) => Promise.race([
          s.process.waitForLine(/^ready /, 60_000),
          s.process.waitForExit(60_000).then((e) => {
            throw new Error(`exited (code ${e.code}): ${e.tail.filter((l) => l.trim() !== '').slice(0, 2).join(' / ')}`);
          }),
        ]).then(() => true, (error: Error) => {
          violations.push(`restart: node ${s.nodeId} did not come back from its data directory: ${error.message}`);
          return false;
        })));
        if (back.every(Boolean)) {
          await settle(30_000);
          const after = (await Promise.all(live().map((s) => reportOf(s)))).filter((r) => r.digest !== undefined);
          const slot = live().find((s) => s.nodeId === after[0]?.id);
          const persistedPuts = [...completions.values()].filter((c) => invocations.get(c.o)!.op === 'put' && !c.o.startsWith('c.'));
          if (slot === undefined) violations.push('restart: no shard member after the restart');
          else {
            const found = JSON.parse(await ask(slot.process, `values ${JSON.stringify(persistedPuts.map((w) => [invocations.get(w.o)!.key, w.v]))}`, /^values (.*)$/, 60_000)) as (string | null)[];
            const missing = persistedPuts.filter((w, i) => { operations++; return found[i] !== invocations.get(w.o)!.value; });
            const where = missing.length === 0 ? [] : JSON.parse(await ask(slot.process, `where ${JSON.stringify(missing.slice(0, 5).map((w) => [invocations.get(w.o)!.key, invocations.get(w.o)!.value]))}`, /^where (.*)$/, 60_000)) as (string | null)[];
            missing.forEach((w, i) => {
              const inv = invocations.get(w.o)!;
              const at = where[i];
              violations.push(`restart-lost-write: put(${inv.key}, ${inv.value}) was acknowledged at version ${w.v}, but after a total restart node ${slot.nodeId} has ${JSON.stringify(found[persistedPuts.indexOf(w)])} there` +
                (at === undefined ? '' : at === null ? '; the value is nowhere in its history' : `; the value first appears at version ${at}`));
            });
            log(`after a total restart: ${persistedPuts.length} acknowledged puts checked on node ${slot.nodeId}`);
          }
        }
      }
      violations.push(...crashViolations(cluster.unexpectedExits()));
      if (completed === 0) violations.push('liveness: no operation completed in the whole run');
    } catch (error) {
      violations.push(`harness: ${(error as Error).message}`);
      for (const p of cluster.processes) if (p.running) log(`${p.spec.name} last lines:\n    ${p.tail(8).join('\n    ')}`);
    } finally {
      await client?.close().catch(() => undefined);
      await cluster.close();
      lab?.close();
      rmSync(runDir, { recursive: true, force: true });
    }
    for (const n of notes) log(n);
    return {
      scenario: 'kv',
      seed,
      network: useNetns ? 'netns' : 'loopback',
      encrypted,
      ...(persistence !== 'nosync' ? { persistence } : {}),
      passed: violations.length === 0,
      violations: firstOfEachKind(violations, 3),
      faults,
      operations,
      elapsedMs: Date.now() - started,
    };
  },
};

/** Where two version histories ([version, micros, logical]) differ, compared on their common range. */
function firstDifference(a: [string, number, number][], b: [string, number, number][]): string | undefined {
  const start = [a[0]?.[0], b[0]?.[0]].filter((v): v is string => v !== undefined).map(BigInt).reduce((x, y) => (x > y ? x : y), 0n);
  const ai = a.findIndex(([v]) => BigInt(v) >= start);
  const bi = b.findIndex(([v]) => BigInt(v) >= start);
  if (ai < 0 || bi < 0) return undefined;
  const x = a.slice(ai);
  const y = b.slice(bi);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i]!.join() !== y[i]!.join()) {
      return `at index ${i} from version ${start}: ${x[i]!.join('/')} against ${y[i]!.join('/')} (neighbours ${x.slice(Math.max(0, i - 2), i + 3).map((e) => e[0]).join(',')} against ${y.slice(Math.max(0, i - 2), i + 3).map((e) => e[0]).join(',')})`;
    }
  }
  if (x.length !== y.length) return `${x.length} versions from ${start} against ${y.length}; the longer one ends ${(x.length > y.length ? x : y).slice(-3).map((e) => e.join('/')).join(', ')}`;
  return undefined;
}
