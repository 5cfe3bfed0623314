/**
 * A seeded, in-memory network for multicast cores, used by the unit tests (and by the
 * simulation tests as the shard model). Every packet is really encoded and decoded. The schedule
 * is entirely the seed's: which member flushes, which in-flight packet arrives next (reordering),
 * copies (duplication), packets held back for long stretches ("lost" and later retransmitted by
 * the transport: the cores never retransmit, see src/multicast/README.md), clock ticks and sends.
 *
 * It also keeps the global knowledge the invariant checks need: every message sent, what every
 * member received at the moment another delivered.
 */
import { SeededRandom } from '../../src/core/random.js';
import { nodeId, viewId, type NodeId } from '../../src/core/ids.js';
import { MulticastCore, type MulticastMode, type MulticastReady } from '../../src/multicast/multicast-core.js';
import { multicastLimits, type MulticastLimits } from '../../src/multicast/config.js';
import { decodePacket, encodePacket } from '../../src/multicast/codec.js';
import { computeTrim } from '../../src/multicast/ragged-edge.js';
import type { Delivery } from '../../src/multicast/types.js';

export interface NetFaults {
  /** Probability an arriving packet is also left in flight to arrive again. */
  readonly duplicate: number;
  /** Probability a sent packet is held back until `releaseHeld()` (or a random later point). */
  readonly holdBack: number;
}

export interface NetOptions {
  readonly seed: number;
  readonly memberCount: number;
  /** Ranks that send; default all. */
  readonly senderRanks?: readonly number[];
  readonly mode?: MulticastMode;
  readonly limits?: Partial<MulticastLimits>;
  readonly faults?: NetFaults;
  readonly viewNumber?: number;
  /** Accept empty payloads (which carry no sender/seq) that a test sends directly. */
  readonly allowEmptyPayloads?: boolean;
}

interface InFlight {
  readonly to: number;
  readonly bytes: Uint8Array;
}

export interface SentRecord {
  readonly rank: number;
  readonly seq: number;
  readonly index: number;
  readonly bytes: number;
}

/** Payload = [rank u16][seq u32][pattern]; the pattern proves reassembly is intact. */
export function makePayload(rank: number, seq: number, bytes: number): Uint8Array {
  const payload = new Uint8Array(Math.max(bytes, 6));
  const view = new DataView(payload.buffer);
  view.setUint16(0, rank);
  view.setUint32(2, seq);
  for (let i = 6; i < payload.length; i++) payload[i] = (seq * 31 + i * 7 + rank) & 0xff;
  return payload;
}

/** Returns [rank, seq] if the payload is intact, else null. */
export function readPayload(payload: Uint8Array): [number, number] | null {
  if (payload.length < 6) return null;
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const rank = view.getUint16(0);
  const seq = view.getUint32(2);
  for (let i = 6; i < payload.length; i++) {
    if (payload[i] !== ((seq * 31 + i * 7 + rank) & 0xff)) return null;
  }
  return [rank, seq];
}

export class MulticastNet {
  readonly rng: SeededRandom;
  readonly cores: MulticastCore[];
  readonly nodes: NodeId[];
  readonly limits: MulticastLimits;
  readonly senderRanks: readonly number[];
  /** Every delivery per member, in order. */
  readonly delivered: Delivery[][];
  /** Every message sent per member, in send order. */
  readonly sent: SentRecord[][];
  /** Violations found while running (checked at the moment of delivery). */
  readonly problems: string[] = [];
  readonly failed = new Set<number>();
  /** Per member, the last time-based stability frontier and persisted frontier it published. */
  readonly frontierMicros: number[];
  readonly persistedFrontier: bigint[];
  inFlight: InFlight[] = [];
  held: InFlight[] = [];
  nowMicros = 1_000_000;
  packetsSent = 0;
  /** Own payloads the cores released (ready().released, applyTrim), by buffer: never sent again. */
  readonly releasedBuffers = new WeakSet<ArrayBufferLike>();
  releasedCount = 0;
  /**
   * Per member, the received large payloads its core let go of (ready().releasedReceived), by
   * buffer: delivered there before, let go once, never in a packet of that member afterwards.
   */
  private readonly releasedReceived: WeakSet<ArrayBufferLike>[];
  releasedReceivedCount = 0;
  /** Per member, `from/seq` of every message it delivered (the release check). */
  private readonly deliveredKeys: Set<string>[];
  private readonly faults: NetFaults;
  private readonly allowEmptyPayloads: boolean;
  private logical = 0;

