/**
 * The ordering core of one shard in one view: SMC batching, RDMC relaying, round-robin total
 * order, stability, null messages, windows, frontiers and the ragged-edge cleanup. Pure and
 * synchronous (STYLE.md): inputs are method calls, outputs are collected by `ready()`.
 * README.md in this directory narrates the model, the invariants and the driver's duties.
 */
import { assert } from '../core/assert.js';
import { ConfigError, PayloadTooLargeError } from '../core/errors.js';
import { makeVersion, VERSION_NONE, type NodeId, type Version, type ViewId } from '../core/ids.js';
import {
  NULL_RUN_BYTES,
  SMC_ENTRY_OVERHEAD_BYTES,
  packetOverheadBytes,
  smcPacketProblem,
  type MulticastLimits,
} from './config.js';
import { outgoingByRank, rdmcSchedule, type RdmcTransfer } from './rdmc-schedule.js';
import { Fifo } from './fifo.js';
import { RdmcTransferState, freshMessageBuffer, type MessageAllocator } from './rdmc-transfer.js';
import { SenderStream, entryLength, type StoredEntry } from './sender-stream.js';
import type {
  BlockPacket,
  DataPacket,
  Delivery,
  MessageTimestamp,
  OutgoingPacket,
  Packet,
  ReceiveReport,
  ResendMessage,
  SmcEntry,
} from './types.js';

export type MulticastMode = 'ordered' | 'raw';

export interface MulticastCoreOptions {
  readonly viewId: ViewId;
  /** The shard's members in rank order. */
  readonly members: readonly NodeId[];
  /** The members that may send, a subset of `members`; their order is taken from `members`. */
  readonly senders: readonly NodeId[];
  readonly self: NodeId;
  readonly mode: MulticastMode;
  readonly limits: MulticastLimits;
  /**
   * This member's messages that the previous view's ragged edge cut off (`applyTrim().resend`),
   * to send first in this view. They keep their original HLC stamps: they are queued here,
   * before any tick() can move this member's time frontier past them (see README, "Re-sends").
   */
  readonly resend?: readonly ResendMessage[];
  /**
   * Where a received RDMC message of several blocks is assembled (RdmcTransferState; default: a
   * fresh buffer each). The driver recycles the buffers of messages released to it.
   */
  readonly allocateMessage?: MessageAllocator;
}

export type SendResult =
  | { readonly accepted: true; readonly index: number; readonly position: number }
  | { readonly accepted: false; readonly reason: 'wedged' | 'queue-full' };

/** What the driver must do after a batch of inputs (see README, "The driver's duties"). */
export interface MulticastReady {
  /** Packets to send; each to every node in `to`. Order within the list does not matter. */
  readonly packets: OutgoingPacket[];
  /** Newly delivered messages, in delivery order: hand them to the application in this order. */
  readonly deliveries: Delivery[];
  /** Positions delivered so far (nulls included). */
  readonly deliveredCount: number;
  /** Version of the last delivered message in this view, VERSION_NONE if none (or raw mode). */
  readonly lastDeliveredVersion: Version;
  /** Min over members of their reported persisted version. */
  readonly globalPersistedVersion: Version;
  /** Min over members of their time-based stability frontier (µs): see README. */
  readonly stabilityFrontierMicros: number;
  /** How many more messages send() would accept now (0 when wedged). */
  readonly sendCapacity: number;
  /**
   * Payloads of own messages the core let go of since the last ready(): done everywhere (see
   * pruneInFlight), so it never reads them again (no send, relay, repair or re-send). Others may
   * still hold them (the driver's queued and in-flight calls): see the driver's onPayloadReleased.
   */
  readonly released: Uint8Array[];
  /**
   * Payloads of large (RDMC) messages received from other senders that the core let go of since
   * the last ready(): delivered here (in this ready() or before; the application saw them), and
   * no longer needed for a relay (every scheduled send of it taken) or a repair (every member
   * received it). The core never reads them again; others may (the driver's queued relays, the
   * application). Only for the driver's buffer accounting (MulticastDriverOptions.releaseReceived).
   */
  readonly releasedReceived: Uint8Array[];
}

export interface MulticastCounters {
  packetsReceived: number;
  duplicatesDropped: number;
  otherViewDropped: number;
  malformedDropped: number;
  nullsSent: number;
  dataPacketsSent: number;
  reportPacketsSent: number;
  blockPacketsSent: number;
  /** Large messages this member sent straight to a member whose reports still lacked them. */
  rdmcRepairs: number;
}

/** An own message; the same object is stored in the own stream, queued, in flight and sent. */
type OwnMessage = Extract<StoredEntry, { kind: 'message' }>;

interface RdmcInFlight {
  readonly state: RdmcTransferState;
  readonly senderIndex: number;
  readonly index: number;
  readonly originRank: number;
  readonly timestamp: MessageTimestamp;
}

/** A large message this member holds whole, until every member's report shows it arrived. */
interface RepairCandidate {
  readonly senderIndex: number;
  readonly index: number;
  readonly originRank: number;
  readonly timestamp: MessageTimestamp;
  readonly payload: Uint8Array;
  /** When this member first held it whole (0: before any tick; set at the first check). */
  heldSinceMicros: number;
  /** Ranks this member already sent it to directly (at most once each). */
  readonly repaired: Set<number>;
}

interface MutableRow {
  receivedCounts: number[];
  contiguousCount: number;
  deliveredCount: number;
  persistedVersion: Version;
  stabilityFrontierMicros: number;
}

const SCHEDULE_CACHE_MAX = 64;

export class MulticastCore {
  readonly viewId: ViewId;
  readonly members: readonly NodeId[];
  readonly mode: MulticastMode;
  readonly limits: MulticastLimits;
  readonly myRank: number;
  /** MulticastCoreOptions.allocateMessage. */
  private readonly allocateMessage: MessageAllocator;
  /** This member's index among the senders, or -1 for a non-sender. */
  readonly mySenderIndex: number;
  /** senderRanks[s] = member rank of sender index s. */
  readonly senderRanks: readonly number[];
  readonly counters: MulticastCounters = {
    packetsReceived: 0,
    duplicatesDropped: 0,
    otherViewDropped: 0,
    malformedDropped: 0,
    nullsSent: 0,
    dataPacketsSent: 0,
    reportPacketsSent: 0,
    blockPacketsSent: 0,
    rdmcRepairs: 0,
  };

