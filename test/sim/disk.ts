/**
 * A simulated disk: one per node, surviving the node's crashes. It models what LMDB gives a
 * process: writes are visible to the writer at once (the page cache), a `sync()` groups every
 * write since the previous one into a batch that becomes durable atomically when the simulator
 * reports it synced, and a crash keeps durable batches, may keep a prefix of batches that were
 * syncing (written but not yet reported), and loses everything else. Torn batches never happen,
 * as in LMDB; lost un-synced batches do.
 *
 * Values are stored by reference: a node must not mutate a value after it put it.
 */
export type DiskOp = { kind: 'put'; key: string; value: unknown } | { kind: 'del'; key: string };

interface Batch {
  readonly token: number;
  readonly ops: DiskOp[];
}

export class SimDisk {
  private durable = new Map<string, unknown>();
  private view = new Map<string, unknown>();
  private unsynced: DiskOp[] = [];
  private syncing: Batch[] = [];
  private tokenNext = 1;
  /** Counters for tests and reports. */
  readonly stats = { puts: 0, dels: 0, syncs: 0, batchesLost: 0, batchesKeptUnreported: 0 };

  get<T>(key: string): T | undefined {
    return this.view.get(key) as T | undefined;
  }

  has(key: string): boolean {
    return this.view.has(key);
  }

  put(key: string, value: unknown): void {
    this.stats.puts++;
    this.view.set(key, value);
    this.unsynced.push({ kind: 'put', key, value });
  }

  del(key: string): void {
    this.stats.dels++;
    this.view.delete(key);
    this.unsynced.push({ kind: 'del', key });
  }

  /** Keys (with the given prefix) in sorted order: the order a B+tree cursor would give. */
  keys(prefix = ''): string[] {
    const out: string[] = [];
    for (const key of this.view.keys()) if (key.startsWith(prefix)) out.push(key);
    return out.sort();
  }

  /**
   * Closes the current batch and returns its token. The Simulation schedules its completion and
   * calls the node's `diskSynced(token)` when it is durable; completions arrive in token order.
   */
  sync(): number {
    const token = this.tokenNext++;
    this.stats.syncs++;
    this.syncing.push({ token, ops: this.unsynced });
    this.unsynced = [];
    return token;
  }

  /** Called by the Simulation: the batch with this token (and every earlier one) is durable. */
  completeSync(token: number): boolean {
    let done = false;
    while (this.syncing.length > 0 && this.syncing[0]!.token <= token) {
      const batch = this.syncing.shift()!;
      applyOps(this.durable, batch.ops);
      done = true;
    }
    return done;
  }

  /**
   * Called by the Simulation when the node crashes. `keepUnreported` decides, batch by batch in
   * order, whether a batch that was written but not yet reported durable survives; the first
   * batch that does not survive ends the prefix (a later one cannot land before an earlier one).
   */
  crash(keepUnreported: () => boolean): void {
    let keeping = true;
    for (const batch of this.syncing) {
      keeping = keeping && keepUnreported();
      if (keeping) {
        applyOps(this.durable, batch.ops);
        this.stats.batchesKeptUnreported++;
      } else {
        this.stats.batchesLost++;
      }
    }
    if (this.unsynced.length > 0) this.stats.batchesLost++;
    this.syncing = [];
    this.unsynced = [];
    this.view = new Map(this.durable);
  }

  /** Number of keys on durable storage (what a restart would see now). */
  durableSize(): number {
    return this.durable.size;
  }
}

function applyOps(map: Map<string, unknown>, ops: readonly DiskOp[]): void {
  for (const op of ops) {
    if (op.kind === 'put') map.set(op.key, op.value);
    else map.delete(op.key);
  }
}
