/**
 * The contract between `run.ts` (the `npm run sim` command) and a protocol's simulation. A file
 * `test/sim/<name>-sim.ts` that exports `runSeed` makes `npm run sim -- <name>` work; nothing
 * else needs registering.
 */
export interface SeedOptions {
  /** Upper bound on simulated steps for the run (each delivered event is a step). */
  steps?: number;
  /** Protocol-specific switches (for example a test-only mutation), passed through as given. */
  flags?: Record<string, string | boolean>;
}

export interface SeedResult {
  seed: number;
  traceHash: string;
  steps: number;
  simulatedMs: number;
  /** A short human line: what happened in this run (leaders, commits, faults). */
  summary: string;
}

export interface SimProtocol {
  /** Runs one seed; throws SimFailure (with the seed) if an invariant breaks. */
  runSeed(seed: number, options?: SeedOptions): SeedResult;
}