  private readonly senderIndexOfRank: readonly number[];
  private readonly peers: readonly NodeId[];
  /** The ranks of `peers`, in the same order. */
  private readonly peerRanks: readonly number[];
  /**
   * Ordered mode, by member rank: the version of the newest message of that member delivered
   * here, and the persisted version last reported to that member. A persisted version that moved
   * is urgent only to members with a message delivered here that the last report to them did not
   * cover (see reportUrgent).
   */
  private readonly lastDeliveredMessageOf: Version[];
  private readonly persistedReportedTo: Version[];
  private readonly streams: SenderStream[];
  /** Rows last heard from each member; rows[myRank] is refreshed from local state. */
  private readonly rows: MutableRow[];
  private deliveredCount = 0;
  /** makeVersion(viewId, 0): a version is this | position. */
  private readonly versionBase: bigint;
  private lastDeliveredVersion: Version = VERSION_NONE;
  private nextIndex = 0;
  private requiredNextIndex = 0;
  /** Own messages and null runs numbered but not sent yet, in index order. */
  private readonly transmitQueue = new Fifo<StoredEntry>();
  private queuedMessageCount = 0;
  /** Own messages sent and not yet done everywhere (the window), in index order. */
  private readonly ownInFlight = new Fifo<OwnMessage>();
  private readonly rdmc = new Map<number, RdmcInFlight>();
  private readonly scheduleCache = new Map<string, RdmcTransfer[][]>();
  /** Large messages held whole here that some member's report still lacks (see README). */
  private readonly repairs = new Map<number, RepairCandidate>();
  private repairCheckedMicros = 0;
  /** progressMicros[rank][s]: when rank's report last showed more of sender s's messages. */
  private readonly progressMicros: number[][];
  /** heardMicros[rank]: when a packet from rank last arrived (RDMC repair: is it alive?). */
  private readonly heardMicros: number[];
  private packets: OutgoingPacket[] = [];
  private deliveries: Delivery[] = [];
  private released: Uint8Array[] = [];
  /** Large received messages delivered here but still held for a relay or a repair, by key. */
  private readonly deliveredLarge = new Map<number, Uint8Array>();
  private releasedReceived: Uint8Array[] = [];
  private nowMicros = 0;
  /** The row this member last published (a report goes alone only when the row changed). */
  private lastSentRow: ReceiveReport;
  /**
   * Ordered mode: the contiguous count when it last moved past a message (not only nulls). A
   * report is urgent for stability only if it carries this (see reportUrgent).
   */
  private messageContiguousEnd = 0;
  /** A tick passed since the last report: a row changed in its lazy fields alone may go. */
  private lazyReportDue = false;
  /** The stamp of this member's newest own message: stamps never decrease (HLC). */
  private lastOwnMicros = 0;
  private wedged = false;
  private trimmed = false;

  constructor(options: MulticastCoreOptions) {
    const { members, senders, self, limits } = options;
    assert(members.length >= 1, 'a shard has at least one member');
    assert(new Set(members).size === members.length, 'shard members are distinct');
    const myRank = members.indexOf(self);
    assert(myRank >= 0, `node ${self} is not a member of the shard`);
    const senderSet = new Set(senders);
    assert(senderSet.size === senders.length, 'senders are distinct');
    for (const s of senders) assert(members.includes(s), `sender ${s} is not a shard member`);
    this.viewId = options.viewId;
    this.versionBase = makeVersion(options.viewId, 0);
    this.members = [...members];
    this.mode = options.mode;
    this.limits = limits;
    this.myRank = myRank;
    this.allocateMessage = options.allocateMessage ?? freshMessageBuffer;
    const senderRanks: number[] = [];
    const senderIndexOfRank: number[] = [];
    members.forEach((m, rank) => {
      senderIndexOfRank.push(senderSet.has(m) ? senderRanks.length : -1);
      if (senderSet.has(m)) senderRanks.push(rank);
    });
    this.senderRanks = senderRanks;
    this.senderIndexOfRank = senderIndexOfRank;
    this.mySenderIndex = senderIndexOfRank[myRank]!;
    this.peers = members.filter((m) => m !== self);
    this.peerRanks = this.peers.map((m) => members.indexOf(m));
    this.lastDeliveredMessageOf = members.map(() => VERSION_NONE);
    this.persistedReportedTo = members.map(() => VERSION_NONE);
    this.streams = senderRanks.map(() => new SenderStream());
    this.rows = members.map(() => ({
      receivedCounts: senderRanks.map(() => 0),
      contiguousCount: 0,
      deliveredCount: 0,
      persistedVersion: VERSION_NONE,
      stabilityFrontierMicros: 0,
    }));
    this.progressMicros = members.map(() => senderRanks.map(() => 0));
    this.heardMicros = members.map(() => 0);
    this.lastSentRow = this.report();
    const packetProblem = smcPacketProblem(limits, senderRanks.length);
    if (packetProblem !== null) {
      throw new ConfigError([{ key: 'multicast.smc_packet_size', message: packetProblem }]);
    }
    this.queueResends(options.resend ?? []);
  }

  /**
   * Queues the previous view's cut-off messages ahead of everything, with their own stamps.
   * They may exceed `send_queue_size` (up to window + queue of the previous view): send()
   * then refuses new messages until they have gone out.
   */
  private queueResends(resend: readonly ResendMessage[]): void {
    if (resend.length === 0) return;
    assert(
      this.mySenderIndex >= 0,
      `node ${this.members[this.myRank]} has messages to re-send but is not a sender in view ` +
        `${this.viewId}: keep it a sender until its re-sends are delivered`,
    );
    for (const m of resend) {
      if (m.payload.length > this.limits.payloadBytesMax) {
        throw new PayloadTooLargeError(
          'multicast re-send', m.payload.length, this.limits.payloadBytesMax, 'max_payload_size',
        );
      }
      this.enqueueOwn(m.payload, m.timestamp);
    }
  }

  get senderCount(): number {
    return this.senderRanks.length;
  }

  get isWedged(): boolean {
    return this.wedged;
  }

  // ------------------------------------------------------------------------------------------
  // Inputs