  constructor(options: NetOptions) {
    this.rng = new SeededRandom(options.seed);
    this.limits = multicastLimits(options.limits ?? {});
    this.faults = options.faults ?? { duplicate: 0, holdBack: 0 };
    this.allowEmptyPayloads = options.allowEmptyPayloads ?? false;
    this.nodes = Array.from({ length: options.memberCount }, (_, r) => nodeId(100 + r * 3));
    this.senderRanks = options.senderRanks ?? this.nodes.map((_, r) => r);
    const senders = this.senderRanks.map((r) => this.nodes[r]!);
    this.cores = this.nodes.map(
      (self) =>
        new MulticastCore({
          viewId: viewId(options.viewNumber ?? 7),
          members: this.nodes,
          senders,
          self,
          mode: options.mode ?? 'ordered',
          limits: this.limits,
        }),
    );
    this.delivered = this.nodes.map(() => []);
    this.deliveredKeys = this.nodes.map(() => new Set());
    this.releasedReceived = this.nodes.map(() => new WeakSet());
    this.frontierMicros = this.nodes.map(() => 0);
    this.persistedFrontier = this.nodes.map(() => -1n);
    this.sent = this.nodes.map(() => []);
  }

  get alive(): number[] {
    return this.nodes.map((_, r) => r).filter((r) => !this.failed.has(r));
  }

  /** Sends a message of `bytes` from `rank`; returns false if the core refused it. */
  send(rank: number, bytes: number): boolean {
    const seq = this.sent[rank]!.length;
    this.logical++;
    const payload = makePayload(rank, seq, bytes);
    const result = this.cores[rank]!.send(payload, {
      micros: this.nowMicros,
      logical: this.logical,
    });
    if (!result.accepted) return false;
    this.sent[rank]!.push({ rank, seq, index: result.index, bytes: payload.length });
    return true;
  }

  tick(micros = 100): void {
    this.nowMicros += micros;
    for (const r of this.alive) this.cores[r]!.tick(this.nowMicros);
  }

  /** Runs ready() on `rank` and puts its packets on the wire. */
  flush(rank: number): void {
    if (this.failed.has(rank)) return;
    this.absorb(rank, this.cores[rank]!.ready());
  }

