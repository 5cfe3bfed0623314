/**
 * A linearizability checker for recorded histories, written for Squall (no maintained one exists
 * for Node).
 *
 * Algorithm: Wing & Gong's search (1993) with Lowe's memoization (2017), as in porcupine: walk
 * the history's call/return events in time order; try to linearize each pending call against the
 * model; on reaching a return whose call is not yet linearized, backtrack. A cache of
 * (set of linearized operations, model state) pairs prunes repeated work. Histories are first
 * split by the model's partition function (Horn & Kroening's P-compositionality: a key-value
 * history is linearizable iff each key's sub-history is), which keeps each search small.
 *
 * Operations whose outcome is unknown (the client crashed or timed out) have no return: they may
 * take effect at any point after their call, or never. The checker gives them a return at
 * +infinity and accepts any output from them.
 *
 * The search is exponential in the worst case, so it has a budget of steps; past it the verdict
 * is 'unknown', never a guess.
 */

export interface Operation<I, O> {
  /** Who issued it (for messages only). */
  client: number;
  input: I;
  /** The output observed, or undefined when the outcome is unknown. */
  output: O | undefined;
  /** When the call was issued and when it returned (any monotonic unit); return undefined = unknown. */
  callTime: number;
  returnTime: number | undefined;
}

export interface Model<S, I, O> {
  init(): S;
  /** Applies input to state; returns whether `output` is what the model would answer, and the next state. */
  step(state: S, input: I, output: O | undefined): { ok: boolean; next: S };
  /** A string that is equal for equal states (the memoization key). */
  hash(state: S): string;
  /** Splits a history into independent parts (e.g. by key). Default: one part. */
  partition?(history: readonly Operation<I, O>[]): Operation<I, O>[][];
  describe?(operation: Operation<I, O>): string;
}

export type Verdict = 'linearizable' | 'not-linearizable' | 'unknown';

export interface CheckResult {
  verdict: Verdict;
  partitions: number;
  steps: number;
  /** For 'not-linearizable': the operations of the first failing partition, described. */
  failingPartition?: string[];
}

interface Entry {
  kind: 'call' | 'return';
  id: number;
  time: number;
  match: Entry | undefined; // call → its return
  prev: Entry | undefined;
  next: Entry | undefined;
}

class BitSet {
  readonly words: Uint32Array;
  constructor(size: number) {
    this.words = new Uint32Array(Math.ceil(size / 32) + 1);
  }
  set(i: number): void {
    this.words[i >>> 5]! |= 1 << (i & 31);
  }
  clear(i: number): void {
    this.words[i >>> 5]! &= ~(1 << (i & 31));
  }
  key(): string {
    return this.words.join(',');
  }
}

function buildEntries<I, O>(history: readonly Operation<I, O>[]): Entry {
  const events: Entry[] = [];
  history.forEach((op, id) => {
    const ret: Entry = { kind: 'return', id, time: op.returnTime ?? Number.POSITIVE_INFINITY, match: undefined, prev: undefined, next: undefined };
    const call: Entry = { kind: 'call', id, time: op.callTime, match: ret, prev: undefined, next: undefined };
    events.push(call, ret);
  });
  // Calls before returns at equal times: operations that touch are treated as concurrent, which
  // can only make the checker more permissive, never report a false violation.
  events.sort((a, b) => a.time - b.time || (a.kind === b.kind ? a.id - b.id : a.kind === 'call' ? -1 : 1));
  const head: Entry = { kind: 'call', id: -1, time: -Infinity, match: undefined, prev: undefined, next: undefined };
  let last = head;
  for (const e of events) {
    last.next = e;
    e.prev = last;
    last = e;
  }
  return head;
}

function lift(call: Entry): void {
  call.prev!.next = call.next;
  call.next!.prev = call.prev;
  const ret = call.match!;
  ret.prev!.next = ret.next;
  if (ret.next) ret.next.prev = ret.prev;
}

function unlift(call: Entry): void {
  const ret = call.match!;
  ret.prev!.next = ret;
  if (ret.next) ret.next.prev = ret;
  call.prev!.next = call;
  call.next!.prev = call;
}

