/**
 * The values Raft exchanges with its driver and its peers. Everything here is plain data: a
 * driver encodes messages for the wire (see codec.ts) and writes entries, hard state and
 * snapshots to a Storage (see storage.ts). Node ids are positive integers; 0 means "none".
 */

/** 0: no node (no vote cast, no known leader). */
export const NONE = 0;

export const EntryType = {
  /** Application data (an empty entry is the leader's no-op at the start of its term). */
  Normal: 0,
  /** A single-server membership change; data is encodeConfChange(...). */
  ConfChange: 1,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

/** A log entry. Immutable once created: the log, the wire and storage may share it. */
export interface Entry {
  readonly index: number;
  readonly term: number;
  readonly type: EntryType;
  readonly data: Uint8Array;
}

/** What must be durable before any message that depends on it is sent (Raft §5.1, Figure 2). */
export interface HardState {
  readonly term: number;
  readonly vote: number;
  readonly commit: number;
}

/** The membership: voters decide elections and commits; learners only receive the log. */
export interface ConfState {
  readonly voters: readonly number[];
  readonly learners: readonly number[];
}

export type ConfChangeOp = 'addVoter' | 'addLearner' | 'remove';
/** One server at a time (thesis §4.1): add a learner, promote it, or remove a member. */
export interface ConfChange {
  readonly op: ConfChangeOp;
  readonly node: number;
}

export interface SnapshotMeta {
  /** The last log index the snapshot covers, and its term. */
  readonly index: number;
  readonly term: number;
  /** The membership as of `index`. */
  readonly conf: ConfState;
}

export interface Snapshot {
  readonly meta: SnapshotMeta;
  /** The application's state machine at meta.index; opaque to Raft. */
  readonly data: Uint8Array;
}

/** A linearizable read may be served once the state machine has applied `index`. */
export interface ReadState {
  readonly id: number;
  readonly index: number;
}

interface Base {
  readonly from: number;
  readonly to: number;
  /** The sender's term; 0 for term-less local requests (readIndex forwarding). */
  readonly term: number;
}

export type Message =
  | (Base & {
      readonly type: 'vote' | 'prevote';
      readonly lastIndex: number;
      readonly lastTerm: number;
      /** Set by a leader transfer: voters ignore their leader lease for this request. */
      readonly transfer: boolean;
    })
  | (Base & { readonly type: 'voteResp' | 'prevoteResp'; readonly reject: boolean })
  | (Base & {
      readonly type: 'append';
      readonly prevIndex: number;
      readonly prevTerm: number;
      readonly entries: readonly Entry[];
      readonly commit: number;
    })
  | (Base & {
      readonly type: 'appendResp';
      /** On success: the follower's log matches up to here. On reject: the rejected prevIndex. */
      readonly index: number;
      readonly reject: boolean;
      /** On reject (fast backtracking): the first index of hintTerm in the follower's log, or
       *  its lastIndex+1 with hintTerm 0 if the follower's log is too short. */
      readonly hintIndex: number;
      readonly hintTerm: number;
    })
  | (Base & { readonly type: 'heartbeat'; readonly commit: number; readonly ctx: number })
  | (Base & { readonly type: 'heartbeatResp'; readonly ctx: number })
  | (Base & {
      readonly type: 'snapshot';
      readonly meta: SnapshotMeta;
      readonly offset: number;
      readonly totalBytes: number;
      readonly chunk: Uint8Array;
    })
  | (Base & {
      readonly type: 'snapshotResp';
      readonly index: number;
      /** The next byte offset the follower wants for snapshot `index`. */
      readonly offset: number;
    })
  | (Base & { readonly type: 'timeoutNow' })
  | (Base & { readonly type: 'readIndex'; readonly id: number })
  | (Base & { readonly type: 'readIndexResp'; readonly id: number; readonly index: number; readonly reject: boolean });

export type MessageType = Message['type'];

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

export interface SoftState {
  readonly lead: number;
  readonly role: Role;
}

/** Everything the driver must do, in the order README.md gives. */
export interface Ready {
  /** Persist if present (changed since the last Ready). */
  readonly hardState: HardState | undefined;
  /** A snapshot received from the leader: persist it, then restore the state machine from it. */
  readonly snapshot: Snapshot | undefined;
  /** A snapshot taken locally by compact(): persist it and drop log entries up to its index. */
  readonly compacted: Snapshot | undefined;
  /** Append to the log; entries[0].index may overwrite (truncate) an existing suffix. */
  readonly entries: readonly Entry[];
  /**
   * May be sent at once, before or while the above is persisted: a leader's appends, heartbeats
   * and snapshot chunks of a term that is already durable (thesis §10.2.1: the leader writes its
   * own log in parallel with replicating it; it counts itself toward commit only after advance()).
   */
  readonly messagesNow: readonly Message[];
  /** Send only after hardState, snapshot and entries above are durable (votes, acknowledgements). */
  readonly messages: readonly Message[];
  /** Apply in order (after the snapshot, if any). ConfChange entries are informational. */
  readonly committed: readonly Entry[];
  readonly readStates: readonly ReadState[];
  /** Present if leader or role changed. */
  readonly softState: SoftState | undefined;
  /**
   * Whether the driver must wait for the writes above to be durable before sending `messages`
   * and applying `committed`. False when the only change is the hard state's commit index: a
   * commit index is a fact about a majority's logs, not a promise this node made, so it may be
   * written lazily (a crash that loses it only makes the node re-learn it).
   */
  readonly mustSync: boolean;
  /**
   * The writes above are only the leader's own: new entries of its current term (and perhaps a
   * commit index or a compaction), no term or vote change, no snapshot to install and nothing in
   * `messages`. The driver may then finish this Ready — send, apply, `advance({ persisted:
   * false })` — without waiting for the write, and report it later with `persisted(index,
   * term)`; the leader counts itself toward commit only from then on (thesis §10.2.1: the leader
   * writes its log in parallel with replicating it). Its committed entries may be applied before
   * its own copy is durable: committed means durable on a majority, so a crash here only makes
   * this node re-learn them (etcd raft applies such entries too with asynchronous storage).
   */
  readonly persistAsync: boolean;
}

export function encodeConfChange(cc: ConfChange): Uint8Array {
  const out = new Uint8Array(5);
  out[0] = cc.op === 'addVoter' ? 1 : cc.op === 'addLearner' ? 2 : 3;
  new DataView(out.buffer).setUint32(1, cc.node);
  return out;
}

export function decodeConfChange(data: Uint8Array): ConfChange {
  if (data.length !== 5 || data[0]! < 1 || data[0]! > 3) throw new Error('malformed ConfChange entry');
  const op: ConfChangeOp = data[0] === 1 ? 'addVoter' : data[0] === 2 ? 'addLearner' : 'remove';
  return { op, node: new DataView(data.buffer, data.byteOffset, 5).getUint32(1) };
}

export function applyConfChange(conf: ConfState, cc: ConfChange): ConfState {
  const voters = conf.voters.filter((n) => n !== cc.node);
  const learners = conf.learners.filter((n) => n !== cc.node);
  if (cc.op === 'addVoter') voters.push(cc.node);
  if (cc.op === 'addLearner') learners.push(cc.node);
  return { voters: voters.sort((a, b) => a - b), learners: learners.sort((a, b) => a - b) };
}

export const EMPTY_CONF: ConfState = { voters: [], learners: [] };

/** `base` with the conf change entries among `entries` applied in their order. */
export function withConfChanges(base: ConfState, entries: Iterable<Entry>): ConfState {
  let conf = base;
  for (const e of entries) if (e.type === EntryType.ConfChange) conf = applyConfChange(conf, decodeConfChange(e.data));
  return conf;
}
