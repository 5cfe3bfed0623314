/**
 * The data a multicast core consumes and produces: wire packets, receive reports, deliveries.
 * All plain data, so the simulator and the codec can handle them without the core.
 */
import type { Hlc } from '../core/hlc.js';
import type { NodeId, Version, ViewId } from '../core/ids.js';

/**
 * The sender's hybrid-logical-clock stamp (src/core/hlc.ts), carried with the message and handed
 * back with its delivery so that every replica stamps the version with the same time. Opaque to
 * ordering; the time-based stability frontier reads `micros`.
 */
export type MessageTimestamp = Hlc;

/**
 * One member's row of the shared state table (Derecho's SST row), as the member last published
 * it. Every field only grows, so rows that arrive late, twice or out of order merge by max.
 */
export interface ReceiveReport {
  /** Per sender index: how many of that sender's messages (nulls included) arrived contiguously. */
  readonly receivedCounts: readonly number[];
  /** How many positions of the round-robin order arrived contiguously (highest contiguous + 1). */
  readonly contiguousCount: number;
  /** How many positions this member has delivered (nulls included). */
  readonly deliveredCount: number;
  /** The newest version this member has made durable (VERSION_NONE if none). */
  readonly persistedVersion: Version;
  /**
   * Microseconds of wall time below which this member will neither send nor still be waiting
   * for the delivery of its own messages (see README, "time-based stability").
   */
  readonly stabilityFrontierMicros: number;
}

/** A small message inside an SMC packet; its sender is the packet's origin. */
export interface SmcMessageEntry {
  readonly kind: 'message';
  readonly index: number;
  readonly timestamp: MessageTimestamp;
  readonly payload: Uint8Array;
}

/** `count` consecutive nulls starting at `index` (one compressed run; never delivered). */
export interface NullRunEntry {
  readonly kind: 'null';
  readonly index: number;
  readonly count: number;
}

export type SmcEntry = SmcMessageEntry | NullRunEntry;

/**
 * An SMC packet: the sender's new messages and null runs, in index order, plus its receive
 * report. A packet with no entries is a report on its own (sent only when nothing else goes).
 */
export interface DataPacket {
  readonly kind: 'data';
  readonly viewId: number;
  readonly fromRank: number;
  readonly report: ReceiveReport | null;
  readonly entries: readonly SmcEntry[];
}

/** One RDMC block, sent by its origin or relayed by any member. */
export interface BlockPacket {
  readonly kind: 'block';
  readonly viewId: number;
  /** Rank of the member that sent this packet (the relay, not necessarily the origin). */
  readonly fromRank: number;
  /** Sender index (in the shard's sender list) of the message's origin. */
  readonly senderIndex: number;
  /** The message's index in its origin's sequence (shared with SMC messages). */
  readonly index: number;
  readonly timestamp: MessageTimestamp;
  readonly totalBytes: number;
  readonly block: number;
  readonly bytes: Uint8Array;
}

export type Packet = DataPacket | BlockPacket;

/** A packet to send to each member in `to` (the same bytes for all: encode once). */
export interface OutgoingPacket {
  readonly to: readonly NodeId[];
  readonly packet: Packet;
}

/** One delivered message, handed to the application in the order of `position`. */
export interface Delivery {
  /** The view it was delivered in. */
  readonly viewId: ViewId;
  readonly sender: NodeId;
  readonly senderIndex: number;
  /** Index in the sender's own sequence (SMC and RDMC share it). */
  readonly index: number;
  /** Global position in this view: index · senderCount + senderIndex. */
  readonly position: number;
  /** makeVersion(viewId, position); null in raw mode, where there is no total order. */
  readonly version: Version | null;
  readonly timestamp: MessageTimestamp;
  /** Owned by the receiver; may alias a packet buffer the driver handed in. */
  readonly payload: Uint8Array;
  /** True if it came by RDMC. */
  readonly large: boolean;
}

/** An own message that the ragged edge cut off, to be sent again in the next view. */
export interface ResendMessage {
  readonly index: number;
  readonly timestamp: MessageTimestamp;
  readonly payload: Uint8Array;
}
