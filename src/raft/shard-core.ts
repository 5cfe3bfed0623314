/**
 * The replicated state machine of a raft-ordered shard, between the Raft log and the application:
 * what a committed entry means, applied identically on every member. Pure and synchronous, like
 * RaftCore; the runtime feeds it committed entries in log order and the application's replies.
 *
 * **At most once across retries (Raft thesis §6.3, client sessions).** A caller registers once
 * (a `register` entry; its client id is that entry's log index, so every member assigns the same
 * id) and then numbers its calls 1, 2, 3, ... A caller that got no answer (its leader died, a
 * packet was lost) retries the same (client, seq) at any member. The machine remembers, per
 * client, the reply of every call the client has not yet acknowledged (`ackedBelow`: the caller
 * promises it has the replies of every seq below it), so a retry of an applied call returns the
 * cached reply instead of running again. Sessions are bounded (`clientsMax`): registering past
 * the bound evicts the client applied least recently, and a later call from an evicted (or
 * unknown) client is refused as `expired` rather than risk running twice.
 *
 * **Versions and times.** An applied call's version is `makeVersion(term, index)` of its entry:
 * the same 64-bit form as SMC versions (high 32 bits: the Raft term in place of the view id; low:
 * the log index), monotonic along the log because terms never decrease along it, and stable
 * across view changes because the Raft group and its log outlive them. Its timestamp is the HLC
 * the leader stamped into the entry when proposing it (`stamp`), kept strictly increasing along
 * the log: a leader stamps at least one past the latest stamp it has seen in any entry of its
 * log, so every replica indexes one history by the same, ordered times.
 *
 * Entry data (big-endian):
 *   register: u8 1
 *   call:     u8 2 | u32 client | u32 seq | u32 ackedBelow | 12-byte HLC | payload
 * An empty entry is a leader's no-op and means nothing here.
 */
import { assert } from '../core/assert.js';
import { compareHlc, decodeHlc, encodeHlc, HLC_BYTES, HLC_ZERO, hlc, type Hlc } from '../core/hlc.js';
import { makeVersion, viewId, type Version } from '../core/ids.js';
import { Packr } from 'msgpackr';
import type { Entry } from './types.js';

const KIND_REGISTER = 1;
const KIND_CALL = 2;
const CALL_HEADER_BYTES = 1 + 4 + 4 + 4 + HLC_BYTES;
const SNAPSHOT_FORMAT = 1;

/** A call as the caller submits it (the leader adds the timestamp when proposing). */
export interface ShardCall {
  readonly client: number;
  /** 1, 2, 3, ... per client; a retry reuses its seq. */
  readonly seq: number;
  /** Every seq below this has its reply at the caller; the machine may forget them. */
  readonly ackedBelow: number;
  readonly payload: Uint8Array;
}

export type ShardApplied =
  /** Nothing for the application: a leader's no-op, or a membership entry. */
  | { readonly kind: 'none'; readonly index: number }
  /** A new client session; reply `client` to whoever asked. */
  | { readonly kind: 'registered'; readonly index: number; readonly client: number }
  /** Run it; then hand the reply to `completed()` before applying the next entry. */
  | {
      readonly kind: 'call';
      readonly index: number;
      readonly call: ShardCall;
      readonly version: Version;
      readonly timestamp: Hlc;
    }
  /** A retry of a call that already ran: answer with `reply`, do not run it again. */
  | { readonly kind: 'duplicate'; readonly index: number; readonly call: ShardCall; readonly reply: Uint8Array }
  /** The session is unknown or was evicted, or the seq was already acknowledged: refuse. */
  | { readonly kind: 'expired'; readonly index: number; readonly call: ShardCall; readonly reason: string };

export interface ShardMachineConfig {
  /** Client sessions kept; registering beyond evicts the least recently applied. Default 4096. */
  clientsMax?: number;
  /** Unacknowledged replies kept per client; a call beyond is refused as expired. Default 1024. */
  repliesPerClientMax?: number;
}

interface Session {
  /** Replies of applied calls with seq ≥ ackedBelow, by seq. */
  replies: Map<number, Uint8Array>;
  ackedBelow: number;
  /** Log index of the last entry applied for this client (eviction order). */
  lastIndex: number;
}

const packr = new Packr({ useRecords: false, mapsAsObjects: false });

export function encodeRegister(): Uint8Array {
  return Uint8Array.of(KIND_REGISTER);
}