function checkPartition<S, I, O>(model: Model<S, I, O>, history: readonly Operation<I, O>[], budget: { steps: number; max: number }): Verdict {
  const head = buildEntries(history);
  const linearized = new BitSet(history.length);
  const cache = new Set<string>();
  const stack: { call: Entry; state: S }[] = [];
  let state = model.init();
  let entry = head.next;
  while (head.next !== undefined) {
    if (++budget.steps > budget.max) return 'unknown';
    if (entry === undefined) return 'unknown'; // cannot happen: a return always ends the list
    if (entry.kind === 'call') {
      const op = history[entry.id]!;
      const { ok, next } = model.step(state, op.input, op.output);
      if (ok) {
        linearized.set(entry.id);
        const key = `${linearized.key()}|${model.hash(next)}`;
        if (!cache.has(key)) {
          cache.add(key);
          stack.push({ call: entry, state });
          state = next;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized.clear(entry.id);
      }
      entry = entry.next;
    } else {
      // A return whose call is not linearized yet: everything before it has been tried.
      const top = stack.pop();
      if (!top) return 'not-linearizable';
      state = top.state;
      linearized.clear(top.call.id);
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return 'linearizable';
}

/** Checks a history against a model, partition by partition, within `stepsMax` search steps. */
export function checkLinearizable<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  stepsMax = 5_000_000,
): CheckResult {
  const parts = model.partition ? model.partition(history) : [history.slice()];
  const budget = { steps: 0, max: stepsMax };
  let unknown = false;
  for (const part of parts) {
    const verdict = checkPartition(model, part, budget);
    if (verdict === 'not-linearizable') {
      const describe = model.describe ?? ((op: Operation<I, O>) => JSON.stringify(op));
      return { verdict, partitions: parts.length, steps: budget.steps, failingPartition: part.map(describe) };
    }
    if (verdict === 'unknown') unknown = true;
  }
  return { verdict: unknown ? 'unknown' : 'linearizable', partitions: parts.length, steps: budget.steps };
}

// ---------------------------------------------------------------------------------------------
// The key-value model used by the KV example's fault tests.

export type KvInput =
  | { op: 'put'; key: string; value: string }
  | { op: 'get'; key: string }
  | { op: 'cas'; key: string; expected: string | undefined; value: string };
/** put → undefined; get → the value or null for absent; cas → whether it swapped. */
export type KvOutput = string | null | boolean | undefined;

/** One key's register; partitioned by key. */
export const kvModel: Model<string | null, KvInput, KvOutput> = {
  init: () => null,
  step(state, input, output) {
    switch (input.op) {
      case 'put':
        return { ok: true, next: input.value };
      case 'get':
        return { ok: output === undefined || output === state, next: state };
      case 'cas': {
        const swapped = state === (input.expected ?? null);
        return { ok: output === undefined || output === swapped, next: swapped ? input.value : state };
      }
    }
  },
  hash: (state) => (state === null ? '\u0000' : `=${state}`),
  partition(history) {
    const byKey = new Map<string, Operation<KvInput, KvOutput>[]>();
    for (const op of history) {
      const list = byKey.get(op.input.key) ?? [];
      list.push(op);
      byKey.set(op.input.key, list);
    }
    return [...byKey.keys()].sort().map((k) => byKey.get(k)!);
  },
  describe(op) {
    const i = op.input;
    const what = i.op === 'put' ? `put(${i.key}, ${i.value})` : i.op === 'get' ? `get(${i.key})` : `cas(${i.key}, ${i.expected ?? 'null'} → ${i.value})`;
    const end = op.returnTime === undefined ? '?' : String(op.returnTime);
    return `client ${op.client} [${op.callTime}, ${end}] ${what} → ${op.output === undefined ? '?' : JSON.stringify(op.output)}`;
  },
};

/**
 * Records a history as clients run: invoke() when a call is issued, then exactly one of ok()
 * (it returned), fail() (it definitely did not take effect: dropped from the history), or
 * unknown() (outcome unknown: kept with no return).
 */
export class HistoryRecorder<I, O> {
  private readonly operations: (Operation<I, O> | undefined)[] = [];
  constructor(private readonly now: () => number) {}

  invoke(client: number, input: I): number {
    this.operations.push({ client, input, output: undefined, callTime: this.now(), returnTime: undefined });
    return this.operations.length - 1;
  }
  ok(id: number, output: O): void {
    const op = this.operations[id]!;
    op.output = output;
    op.returnTime = this.now();
  }
  fail(id: number): void {
    this.operations[id] = undefined;
  }
  unknown(id: number): void {
    void id; // stays without a return: it may or may not have taken effect
  }
  history(): Operation<I, O>[] {
    return this.operations.filter((op): op is Operation<I, O> => op !== undefined);
  }
}
