import type { ExitRecord } from './process-cluster.js';

/**
 * What a chaos scenario is: given a seed and a time budget, start real node processes, run a
 * workload while injecting faults, heal, and check. A run is reproducible in its fault schedule
 * (drawn from the seed), not in timing: real processes race, which is the point.
 */
export interface RunReport {
  scenario: string;
  seed: number;
  /** "netns" when nodes ran in network namespaces, "loopback" otherwise. */
  network: 'netns' | 'loopback';
  /** Whether the nodes sealed every packet. */
  encrypted?: boolean;
  /** kv: the nodes' persistence when not the default nosync (`--persistence`). */
  persistence?: string;
  passed: boolean;
  /** Each broken guarantee, in words, with enough detail to start debugging. */
  violations: string[];
  /** Faults injected, by kind. */
  faults: Record<string, number>;
  /** Operations the checks covered. */
  operations: number;
  elapsedMs: number;
}

export interface ScenarioOptions {
  /** How long the fault phase lasts; healing and checks come after. */
  faultMs: number;
  log: (line: string) => void;
  /** Where nodes run: 'auto' (namespaces when available), or forced. Default 'auto'. */
  network?: 'auto' | 'netns' | 'loopback';
  /** 'auto' (half the seeds), or forced on/off. Default 'auto'. */
  encryption?: 'auto' | 'on' | 'off';
  /** Extra environment for every node process (used by the harness's own mutation tests). */
  nodeEnv?: Record<string, string>;
}

export interface Scenario {
  name: string;
  /** One run; resolves with its report (violations, not exceptions, for broken guarantees). */
  run(seed: number, options: ScenarioOptions): Promise<RunReport>;
}

/** Keeps the first `n` violations of each kind (the text before the first colon). */
export function firstOfEachKind(violations: string[], n: number): string[] {
  const seen = new Map<string, number>();
  const kept: string[] = [];
  for (const v of violations) {
    const kind = v.slice(0, v.indexOf(':'));
    const k = (seen.get(kind) ?? 0) + 1;
    seen.set(kind, k);
    if (k <= n) kept.push(v);
  }
  for (const [kind, k] of seen) if (k > n) kept.push(`${kind}: … and ${k - n} more`);
  return kept;
}

/** "No process crashed except those killed": one violation per exit the harness did not cause. */
export function crashViolations(exits: readonly ExitRecord[]): string[] {
  return exits.map((e) => `crash: ${e.name} exited by itself (code ${e.code}, signal ${e.signal}); last lines:\n    ${e.tail.slice(-8).join('\n    ')}`);
}