  /** Records the deliveries of a ready() the caller took itself and puts its packets on the wire. */
  absorb(rank: number, ready: MulticastReady): void {
    for (const d of ready.deliveries) {
      // Time-based stability: a frontier F promised that nothing stamped below F comes later.
      if (d.timestamp.micros < this.frontierMicros[rank]!) {
        this.problems.push(
          `rank ${rank} delivered a message stamped ${d.timestamp.micros} after publishing ` +
            `the stability frontier ${this.frontierMicros[rank]}`,
        );
      }
      this.recordDelivery(rank, d);
    }
    if (ready.stabilityFrontierMicros < this.frontierMicros[rank]!) {
      this.problems.push(`rank ${rank}: the stability frontier went backwards`);
    }
    this.frontierMicros[rank] = ready.stabilityFrontierMicros;
    if (ready.globalPersistedVersion < this.persistedFrontier[rank]!) {
      this.problems.push(`rank ${rank}: the persisted frontier went backwards`);
    }
    this.persistedFrontier[rank] = ready.globalPersistedVersion;
    for (const payload of ready.released) this.noteReleased(rank, payload, true);
    for (const payload of ready.releasedReceived) this.noteReleasedReceived(rank, payload);
    for (const out of ready.packets) {
      const packet = out.packet;
      const stale = packet.kind === 'block'
        ? this.releasedBuffers.has(packet.bytes.buffer)
        : packet.entries.some((e) => e.kind === 'message' && this.releasedBuffers.has(e.payload.buffer));
      if (stale) this.problems.push(`rank ${rank} sent bytes of a payload it had released`);
      if (packet.kind === 'block' && this.releasedReceived[rank]!.has(packet.bytes.buffer)) {
        this.problems.push(`rank ${rank} sent bytes of a received payload it had let go of`);
      }
      const bytes = encodePacket(out.packet);
      if (out.packet.kind === 'data' && bytes.length > this.limits.packetBytesMax) {
        this.problems.push(`rank ${rank} sent a ${bytes.length}-byte SMC packet over the budget`);
      }
      for (const node of out.to) {
        const to = this.nodes.indexOf(node);
        const packet = { to, bytes };
        this.packetsSent++;
        if (this.rng.next() < this.faults.holdBack) this.held.push(packet);
        else this.inFlight.push(packet);
      }
    }
  }

  /** Delivers one random in-flight packet (any order); returns false if none. */
  deliverOne(): boolean {
    if (this.inFlight.length === 0) return false;
    const i = this.rng.int(this.inFlight.length);
    const packet = this.inFlight[i]!;
    if (this.rng.next() >= this.faults.duplicate) {
      this.inFlight[i] = this.inFlight[this.inFlight.length - 1]!;
      this.inFlight.pop();
    }
    if (!this.failed.has(packet.to)) {
      // Decode a private copy: the core keeps views into the buffer it is given.
      this.cores[packet.to]!.receive(decodePacket(packet.bytes.slice()));
    }
    return true;
  }

  /** Puts held-back packets back in flight (the transport's retransmission, late). */
  releaseHeld(fraction = 1): void {
    const keep: InFlight[] = [];
    for (const p of this.held) (this.rng.next() < fraction ? this.inFlight : keep).push(p);
    this.held = keep;
  }

  /** One random step: send, flush, deliver, tick or release. */
  randomStep(sendSize: () => number, sendProbability = 0.25): void {
    const roll = this.rng.next();
    const alive = this.alive;
    if (roll < sendProbability) {
      const senders = this.senderRanks.filter((r) => !this.failed.has(r));
      if (senders.length > 0) this.send(senders[this.rng.int(senders.length)]!, sendSize());
    } else if (roll < sendProbability + 0.25) {
      this.flush(alive[this.rng.int(alive.length)]!);
    } else if (roll < 0.97) {
      const burst = 1 + this.rng.int(6);
      for (let i = 0; i < burst; i++) this.deliverOne();
    } else if (roll < 0.99) {
      this.tick(1 + this.rng.int(500));
      // Persistence completes for some member, up to what it delivered.
      const r = alive[this.rng.int(alive.length)]!;
      const last = this.delivered[r]!.at(-1)?.version;
      if (last !== undefined && last !== null) this.cores[r]!.persisted(last);
    } else {
      this.releaseHeld(0.5);
    }
  }

  /** Flushes and delivers until nothing moves (releasing held packets too). */
  drain(stepsMax = 1_000_000): void {
    for (let steps = 0; steps < stepsMax; steps++) {
      this.releaseHeld();
      for (const r of this.alive) this.flush(r);
      if (this.inFlight.length === 0 && this.held.length === 0) return;
      while (this.deliverOne()) { /* empties the wire in random order (duplicates included) */ }
    }
    this.problems.push('drain did not quiesce');
  }

