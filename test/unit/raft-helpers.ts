// A one-line network for RaftCore unit tests, in the spirit of etcd's raft_test.go network:
// every core persists instantly (ready → advance), messages are delivered in FIFO order, and a
// filter can drop any message (cut links, isolate nodes, drop types).
import { SeededRandom } from '../../src/core/random.js';
import { EMPTY_STATE, RaftCore, type RaftConfig, type RaftInitialState } from '../../src/raft/raft-core.js';
import { EntryType, type Entry, type Message, type ReadState } from '../../src/raft/types.js';

export type Filter = (m: Message) => boolean; // true = drop

export class Net {
  readonly cores = new Map<number, RaftCore>();
  readonly applied = new Map<number, Entry[]>();
  readonly reads = new Map<number, ReadState[]>();
  queue: Message[] = [];
  filters: Filter[] = [];
  delivered: Message[] = [];

  constructor(ids: number[], config: Partial<RaftConfig> = {}, states: Map<number, RaftInitialState> = new Map(), voters = ids) {
    for (const id of ids) this.add(id, config, states.get(id), voters);
  }

  add(id: number, config: Partial<RaftConfig> = {}, state: RaftInitialState = EMPTY_STATE, voters: number[] = []): RaftCore {
    const core = new RaftCore({ id, random: new SeededRandom(id), electionTicks: 10, heartbeatTicks: 1, ...config }, state, voters);
    this.cores.set(id, core);
    this.applied.set(id, []);
    this.reads.set(id, []);
    return core;
  }

  core(id: number): RaftCore {
    return this.cores.get(id)!;
  }

  /** Drains every core's Ready (persist = instant) and queues their messages. */
  flushReadies(): void {
    for (const [id, core] of this.cores) {
      while (core.hasReady()) {
        const rd = core.ready();
        for (const m of [...rd.messagesNow, ...rd.messages]) this.queue.push(m);
        this.applied.get(id)!.push(...rd.committed);
        this.reads.get(id)!.push(...rd.readStates);
        core.advance();
      }
    }
  }

  /** Delivers messages until none are left (or `limit` deliveries). */
  settle(limit = 100_000): void {
    this.flushReadies();
    let n = 0;
    while (this.queue.length > 0 && n++ < limit) {
      const m = this.queue.shift()!;
      if (this.filters.some((f) => f(m))) continue;
      const to = this.cores.get(m.to);
      if (!to) continue;
      this.delivered.push(m);
      to.step(m);
      this.flushReadies();
    }
  }

  /** Ticks every core (or the given ones) n times, settling after each round. */
  tick(n: number, ids: number[] = [...this.cores.keys()]): void {
    for (let i = 0; i < n; i++) {
      for (const id of ids) this.core(id).tick();
      this.settle();
    }
  }

  campaign(id: number): void {
    this.core(id).campaign();
    this.settle();
  }

  isolate(id: number): void {
    this.filters.push((m) => m.from === id || m.to === id);
  }
  cut(a: number, b: number): void {
    this.filters.push((m) => (m.from === a && m.to === b) || (m.from === b && m.to === a));
  }
  heal(): void {
    this.filters = [];
  }

  propose(id: number, text: string): number {
    const r = this.core(id).propose(new TextEncoder().encode(text));
    this.settle();
    return r.index;
  }

  appliedData(id: number): string[] {
    return this.applied.get(id)!.filter((e) => e.type === EntryType.Normal && e.data.length > 0)
      .map((e) => new TextDecoder().decode(e.data));
  }

  leader(): RaftCore | undefined {
    return [...this.cores.values()].find((c) => c.role === 'leader');
  }
}

export function entries(spec: Array<[number, number]>): Entry[] {
  return spec.map(([index, term]) => ({ index, term, type: EntryType.Normal, data: new TextEncoder().encode(`${index}@${term}`) }));
}

/** The state of a founding member of {1,2,3} whose log after the bootstrap entries is `tail`. */
export function stateWith(term: number, tail: Array<[number, number]>, commit = 3, vote = 0): RaftInitialState {
  const boot: Entry[] = [1, 2, 3].map((node, i) => ({
    index: i + 1, term: 1, type: EntryType.ConfChange, data: new Uint8Array([1, 0, 0, 0, node]),
  }));
  return { hardState: { term, vote, commit }, snapshot: undefined, entries: [...boot, ...entries(tail)] };
}
