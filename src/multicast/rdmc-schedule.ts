/**
 * RDMC relay schedules (Behrens et al., "RDMC"; Derecho §1.3 of research/derecho.md), as pure
 * data. A schedule says, step by step, which member sends which block to whom. Ranks here are
 * *relative*: rank 0 is the message's origin (its sender), ranks 1..n-1 are the other members in
 * rank order starting after the origin (the caller rotates the member list).
 *
 * Contract every generator keeps (checked by `checkSchedule` and the tests):
 *  - a transfer's `from` holds the block before the step it is in (it is the origin, or it
 *    received the block in a strictly earlier step);
 *  - within one step a member sends at most one block per destination and receives each block
 *    at most once over the whole schedule;
 *  - after the last step every member holds every block.
 * Executing transfers as soon as their block is present (not in lock-step) is therefore
 * deadlock-free: by induction on the step number every transfer eventually fires.
 */
import { assert, unreachable } from '../core/assert.js';

export type RdmcAlgorithm = 'binomial' | 'chain' | 'sequential' | 'tree';
export const RDMC_ALGORITHMS: readonly RdmcAlgorithm[] = [
  'binomial',
  'chain',
  'sequential',
  'tree',
];

export interface RdmcTransfer {
  readonly from: number;
  readonly to: number;
  readonly block: number;
}

export interface RdmcSchedule {
  readonly algorithm: RdmcAlgorithm;
  readonly memberCount: number;
  readonly blockCount: number;
  /** steps[t] = the transfers of step t. */
  readonly steps: readonly (readonly RdmcTransfer[])[];
}

/** Limits the work of a schedule so a bad config cannot make a core allocate without bound. */
export const RDMC_SCHEDULE_TRANSFERS_MAX = 4_000_000;

export function rdmcSchedule(
  algorithm: RdmcAlgorithm,
  memberCount: number,
  blockCount: number,
): RdmcSchedule {
  assert(Number.isInteger(memberCount) && memberCount >= 1, `memberCount ${memberCount} < 1`);
  assert(Number.isInteger(blockCount) && blockCount >= 1, `blockCount ${blockCount} < 1`);
  assert(
    memberCount * blockCount <= RDMC_SCHEDULE_TRANSFERS_MAX,
    `RDMC schedule of ${memberCount} members x ${blockCount} blocks is too large`,
  );
  let steps: RdmcTransfer[][];
  if (memberCount === 1) steps = [];
  else if (algorithm === 'sequential') steps = sequential(memberCount, blockCount);
  else if (algorithm === 'chain') steps = chain(memberCount, blockCount);
  else if (algorithm === 'tree') steps = tree(memberCount, blockCount);
  else if (algorithm === 'binomial') steps = binomialPipeline(memberCount, blockCount);
  else return unreachable(algorithm, 'unknown RDMC algorithm');
  return { algorithm, memberCount, blockCount, steps };
}

/** The origin sends every block to each receiver in turn; no relaying: blocks·(n−1) steps. */
function sequential(n: number, blocks: number): RdmcTransfer[][] {
  const steps: RdmcTransfer[][] = [];
  for (let to = 1; to < n; to++) {
    for (let block = 0; block < blocks; block++) steps.push([{ from: 0, to, block }]);
  }
  return steps;
}

/** Pipeline along the ranks: rank i forwards block b to rank i+1 at step b+i; b+n−2 steps. */
function chain(n: number, blocks: number): RdmcTransfer[][] {
  const steps: RdmcTransfer[][] = [];
  for (let t = 0; t < blocks + n - 2; t++) {
    const step: RdmcTransfer[] = [];
    for (let from = 0; from < n - 1; from++) {
      const block = t - from;
      if (block >= 0 && block < blocks) step.push({ from, to: from + 1, block });
    }
    steps.push(step);
  }
  return steps;
}

/**
 * Binomial tree over whole messages: in stage s every rank below 2^s that already holds the
 * message sends all blocks to rank + 2^s. blocks·⌈log2 n⌉ steps; the origin sends each block
 * ⌈log2 n⌉ times.
 */
function tree(n: number, blocks: number): RdmcTransfer[][] {
  const steps: RdmcTransfer[][] = [];
  for (let span = 1; span < n; span *= 2) {
    for (let block = 0; block < blocks; block++) {
      const step: RdmcTransfer[] = [];
      for (let from = 0; from < span && from + span < n; from++) {
        step.push({ from, to: from + span, block });
      }
      steps.push(step);
    }
  }
  return steps;
}