  /**
   * `rank`'s core released `payload`: once only, and (`live`: from ready()) only when no member
   * can need it again: ordered, every member delivered it; raw, every member received it.
   */
  private noteReleased(rank: number, payload: Uint8Array, live: boolean): void {
    const id = readPayload(payload);
    if (this.releasedBuffers.has(payload.buffer)) this.problems.push(`rank ${rank} released ${String(id)} twice`);
    this.releasedBuffers.add(payload.buffer);
    this.releasedCount++;
    if (!live || id === null) return;
    const [from, seq] = id;
    const record = this.sent[from]?.[seq];
    if (from !== rank || record === undefined) {
      this.problems.push(`rank ${rank} released ${from}/${seq}, not a message of its own`);
      return;
    }
    const s = this.senderRanks.indexOf(rank);
    for (let m = 0; m < this.cores.length; m++) {
      const done = this.cores[m]!.mode === 'ordered'
        ? this.deliveredKeys[m]!.has(`${from}/${seq}`)
        : this.cores[m]!.receivedCount(s) > record.index;
      if (!done) this.problems.push(`rank ${rank} released ${from}/${seq} before member ${m} had it`);
    }
  }

  /** `rank`'s core let go of a received large payload: once, only after delivering it there. */
  private noteReleasedReceived(rank: number, payload: Uint8Array): void {
    const id = readPayload(payload);
    const name = id === null ? 'a corrupt payload' : `${id[0]}/${id[1]}`;
    if (this.releasedReceived[rank]!.has(payload.buffer)) this.problems.push(`rank ${rank} let go of ${name} twice`);
    this.releasedReceived[rank]!.add(payload.buffer);
    this.releasedReceivedCount++;
    if (id === null || id[0] === rank || !this.deliveredKeys[rank]!.has(name)) {
      this.problems.push(`rank ${rank} let go of ${name}, not a message it received and delivered`);
      return;
    }
    // Live (not at a view's end): no member may still need a repair from it (ordered: implied
    // by the delivery, raw: delivered on receipt).
    const record = this.sent[id[0]]?.[id[1]];
    const s = this.senderRanks.indexOf(id[0]);
    if (this.cores[rank]!.isWedged || record === undefined) return;
    for (const m of this.alive) {
      if (this.cores[m]!.receivedCount(s) <= record.index) {
        this.problems.push(`rank ${rank} let go of ${name} before member ${m} had it`);
      }
    }
  }

  private recordDelivery(rank: number, d: Delivery): void {
    const id = readPayload(d.payload);
    if (id === null && d.payload.length === 0 && this.allowEmptyPayloads) {
      this.delivered[rank]!.push(d); // an empty payload a test sent directly
      return;
    }
    if (id === null) {
      this.problems.push(`rank ${rank} delivered a corrupt or null payload at position ${d.position}`);
      return;
    }
    const [from, seq] = id;
    const record = this.sent[from]?.[seq];
    if (record === undefined || record.index !== d.index || this.nodes[from] !== d.sender) {
      this.problems.push(`rank ${rank} delivered something never sent: ${from}/${seq} at index ${d.index}`);
    }
    if (record !== undefined && record.bytes !== d.payload.length) {
      this.problems.push(`rank ${rank} delivered ${from}/${seq} with ${d.payload.length} bytes, sent ${record.bytes}`);
    }
    const core = this.cores[rank]!;
    if (core.mode === 'ordered' && !core.isWedged) {
      // Global stability: every member of the view holds the message at the moment of delivery.
      for (let m = 0; m < this.cores.length; m++) {
        if (this.cores[m]!.receivedCount(d.senderIndex) <= d.index) {
          this.problems.push(`rank ${rank} delivered position ${d.position} before member ${m} had it`);
        }
      }
    }
    this.delivered[rank]!.push(d);
    this.deliveredKeys[rank]!.add(`${from}/${seq}`);
  }

