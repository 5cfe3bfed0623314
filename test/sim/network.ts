/**
 * A simulated network between numbered nodes. Each message gets a delay drawn from the seeded
 * PRNG (so messages reorder freely), may be lost or duplicated, and is dropped at delivery time if
 * its link is cut then: by a partition (nodes in different groups cannot talk) or by a one-way
 * block (from → to cut while to → from still works). All decisions come from the Random the
 * Simulation hands in, so a seed fixes every one of them.
 */
import type { SeededRandom } from '../../src/core/random.js';

export interface NetworkOptions {
  /** One-way delay bounds in simulated milliseconds (uniform). */
  delayMsMin: number;
  delayMsMax: number;
  /** Probability that a message is dropped. */
  lossRate: number;
  /** Probability that a message is delivered twice (each copy with its own delay). */
  duplicateRate: number;
}

export const NETWORK_DEFAULTS: NetworkOptions = {
  delayMsMin: 1,
  delayMsMax: 10,
  lossRate: 0,
  duplicateRate: 0,
};

export class SimNetwork {
  options: NetworkOptions;
  /** partition group of each node; nodes with different groups cannot talk. Empty = no partition. */
  private group = new Map<number, number>();
  private blocked = new Set<string>();
  readonly stats = { sent: 0, lost: 0, duplicated: 0, cut: 0, delivered: 0 };

  constructor(
    private readonly random: SeededRandom,
    options: Partial<NetworkOptions> = {},
  ) {
    this.options = { ...NETWORK_DEFAULTS, ...options };
  }

  /** Delays (ms) at which copies of one message arrive: [] if lost, two if duplicated. */
  plan(): number[] {
    this.stats.sent++;
    const o = this.options;
    if (this.random.next() < o.lossRate) {
      this.stats.lost++;
      return [];
    }
    const delay = (): number => o.delayMsMin + this.random.int(o.delayMsMax - o.delayMsMin + 1);
    if (this.random.next() < o.duplicateRate) {
      this.stats.duplicated++;
      return [delay(), delay()];
    }
    return [delay()];
  }

  /** Whether a message from → to can be delivered now. */
  canDeliver(from: number, to: number): boolean {
    if (from === to) return true;
    if (this.blocked.has(`${from}>${to}`)) return false;
    const gf = this.group.get(from);
    const gt = this.group.get(to);
    if (gf !== undefined && gt !== undefined && gf !== gt) return false;
    if (this.group.size > 0 && (gf === undefined) !== (gt === undefined)) return false;
    return true;
  }

  /** Splits the nodes into groups that cannot talk to each other. Nodes not listed are isolated from listed ones. */
  partition(groups: readonly (readonly number[])[]): void {
    this.group.clear();
    groups.forEach((members, g) => {
      for (const node of members) this.group.set(node, g);
    });
  }

  /** Cuts node off from everyone. */
  isolate(node: number, all: readonly number[]): void {
    this.partition([[node], all.filter((n) => n !== node)]);
  }

  /** Cuts the link from → to only (to → from still works). */
  blockOneWay(from: number, to: number): void {
    this.blocked.add(`${from}>${to}`);
  }

  unblockOneWay(from: number, to: number): void {
    this.blocked.delete(`${from}>${to}`);
  }

  /** Removes every partition and one-way block. */
  heal(): void {
    this.group.clear();
    this.blocked.clear();
  }

  describe(): string {
    const parts: string[] = [];
    if (this.group.size > 0) {
      const byGroup = new Map<number, number[]>();
      for (const [n, g] of [...this.group].sort((a, b) => a[0] - b[0])) {
        const list = byGroup.get(g) ?? [];
        list.push(n);
        byGroup.set(g, list);
      }
      parts.push([...byGroup.values()].map((l) => l.join(',')).join(' | '));
    }
    if (this.blocked.size > 0) parts.push(`blocked ${[...this.blocked].sort().join(' ')}`);
    return parts.join('; ') || 'healthy';
  }
}
