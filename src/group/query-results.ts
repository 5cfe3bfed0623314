/**
 * QueryResults<R>: what an ordered call returns at once, before anything is delivered.
 *
 *   const results = kv.ordered.put('k', 'v');
 *   const replies = await results;            // Map<NodeId, R>: every shard member's reply
 *   await results.replies.get(node);          // one member's reply, on its own
 *   await results.version;                    // the version the call was numbered with
 *   await results.delivered();                // delivered (and applied) on this node
 *   await results.localPersisted();           // its version is durable on this node
 *   await results.persisted();                // durable on every member of the shard
 *
 * Awaiting the map rejects with the first member's error if a member's reply is an error (an
 * exception in the method arrives as that member's RemoteError; replicas are deterministic, so
 * normally all of them throw alike). Per-member promises never reject unhandled: each one is
 * observed here, and awaiting it still gives its rejection.
 */
import { decodeReply } from '../../decorators/codec.js';
import type { Hlc } from '../core/hlc.js';
import type { NodeId, Version } from '../core/ids.js';

/** Version and HLC time the shard's multicast gave an ordered call. */
export interface OrderedReceipt {
  readonly version: Version;
  readonly timestamp: Hlc;
}

/**
 * How a QueryResults waits for the frontiers of its shard on this node: each resolves with
 * `version` once that frontier reached it (so a call's wait is one promise, not a chain).
 */
export interface ShardFrontierWaits {
  whenDelivered(version: Version): Promise<Version>;
  whenLocalPersisted(version: Version): Promise<Version>;
  whenPersisted(version: Version): Promise<Version>;
}

/** Which frontier a wait is for. */
const enum Frontier { Delivered, LocalPersisted, Persisted }

/** A frontier wait asked for before the call was numbered: settled by numbered() or failAll(). */
interface EarlyWait {
  readonly frontier: Frontier;
  readonly resolve: (version: Version | Promise<Version>) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * One member's reply. Its promise is made only when someone asks for it (replies.get, iteration,
 * awaiting the QueryResults), and its bytes are decoded only then: a caller that waits for
 * delivered()/persisted() and never looks at replies pays for neither (a put through the
 * kv-store bench saved ~3 decodes and ~6 promises per call). The outcome is the same either way:
 * decoding is a pure function of the bytes, and a rejection made later is observed the same way.
 */
/**
 * A pending promise's settle functions. Method signatures (bivariant), so QueryResults<string>
 * stays assignable to QueryResults<unknown> as a covariant result type should be.
 */
interface Settlers<R> {
  resolve(value: R): void;
  reject(error: unknown): void;
}

class ReplySlot<R> {
  /** 0 pending, 1 bytes arrived, 2 failed (removed, closed, not sent). */
  state: 0 | 1 | 2 = 0;
  bytes: Uint8Array | undefined;
  error: unknown;
  private promise: Promise<R> | undefined;
  private settlers: Settlers<R> | undefined;

  constructor(readonly node: NodeId) {}

  /** The member's reply as a promise (always the same one). */
  get(): Promise<R> {
    if (this.promise !== undefined) return this.promise;
    if (this.state === 1) this.promise = this.decoded();
    else if (this.state === 2) this.promise = Promise.reject(this.error);
    else {
      this.promise = new Promise<R>((resolve, reject) => {
        this.settlers = { resolve, reject };
      });
    }
    this.promise.catch(() => undefined); // observed: a caller that never looks gets no unhandled error
    return this.promise;
  }

  settle(bytes: Uint8Array): void {
    this.state = 1;
    this.bytes = bytes;
    const settlers = this.settlers;
    if (settlers !== undefined) {
      this.settlers = undefined;
      try {
        settlers.resolve(decodeReply<R>(bytes, this.node));
      } catch (error) {
        settlers.reject(error);
      }
    }
  }

  fail(error: unknown): void {
    this.state = 2;
    this.error = error;
    const settlers = this.settlers;
    if (settlers !== undefined) {
      this.settlers = undefined;
      settlers.reject(error);
    }
  }

  private decoded(): Promise<R> {
    try {
      return Promise.resolve(decodeReply<R>(this.bytes!, this.node));
    } catch (error) {
      return Promise.reject(error);
    }
  }
}