/**
 * Binomial pipeline: the 2^l lowest ranks form a hypercube; at step t every vertex exchanges one
 * block with its neighbour across dimension t mod l. The origin (vertex 0) injects block t at step
 * t and never sends a block twice; other vertices send the partner the lowest-numbered block the
 * partner lacks. Ranks at or above 2^l are "twins": twin k hangs off vertex k+1 (never the origin,
 * so the origin's upload stays one copy per block) and gets, each step, the lowest block its
 * vertex held before the step and it lacks. The generator simulates the exchange to build the
 * schedule, so correctness does not rest on a closed form.
 */
function binomialPipeline(n: number, blocks: number): RdmcTransfer[][] {
  let dimensions = 0;
  while (2 ** (dimensions + 1) <= n) dimensions++;
  const vertices = 2 ** dimensions;
  const has: Uint8Array[] = Array.from({ length: n }, () => new Uint8Array(blocks));
  has[0]!.fill(1);
  // lowestMissing[r]: every block below it is held by r (speeds up "lowest block r lacks").
  const lowestMissing = new Array<number>(n).fill(0);
  lowestMissing[0] = blocks;
  let missingTotal = (n - 1) * blocks;
  const steps: RdmcTransfer[][] = [];
  const lowestLacking = (from: number, to: number): number => {
    for (let b = lowestMissing[to]!; b < blocks; b++) {
      if (!has[to]![b] && has[from]![b]) return b;
    }
    return -1;
  };
  for (let t = 0; missingTotal > 0; t++) {
    assert(t <= blocks * n + n, 'binomial pipeline simulation did not converge');
    const step: RdmcTransfer[] = [];
    if (dimensions > 0) {
      const bit = 1 << t % dimensions;
      for (let v = 0; v < vertices; v++) {
        const partner = v ^ bit;
        let block: number;
        if (v === 0) block = t < blocks ? t : lowestLacking(0, partner);
        else if (partner === 0) block = -1;
        else block = lowestLacking(v, partner);
        if (block >= 0) step.push({ from: v, to: partner, block });
      }
    }
    for (let twin = vertices; twin < n; twin++) {
      const block = lowestLacking(twin - vertices + 1, twin);
      if (block >= 0) step.push({ from: twin - vertices + 1, to: twin, block });
    }
    for (const transfer of step) {
      assert(!has[transfer.to]![transfer.block], 'a block is received at most once');
      has[transfer.to]![transfer.block] = 1;
      missingTotal--;
      const to = transfer.to;
      while (lowestMissing[to]! < blocks && has[to]![lowestMissing[to]!]) lowestMissing[to]!++;
    }
    steps.push(step);
  }
  return steps;
}

/**
 * Checks the schedule contract (see the top of this file); returns the problems found, empty if
 * none. Used by tests and, cheaply, by nothing on the hot path.
 */
export function checkSchedule(schedule: RdmcSchedule): string[] {
  const { memberCount: n, blockCount: blocks } = schedule;
  const problems: string[] = [];
  const has: Uint8Array[] = Array.from({ length: n }, () => new Uint8Array(blocks));
  has[0]!.fill(1);
  schedule.steps.forEach((step, t) => {
    const arriving: RdmcTransfer[] = [];
    for (const transfer of step) {
      const { from, to, block } = transfer;
      const rankOk = from >= 0 && from < n && to >= 0 && to < n && from !== to;
      if (!rankOk || block < 0 || block >= blocks) {
        problems.push(`step ${t}: malformed transfer ${JSON.stringify(transfer)}`);
        continue;
      }
      if (!has[from]![block]) problems.push(`step ${t}: ${from} sends block ${block} it lacks`);
      if (has[to]![block]) problems.push(`step ${t}: ${to} receives block ${block} again`);
      arriving.push(transfer);
    }
    for (const { to, block } of arriving) has[to]![block] = 1;
  });
  for (let r = 0; r < n; r++) {
    const missing = has[r]!.indexOf(0);
    if (missing >= 0) problems.push(`rank ${r} never receives block ${missing}`);
  }
  return problems;
}

/** The transfers each relative rank sends, in step order (what its transfer machine runs). */
export function outgoingByRank(schedule: RdmcSchedule): RdmcTransfer[][] {
  const out: RdmcTransfer[][] = Array.from({ length: schedule.memberCount }, () => []);
  for (const step of schedule.steps) {
    for (const transfer of step) out[transfer.from]!.push(transfer);
  }
  return out;
}