  /**
   * Accepts a message for multicast, numbering it at once; it goes out when the window allows.
   * Throws PayloadTooLargeError above `max_payload_size` and AssertionError if this member is
   * not a sender. Returns `accepted: false` when wedged (send it in the next view) or when the
   * send queue is full (wait for `sendCapacity` > 0). The core keeps `payload`: do not change it.
   * `timestamp.micros` must not be below the last tick's time (the HLC guarantees it).
   */
  send(payload: Uint8Array, timestamp: MessageTimestamp): SendResult {
    if (payload.length > this.limits.payloadBytesMax) {
      throw new PayloadTooLargeError(
        'multicast payload', payload.length, this.limits.payloadBytesMax, 'max_payload_size',
      );
    }
    if (this.mySenderIndex < 0) {
      assert(false, `node ${this.members[this.myRank]} is not a sender in this shard`);
    }
    if (this.wedged) return { accepted: false, reason: 'wedged' };
    if (this.queuedMessageCount >= this.limits.sendQueueCountMax) {
      return { accepted: false, reason: 'queue-full' };
    }
    assert(
      timestamp.micros >= this.rows[this.myRank]!.stabilityFrontierMicros,
      'message timestamp is below the stability frontier this member already published ' +
        '(the driver must stamp messages with an HLC fed the same clock as tick())',
    );
    const index = this.enqueueOwn(payload, timestamp);
    return { accepted: true, index, position: this.positionOf(this.mySenderIndex, index) };
  }

  private enqueueOwn(payload: Uint8Array, timestamp: MessageTimestamp): number {
    // Monotone stamps keep the oldest unfinished own message at the head of the queues, so the
    // time frontier costs O(1) per report (refreshOwnRow).
    if (timestamp.micros < this.lastOwnMicros) {
      assert(
        false,
        `own message stamps never decrease (got ${timestamp.micros} after ` +
          `${this.lastOwnMicros}): stamp with one hybrid logical clock`,
      );
    }
    this.lastOwnMicros = timestamp.micros;
    const index = this.nextIndex++;
    const large = payload.length > this.limits.smcPayloadBytesMax;
    const entry: OwnMessage = { kind: 'message', index, timestamp, payload, large };
    this.streams[this.mySenderIndex]!.insert(entry);
    this.transmitQueue.push(entry);
    this.queuedMessageCount++;
    return index;
  }

  /**
   * A packet from another member of this shard. Packets of other views and malformed ones are
   * counted and dropped; duplicates and any arrival order are fine.
   */
  receive(packet: Packet): void {
    this.counters.packetsReceived++;
    if (packet.viewId !== this.viewId) {
      this.counters.otherViewDropped++;
      return;
    }
    if (this.trimmed) return;
    if (packet.fromRank >= this.members.length || packet.fromRank === this.myRank) {
      this.counters.malformedDropped++;
      return;
    }
    this.heardMicros[packet.fromRank] = this.nowMicros;
    if (packet.kind === 'data') this.receiveData(packet);
    else this.receiveBlock(packet);
  }

  /** This member made every version up to `version` durable (from the persistence layer). */
  persisted(version: Version): void {
    const row = this.rows[this.myRank]!;
    if (version > row.persistedVersion) row.persistedVersion = version;
  }

  /**
   * The current wall time in µs (abstract time: the driver's HLC physical component). Drives the
   * time-based stability frontier; call it about every heartbeat.
   */
  tick(nowMicros: number): void {
    if (nowMicros > this.nowMicros) this.nowMicros = nowMicros;
    this.lazyReportDue = true;
  }

  /**
   * Stops this member sending anything (data, nulls, relays, reports) and delivering on
   * stability; packets still arriving are recorded. Idempotent.
   */
  wedge(): void {
    this.wedged = true;
  }

  /** After wedge(): what this member received from each sender, for the trim computation. */
  receiveState(): { readonly receivedCounts: number[] } {
    assert(this.wedged, 'receiveState() is for a wedged core');
    return { receivedCounts: this.streams.map((s) => s.receivedCount) };
  }

  /**
   * The ragged-edge cleanup: delivers, in position order, exactly the messages with index below
   * `trim[s]` for every sender s (see `computeTrim`), then stops for good. Returns this member's
   * own messages beyond the trim (sent or still queued), in index order, to send again in the
   * next view. Deliveries come out of the next ready().
   */
  applyTrim(trim: readonly number[]): { readonly resend: ResendMessage[]; readonly released: Uint8Array[] } {
    assert(this.wedged && !this.trimmed, 'applyTrim() once, after wedge()');
    assert(trim.length === this.senderCount, 'trim has one count per sender');
    trim.forEach((count, s) =>
      assert(
        Number.isInteger(count) && count >= 0 && count <= this.streams[s]!.receivedCount,
        `trim for sender ${s} (${count}) exceeds what this member received ` +
          `(${this.streams[s]!.receivedCount}): trims are minima over survivors' reports`,
      ),
    );
    if (this.mode === 'ordered') this.deliverUpToTrim(trim);
    else this.streams.forEach((stream, s) => this.deliverRawUpTo(s, trim[s]!));
    this.trimmed = true;
    const resend: ResendMessage[] = [];
    // What ready() had not handed out yet, and the messages within the trim: every survivor
    // received them, so this core, which ends here, never sends them again.
    const released = this.released;
    this.released = [];
    if (this.mySenderIndex >= 0) {
      const cut = trim[this.mySenderIndex]!;
      for (const m of [...this.ownInFlight, ...this.transmitQueue]) {
        if (m.kind !== 'message') continue;
        if (m.index >= cut) resend.push({ index: m.index, timestamp: m.timestamp, payload: m.payload });
        else released.push(m.payload);
      }
    }
    this.transmitQueue.clear();
    this.queuedMessageCount = 0;
    this.rdmc.clear();
    this.repairs.clear();
    // The view ends here: nothing is relayed or repaired any more. (Deliveries within the trim
    // come out of the next ready(), before these.)
    for (const payload of this.deliveredLarge.values()) this.releasedReceived.push(payload);
    this.deliveredLarge.clear();
    return { resend, released };
  }

  // ------------------------------------------------------------------------------------------
  // Output

