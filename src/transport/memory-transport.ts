/**
 * An in-process Transport: endpoints registered in one MemoryNetwork call each other's handlers
 * asynchronously, with optional seeded loss and delay. It is for driver tests and for benchmarks
 * until the native transport lands; it has the Transport interface's semantics (at-most-once,
 * copies of request and response bytes, TimeoutError on a deadline), not its performance model.
 *
 * Loss drops a request or its response silently: the caller sees a TimeoutError if it set
 * timeoutMs, else the call never completes (as with a peer that stopped answering). Delivery is
 * on a later macrotask (setImmediate) or after the drawn delay (setTimeout).
 */
import { TimeoutError } from '../core/errors.js';
import { TransportError } from './errors.js';
import type { Random } from '../core/random.js';
import type {
  CallOptions, RequestContext, RequestHandler, RequestType, SessionEvent, Transport,
  TransportAddress, TransportSession, TransportStats,
} from './transport.js';

/**
 * A memory-transport failure: no such endpoint, no handler, a handler that threw, or a closed
 * session/endpoint. A TransportError with the codes the native transport uses where it has one
 * (NO_HANDLER, HANDLER_FAILED), so code that tells them apart (the multicast driver retries a
 * member that has no handler yet) behaves the same over both; TRANSPORT otherwise.
 */
export class MemoryTransportError extends TransportError {
  constructor(message: string, code: 'TRANSPORT' | 'NO_HANDLER' | 'HANDLER_FAILED' = 'TRANSPORT') {
    super(message, code);
  }
}

export interface MemoryNetworkOptions {
  /** Probability that a request or a response is dropped. Needs `random`. */
  lossRate?: number;
  /** Extra one-way delay in ms, uniform in [0, delayMsMax]. Needs `random` if > 0. */
  delayMsMax?: number;
  random?: Random;
}

export class MemoryNetwork {
  private readonly endpoints = new Map<TransportAddress, MemoryTransport>();
  private portNext = 1;
  /** Links cut with cut(a, b): both directions drop everything. */
  private readonly cuts = new Set<string>();

  constructor(readonly options: MemoryNetworkOptions = {}) {}

  /** Creates an endpoint; port 0 (default) picks a free one. */
  endpoint(port = 0): MemoryTransport {
    const address = `mem:${port === 0 ? this.portNext++ : port}`;
    if (this.endpoints.has(address)) throw new MemoryTransportError(`${address} is already in use`);
    const t = new MemoryTransport(this, address);
    this.endpoints.set(address, t);
    return t;
  }

  cut(a: TransportAddress, b: TransportAddress): void {
    this.cuts.add(`${a}|${b}`);
    this.cuts.add(`${b}|${a}`);
  }
  /** Drops everything from `from` to `to` (requests and responses alike); the other way works. */
  cutOneWay(from: TransportAddress, to: TransportAddress): void {
    this.cuts.add(`${from}|${to}`);
  }
  heal(): void {
    this.cuts.clear();
  }

  /** @internal */
  lookup(address: TransportAddress): MemoryTransport | undefined {
    return this.endpoints.get(address);
  }
  /** @internal */
  remove(address: TransportAddress): void {
    this.endpoints.delete(address);
  }
  /** @internal: runs fn later, or never if the packet is lost. */
  deliver(from: TransportAddress, to: TransportAddress, fn: () => void): void {
    const o = this.options;
    if (this.cuts.has(`${from}|${to}`)) return;
    if (o.lossRate && o.random && o.random.next() < o.lossRate) return;
    const delay = o.delayMsMax && o.random ? o.random.next() * o.delayMsMax : 0;
    if (delay >= 1) setTimeout(fn, delay);
    else setImmediate(fn);
  }
}

export class MemoryTransport implements Transport {
  private readonly handlers = new Map<RequestType, RequestHandler>();
  private readonly sessions = new Set<MemorySession>();
  private closed = false;
  private sessionIdNext = 1;
  readonly counters = { callsSent: 0, callsHandled: 0, bytesSent: 0 };

  constructor(private readonly network: MemoryNetwork, readonly address: TransportAddress) {}

