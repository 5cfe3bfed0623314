/**
 * The ordering-engine seam (issue #12): what a shard's replica (src/group/replica.ts) needs from
 * whatever puts its ordered calls in one order. Two implementations:
 *
 *   - MulticastDriver (multicast-driver.ts): SMC/RDMC with virtual synchrony. A call is delivered
 *     once every member of the view received it; one dead member stalls the shard until a view
 *     change removes it.
 *   - RaftOrderingEngine (raft-ordering-engine.ts): the shard's members form a Raft group; a call
 *     commits on a majority, so a minority of dead members does not stall it.
 *
 * The group API (QueryResults, versions, timestamps, frontiers) is built on this interface only,
 * so it behaves the same whichever a shard's layout chooses; the difference is latency and fault
 * behaviour. Both number calls in the same 64-bit form (high 32 bits: the view id, or the Raft
 * term; low 32 bits: the position in the view, or the Raft log index), monotonic along the order.
 */
import type { Hlc } from '../core/hlc.js';
import type { NodeId, Version, ViewId } from '../core/ids.js';

/** One ordered call, handed to the replica in the shard's order (the same on every member). */
export interface OrderedDelivery {
  /** The node that made the call: replies go to it. */
  readonly sender: NodeId;
  /** Its version; null only in the multicast's raw mode (no total order). */
  readonly version: Version | null;
  /** The HLC time stamped on the call (the same on every member). */
  readonly timestamp: Hlc;
  /** Owned by the receiver, valid during the call (copy it to keep it). */
  readonly payload: Uint8Array;
}

/** What `send` resolves with: the call's numbering (version = viewId << 32 | position). */
export interface EngineReceipt {
  /** The view id (multicast) or the Raft term of the call's log entry. */
  readonly viewId: ViewId;
  /** The position in the view (multicast) or the Raft log index. */
  readonly position: number;
  readonly timestamp: Hlc;
}

export interface EngineFrontiers {
  /** The highest version durable on every current member of the shard. */
  readonly globalPersistedVersion: Version;
  /** No call stamped below this many µs can still be delivered (0: nothing known yet). */
  readonly stabilityFrontierMicros: number;
}

export interface OrderingEngine {
  /**
   * Orders `payload` (the caller keeps no reference). Resolves with its numbering once it is
   * ordered: for the multicast, once numbered in the view; for Raft, once committed by a
   * majority and applied at the leader. Rejects if it never will be (closed, timeout).
   */
  send(payload: Uint8Array): Promise<EngineReceipt>;
  /** This member's durable frontier moved (the replica's registry reports it). */
  persisted(version: Version): void;
  /** Frontier changes, for the replica's persisted and stability waits. */
  onFrontiers(listener: (frontiers: EngineFrontiers) => void): void;
  /**
   * Optional: a linearizable read barrier. Once it resolves, this member's state reflects every
   * call committed before it was called (Raft's ReadIndex). Engines without one omit it.
   */
  readBarrier?(): Promise<void>;
  close(): Promise<void>;
}
