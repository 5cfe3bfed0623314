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

/** How a QueryResults waits for the frontiers of its shard on this node. */
export interface ShardFrontierWaits {
  whenDelivered(version: Version): Promise<void>;
  whenLocalPersisted(version: Version): Promise<void>;
  whenPersisted(version: Version): Promise<void>;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
  settled: boolean;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred<T> = {
    promise,
    settled: false,
    resolve: (value) => {
      if (d.settled) return;
      d.settled = true;
      resolve(value);
    },
    reject: (error) => {
      if (d.settled) return;
      d.settled = true;
      reject(error);
    },
  };
  promise.catch(() => undefined); // observed: a caller that never looks gets no unhandled error
  return d;
}

export class QueryResults<R> implements PromiseLike<ReadonlyMap<NodeId, R>> {
  /** Each member's reply, keyed by node id, in shard-rank order. */
  readonly replies: ReadonlyMap<NodeId, Promise<R>>;
  /**
   * The call's version (view id << 32 | position in the view), once it is delivered on this
   * node: a call that a view change cut off is re-sent with a new number, so the send's is not
   * final.
   */
  readonly version: Promise<Version>;
  /** The sender's HLC time stamped on the call (the same on every replica). */
  readonly timestamp: Promise<Hlc>;
  private readonly pending = new Map<NodeId, Deferred<R>>();
  private readonly numbering = deferred<Version>();
  /** @internal Each member's reply bytes as they arrived (a relaying member forwards them). */
  readonly rawReplies = new Map<NodeId, Uint8Array>();
  private all: Promise<ReadonlyMap<NodeId, R>> | undefined;

  /**
   * @internal Built by the group layer; `sent` resolves when the multicast took the call (its
   * timestamp is final, its version only once `numbered()` confirms it at delivery).
   */
  constructor(
    readonly method: string,
    members: readonly NodeId[],
    sent: Promise<OrderedReceipt>,
    private readonly waits: ShardFrontierWaits,
  ) {
    const replies = new Map<NodeId, Promise<R>>();
    for (const node of members) {
      const d = deferred<R>();
      this.pending.set(node, d);
      replies.set(node, d.promise);
    }
    this.replies = replies;
    this.version = this.numbering.promise;
    this.timestamp = sent.then((r) => r.timestamp);
    // If sending fails, every reply fails with the same error.
    sent.catch((error: unknown) => this.failAll(error));
    this.version.catch(() => undefined);
    this.timestamp.catch(() => undefined);
  }

  /** Resolves with the version once the call was delivered and applied on this node. */
  delivered(): Promise<Version> {
    return this.version.then((v) => this.waits.whenDelivered(v).then(() => v));
  }

  /** Resolves with the version once it is durable on this node. */
  localPersisted(): Promise<Version> {
    return this.version.then((v) => this.waits.whenLocalPersisted(v).then(() => v));
  }

  /** Resolves with the version once it is durable on every member of the shard. */
  persisted(): Promise<Version> {
    return this.version.then((v) => this.waits.whenPersisted(v).then(() => v));
  }

  then<A = ReadonlyMap<NodeId, R>, B = never>(
    onFulfilled?: ((value: ReadonlyMap<NodeId, R>) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    this.all ??= Promise.all(
      [...this.replies].map(async ([node, p]) => [node, await p] as const),
    ).then((entries) => new Map(entries) as ReadonlyMap<NodeId, R>);
    return this.all.then(onFulfilled, onRejected);
  }

  /** @internal The call was delivered on this node at `version`. */
  numbered(version: Version): void {
    this.numbering.resolve(version);
  }

  /** @internal A member's reply bytes arrived (decoded here, with that member's node id). */
  settleReply(node: NodeId, replyBytes: Uint8Array): void {
    const d = this.pending.get(node);
    if (d === undefined || d.settled) return;
    this.rawReplies.set(node, replyBytes);
    try {
      d.resolve(decodeReply<R>(replyBytes, node));
    } catch (error) {
      d.reject(error);
    }
  }

  /** @internal A member will not reply (removed, or the group closed). */
  failReply(node: NodeId, error: unknown): void {
    this.pending.get(node)?.reject(error);
  }

  /** @internal Fails the replies still awaited from the nodes `removed` selects. */
  failMembersWhere(removed: (node: NodeId) => boolean, error: (node: NodeId) => unknown): void {
    for (const [node, d] of this.pending) if (!d.settled && removed(node)) d.reject(error(node));
  }

  /** @internal Also the version, if the call was not delivered here. */
  failAll(error: unknown): void {
    this.numbering.reject(error);
    for (const d of this.pending.values()) d.reject(error);
  }

  /** @internal True once every member's reply settled. */
  get complete(): boolean {
    for (const d of this.pending.values()) if (!d.settled) return false;
    return true;
  }
}