/** Encodes a call with its timestamp (leaders use `stamp`, which also keeps times ordered). */
export function encodeCall(call: ShardCall, timestamp: Hlc): Uint8Array {
  // (Messages are built only on failure: this runs for every call a leader proposes.)
  if (!isUint32(call.client)) assert(false, `shard call client must be a uint32, got ${call.client}`);
  if (!isUint32(call.seq)) assert(false, `shard call seq must be a uint32, got ${call.seq}`);
  if (!isUint32(call.ackedBelow)) assert(false, `shard call ackedBelow must be a uint32, got ${call.ackedBelow}`);
  if (!(call.seq >= 1 && call.ackedBelow <= call.seq)) assert(false, `shard call seq ${call.seq} must be ≥ 1 and ≥ ackedBelow ${call.ackedBelow}`);
  const out = new Uint8Array(CALL_HEADER_BYTES + call.payload.length);
  const dv = new DataView(out.buffer);
  out[0] = KIND_CALL;
  dv.setUint32(1, call.client);
  dv.setUint32(5, call.seq);
  dv.setUint32(9, call.ackedBelow);
  encodeHlc(timestamp, out, 13);
  out.set(call.payload, CALL_HEADER_BYTES);
  return out;
}

function isUint32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}

/** Decodes entry data; undefined for an empty entry. Throws on data this module did not write. */
export function decodeShardEntry(
  data: Uint8Array,
): undefined | { kind: 'register' } | { kind: 'call'; call: ShardCall; timestamp: Hlc } {
  if (data.length === 0) return undefined;
  if (data[0] === KIND_REGISTER && data.length === 1) return { kind: 'register' };
  assert(data[0] === KIND_CALL && data.length >= CALL_HEADER_BYTES, `not a shard entry (kind ${data[0]}, ${data.length} bytes)`);
  const dv = new DataView(data.buffer, data.byteOffset, data.length);
  return {
    kind: 'call',
    call: {
      client: dv.getUint32(1),
      seq: dv.getUint32(5),
      ackedBelow: dv.getUint32(9),
      payload: data.subarray(CALL_HEADER_BYTES),
    },
    timestamp: decodeHlc(data, 13),
  };
}

export class ShardMachine {
  private readonly sessions = new Map<number, Session>();
  private readonly clientsMax: number;
  private readonly repliesPerClientMax: number;
  private appliedIndex = 0;
  /** The latest timestamp in any entry this replica has seen (appended or applied). */
  private latestStamp: Hlc = HLC_ZERO;
  /** Set between a `call` outcome and its `completed()`. */
  private running: { client: number; seq: number } | undefined;

  constructor(config: ShardMachineConfig = {}) {
    this.clientsMax = config.clientsMax ?? 4096;
    this.repliesPerClientMax = config.repliesPerClientMax ?? 1024;
    assert(Number.isInteger(this.clientsMax) && this.clientsMax >= 1, 'clientsMax must be a positive integer');
    assert(Number.isInteger(this.repliesPerClientMax) && this.repliesPerClientMax >= 1, 'repliesPerClientMax must be a positive integer');
  }

  get applied(): number {
    return this.appliedIndex;
  }

  get clients(): number {
    return this.sessions.size;
  }

  /**
   * Leader side: encodes `call` for proposing, stamped with `now` (the driver's HLC) or, if the
   * log already holds a later time, just after it, so times never go back along the log.
   */
  stamp(call: ShardCall, now: Hlc): { data: Uint8Array; timestamp: Hlc } {
    const after = this.latestStamp.logical < 0xffff_ffff
      ? hlc(this.latestStamp.micros, this.latestStamp.logical + 1)
      : hlc(this.latestStamp.micros + 1, 0);
    const timestamp = compareHlc(now, after) >= 0 ? now : after;
    this.latestStamp = timestamp;
    return { data: encodeCall(call, timestamp), timestamp };
  }

  /** Every entry appended to this replica's log (Ready.entries), so a future leader stamps after them. */
  observeAppended(entries: readonly Entry[]): void {
    for (const e of entries) {
      if (e.data.length < CALL_HEADER_BYTES || e.data[0] !== KIND_CALL) continue;
      const t = decodeHlc(e.data, 13);
      if (compareHlc(t, this.latestStamp) > 0) this.latestStamp = t;
    }
  }