  handle(type: RequestType, handler: RequestHandler): void {
    if (!Number.isInteger(type) || type < 0 || type > 255) {
      throw new MemoryTransportError(`request type ${type} is not an integer 0..255`);
    }
    if (this.handlers.has(type)) {
      throw new MemoryTransportError(`request type ${type} already has a handler on ${this.address}`);
    }
    this.handlers.set(type, handler);
  }

  async connect(remote: TransportAddress): Promise<TransportSession> {
    if (this.closed) throw new MemoryTransportError(`${this.address} is closed`);
    if (this.network.lookup(remote) === undefined) {
      throw new MemoryTransportError(`no endpoint at ${remote}. Fix: create it on the same MemoryNetwork first`);
    }
    const session = new MemorySession(this, this.network, remote, this.sessionIdNext++);
    this.sessions.add(session);
    return session;
  }

  stats(): TransportStats {
    return { ...this.counters, sessions: this.sessions.size };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.network.remove(this.address);
    for (const s of [...this.sessions]) await s.close();
  }

  /** @internal */
  isClosed(): boolean {
    return this.closed;
  }
  /** @internal */
  dropSession(s: MemorySession): void {
    this.sessions.delete(s);
  }
  /** @internal: runs the handler for an arriving request. */
  async serve(type: RequestType, request: Uint8Array, context: RequestContext): Promise<Uint8Array> {
    const handler = this.handlers.get(type);
    if (handler === undefined) {
      throw new MemoryTransportError(
        `${this.address} has no handler for request type ${type}. ` +
          'Fix: register it with handle() on the server before clients call it.',
        'NO_HANDLER',
      );
    }
    this.counters.callsHandled++;
    try {
      return await handler(request, context);
    } catch (error) {
      // As over the native transport: the caller learns the handler's message, not its object.
      const message = error instanceof Error ? error.message : String(error);
      throw new MemoryTransportError(
        `call of request type ${type} to ${this.address} failed: the server's handler threw: ${message}`,
        'HANDLER_FAILED',
      );
    }
  }
}

class MemorySession implements TransportSession {
  private readonly pending = new Set<(error: Error) => void>();
  private readonly listeners: Array<(event: SessionEvent) => void> = [];
  private closed = false;

  constructor(
    private readonly local: MemoryTransport,
    private readonly network: MemoryNetwork,
    readonly remote: TransportAddress,
    private readonly id: number,
  ) {}

  call(type: RequestType, request: Uint8Array, options: CallOptions = {}): Promise<Uint8Array> {
    if (this.closed || this.local.isClosed()) {
      return Promise.reject(new MemoryTransportError(`session ${this.local.address} → ${this.remote} is closed`));
    }
    const copy = new Uint8Array(request); // the caller may reuse its buffer at once
    this.local.counters.callsSent++;
    this.local.counters.bytesSent += copy.length;
    return new Promise<Uint8Array>((resolve, reject) => {
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      const finish = (fn: () => void): void => {
        if (done) return;
        done = true;
        if (timer) clearTimeout(timer);
        this.pending.delete(fail);
        fn();
      };
      const fail = (error: Error): void => finish(() => reject(error));
      this.pending.add(fail);
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => fail(new TimeoutError(`call of type ${type} to ${this.remote}`, options.timeoutMs!)), options.timeoutMs);
      }
      this.network.deliver(this.local.address, this.remote, () => {
        const server = this.network.lookup(this.remote);
        if (server === undefined) return; // peer gone: looks like silence
        server.serve(type, copy, { peer: this.local.address, sessionId: this.id }).then(
          (response) => {
            const back = new Uint8Array(response);
            this.network.deliver(this.remote, this.local.address, () => finish(() => resolve(back)));
          },
          (error: unknown) => {
            const e = error instanceof Error ? error : new Error(String(error));
            this.network.deliver(this.remote, this.local.address, () => fail(e));
          },
        );
      });
    });
  }

  onEvent(listener: (event: SessionEvent) => void): void {
    this.listeners.push(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const fail of [...this.pending]) fail(new MemoryTransportError(`session to ${this.remote} closed`));
    this.local.dropSession(this);
    for (const l of this.listeners) l({ kind: 'disconnected' });
  }
}
