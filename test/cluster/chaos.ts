/**
 * `npm run chaos -- --minutes N [--seed S] [--runs K] [--scenario kv|rpc|all] [--fault-seconds F]
 *                  [--network auto|netns|loopback] [--encryption auto|on|off] [--restart-check]
 *                  [--faults kill,kill-leader,pause,loss,quiet,leave,partition]
 *                  [--persistence nosync|durable|wal]
 *                  [--verbose]`
 *
 * Runs the fault scenarios back to back for N minutes (fractions allowed), alternating between
 * them with `all` (the default), one JSON line per run, and ends with `chaos: N runs passed,
 * N failed` naming the seeds that failed. A failed seed reruns the same fault schedule with
 * `--scenario NAME --seed S --runs 1`. Exit status 1 if any run failed. `--restart-check` turns
 * on the kv scenario's "every acknowledged write survives a total restart" check.
 * `--persistence` sets the kv nodes' persistence: `nosync` (the default; the OS flushes, which a
 * SIGKILL does not undo), `durable` (LMDB's synced commits) or `wal` (durable through the
 * write-ahead log, replayed at each restart after a kill -9).
 */
import { KV_FAULT_KINDS, KV_PERSISTENCE, kvChaos, type KvFaultKind, type KvPersistence } from './scenarios/kv.js';
import { transportRpc } from './scenarios/transport-rpc.js';
import type { RunReport, Scenario, ScenarioOptions } from './scenario.js';

export const scenarios: Scenario[] = [kvChaos, transportRpc];
/** Short names for --scenario. */
const aliases: Record<string, string> = { rpc: 'transport-rpc' };

export interface ChaosOptions {
  minutes: number;
  seed: number;
  runs: number;
  scenario?: string;
  faultMs: number;
  network: 'auto' | 'netns' | 'loopback';
  encryption: 'auto' | 'on' | 'off';
  verbose: boolean;
  restartCheck?: boolean;
  /** kv only: draw faults from these kinds (`--faults kill,leave,partition`). */
  faultKinds?: KvFaultKind[];
  /** kv only: the nodes' persistence (`--persistence`; default nosync). */
  persistence?: KvPersistence;
}

export async function runChaos(options: ChaosOptions, print: (line: string) => void): Promise<RunReport[]> {
  const wanted = options.scenario === undefined || options.scenario === 'all' ? undefined : (aliases[options.scenario] ?? options.scenario);
  const chosen = wanted === undefined ? scenarios : scenarios.filter((s) => s.name === wanted);
  if (chosen.length === 0) {
    throw new Error(`--scenario must be all, ${scenarios.map((s) => s.name).join(', ')} or rpc, got ${options.scenario}`);
  }
  if (options.faultKinds && chosen.some((s) => s !== kvChaos)) {
    throw new Error('--faults chooses the kv scenario\'s faults: add --scenario kv');
  }
  if (options.persistence && chosen.some((s) => s !== kvChaos)) {
    throw new Error('--persistence sets the kv scenario\'s nodes: add --scenario kv');
  }
  const deadline = Date.now() + options.minutes * 60_000;
  const reports: RunReport[] = [];
  for (let i = 0; i < options.runs && (i === 0 || Date.now() < deadline); i++) {
    const scenario = chosen[i % chosen.length]!;
    const log = options.verbose ? (line: string) => print(`  [${scenario.name} ${options.seed + i}] ${line}`) : () => undefined;
    const runOptions: ScenarioOptions & { restartCheck?: boolean; faultKinds?: KvFaultKind[]; persistence?: KvPersistence } = {
      faultMs: options.faultMs, log, network: options.network, encryption: options.encryption, restartCheck: options.restartCheck === true,
      ...(options.faultKinds ? { faultKinds: options.faultKinds } : {}),
      ...(options.persistence ? { persistence: options.persistence } : {}),
    };
    const report = await scenario.run(options.seed + i, runOptions);
    reports.push(report);
    print(JSON.stringify(report));
  }
  const failed = reports.filter((r) => !r.passed);
  print(
    `chaos: ${reports.length - failed.length} runs passed, ${failed.length} failed` +
      (failed.length ? ` (seeds: ${failed.map((r) => `${r.scenario}:${r.seed}`).join(', ')})` : ''),
  );
  return reports;
}

/** `text` if it is one of `values` (the option `--name`'s), else an error naming them. */
function choice<T extends string>(name: string, values: readonly T[], text: string): T {
  if ((values as readonly string[]).includes(text)) return text as T;
  throw new Error(`--${name} must be one of ${values.join(', ')}, got ${text}`);
}

function faultKinds(text: string): KvFaultKind[] {
  const kinds = text.split(',').map((k) => k.trim()).filter((k) => k !== '');
  const unknown = kinds.filter((k) => !(KV_FAULT_KINDS as readonly string[]).includes(k));
  if (kinds.length === 0 || unknown.length > 0) {
    throw new Error(`--faults must be a comma-separated list of ${KV_FAULT_KINDS.join(', ')}, got ${text}`);
  }
  return kinds as KvFaultKind[];
}

function parse(argv: string[]): ChaosOptions {
  const value = (name: string): string | undefined => {
    const at = argv.indexOf(`--${name}`);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  const number = (name: string, fallback: number): number => {
    const text = value(name);
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number, got ${text}`);
    return n;
  };
  const runs = value('runs');
  return {
    minutes: number('minutes', 1),
    seed: number('seed', Date.now() % 1_000_000),
    runs: runs === undefined ? Number.MAX_SAFE_INTEGER : number('runs', 1),
    scenario: value('scenario'),
    faultMs: number('fault-seconds', 6) * 1000,
    network: choice('network', ['auto', 'netns', 'loopback'] as const, value('network') ?? 'auto'),
    encryption: choice('encryption', ['auto', 'on', 'off'] as const, value('encryption') ?? 'auto'),
    verbose: argv.includes('--verbose'),
    restartCheck: argv.includes('--restart-check'),
    ...(value('faults') !== undefined ? { faultKinds: faultKinds(value('faults')!) } : {}),
    ...(value('persistence') !== undefined ? { persistence: choice('persistence', KV_PERSISTENCE, value('persistence')!) } : {}),
  };
}

if (process.argv[1]?.endsWith('/chaos.js')) {
  try {
    const reports = await runChaos(parse(process.argv.slice(2)), (line) => console.log(line));
    process.exitCode = reports.every((r) => r.passed) ? 0 : 1;
  } catch (error) {
    console.error((error as Error).message);
    process.exitCode = 2;
  }
}