  /** Applies the next committed entry (log order) and says what it means. */
  apply(entry: Entry): ShardApplied {
    assert(this.running === undefined, `shard call ${JSON.stringify(this.running)} was applied but never completed()`);
    // In log order; a driver may skip entries that mean nothing here (no-ops, membership changes).
    assert(entry.index > this.appliedIndex, `shard entries must be applied in log order: ${entry.index} after ${this.appliedIndex}`);
    this.appliedIndex = entry.index;
    const index = entry.index;
    if (entry.type !== 0) return { kind: 'none', index };
    const decoded = decodeShardEntry(entry.data);
    if (decoded === undefined) return { kind: 'none', index };
    if (decoded.kind === 'register') {
      if (this.sessions.size >= this.clientsMax) this.evictLeastRecent();
      this.sessions.set(index, { replies: new Map(), ackedBelow: 1, lastIndex: index });
      return { kind: 'registered', index, client: index };
    }
    const { call, timestamp } = decoded;
    if (compareHlc(timestamp, this.latestStamp) > 0) this.latestStamp = timestamp;
    const session = this.sessions.get(call.client);
    if (session === undefined) {
      return { kind: 'expired', index, call, reason: `client ${call.client} has no session (never registered, or evicted)` };
    }
    session.lastIndex = index;
    if (call.ackedBelow > session.ackedBelow) {
      for (const seq of [...session.replies.keys()]) if (seq < call.ackedBelow) session.replies.delete(seq);
      session.ackedBelow = call.ackedBelow;
    }
    const cached = session.replies.get(call.seq);
    if (cached !== undefined) return { kind: 'duplicate', index, call, reply: cached };
    if (call.seq < session.ackedBelow) {
      return { kind: 'expired', index, call, reason: `seq ${call.seq} of client ${call.client} was already acknowledged` };
    }
    if (session.replies.size >= this.repliesPerClientMax) {
      return { kind: 'expired', index, call, reason: `client ${call.client} has ${session.replies.size} unacknowledged replies (limit ${this.repliesPerClientMax})` };
    }
    this.running = { client: call.client, seq: call.seq };
    return { kind: 'call', index, call, version: makeVersion(viewId(entry.term), index), timestamp };
  }

  /** The application's reply to the `call` just applied; kept until the client acknowledges it. */
  completed(reply: Uint8Array): void {
    const running = this.running;
    assert(running !== undefined, 'completed() without a call outcome from apply()');
    this.running = undefined;
    this.sessions.get(running.client)!.replies.set(running.seq, reply);
  }

  /** The sessions as snapshot bytes (deterministic: sorted by client and seq). */
  snapshot(): Uint8Array {
    assert(this.running === undefined, 'snapshot() between apply() and completed()');
    const clients = [...this.sessions.keys()].sort((a, b) => a - b).map((client) => {
      const s = this.sessions.get(client)!;
      const replies = [...s.replies.keys()].sort((a, b) => a - b).map((seq) => [seq, s.replies.get(seq)!]);
      return [client, s.ackedBelow, s.lastIndex, replies];
    });
    return packr.pack([SNAPSHOT_FORMAT, this.appliedIndex, this.latestStamp.micros, this.latestStamp.logical, clients]);
  }

  /** Replaces this machine's state with a snapshot's (a restart, or InstallSnapshot). */
  restore(bytes: Uint8Array): void {
    const [format, applied, micros, logical, clients] = packr.unpack(bytes) as [
      number, number, number, number, [number, number, number, [number, Uint8Array][]][],
    ];
    assert(format === SNAPSHOT_FORMAT, `unknown shard snapshot format ${format}`);
    this.sessions.clear();
    for (const [client, ackedBelow, lastIndex, replies] of clients) {
      this.sessions.set(client, { ackedBelow, lastIndex, replies: new Map(replies.map(([seq, r]) => [seq, Uint8Array.from(r)])) });
    }
    this.appliedIndex = applied;
    const stamp = hlc(micros, logical);
    if (compareHlc(stamp, this.latestStamp) > 0) this.latestStamp = stamp;
    this.running = undefined;
  }

  private evictLeastRecent(): void {
    let victim = -1;
    let oldest = Infinity;
    for (const [client, s] of this.sessions) {
      if (s.lastIndex < oldest || (s.lastIndex === oldest && client < victim)) {
        oldest = s.lastIndex;
        victim = client;
      }
    }
    this.sessions.delete(victim);
  }
}