  /**
   * A view change with the ragged edge: `failedRanks` crash; survivors wedge one by one while
   * some packets still arrive; a random part of what is left in flight arrives, the rest is cut
   * off; the survivors' receive states give the trim; every survivor applies it. Returns the trim
   * and each survivor's resend list as [rank, seq] pairs.
   */
  raggedEdge(failedRanks: readonly number[]): { trim: number[]; resend: Map<number, [number, number][]> } {
    for (const r of failedRanks) this.failed.add(r);
    const survivors = this.alive;
    const order = [...survivors].sort(() => this.rng.next() - 0.5);
    for (const r of order) {
      if (this.rng.next() < 0.5) this.flush(r);
      this.cores[r]!.wedge();
      this.flush(r); // wedged: emits nothing
      const burst = this.rng.int(20);
      for (let i = 0; i < burst; i++) this.deliverOne();
    }
    this.releaseHeld(this.rng.next());
    const keep = this.rng.next();
    this.inFlight = this.inFlight.filter(() => this.rng.next() < keep);
    while (this.deliverOne()) { /* the rest of the flush */ }
    this.inFlight = [];
    this.held = [];
    const states = survivors.map((r) => this.cores[r]!.receiveState().receivedCounts);
    const trim = computeTrim(states);
    const resend = new Map<number, [number, number][]>();
    for (const r of survivors) {
      const result = this.cores[r]!.applyTrim(trim);
      for (const payload of result.released) this.noteReleased(r, payload, false);
      this.flush(r);
      resend.set(r, result.resend.map((m) => readPayload(m.payload)!));
      if (result.resend.some((m, i) => i > 0 && m.index <= result.resend[i - 1]!.index)) {
        this.problems.push(`rank ${r}: resend list not in index order`);
      }
    }
    return { trim, resend };
  }

  /**
   * Checks the invariants of a run so far; returns the problems. `complete`: everything sent
   * must have been delivered by every live member (after a drain, no failures).
   */
  check(complete: boolean): string[] {
    const problems = [...this.problems];
    const ordered = this.cores[0]!.mode === 'ordered';
    this.delivered.forEach((list, rank) => {
      const nextIndex = new Map<number, number>();
      let lastPosition = -1;
      for (const d of list) {
        const expected = nextIndex.get(d.senderIndex) ?? 0;
        if (d.index < expected) problems.push(`rank ${rank}: sender ${d.senderIndex} FIFO broken at ${d.index}`);
        nextIndex.set(d.senderIndex, d.index + 1);
        if (ordered) {
          if (d.position <= lastPosition) problems.push(`rank ${rank}: positions not increasing at ${d.position}`);
          lastPosition = d.position;
        }
      }
      if (ordered) {
        for (let i = 1; i < list.length; i++) {
          if (!(list[i]!.version! > list[i - 1]!.version!)) problems.push(`rank ${rank}: versions not increasing`);
        }
      }
    });
    if (ordered) {
      // Every member delivers a prefix of the longest sequence (the same total order).
      const sequences = this.delivered.map(sequenceOf);
      const longest = sequences.reduce((a, b) => (b.length > a.length ? b : a));
      sequences.forEach((seq, rank) => {
        for (let i = 0; i < seq.length; i++) {
          if (seq[i] !== longest[i]) {
            problems.push(`rank ${rank} diverges at delivery ${i}: ${seq[i]} vs ${longest[i]}`);
            break;
          }
        }
      });
    }
    if (complete) {
      const total = this.sent.reduce((n, s) => n + s.length, 0);
      for (const r of this.alive) {
        if (this.delivered[r]!.length !== total) {
          problems.push(`rank ${r} delivered ${this.delivered[r]!.length} of ${total} messages`);
        }
      }
    }
    return problems;
  }
}

/** A digest of a delivery sequence for equality checks: sender/index/version per delivery. */
export function sequenceOf(deliveries: readonly Delivery[]): string[] {
  return deliveries.map((d) => `${d.sender}/${d.index}@${d.version === null ? '-' : d.version}`);
}
