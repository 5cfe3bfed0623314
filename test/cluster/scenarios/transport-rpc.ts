/**
 * Transport chaos: three rpc-node processes call each other continuously while the harness kills
 * and restarts them, pauses them past the failure timeout, injects packet loss and (in network
 * namespaces) partitions them. Then everything heals and the checks run:
 *   - no process died except those the harness killed;
 *   - at most once: no server handled any request twice;
 *   - exactly once if acknowledged: every call a client saw succeed was handled exactly once by
 *     the server incarnation that answered (checkable for incarnations alive at the end);
 *   - liveness: after healing, every node completes calls to every other node.
 * A restarted node reuses its address, so a stale session or retransmission reaching the new
 * incarnation would show up as a double handling or an acknowledgement nobody handled.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { keyFileLine } from '../../../src/transport/native-transport.js';
import { fileURLToPath } from 'node:url';
import { SeededRandom } from '../../../src/core/random.js';
import { NetLab } from '../netns.js';
import { ProcessCluster, type ManagedProcess } from '../process-cluster.js';
import { crashViolations, firstOfEachKind, type RunReport, type Scenario } from '../scenario.js';

const rpcNode = join(dirname(fileURLToPath(import.meta.url)), '../nodes/rpc-node.js');
const nodeCount = 3;
const calmMs = 2500;

interface NodeReport {
  id: number;
  incarnation: string;
  handled: [string, number][];
  acked: [string, number, string][];
  failures: Record<string, number>;
  okSinceCalm: Record<string, number>;
  lanes: { phase: string; forMs: number }[];
  lanesSettled?: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function ask(p: ManagedProcess, command: 'report' | 'stop', timeoutMs = 10_000): Promise<NodeReport> {
  const answer = p.waitForNextLine(/^report (.*)$/, timeoutMs);
  if (command === 'stop') p.expectExit();
  p.send(command);
  return JSON.parse((await answer)[1]!) as NodeReport;
}

export const transportRpc: Scenario = {
  name: 'transport-rpc',
  async run(seed, { faultMs, log, nodeEnv, network = 'auto', encryption = 'auto' }) {
    const started = Date.now();
    const random = new SeededRandom(seed);
    const useNetns = network === 'netns' || (network === 'auto' && NetLab.available().ok);
    const lab = useNetns ? NetLab.create({ count: nodeCount }) : null;
    const basePort = 20_000 + random.int(40_000);
    const address = (i: number): { host: string; port: number } =>
      lab ? { host: lab.address(i), port: 7100 } : { host: '127.0.0.1', port: basePort + i };
    const cluster = new ProcessCluster();
    const faults: Record<string, number> = {};
    const violations: string[] = [];
    const count = (kind: string): void => void (faults[kind] = (faults[kind] ?? 0) + 1);
    let operations = 0;
    // Half of the runs seal every packet (a fresh group key per run), half run in plaintext.
    const encrypted = encryption === 'on' || (encryption === 'auto' && random.int(2) === 0);
    const keyDir = mkdtempSync(join(tmpdir(), 'squall-chaos-key-'));
    const keyFile = join(keyDir, 'group.key');
    writeFileSync(keyFile, keyFileLine(1, randomBytes(32)), { mode: 0o600 });
    try {
      for (let i = 1; i <= nodeCount; i++) {
        const peers = [];
        for (let j = 1; j <= nodeCount; j++) if (j !== i) peers.push(`${j}@${address(j).host}:${address(j).port}`);
        const { host, port } = address(i);
        const args = [rpcNode, '--id', String(i), '--host', host, '--port', String(port)];
        args.push('--peers', peers.join(','), '--seed', String(seed * 31 + i));
        if (encrypted) args.push('--key-file', keyFile);
        cluster.add({ name: `node-${i}`, command: process.execPath, args, netns: lab?.netns(i), env: nodeEnv });
      }
      const nodes = cluster.processes;
      const ready = (p: ManagedProcess): Promise<unknown> => p.waitForLine(/^ready /, 15_000);
      for (const p of nodes) p.start();
      await Promise.all(nodes.map(ready));

      // Faults, one at a time, each undone before the next.
      const faultEnd = Date.now() + faultMs;
      while (Date.now() < faultEnd) {
        const p = nodes[random.int(nodeCount)]!;
        const kinds = lab ? 5 : 4;
        const kind = random.int(kinds);
        const holdMs = 300 + random.int(900);
        if (kind === 0) {
          count('kill-restart');
          log(`kill -9 ${p.spec.name}, restart after ${holdMs} ms`);
          await p.kill('SIGKILL');
          await sleep(holdMs);
          p.start();
          await ready(p);
        } else if (kind === 1) {
          count('pause');
          const pauseMs = 1000 + random.int(800); // beyond the 800 ms peer-failure timeout
          log(`SIGSTOP ${p.spec.name} for ${pauseMs} ms`);
          p.pause();
          await sleep(pauseMs);
          p.resume();
        } else if (kind === 2) {
          count('loss');
          const loss = 0.05 + random.int(20) / 100;
          log(`loss ${loss.toFixed(2)} at ${p.spec.name} for ${holdMs} ms`);
          p.send(`loss ${loss}`);
          await sleep(holdMs);
          p.send('loss 0');
        } else if (kind === 3) {
          count('quiet');
          await sleep(holdMs);
        } else {
          const alone = 1 + random.int(nodeCount);
          const oneWay = random.int(2) === 1;
          count(oneWay ? 'partition-one-way' : 'partition');
          log(`partition node ${alone} from the rest${oneWay ? ' (outgoing only)' : ''} for ${holdMs + 600} ms`);
          lab!.partition([[alone]], { oneWay });
          await sleep(holdMs + 600);
          lab!.heal();
        }
      }

      // Heal and check liveness.
      for (const p of nodes) p.send('calm');
      await sleep(calmMs);
      const live = await Promise.all(nodes.map((p) => ask(p, 'report')));
      for (const r of live) {
        for (let j = 1; j <= nodeCount; j++) {
          if (j !== r.id && !(r.okSinceCalm[j]! > 0)) {
            violations.push(`liveness: node ${r.id} completed no call to node ${j} in ${calmMs} ms after healing (failures: ${JSON.stringify(r.failures)})`);
          }
        }
      }

      // Stop and check the records.
      const finals = await Promise.all(nodes.map((p) => ask(p, 'stop')));
      const handledBy = new Map<string, Map<string, number>>();
      for (const r of finals) {
        if (r.lanesSettled === false) {
          violations.push(`hang: node ${r.id} had calls that never settled: ${JSON.stringify(r.lanes.filter((l) => l.forMs > 2000))}`);
        }
        handledBy.set(r.incarnation, new Map(r.handled));
        for (const [key, times] of r.handled) {
          if (times !== 1) violations.push(`at-most-once: node ${r.id} handled ${key} ${times} times`);
        }
      }
      for (const r of finals) {
        for (const [key, peer, serverIncarnation] of r.acked) {
          const server = handledBy.get(serverIncarnation);
          if (!server) continue; // answered by an incarnation that was later killed: records lost
          operations++;
          const times = server.get(key) ?? 0;
          if (times !== 1) {
            violations.push(`exactly-once-if-acked: node ${r.id}'s call ${key} to node ${peer} was acknowledged but handled ${times} times there`);
          }
        }
      }
      violations.push(...crashViolations(cluster.unexpectedExits()));
    } catch (error) {
      violations.push(`harness: ${(error as Error).message}`);
    } finally {
      await cluster.close();
      lab?.close();
      rmSync(keyDir, { recursive: true, force: true });
    }
    const report: RunReport = {
      scenario: 'transport-rpc',
      seed,
      network: useNetns ? 'netns' : 'loopback',
      encrypted,
      passed: violations.length === 0,
      violations: firstOfEachKind(violations, 5),
      faults,
      operations,
      elapsedMs: Date.now() - started,
    };
    return report;
  },
};