/** Each member's reply promise, keyed by node id in shard-rank order (made on demand). */
class ReplyMap<R> implements ReadonlyMap<NodeId, Promise<R>> {
  constructor(private readonly slots: ReadonlyMap<NodeId, ReplySlot<R>>) {}

  get size(): number {
    return this.slots.size;
  }
  get(node: NodeId): Promise<R> | undefined {
    return this.slots.get(node)?.get();
  }
  has(node: NodeId): boolean {
    return this.slots.has(node);
  }
  keys(): MapIterator<NodeId> {
    return this.slots.keys();
  }
  *values(): MapIterator<Promise<R>> {
    for (const slot of this.slots.values()) yield slot.get();
  }
  *entries(): MapIterator<[NodeId, Promise<R>]> {
    for (const [node, slot] of this.slots) yield [node, slot.get()];
  }
  [Symbol.iterator](): MapIterator<[NodeId, Promise<R>]> {
    return this.entries();
  }
  forEach(callback: (value: Promise<R>, key: NodeId, map: ReadonlyMap<NodeId, Promise<R>>) => void, thisArg?: unknown): void {
    for (const [node, slot] of this.slots) callback.call(thisArg, slot.get(), node, this);
  }
  get [Symbol.toStringTag](): string {
    return 'Map';
  }
}

export class QueryResults<R> implements PromiseLike<ReadonlyMap<NodeId, R>> {
  private readonly slots = new Map<NodeId, ReplySlot<R>>();
  private replyMap: ReplyMap<R> | undefined;
  /** delivered()/persisted()/localPersisted() asked for before numbered(). */
  private early: EarlyWait[] | undefined;
  private all: Promise<ReadonlyMap<NodeId, R>> | undefined;
  /** The version the call was delivered at on this node (numbered()), or the send's failure. */
  private deliveredAt: Version | undefined;
  private failure: { readonly error: unknown } | undefined;
  private numbering: Settlers<Version> | undefined;
  private versionPromise: Promise<Version> | undefined;
  private timestampPromise: Promise<Hlc> | undefined;
  private unsettledCount: number;

  /**
   * @internal Built by the group layer; `sent` resolves when the multicast took the call (its
   * timestamp is final, its version only once `numbered()` confirms it at delivery). If sending
   * fails, every reply fails with the same error, then `onSendFailed` runs.
   */
  constructor(
    readonly method: string,
    members: readonly NodeId[],
    private readonly sent: Promise<{ readonly timestamp: Hlc }>,
    private readonly waits: ShardFrontierWaits,
    onSendFailed?: () => void,
  ) {
    for (const node of members) this.slots.set(node, new ReplySlot<R>(node));
    this.unsettledCount = this.slots.size;
    sent.catch((error: unknown) => {
      this.failAll(error);
      onSendFailed?.();
    });
  }

  /** Each member's reply, keyed by node id, in shard-rank order. */
  get replies(): ReadonlyMap<NodeId, Promise<R>> {
    return (this.replyMap ??= new ReplyMap(this.slots));
  }

  /**
   * @internal Each member's reply bytes that arrived (a relaying member forwards them), in
   * shard-rank order. Built when asked for: only a relayed call asks.
   */
  get rawReplies(): ReadonlyMap<NodeId, Uint8Array> {
    const raw = new Map<NodeId, Uint8Array>();
    for (const [node, slot] of this.slots) if (slot.state === 1) raw.set(node, slot.bytes!);
    return raw;
  }

  /**
   * The call's version (view id << 32 | position in the view), once it is delivered on this
   * node: a call that a view change cut off is re-sent with a new number, so the send's is not
   * final.
   */
  get version(): Promise<Version> {
    if (this.versionPromise === undefined) {
      if (this.deliveredAt !== undefined) this.versionPromise = Promise.resolve(this.deliveredAt);
      else if (this.failure !== undefined) this.versionPromise = Promise.reject(this.failure.error);
      else this.versionPromise = new Promise<Version>((resolve, reject) => (this.numbering = { resolve, reject }));
      this.versionPromise.catch(() => undefined);
    }
    return this.versionPromise;
  }

  /** The sender's HLC time stamped on the call (the same on every replica). */
  get timestamp(): Promise<Hlc> {
    if (this.timestampPromise === undefined) {
      this.timestampPromise = this.sent.then((r) => r.timestamp);
      this.timestampPromise.catch(() => undefined);
    }
    return this.timestampPromise;
  }