  /** Runs the protocol on everything that arrived since the last call and drains the outputs. */
  ready(): MulticastReady {
    if (!this.wedged) {
      this.fillNulls();
      if (this.mode === 'ordered') this.deliverStable();
      else this.streams.forEach((stream, s) => this.deliverRawUpTo(s, stream.receivedCount));
      const entries = this.transmit();
      if (this.rdmc.size > 0) this.relayBlocks();
      this.repairStalledTransfers();
      this.emitDataPackets(entries);
    }
    const packets = this.packets;
    const deliveries = this.deliveries;
    const released = this.released;
    const releasedReceived = this.releasedReceived;
    this.packets = [];
    this.deliveries = [];
    if (released.length > 0) this.released = [];
    if (releasedReceived.length > 0) this.releasedReceived = [];
    return {
      packets,
      deliveries,
      released,
      releasedReceived,
      deliveredCount: this.deliveredCount,
      lastDeliveredVersion: this.lastDeliveredVersion,
      globalPersistedVersion: this.minPersistedVersion(),
      stabilityFrontierMicros: this.minNumberField('stabilityFrontierMicros'),
      sendCapacity:
        this.wedged || this.mySenderIndex < 0
          ? 0
          : Math.max(0, this.limits.sendQueueCountMax - this.queuedMessageCount),
    };
  }

  /** This member's current row (what its next report will say). */
  report(): ReceiveReport {
    this.refreshOwnRow();
    return this.ownRowCopy();
  }

  /** A copy of this member's row as it stands (call refreshOwnRow first). */
  private ownRowCopy(): ReceiveReport {
    const row = this.rows[this.myRank]!;
    return {
      receivedCounts: row.receivedCounts.slice(),
      contiguousCount: row.contiguousCount,
      deliveredCount: row.deliveredCount,
      persistedVersion: row.persistedVersion,
      stabilityFrontierMicros: row.stabilityFrontierMicros,
    };
  }

  /**
   * True if no message (nulls aside) that arrived here contiguously waits for delivery: one
   * message at a time, between messages. False while deliveries are pending, as in a pipelined
   * stream. (Nulls after the last message wait for the next reports: they deliver nothing.) For
   * the driver's choice of when to send a persisted report.
   */
  get caughtUp(): boolean {
    return !this.messageBetween(this.deliveredCount, this.contiguousCount());
  }

  /** How many messages (nulls included) of sender index `s` arrived here contiguously. */
  receivedCount(senderIndex: number): number {
    return this.streams[senderIndex]!.receivedCount;
  }

  /** Messages buffered for delivery or relaying (for memory-bound checks). */
  bufferedCounts(): {
    readonly outOfOrderEntries: number;
    readonly rdmcTransfers: number;
    readonly ownInFlight: number;
  } {
    return {
      outOfOrderEntries: this.streams.reduce((n, s) => n + s.bufferedEntryCount, 0),
      rdmcTransfers: this.rdmc.size,
      ownInFlight: this.ownInFlight.length,
    };
  }

  /**
   * A snapshot of the core's state for diagnosing a stall (not for protocol decisions): every
   * member's row as last heard, own queues, and what each RDMC transfer and repair waits for.
   */
  diagnostics(): Record<string, unknown> {
    this.refreshOwnRow();
    return {
      myRank: this.myRank,
      nowMicros: this.nowMicros,
      deliveredCount: this.deliveredCount,
      nextIndex: this.nextIndex,
      requiredNextIndex: this.requiredNextIndex,
      transmitQueue: this.transmitQueue.length,
      queuedMessages: this.queuedMessageCount,
      ownInFlight: this.ownInFlight.length,
      ownInFlightHead: this.ownInFlight.at(0)?.index ?? null,
      rows: this.rows.map((r, rank) => ({
        rank,
        received: [...r.receivedCounts],
        contiguous: r.contiguousCount,
        delivered: r.deliveredCount,
        heardAgoMs: Math.round((this.nowMicros - this.heardMicros[rank]!) / 1000),
      })),
      buffered: this.streams.map((s) => s.bufferedEntryCount),
      rdmc: [...this.rdmc.values()].map((t) => ({ s: t.senderIndex, i: t.index, ...t.state.progress() })),
      repairs: [...this.repairs.values()].map((c) => ({ s: c.senderIndex, i: c.index, repaired: [...c.repaired] })),
    };
  }

  // ------------------------------------------------------------------------------------------
  // Receiving

  private receiveData(packet: DataPacket): void {
    if (packet.report !== null) this.mergeRow(packet.fromRank, packet.report);
    if (packet.entries.length === 0) return;
    const s = this.senderIndexOfRank[packet.fromRank]!;
    if (s < 0) {
      this.counters.malformedDropped++;
      return;
    }
    const stream = this.streams[s]!;
    for (const entry of packet.entries) {
      if (entry.kind === 'message' && entry.payload.length > this.limits.smcPayloadBytesMax) {
        this.counters.malformedDropped++;
        continue;
      }
      // The decoded entry is stored as is: one object per message on the hot path.
      const stored: StoredEntry = entry;
      if (!stream.insert(stored)) {
        this.counters.duplicatesDropped++;
        continue;
      }
      this.noteReceived(s, entry.index + entryLength(stored) - 1);
    }
  }

  private receiveBlock(packet: BlockPacket): void {
    const s = packet.senderIndex;
    const limits = this.limits;
    if (
      s >= this.senderCount ||
      this.senderRanks[s] === this.myRank ||
      packet.totalBytes <= limits.smcPayloadBytesMax ||
      packet.totalBytes > limits.payloadBytesMax ||
      packet.block >= Math.ceil(packet.totalBytes / limits.blockBytes) ||
      packet.bytes.length !==
        Math.min(limits.blockBytes, packet.totalBytes - packet.block * limits.blockBytes)
    ) {
      this.counters.malformedDropped++;
      return;
    }
    const key = s * 2 ** 32 + packet.index;
    let transfer = this.rdmc.get(key);
    if (transfer === undefined) {
      // Already complete here and every relay done: a late duplicate.
      if (this.streams[s]!.has(packet.index)) {
        this.counters.duplicatesDropped++;
        return;
      }
      const originRank = this.senderRanks[s]!;
      const relativeRank = (this.myRank - originRank + this.members.length) % this.members.length;
      const blockCount = Math.ceil(packet.totalBytes / limits.blockBytes);
      const outgoing = this.outgoingFor(blockCount)[relativeRank]!;
      const state = new RdmcTransferState(packet.totalBytes, limits.blockBytes, outgoing, undefined, this.allocateMessage);
      const timestamp = packet.timestamp;
      transfer = { state, senderIndex: s, index: packet.index, originRank, timestamp };
      this.rdmc.set(key, transfer);
    } else if (transfer.state.totalBytes !== packet.totalBytes) {
      this.counters.malformedDropped++;
      return;
    }
    if (!transfer.state.receiveBlock(packet.block, packet.bytes)) {
      this.counters.duplicatesDropped++;
      return;
    }
    if (transfer.state.complete) {
      const payload = transfer.state.message();
      const stored: StoredEntry = {
        kind: 'message', index: packet.index, timestamp: transfer.timestamp, payload, large: true,
      };
      if (this.streams[s]!.insert(stored)) {
        this.noteReceived(s, packet.index);
        this.holdForRepair(key, transfer, payload);
      }
      if (transfer.state.finished) this.endTransfer(key);
    }
  }

