/**
 * Every request type (transport.ts: 0..255, one handler per type per endpoint) that Squall's own
 * layers register, in one table, so that no two layers pick the same number: a second handler
 * for a type throws when it is registered, but only if both land on one endpoint, and a layer
 * that talks to another node's endpoint would reach the wrong handler there. The modules that
 * own each type export it under their own name (RAFT_REQUEST_TYPE, ...), taken from here.
 * Types 0..39 are left to tests, benchmarks and applications' own endpoints.
 */
export const REQUEST_TYPES = Object.freeze({
  /** Raft messages, muxed by Raft group id (src/runtime/raft-driver.ts, request-mux.ts). */
  raft: 40,
  /** Membership: join, leave, view-change and restart messages (src/runtime/membership-driver.ts). */
  membership: 41,
  /** Calls forwarded to a raft shard's leader (src/runtime/raft-shard-driver.ts). */
  shardForward: 44,
  /** One-way frontier reports between a raft shard's members (src/runtime/raft-ordering-engine.ts). */
  shardReport: 45,
  /** Multicast frames of every SMC/RDMC shard on an endpoint (src/runtime/multicast-driver.ts). */
  multicast: 48,
  /** Group p2p calls (src/group/wire.ts, as the rest below). */
  p2p: 60,
  /** Replies to ordered calls, batched per member and turn. */
  orderedReply: 61,
  /** Is this member running its group yet. */
  ready: 62,
  /** The current view, for clients and joiners. */
  view: 63,
  /** An external client's ordered call relayed into a shard. */
  relay: 64,
  /** `squall status`. */
  status: 65,
});

/** The lowest type the table above may use: below it, types are free for tests and applications. */
export const SQUALL_REQUEST_TYPES_FIRST = 40;
