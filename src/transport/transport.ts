/**
 * The transport seen by everything above it. Protocol drivers (Raft, multicast, membership) and
 * the group runtime use only this interface, never the native addon, so that tests can swap in
 * an in-memory transport and the simulator can drive the pure cores without one.
 *
 * Model (eRPC's): an endpoint owns one socket; a session is a one-to-one connection to another
 * endpoint; a request of a numbered type goes to the handler registered for that type, which
 * returns the response bytes (now or later). Requests run at most once. A one-way message is a
 * request whose handler returns an empty response.
 *
 * Buffers: a request or response handed to the transport may be reused by the caller as soon as
 * the call returns (the transport copies or finishes with it synchronously), except the body of
 * callLent(), which is lent until its promise settles. Buffers the transport hands out are owned
 * by the receiver. A receiver done with a large one may hand it back (`Transport.release`), so the
 * transport reuses its memory at once instead of when the collector finds it.
 */

/** A request type: an integer 0..255, chosen by the protocol layer that registers the handler. */
export type RequestType = number;

/** "host:port", IPv4 ("127.0.0.1:7000") or IPv6 ("[::1]:7000"). */
export type TransportAddress = string;

export interface RequestContext {
  /** The address of the endpoint that sent the request. */
  readonly peer: TransportAddress;
  /** The server-side id of the session the request arrived on. */
  readonly sessionId: number;
  /**
   * Optional (the native transport has it; without it, return a promise): answer this request
   * later without a promise. Called by the handler while it runs, it returns the object to
   * answer with, exactly once: `respond(bytes)` (further calls are ignored); the handler then
   * returns DEFERRED (whatever it returns is ignored, and a wrapper passing the result through
   * is unaffected). Returns undefined if this request can no longer be deferred (its handler
   * returned already: a wrapper held the request, answered it, then ran the handler); the
   * handler then answers as without it. Deferred, a request costs no promise, reaction or
   * closure, which a promise per request did (a Raft follower answers every append so:
   * src/runtime/raft-driver.ts).
   */
  defer?(): DeferredResponse | undefined;
}

/** What a handler that deferred its response returns (RequestContext.defer): never settles. */
export const DEFERRED: Promise<Uint8Array> = new Promise<Uint8Array>(() => {});

/** A request's response, given later (RequestContext.defer). */
export interface DeferredResponse {
  /** Sends the response (once; later calls, and calls after the endpoint closed, do nothing). */
  respond(bytes: Uint8Array): void;
}

/** Returns the response bytes, or a promise of them (nested calls are allowed before it resolves). */
export type RequestHandler = (
  request: Uint8Array,
  context: RequestContext,
) => Uint8Array | Promise<Uint8Array>;

export interface CallOptions {
  /** Fails the call with TimeoutError if no response arrived within this time. */
  timeoutMs?: number;
}

/**
 * What told the transport a peer failed: `silence` (nothing heard for peerFailureTimeoutMs) or
 * `port-unreachable` (the peer's host answered our datagrams with ICMP "port unreachable": its
 * process is gone, see src/transport/README.md, "Failure").
 */
export type PeerFailureSignal = 'silence' | 'port-unreachable';

export type SessionEvent =
  | { kind: 'disconnected' }
  | { kind: 'peer-failed'; reason: string; signal: PeerFailureSignal };

export interface TransportSession {
  readonly remote: TransportAddress;
  /**
   * Sends a request and resolves with the response. Rejects with PayloadTooLargeError (above the
   * endpoint's message limit), TimeoutError (deadline passed), PeerFailedError (the peer stopped
   * answering) or TransportError (session closed, or the server had no handler for the type).
   */
  call(type: RequestType, request: Uint8Array, options?: CallOptions): Promise<Uint8Array>;
  /**
   * Optional (a transport without it copies; use call() with the bytes joined): call() with the
   * request `head` followed by `body`, where `head` is copied like call()'s request and `body` is
   * lent: the transport sends straight from it and holds it until the returned promise settles
   * (whatever the outcome), so the caller must not change it before then. For large payloads the
   * caller keeps anyway (a multicast block), saving the copy call() makes.
   */
  callLent?(type: RequestType, head: Uint8Array, body: Uint8Array, options?: CallOptions): Promise<Uint8Array>;
  /**
   * Optional (the native transport has it; without it, use call()): call() without a promise.
   * Exactly one of `onResponse` (with the response) or `onError` (with the error call() would
   * reject with; for a request refused at once, before callWith returns) is called. For callers
   * that keep those two functions (a Raft driver's per-peer handlers): a promise and its
   * reaction per call were the allocations left on every call's path. Both are called from
   * the transport's own event delivery (or close()), synchronously: they must not throw.
   */
  callWith?(
    type: RequestType, request: Uint8Array, options: CallOptions | undefined,
    onResponse: (bytes: Uint8Array) => void, onError: (error: Error) => void,
  ): void;
  onEvent(listener: (event: SessionEvent) => void): void;
  /** Completes pending calls with TransportError and tells the peer. Idempotent. */
  close(): Promise<void>;
}

export interface TransportStats {
  [counter: string]: number;
}

/**
 * A wrapper of a transport (a Proxy that, say, observes requests) answers this property with the
 * transport it wraps, so code that keeps per-transport state (RequestMux) finds one endpoint's
 * state however many wrappers reach it. `underlyingTransport(t)` reads it.
 */
export const WRAPPED_TRANSPORT: unique symbol = Symbol('squall.wrappedTransport');

/** The transport a wrapper wraps (through any number of wrappers), or `transport` itself. */
export function underlyingTransport(transport: Transport): Transport {
  let t = transport;
  for (;;) {
    const inner = (t as { [WRAPPED_TRANSPORT]?: Transport })[WRAPPED_TRANSPORT];
    if (inner === undefined || inner === t) return t;
    t = inner;
  }
}

export interface Transport {
  /** The address other endpoints connect to (with the real port if 0 was asked for). */
  readonly address: TransportAddress;
  /** Registers the handler for a request type; registering a type twice is a programmer error. */
  handle(type: RequestType, handler: RequestHandler): void;
  /** Opens a session; rejects with TransportError (with a reason) if the peer refuses or is silent. */
  connect(remote: TransportAddress): Promise<TransportSession>;
  stats(): TransportStats;
  /**
   * Optional (without it, what was queued leaves at the end of the current microtask): hands
   * every call and response queued so far to the network now, in this turn. Calls and responses
   * made during one turn are otherwise gathered and sent together from a microtask; a caller
   * about to hold the thread (a Raft leader's own log write right after sending its appends)
   * flushes first, so the messages leave before that work instead of after it, without yielding
   * to a microtask to let them (src/runtime/raft-driver.ts). Events the flush produces (a call
   * refused by the native core) are delivered before it returns.
   */
  flush?(): void;
  /**
   * Optional (without it, the collector reclaims received buffers): the receiver is done with a
   * request or response this transport handed it, and with every view of its memory. The native
   * transport takes its large received messages (64 KiB or more) back: the buffer under `bytes`
   * is detached (every view of it reads as empty from then on, so reusing the memory cannot
   * show through an old view) and its memory is reused for the next message at once (once the
   * last lent call that reads from it settled, if `bytes` is lent to one). Returns false and
   * changes nothing for anything else: a small message, a buffer released before, another
   * endpoint's, one allocated by the application (counted in the stats, receiveReleasesIgnored).
   */
  release?(bytes: Uint8Array): boolean;
  /** Fails pending calls, disconnects every session and releases the socket. Idempotent. */
  close(): Promise<void>;
}