  /**
   * The null rule (Derecho, research §1.2): having received index i from sender r, a sender
   * ranked before r must itself have sent index i, one ranked after r index i−1, so that every
   * position before (i, r) in the round robin gets filled. Nulls are thus only ever a reaction.
   * Here every other sender fills through index i, also one ranked after r (one null more, in
   * the same run): then the positions before r's *next* message are already filled when it
   * arrives, and a lone sender's message is stable after one exchange (its packet out, every
   * member's report back) instead of two. Still only a reaction: an index is only ever filled
   * up to one some member really sent (or that one of these nulls reacts to, no further).
   */
  private noteReceived(senderIndex: number, lastIndex: number): void {
    if (this.mode !== 'ordered' || this.mySenderIndex < 0) return;
    if (senderIndex === this.mySenderIndex) return;
    const need = lastIndex + 1;
    if (need > this.requiredNextIndex) this.requiredNextIndex = need;
  }

  private mergeRow(rank: number, report: ReceiveReport): void {
    if (report.receivedCounts.length !== this.senderCount) {
      this.counters.malformedDropped++;
      return;
    }
    const row = this.rows[rank]!;
    const progress = this.progressMicros[rank]!;
    report.receivedCounts.forEach((c, s) => {
      if (c > row.receivedCounts[s]!) {
        row.receivedCounts[s] = c;
        progress[s] = this.nowMicros;
      }
    });
    row.contiguousCount = Math.max(row.contiguousCount, report.contiguousCount);
    row.deliveredCount = Math.max(row.deliveredCount, report.deliveredCount);
    if (report.persistedVersion > row.persistedVersion) {
      row.persistedVersion = report.persistedVersion;
    }
    if (report.stabilityFrontierMicros > row.stabilityFrontierMicros) {
      row.stabilityFrontierMicros = report.stabilityFrontierMicros;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Delivering

  private positionOf(senderIndex: number, index: number): number {
    return index * this.senderCount + senderIndex;
  }

  /** Positions below this all arrived here: min over senders of their first missing position. */
  private contiguousCount(): number {
    const streams = this.streams;
    if (streams.length === 0) return 0;
    let count = this.positionOf(0, streams[0]!.receivedCount);
    for (let s = 1; s < streams.length; s++) {
      const position = this.positionOf(s, streams[s]!.receivedCount);
      if (position < count) count = position;
    }
    return count;
  }

  /** Delivers every position that every member has received (global stability). */
  private deliverStable(): void {
    this.refreshOwnRow();
    const stableCount = this.minNumberField('contiguousCount');
    while (this.deliveredCount < stableCount) this.deliverNextPosition();
  }

  private deliverNextPosition(): void {
    const position = this.deliveredCount;
    const s = position % this.senderCount;
    const index = (position - s) / this.senderCount;
    const stream = this.streams[s]!;
    assert(stream.deliveredIndexCount === index, 'round-robin delivery walks each sender in order');
    const entry = stream.advance();
    this.deliveredCount = position + 1;
    if (entry.kind === 'message') {
      // makeVersion(viewId, position), with the view's half computed once (BigInts allocate).
      assert(position <= 0xffff_ffff, 'a view ends before 2^32 positions');
      const version = (this.versionBase | BigInt(position)) as Version;
      this.lastDeliveredVersion = version;
      this.lastDeliveredMessageOf[this.senderRanks[s]!] = version;
      this.deliveries.push(this.deliveryOf(s, entry, position, version));
    }
  }

  private deliveryOf(
    s: number,
    entry: Extract<StoredEntry, { kind: 'message' }>,
    position: number,
    version: Version | null,
  ): Delivery {
    if (entry.large === true && this.senderRanks[s] !== this.myRank) {
      // A received RDMC message: held on until its relays and repairs are done (releasedReceived).
      // Ordered delivery means every member received it: no repair will be needed.
      const key = s * 2 ** 32 + entry.index;
      if (version !== null) this.repairs.delete(key);
      this.deliveredLarge.set(key, entry.payload);
      this.letGoReceived(key);
    }
    return {
      viewId: this.viewId,
      sender: this.members[this.senderRanks[s]!]!,
      senderIndex: s,
      index: entry.index,
      position,
      version,
      timestamp: entry.timestamp,
      payload: entry.payload,
      large: entry.large === true,
    };
  }

  /** Raw mode: deliver sender s's messages as they arrive, in its own order. */
  private deliverRawUpTo(s: number, countMax: number): void {
    const stream = this.streams[s]!;
    while (stream.deliveredIndexCount < countMax) {
      const index = stream.deliveredIndexCount;
      const entry = stream.advance();
      if (entry.kind === 'message') {
        this.deliveries.push(this.deliveryOf(s, entry, this.positionOf(s, index), null));
      }
    }
  }

  /** Ordered mode, ragged edge: the positions of every (s, i) with i < trim[s], in order. */
  private deliverUpToTrim(trim: readonly number[]): void {
    let end = 0;
    trim.forEach((count, s) => {
      if (count > 0) end = Math.max(end, this.positionOf(s, count - 1) + 1);
    });
    // Everything delivered so far was stable, hence received by every survivor: within the trim.
    this.streams.forEach((stream, s) =>
      assert(stream.deliveredIndexCount <= trim[s]!, `sender ${s} delivered beyond the trim`),
    );
    for (let position = this.deliveredCount; position < end; position++) {
      const s = position % this.senderCount;
      const index = (position - s) / this.senderCount;
      if (index < trim[s]!) {
        this.deliveredCount = position;
        this.deliverNextPosition();
      }
    }
    this.deliveredCount = Math.max(this.deliveredCount, end);
  }

  // ------------------------------------------------------------------------------------------
  // Sending

  private fillNulls(): void {
    if (this.requiredNextIndex <= this.nextIndex) return;
    const count = this.requiredNextIndex - this.nextIndex;
    const index = this.nextIndex;
    this.streams[this.mySenderIndex]!.insert({ kind: 'null', index, count });
    this.transmitQueue.push({ kind: 'null', index, count });
    this.nextIndex = this.requiredNextIndex;
    this.counters.nullsSent += count;
  }

  /**
   * Own messages done everywhere leave the window: delivered by every member (ordered) or
   * received by every member (raw).
   */
  private pruneInFlight(): void {
    // Ordered: done once delivered everywhere, i.e. its position is below every member's
    // delivered count; raw: once its index is below every member's received count.
    const s = this.mySenderIndex;
    const indexEnd =
      this.mode === 'ordered'
        ? Math.ceil((this.minNumberField('deliveredCount') - s) / this.senderCount)
        : this.minReceivedCount(s);
    const inFlight = this.ownInFlight;
    let done = 0;
    while (done < inFlight.length && inFlight.at(done)!.index < indexEnd) {
      this.released.push(inFlight.at(done)!.payload);
      done++;
    }
    inFlight.drop(done);
  }

  /** Moves queued own messages and nulls out while the window allows; starts RDMC transfers. */
  private transmit(): SmcEntry[] {
    const entries: SmcEntry[] = [];
    if (this.mySenderIndex < 0) return entries;
    this.refreshOwnRow();
    this.pruneInFlight();
    let taken = 0;
    for (const item of this.transmitQueue) {
      if (item.kind === 'null') {
        const last = entries[entries.length - 1];
        if (last !== undefined && last.kind === 'null' && last.index + last.count === item.index) {
          const count = last.count + item.count;
          entries[entries.length - 1] = { kind: 'null', index: last.index, count };
        } else {
          entries.push({ kind: 'null', index: item.index, count: item.count });
        }
        taken++;
        continue;
      }
      if (this.ownInFlight.length >= this.limits.windowSize) break;
      const { timestamp, payload } = item;
      this.ownInFlight.push(item);
      this.queuedMessageCount--;
      taken++;
      if (!item.large) {
        entries.push(item);
      } else if (this.members.length > 1) {
        const blockCount = Math.ceil(payload.length / this.limits.blockBytes);
        const outgoing = this.outgoingFor(blockCount)[0]!;
        const blockBytes = this.limits.blockBytes;
        const state = new RdmcTransferState(payload.length, blockBytes, outgoing, payload);
        const senderIndex = this.mySenderIndex;
        const key = senderIndex * 2 ** 32 + item.index;
        const index = item.index;
        const transfer = { state, senderIndex, index, originRank: this.myRank, timestamp };
        this.rdmc.set(key, transfer);
        this.holdForRepair(key, transfer, payload);
      }
    }
    this.transmitQueue.drop(taken);
    return entries;
  }

  private holdForRepair(key: number, transfer: RdmcInFlight, payload: Uint8Array): void {
    this.repairs.set(key, {
      senderIndex: transfer.senderIndex,
      index: transfer.index,
      originRank: transfer.originRank,
      timestamp: transfer.timestamp,
      payload,
      heldSinceMicros: this.nowMicros,
      repaired: new Set(),
    });
  }

  /**
   * RDMC repair (see README): the relay schedule makes each member depend on one upstream
   * member per block, so a relay that died (or whose link did) strands everyone behind it until
   * the view change, which then trims the message off and has its origin send it again. Here a
   * member that holds a large message whole sends all its blocks straight to every member whose
   * report shows it stuck at that very message, once per member, when its reports have shown no
   * progress on the sender's stream for (1 + this member's rank relative to the origin) ×
   * `rdmc_repair_ms` × the message's block count: the origin first, the others only if that did not help. Checked once per
   * clock advance; duplicates are harmless (receivers drop blocks they hold).
   * Only a dead upstream is repaired around: if every member the schedule has sending blocks of
   * this message to the stuck one is this member itself (its sends are in the reliable
   * transport's hands; sending again over the same session adds nothing) or has been heard
   * from within the wait (alive: its sends will arrive), the stall is a slow link or a busy
   * machine, and a repair would only add a duplicate MiB to the overload.
   */
  private repairStalledTransfers(): void {
    if (this.repairs.size === 0 || this.nowMicros === this.repairCheckedMicros) return;
    this.repairCheckedMicros = this.nowMicros;
    const n = this.members.length;
    for (const [key, c] of this.repairs) {
      if (c.heldSinceMicros === 0) c.heldSinceMicros = this.nowMicros;
      const relativeRank = (this.myRank - c.originRank + n) % n;
      // Per block: a member legitimately shows no progress for as long as one message takes.
      const blockCount = Math.ceil(c.payload.length / this.limits.blockBytes);
      const waitMicros = this.limits.rdmcRepairMicros * (1 + relativeRank) * blockCount;
      let missing = 0;
      for (let rank = 0; rank < n; rank++) {
        const count = this.rows[rank]!.receivedCounts[c.senderIndex]!;
        if (rank === this.myRank || count > c.index) continue;
        missing++;
        // Only the message the member is stuck at (its next one from this sender): later ones
        // may simply be queued behind it, and a burst of large messages must not all be
        // repaired at once.
        if (count !== c.index) continue;
        // Stalled: no progress on this sender's stream at that member for the whole wait (a
        // slow but moving transfer, e.g. a queue of large messages, is left alone).
        const since = Math.max(c.heldSinceMicros, this.progressMicros[rank]![c.senderIndex]!);
        if (this.nowMicros - since < waitMicros || c.repaired.has(rank)) continue;
        if (!this.upstreamSilent(c, rank, blockCount, waitMicros)) continue;
        c.repaired.add(rank);
        this.sendWhole(c, rank);
        this.counters.rdmcRepairs++;
      }
      if (missing === 0) {
        this.repairs.delete(key);
        this.letGoReceived(key);
      }
    }
  }

  /**
   * True if a member that the schedule has sending blocks of `c` to `rank` is another member
   * whose reports have stopped for `waitMicros` (dead, or its link is).
   */
  private upstreamSilent(c: RepairCandidate, rank: number, blockCount: number, waitMicros: number): boolean {
    const n = this.members.length;
    const target = (rank - c.originRank + n) % n;
    const outgoing = this.outgoingFor(blockCount);
    for (let from = 0; from < n; from++) {
      const upstream = (c.originRank + from) % n;
      if (upstream === this.myRank || !outgoing[from]!.some((t) => t.to === target)) continue;
      const heard = Math.max(c.heldSinceMicros, this.heardMicros[upstream]!);
      if (this.nowMicros - heard >= waitMicros) return true;
    }
    return false;
  }

  private sendWhole(c: RepairCandidate, rank: number): void {
    const blockBytes = this.limits.blockBytes;
    const totalBytes = c.payload.length;
    for (let block = 0; block * blockBytes < totalBytes; block++) {
      const start = block * blockBytes;
      this.packets.push({
        to: [this.members[rank]!],
        packet: {
          kind: 'block',
          viewId: this.viewId,
          fromRank: this.myRank,
          senderIndex: c.senderIndex,
          index: c.index,
          timestamp: c.timestamp,
          totalBytes,
          block,
          bytes: c.payload.subarray(start, Math.min(totalBytes, start + blockBytes)),
        },
      });
      this.counters.blockPacketsSent++;
    }
  }

  private endTransfer(key: number): void {
    this.rdmc.delete(key);
    this.letGoReceived(key);
  }

  /** A received large message `key` is let go once delivered and out of every relay and repair. */
  private letGoReceived(key: number): void {
    const payload = this.deliveredLarge.get(key);
    if (payload === undefined || this.rdmc.has(key) || this.repairs.has(key)) return;
    this.deliveredLarge.delete(key);
    this.releasedReceived.push(payload);
  }

  private relayBlocks(): void {
    for (const [key, transfer] of this.rdmc) {
      for (const t of transfer.state.takeDueSends()) {
        const to = this.members[(transfer.originRank + t.to) % this.members.length]!;
        this.packets.push({
          to: [to],
          packet: {
            kind: 'block',
            viewId: this.viewId,
            fromRank: this.myRank,
            senderIndex: transfer.senderIndex,
            index: transfer.index,
            timestamp: transfer.timestamp,
            totalBytes: transfer.state.totalBytes,
            block: t.block,
            bytes: transfer.state.blockView(t.block),
          },
        });
        this.counters.blockPacketsSent++;
      }
      if (transfer.state.finished) this.endTransfer(key);
    }
  }

  /**
   * Packs entries into as few packets as the byte budget allows, each carrying this member's
   * report; with nothing to send, a report goes alone, and only if the row changed.
   */
  private emitDataPackets(entries: SmcEntry[]): void {
    if (this.peers.length === 0) return;
    this.refreshOwnRow();
    // (Urgency is read off the row itself: the copy that goes out is made only if one does.)
    if (entries.length === 0 && !this.reportUrgent(this.rows[this.myRank]!)) {
      this.reportPersistedToSenders();
      return;
    }
    const report = this.ownRowCopy();
    if (entries.length === 0) {
      this.lastSentRow = report;
      this.lazyReportDue = false;
      this.pushDataPacket(report, []);
      this.counters.reportPacketsSent++;
      return;
    }
    this.lastSentRow = report;
    this.lazyReportDue = false;
    const budget = this.limits.packetBytesMax - packetOverheadBytes(this.senderCount);
    let batch: SmcEntry[] = [];
    let bytes = 0;
    for (const entry of entries) {
      const size =
        entry.kind === 'message' ? entry.payload.length + SMC_ENTRY_OVERHEAD_BYTES : NULL_RUN_BYTES;
      if (bytes + size > budget && batch.length > 0) {
        this.pushDataPacket(report, batch);
        batch = [];
        bytes = 0;
      }
      batch.push(entry);
      bytes += size;
    }
    this.pushDataPacket(report, batch);
  }

  /**
   * Whether a row with no messages to carry goes alone now. At once when others wait on it:
   * the contiguous count (stability), the persisted version (the persisted frontier), and in raw
   * mode the per-sender received counts (raw windows and let-go read them). In ordered mode the
   * contiguous count is urgent only when it moved past a message: moved over nulls alone it
   * makes nothing deliverable anywhere (a null run that fills a gap before a message moves it
   * past that message, and that is urgent), and waits like the lazy fields. One put at a time
   * in a 3-member shard (kv bench): each member's null reaction moved the others' contiguous
   * counts once more, a second round of 6 report frames per put after the 6 that made it
   * stable. In ordered mode a
   * per-sender count that leaves the contiguous count where it was (an own send, or a message
   * beyond a gap) waits like the fields below: only RDMC repair reads it there, and its wait is
   * many ticks long (1 MiB benchmark: ~330 → ~190 report packets per member per 360 messages,
   * frames per delivered message ~2.5 → ~1.7). Changes in the
   * delivered count and the time frontier alone (each delivery and tick makes one) wait for the
   * next tick or for a report that goes anyway: they only let senders' windows move and the
   * time frontier advance, and sent at once they were about a fifth of all report packets
   * (1 MiB benchmark: ~410 → ~325 per member per 360 messages). Unless the delivered count
   * moved half a window of positions: a window must never wait for a tick.
   */
  private reportUrgent(report: ReceiveReport): boolean {
    const last = this.lastSentRow;
    // Ordered mode: a persisted version that moved is urgent only to some members
    // (reportPersistedToSenders); for the rest it waits like the lazy fields below.
    const persistedMoved = report.persistedVersion !== last.persistedVersion;
    if (persistedMoved && this.mode === 'raw') return true;
    const contiguousMoved = report.contiguousCount !== last.contiguousCount;
    if (contiguousMoved && this.mode === 'raw') return true;
    if (contiguousMoved && this.messageContiguousEnd > last.contiguousCount) return true;
    let countsChanged = contiguousMoved;
    for (let s = 0; s < report.receivedCounts.length; s++) {
      if (report.receivedCounts[s] !== last.receivedCounts[s]) countsChanged = true;
    }
    if (countsChanged && this.mode === 'raw') return true;
    const lazyChanged = countsChanged || persistedMoved || report.deliveredCount !== last.deliveredCount ||
      report.stabilityFrontierMicros !== last.stabilityFrontierMicros;
    if (!lazyChanged) return false;
    const windowPositions = (this.limits.windowSize * this.senderCount) / 2;
    return this.lazyReportDue || report.deliveredCount - last.deliveredCount >= windowPositions;
  }

  /**
   * True if a message (not a null) holds a position in [from, to). Called as the contiguous count
   * moves from `from` to `to`, before anything in that range can be delivered (a delivery needs
   * this member's contiguous count past it), so every entry there is still in its stream.
   */
  private messageBetween(from: number, to: number): boolean {
    const n = this.senderCount;
    for (let s = 0; s < n; s++) {
      // Indices of sender s whose positions i * n + s lie in [from, to).
      const first = Math.max(0, Math.ceil((from - s) / n));
      const end = Math.max(0, Math.ceil((to - s) / n));
      if (end > first && this.streams[s]!.hasUndeliveredMessageIn(first, end)) return true;
    }
    return false;
  }

  private pushDataPacket(report: ReceiveReport, entries: SmcEntry[]): void {
    this.packets.push({
      to: this.peers,
      packet: { kind: 'data', viewId: this.viewId, fromRank: this.myRank, report, entries },
    });
    for (const rank of this.peerRanks) this.persistedReportedTo[rank] = report.persistedVersion;
    if (entries.length > 0) this.counters.dataPacketsSent++;
  }

  /**
   * Ordered mode, no report going to everyone: a persisted version that moved goes at once, alone,
   * to the members that wait on it, those with a message delivered here above the persisted
   * version last reported to them (their calls' persisted() waits on every member's report); the
   * others get it with the next report to everyone (a tick at the latest). Conservative: a
   * member whose newest message here is not persisted yet still gets it (one report too many,
   * never one too few). `lastSentRow` stays as it was: for everyone else the row still changed.
   */
  private reportPersistedToSenders(): void {
    if (this.mode !== 'ordered') return;
    const row = this.rows[this.myRank]!;
    const persisted = row.persistedVersion;
    let to: NodeId[] | null = null;
    for (const rank of this.peerRanks) {
      const reported = this.persistedReportedTo[rank]!;
      if (persisted > reported && this.lastDeliveredMessageOf[rank]! > reported) {
        (to ??= []).push(this.members[rank]!);
        this.persistedReportedTo[rank] = persisted;
      }
    }
    if (to === null) return;
    const report = this.ownRowCopy();
    this.packets.push({ to, packet: { kind: 'data', viewId: this.viewId, fromRank: this.myRank, report, entries: [] } });
    this.counters.reportPacketsSent++;
  }

  // ------------------------------------------------------------------------------------------
  // Rows and frontiers

  private refreshOwnRow(): void {
    const row = this.rows[this.myRank]!;
    const counts = row.receivedCounts;
    for (let s = 0; s < this.streams.length; s++) counts[s] = this.streams[s]!.receivedCount;
    const contiguous = this.contiguousCount();
    if (contiguous > row.contiguousCount && this.mode === 'ordered' && this.messageBetween(row.contiguousCount, contiguous)) {
      this.messageContiguousEnd = contiguous;
    }
    row.contiguousCount = contiguous;
    row.deliveredCount = this.deliveredCount;
    // Time-based stability: no message stamped below this can still be delivered anywhere
    // because of this member (its unfinished messages and its future ones are all later).
    // Own stamps never decrease and both queues are in index order, so the oldest unfinished
    // own message is the head of the in-flight list, or else the first queued message.
    let frontier = this.nowMicros;
    const oldest = this.ownInFlight.at(0)?.timestamp.micros ?? this.firstQueuedMicros();
    if (oldest < frontier) frontier = oldest;
    if (frontier > row.stabilityFrontierMicros) row.stabilityFrontierMicros = frontier;
  }

  private firstQueuedMicros(): number {
    // (No message queued, only null runs: nothing to look for. The usual case at one message
    // at a time, where this runs several times per ready().)
    if (this.queuedMessageCount === 0) return Infinity;
    const queue = this.transmitQueue;
    for (let i = 0; i < queue.length; i++) {
      const q = queue.at(i)!;
      if (q.kind === 'message') return q.timestamp.micros;
    }
    return Infinity;
  }

  // Minima over every member's row, own row refreshed first, without an accessor closure per
  // call: ready() runs them on every batch of inputs, and the closures and their megamorphic
  // calls were most of ready()'s own time at one put at a time.

  private minNumberField(field: 'contiguousCount' | 'deliveredCount' | 'stabilityFrontierMicros'): number {
    this.refreshOwnRow();
    const rows = this.rows;
    let min = rows[0]![field];
    for (let r = 1; r < rows.length; r++) if (rows[r]![field] < min) min = rows[r]![field];
    return min;
  }

  private minReceivedCount(s: number): number {
    this.refreshOwnRow();
    const rows = this.rows;
    let min = rows[0]!.receivedCounts[s]!;
    for (let r = 1; r < rows.length; r++) if (rows[r]!.receivedCounts[s]! < min) min = rows[r]!.receivedCounts[s]!;
    return min;
  }

  private minPersistedVersion(): Version {
    this.refreshOwnRow();
    const rows = this.rows;
    let min = rows[0]!.persistedVersion;
    for (let r = 1; r < rows.length; r++) if (rows[r]!.persistedVersion < min) min = rows[r]!.persistedVersion;
    return min;
  }

  private outgoingFor(blockCount: number): RdmcTransfer[][] {
    const key = `${this.limits.rdmcAlgorithm}:${blockCount}`;
    let outgoing = this.scheduleCache.get(key);
    if (outgoing === undefined) {
      if (this.scheduleCache.size >= SCHEDULE_CACHE_MAX) this.scheduleCache.clear();
      const n = this.members.length;
      outgoing = outgoingByRank(rdmcSchedule(this.limits.rdmcAlgorithm, n, blockCount));
      this.scheduleCache.set(key, outgoing);
    }
    return outgoing;
  }
}