  /** Resolves with the version once the call was delivered and applied on this node. */
  delivered(): Promise<Version> {
    return this.afterNumbered(Frontier.Delivered);
  }

  /** Resolves with the version once it is durable on this node. */
  localPersisted(): Promise<Version> {
    return this.afterNumbered(Frontier.LocalPersisted);
  }

  /** Resolves with the version once it is durable on every member of the shard. */
  persisted(): Promise<Version> {
    return this.afterNumbered(Frontier.Persisted);
  }

  /**
   * The wait for `frontier` to reach the call's version, once it is numbered; rejects if sending
   * failed. Asked before numbering, one pending promise that numbered() hands the wait (a
   * closed-loop caller asks for delivered() right after the call: this was a chain of ~7
   * promises and 4 closures per call).
   */
  private afterNumbered(frontier: Frontier): Promise<Version> {
    const version = this.deliveredAt;
    if (version !== undefined) return this.waitFor(frontier, version);
    if (this.failure !== undefined) return Promise.reject(this.failure.error);
    return new Promise<Version>((resolve, reject) => (this.early ??= []).push({ frontier, resolve, reject }));
  }

  private waitFor(frontier: Frontier, version: Version): Promise<Version> {
    if (frontier === Frontier.Delivered) return this.waits.whenDelivered(version);
    if (frontier === Frontier.Persisted) return this.waits.whenPersisted(version);
    return this.waits.whenLocalPersisted(version);
  }

  then<A = ReadonlyMap<NodeId, R>, B = never>(
    onFulfilled?: ((value: ReadonlyMap<NodeId, R>) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    // After the send: a call held for an inadequate subgroup learns its members only then.
    this.all ??= this.sent.then(() => Promise.all(
      [...this.replies].map(async ([node, p]) => [node, await p] as const),
    )).then((entries) => new Map(entries) as ReadonlyMap<NodeId, R>);
    return this.all.then(onFulfilled, onRejected);
  }

  /** @internal The call was delivered on this node at `version`. */
  numbered(version: Version): void {
    if (this.deliveredAt !== undefined || this.failure !== undefined) return;
    this.deliveredAt = version;
    this.numbering?.resolve(version);
    const early = this.early;
    if (early !== undefined) {
      this.early = undefined;
      for (const wait of early) wait.resolve(this.waitFor(wait.frontier, version));
    }
  }

  /** @internal A member's reply bytes arrived (decoded when asked for, with that member's id). */
  settleReply(node: NodeId, replyBytes: Uint8Array): void {
    const slot = this.slots.get(node);
    if (slot === undefined || slot.state !== 0) return;
    this.unsettledCount--;
    slot.settle(replyBytes);
  }

  /** @internal A member will not reply (removed, or the group closed). */
  failReply(node: NodeId, error: unknown): void {
    const slot = this.slots.get(node);
    if (slot === undefined || slot.state !== 0) return;
    this.unsettledCount--;
    slot.fail(error);
  }

  /**
   * @internal The shard's members when a held call is sent (see Group.awaitAdequate): a reply is
   * awaited from each, also those that joined while it was held.
   */
  addMembers(members: readonly NodeId[]): void {
    for (const node of members) {
      if (this.slots.has(node)) continue;
      this.slots.set(node, new ReplySlot<R>(node));
      this.unsettledCount++;
    }
  }

  /** @internal Fails the replies still awaited from the nodes `removed` selects. */
  failMembersWhere(removed: (node: NodeId) => boolean, error: (node: NodeId) => unknown): void {
    for (const [node, slot] of this.slots) if (slot.state === 0 && removed(node)) this.failReply(node, error(node));
  }

  /** @internal Also the version, if the call was not delivered here. */
  failAll(error: unknown): void {
    if (this.deliveredAt === undefined && this.failure === undefined) {
      this.failure = { error };
      this.numbering?.reject(error);
      const early = this.early;
      this.early = undefined;
      for (const wait of early ?? []) wait.reject(error);
    }
    for (const node of this.slots.keys()) this.failReply(node, error);
  }

  /** @internal True once every member's reply settled. */
  get complete(): boolean {
    return this.unsettledCount === 0;
  }
}
