/**
 * NativeTransport: the Transport interface over the native eRPC-style core (native/).
 *
 * Threading: an Endpoint belongs to the thread (main or worker) that created it; the addon is
 * driven by that thread's event loop and uses no CPU while idle. Use one endpoint per worker to
 * use more cores.
 *
 * Batching (the expensive part is crossing into C++): calls and responses made during one tick
 * are written into one slab and handed to native in a single submit() from a microtask; every
 * response, request and session event the native side produced in one loop wakeup arrives in a
 * single onEvents() call. Payloads of 64 KiB or more bypass the slab both ways (no extra copy).
 *
 * Buffers: request/response bytes passed in are copied before call()/the handler's return
 * completes (large ones synchronously), so the caller may reuse them. callLent()'s body is not
 * copied: native holds a reference to it and sends from it until the call ends (the caller must
 * not change it before the promise settles). Buffers handed out are views into a batch buffer,
 * or (64 KiB and more) external buffers over the native message, owned by the receiver.
 *
 * Encryption (eeRPC): with a group key (keyFile or key) every packet is AES-GCM sealed in the
 * addon and every session runs an authenticated handshake; a peer without the key is refused on
 * both sides (its connect() rejects with code CONNECT_FAILED and the reason; this endpoint's
 * onRefused listeners hear why). See native/src/crypto/README.md.
 */
import { readFileSync } from 'node:fs';
import { PayloadTooLargeError, TimeoutError } from '../core/errors.js';
import { assert } from '../core/assert.js';
import { PeerFailedError, TransportError } from './errors.js';
import {
  loadNativeAddon,
  type NativeBatch,
  type NativeEndpointHandle,
  type NativeSessionInfo,
} from './native-binding.js';
import type {
  CallOptions,
  DeferredResponse,
  PeerFailureSignal,
  RequestContext,
  RequestHandler,
  RequestType,
  SessionEvent,
  Transport,
  TransportAddress,
  TransportSession,
  TransportStats,
} from './transport.js';

export interface EndpointOptions {
  /** Numeric address to bind: "127.0.0.1", "0.0.0.0", "::" (dual-stack) or "::1". */
  host?: string;
  /** 0 picks a free port (see `address`). */
  port?: number;
  /** Largest datagram, header included (a session also caps it by the path: 1472 off loopback). */
  packetBytesMax?: number;
  messageBytesMax?: number;
  /** Concurrent requests per session (power of two, ≤ 64); the rest queue. */
  slotsPerSession?: number;
  /** Unanswered client packets per session (about one bandwidth-delay product). */
  creditsPerSession?: number;
  sessionsMax?: number;
  queuedRequestsPerSessionMax?: number;
  /**
   * Retransmission timeout: adaptive per session (srtt + 4 x rttvar of measured round trips),
   * at least retransmitTimeoutMinMs and at most peerFailureTimeoutMs / 4, doubled on each
   * rollback. retransmitTimeoutMs is the timeout before the first sample. Defaults 10 and 5.
   */
  retransmitTimeoutMs?: number;
  retransmitTimeoutMinMs?: number;
  /** Silence after which a peer's sessions are declared failed (default 2000). */
  peerFailureTimeoutMs?: number;
  /**
   * ICMP "port unreachable" reports that fail an established session before that timeout:
   * this many reports of its datagrams with nothing heard from the peer in between (default 2;
   * 0 counts them and never acts). A session still connecting is never failed by them. See
   * src/transport/README.md, "Failure".
   */
  portUnreachableReports?: number;
  connectTimeoutMs?: number;
  connectRetryMs?: number;
  /** Seeds the fault-injection PRNG and handshake tokens. */
  seed?: number;
  /**
   * AES-GCM on every packet with an authenticated session handshake. Default: on whenever a
   * key is given (keyFile or key). true without a key throws; false sends plaintext (benchmarks
   * and trusted networks only) and refuses peers that encrypt. `encrypted` says which it is.
   */
  encryption?: boolean;
  /** The group key file: lines "squall-key v1 <key-id> <64 hex digits>" (native/src/crypto). */
  keyFile?: string;
  /** The group key itself: key-file text, or the 32-byte secret (used as key id 1). */
  key?: string | Uint8Array;
  /** Ephemeral X25519 in each handshake (forward secrecy; ~0.1 ms of CPU per side). Default true. */
  forwardSecrecy?: boolean;
  /** @internal Rekey each session key after this many packets (tests exercise rekeying). */
  rekeyAfterPackets?: number;
  /** Timely rate control per client session (default on). Off: every packet goes at once. */
  congestionControl?: boolean;
  /** A session's maximum (and starting) rate; uncongested sessions bypass pacing. Default 5e9. */
  ccRateMaxBytesPerSecond?: number;
  /** The rate floor; 0 (default) = min(15 MB/s, max / 4). */
  ccRateMinBytesPerSecond?: number;
  /**
   * Timely's RTT thresholds in µs. 0 (default): derived per session from the path's measured
   * RTT (4x and 40x). Set both to fix them.
   */
  ccTLowUs?: number;
  ccTHighUs?: number;
  /** Kernel socket buffers (SO_RCVBUF/SO_SNDBUF, forced when privileged). Defaults 128 MiB / 8 MiB. */
  socketReceiveBufferBytes?: number;
  socketSendBufferBytes?: number;
}

/** The transport keys of the node config (src/config TransportSection), structurally. */
export interface TransportConfigKeys {
  encryption: boolean;
  key_file?: string | undefined;
  forward_secrecy?: boolean | undefined;
  max_message_size: number;
  peer_failure_timeout_ms: number;
}

/**
 * Endpoint options from the node config: encryption on by default, with the key file the
 * config names (the config loader already refuses encryption without key_file).
 */
export function endpointOptionsFromConfig(
  transport: TransportConfigKeys,
  options: EndpointOptions = {},
): EndpointOptions {
  return {
    ...options,
    messageBytesMax: transport.max_message_size,
    peerFailureTimeoutMs: transport.peer_failure_timeout_ms,
    encryption: transport.encryption,
    ...(transport.encryption && transport.key_file !== undefined ? { keyFile: transport.key_file } : {}),
    forwardSecrecy: transport.forward_secrecy ?? true,
  };
}

const GROUP_SECRET_BYTES = 32;

/** Resolves keyFile / key into key-file text the addon parses, or undefined for plaintext. */
function resolveKey(options: EndpointOptions): { keyText: string; source: string } | undefined {
  if (options.keyFile !== undefined && options.key !== undefined) {
    throw new TransportError('both keyFile and key were given. Fix: pass one of them.', 'BAD_KEY');
  }
  const wanted = options.encryption ?? (options.keyFile !== undefined || options.key !== undefined);
  if (!wanted) return undefined;
  let resolved: { keyText: string; source: string };
  if (options.keyFile !== undefined) {
    try {
      resolved = { keyText: readFileSync(options.keyFile, 'utf8'), source: `key file ${options.keyFile}` };
    } catch (error) {
      throw new TransportError(
        `cannot read the group key file ${options.keyFile}: ${(error as Error).message}. Fix: name ` +
          'a readable key file (one line "squall-key v1 1 <64 hex digits>"; make the secret with ' +
          '"openssl rand -hex 32").',
        'BAD_KEY',
        { cause: error },
      );
    }
  } else if (options.key instanceof Uint8Array) {
    resolved = { keyText: keyFileLine(1, options.key), source: 'key bytes' };
  } else if (typeof options.key === 'string') {
    resolved = { keyText: options.key, source: 'key text' };
  } else {
    throw new TransportError(
      'encryption is on but no group key was given. Fix: pass keyFile (or key), or set ' +
        'encryption: false on trusted networks.',
      'BAD_KEY',
    );
  }
  const problem = loadNativeAddon().checkKeyFile(resolved.keyText, resolved.source);
  if (problem !== '') throw new TransportError(problem, 'BAD_KEY');
  return resolved;
}

/** One key-file line for a raw 32-byte secret. */
export function keyFileLine(keyId: number, secret: Uint8Array): string {
  if (secret.byteLength !== GROUP_SECRET_BYTES) {
    throw new TransportError(
      `a group key is ${GROUP_SECRET_BYTES} bytes, got ${secret.byteLength}. Fix: use ` +
        'crypto.randomBytes(32), or a key file made with "openssl rand -hex 32".',
      'BAD_KEY',
    );
  }
  return `squall-key v1 ${keyId} ${Buffer.from(secret).toString('hex')}\n`;
}

/** A client session's congestion and RTT state, from `NativeSession.congestion()`. */
export interface SessionCongestionInfo {
  /** Current Timely rate (bytes/s); equal to the maximum while uncongested. */
  rateBytesPerSecond: number;
  /** Latest network RTT sample, minimum RTT, smoothed RTT and retransmission timeout, µs. */
  lastRttUs: number;
  minRttUs: number;
  srttUs: number;
  rtoUs: number;
  /** The Timely thresholds in force for this session, µs. */
  tLowUs: number;
  tHighUs: number;
}

/** Test-only faults; all off by default. */
export interface FaultInjection {
  /** Each sent packet is dropped with this probability (seeded PRNG). */
  dropProbability?: number;
  /** Drops the next N packets this endpoint sends. */
  dropNext?: number;
  /** Drops everything to and from this peer, as if it had crashed. */
  failPeer?: TransportAddress;
  restorePeer?: TransportAddress;
}

const DEFAULTS = {
  messageBytesMax: 8 * 1024 * 1024,
  peerFailureTimeoutMs: 2000,
};

/** A settled promise: scheduleFlush queues its microtask as a reaction on it. */
const SETTLED = Promise.resolve();
const RECORD_HEADER_BYTES = 24;
const EXTERNAL_PAYLOAD_BYTES_MIN = 64 * 1024;
const FLAG_PAYLOAD_IN_EXTRAS = 1;
/** A lent call: inline [u32 extras index][u32 0][head], the body extras[index] (addon.cc). */
const FLAG_LENT_BODY = 2;
const LENT_PREFIX_BYTES = 8;
const SLAB_BYTES_INITIAL = 64 * 1024;
const SLAB_BYTES_KEEP_MAX = 4 * 1024 * 1024;
const REQUEST_TYPE_MAX = 255;
const TIMEOUT_MS_MAX = 0xffff_ffff;

const enum EventKind {
  Response = 1,
  Request = 2,
  Session = 3,
}
const enum SubmitKind {
  Call = 1,
  Respond = 2,
}
const enum Status {
  Ok = 0,
  NoHandler = 1,
  HandlerError = 2,
  Timeout = 3,
  PeerFailed = 4,
  SessionClosed = 5,
  TooLarge = 6,
  UnknownSession = 7,
  BacklogFull = 8,
}
const enum SessionEventCode {
  Connected = 1,
  ConnectFailed = 2,
  Disconnected = 3,
  PeerFailed = 4,
  Accepted = 5,
  Refused = 6,
}
const CONNECT_FAILURES: Record<number, string> = {
  1: 'the server has reached sessionsMax. Fix: raise sessionsMax on the server or close idle sessions.',
  2: 'no answer within connectTimeoutMs. Fix: check that an endpoint listens at that address and is reachable.',
  3: 'the server is closing. Fix: connect to another replica or retry later.',
  4: 'the address family does not match this endpoint. Fix: bind to "::" to reach IPv6 and IPv4 peers.',
  5: 'one endpoint encrypts and the other does not. Fix: give both the group key file with encryption on, or turn it off on both.',
  6: 'the authenticated handshake was refused. Fix: give both nodes the same group key file.',
};

const pad8 = (n: number): number => (n + 7) & ~7;

/** The native PeerFailure code (endpoint.h) of a peer-failed event or call. */
const failureSignal = (code: number): PeerFailureSignal => (code === 1 ? 'port-unreachable' : 'silence');

interface PendingCall {
  resolve: (bytes: Uint8Array) => void;
  reject: (error: Error) => void;
  session: NativeSession;
  type: number;
  timeoutMs: number;
}

/** Where a request's response stands (ServerRequestContext.state). */
const enum ResponseState {
  /** Its handler is running. */
  InHandler = 0,
  /** The handler deferred it (RequestContext.defer): respond() sends it. */
  Deferred = 1,
  /** Answered, or to be answered from the handler's result. */
  Answered = 2,
}

/**
 * A handler's RequestContext, and a deferred response's answer (RequestContext.defer): one
 * object per request either way. The peer's address is looked up when the handler asks for it:
 * the lookup in a Map of 20,000 server sessions missed the cache on every request (15% of a
 * server's samples at 20,000 sessions) for handlers that never read it.
 */
class ServerRequestContext implements RequestContext, DeferredResponse {
  state = ResponseState.InHandler;

  constructor(
    private readonly endpoint: Endpoint,
    readonly sessionId: number,
    readonly slot: number,
    readonly requestNumber: number,
  ) {}

  get peer(): TransportAddress {
    return this.endpoint.serverPeer(this.sessionId);
  }

  defer(): DeferredResponse | undefined {
    if (this.state !== ResponseState.InHandler) return undefined;
    this.state = ResponseState.Deferred;
    return this;
  }

  respond(bytes: Uint8Array): void {
    if (this.state !== ResponseState.Deferred) return;
    this.state = ResponseState.Answered;
    this.endpoint.respondDeferred(this, bytes);
  }
}

/**
 * Pending calls by tag (tags count up from 1, one per call). A ring indexed by the tag's low bits,
 * with a Map only for the calls still pending when their ring slot comes round again (long calls
 * among many short ones). Not a Map for all of them: a V8 Map reallocates its hash table as
 * entries come and go, once per few dozen calls, and every new table is written into the
 * long-lived Map -- after 20,000 sessions were connected those tables and the calls they held
 * survived the young-generation GC (27% of what was allocated, 4-8 ms scavenges; `npm run bench
 * -- transport --sessions`), costing ~0.7 µs per call. The ring's arrays are allocated once (and
 * doubled while more calls than a quarter of the ring wait in the Map).
 */
class PendingCalls {
  private static readonly RING_MAX = 1 << 20;
  private tags: number[] = new Array<number>(1024).fill(0);
  private ring: (PendingCall | undefined)[] = new Array<PendingCall | undefined>(1024).fill(undefined);
  private readonly overflow = new Map<number, PendingCall>();

  get(tag: number): PendingCall | undefined {
    const i = tag & (this.ring.length - 1);
    return this.tags[i] === tag ? this.ring[i] : this.overflow.get(tag);
  }

  set(tag: number, call: PendingCall): void {
    const i = tag & (this.ring.length - 1);
    if (this.tags[i] === 0) {
      this.tags[i] = tag;
      this.ring[i] = call;
      return;
    }
    this.overflow.set(tag, call);
    if (this.overflow.size * 4 >= this.ring.length && this.ring.length < PendingCalls.RING_MAX) this.grow();
  }

  delete(tag: number): void {
    const i = tag & (this.ring.length - 1);
    if (this.tags[i] === tag) {
      this.tags[i] = 0;
      this.ring[i] = undefined;
    } else {
      this.overflow.delete(tag);
    }
  }

  /** Removes and returns every pending call. */
  takeAll(): PendingCall[] {
    const all = [...this.ring.filter((c): c is PendingCall => c !== undefined), ...this.overflow.values()];
    this.tags.fill(0);
    this.ring.fill(undefined);
    this.overflow.clear();
    return all;
  }

  private grow(): void {
    const entries: [number, PendingCall][] = [...this.overflow];
    this.ring.forEach((call, i) => {
      if (call !== undefined) entries.push([this.tags[i]!, call]);
    });
    const size = this.ring.length * 2;
    this.tags = new Array<number>(size).fill(0);
    this.ring = new Array<PendingCall | undefined>(size).fill(undefined);
    this.overflow.clear();
    for (const [tag, call] of entries) this.set(tag, call);
  }
}

/** Submissions of one tick, written into one slab and flushed once. */
class Outbox {
  private buffer = new ArrayBuffer(SLAB_BYTES_INITIAL);
  private bytes = new Uint8Array(this.buffer);
  private view = new DataView(this.buffer);
  private offset = 0;
  private extras: Uint8Array[] = [];

  get empty(): boolean {
    return this.offset === 0;
  }

  /** Appends a record; returns true if its payload went to extras (the caller flushes now). */
  append(
    kind: SubmitKind,
    code: number,
    session: number,
    slotOrTimeout: number,
    id: number,
    payload: Uint8Array,
  ): boolean {
    const external = payload.byteLength >= EXTERNAL_PAYLOAD_BYTES_MIN;
    this.reserve(RECORD_HEADER_BYTES + (external ? 0 : pad8(payload.byteLength)));
    this.writeHeader(kind, code, external ? FLAG_PAYLOAD_IN_EXTRAS : 0, session, slotOrTimeout,
      external ? this.extras.length : payload.byteLength, id);
    if (external) {
      this.extras.push(payload);
    } else {
      this.bytes.set(payload, this.offset);
      this.offset += pad8(payload.byteLength);
    }
    return external;
  }

  /** Appends a call whose request is `head` (copied) followed by `body` (lent, in extras). */
  appendLent(code: number, session: number, timeoutMs: number, id: number, head: Uint8Array, body: Uint8Array): void {
    const inline = LENT_PREFIX_BYTES + head.byteLength;
    this.reserve(RECORD_HEADER_BYTES + pad8(inline));
    this.writeHeader(SubmitKind.Call, code, FLAG_LENT_BODY, session, timeoutMs, inline, id);
    const o = this.offset;
    this.view.setUint32(o, this.extras.length, true);
    this.view.setUint32(o + 4, 0, true);
    this.bytes.set(head, o + LENT_PREFIX_BYTES);
    this.offset += pad8(inline);
    this.extras.push(body);
  }

  /** Writes a record header at the offset (room reserved) and moves past it. */
  private writeHeader(
    kind: SubmitKind, code: number, flags: number, session: number, slotOrTimeout: number, lengthOrIndex: number, id: number,
  ): void {
    const o = this.offset;
    const v = this.view;
    v.setUint8(o, kind);
    v.setUint8(o + 1, code);
    v.setUint16(o + 2, flags, true);
    v.setUint32(o + 4, session, true);
    v.setUint32(o + 8, slotOrTimeout, true);
    v.setUint32(o + 12, lengthOrIndex, true);
    v.setFloat64(o + 16, id, true);
    this.offset += RECORD_HEADER_BYTES;
  }

  flushTo(native: NativeEndpointHandle): NativeBatch {
    if (this.offset === 0) return undefined;
    const length = this.offset;
    const extras = this.extras;
    this.offset = 0;
    this.extras = [];
    const batch = native.submit(this.buffer, length, extras);
    if (this.buffer.byteLength > SLAB_BYTES_KEEP_MAX) this.resize(SLAB_BYTES_INITIAL);
    return batch;
  }

  private reserve(bytes: number): void {
    if (this.offset + bytes <= this.buffer.byteLength) return;
    let size = this.buffer.byteLength * 2;
    while (size < this.offset + bytes) size *= 2;
    this.resize(size);
  }

  private resize(size: number): void {
    const next = new ArrayBuffer(size);
    new Uint8Array(next).set(this.bytes.subarray(0, this.offset));
    this.buffer = next;
    this.bytes = new Uint8Array(next);
    this.view = new DataView(next);
  }
}

export class NativeSession implements TransportSession {
  readonly remote: TransportAddress;
  /** The client-side session number. */
  readonly id: number;
  private readonly endpoint: Endpoint;
  private readonly listeners: ((event: SessionEvent) => void)[] = [];
  closed = false;
  private closeWaiters: (() => void)[] = [];

  constructor(endpoint: Endpoint, id: number, remote: TransportAddress) {
    this.endpoint = endpoint;
    this.id = id;
    this.remote = remote;
  }

  call(type: RequestType, request: Uint8Array, options?: CallOptions): Promise<Uint8Array> {
    return this.endpoint.enqueueCall(this, type, request, options?.timeoutMs ?? 0);
  }

  callLent(type: RequestType, head: Uint8Array, body: Uint8Array, options?: CallOptions): Promise<Uint8Array> {
    return this.endpoint.enqueueCall(this, type, head, options?.timeoutMs ?? 0, body);
  }

  callWith(
    type: RequestType, request: Uint8Array, options: CallOptions | undefined,
    onResponse: (bytes: Uint8Array) => void, onError: (error: Error) => void,
  ): void {
    const refused = this.endpoint.enqueueCallWith(this, type, request, options?.timeoutMs ?? 0, onResponse, onError);
    if (refused !== undefined) onError(refused);
  }

  onEvent(listener: (event: SessionEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Data bytes per packet negotiated for this session (path- and limit-derived). */
  get dataBytesPerPacket(): number {
    return this.endpoint.sessionInfo(this.id).dataBytesPerPacket;
  }

  /** Rate and RTT of this session (zeros once it ended). */
  congestion(): SessionCongestionInfo {
    const info = this.endpoint.sessionInfo(this.id);
    return {
      rateBytesPerSecond: info.rateBytesPerSecond ?? 0,
      lastRttUs: info.lastRttUs ?? 0,
      minRttUs: info.minRttUs ?? 0,
      srttUs: info.srttUs ?? 0,
      rtoUs: info.rtoUs ?? 0,
      tLowUs: info.tLowUs ?? 0,
      tHighUs: info.tHighUs ?? 0,
    };
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.closeWaiters.push(resolve);
      if (this.closeWaiters.length === 1) this.endpoint.disconnectSession(this);
    });
  }

  /** @internal */
  ended(event: SessionEvent): void {
    if (this.closed) return;
    this.closed = true;
    for (const listener of this.listeners) listener(event);
    for (const resolve of this.closeWaiters) resolve();
    this.closeWaiters = [];
  }
}

/** An endpoint of the native transport: one UDP socket, its sessions and handlers. */
export class Endpoint implements Transport {
  readonly address: TransportAddress;
  private readonly native: NativeEndpointHandle;
  private readonly options: Required<Pick<EndpointOptions, 'messageBytesMax' | 'peerFailureTimeoutMs'>>;
  private readonly outbox = new Outbox();
  private flushScheduled = false;
  private readonly handlers: (RequestHandler | undefined)[] = new Array(REQUEST_TYPE_MAX + 1);
  private readonly calls = new PendingCalls();
  private nextTag = 1;
  private readonly sessions = new Map<number, NativeSession>();
  private readonly connects = new Map<
    number,
    { resolve: (s: NativeSession) => void; reject: (e: Error) => void; remote: string }
  >();
  private readonly serverPeers = new Map<number, string>();
  private readonly refusedListeners: ((reason: string) => void)[] = [];
  /** True when every packet is sealed (a key was given and encryption was not turned off). */
  readonly encrypted: boolean;
  private readonly keyFile: string | undefined;
  private closed = false;
  private readonly flushBound = (): void => this.flush();
  private readonly onEventsBound = (batch: NativeBatch): void => this.process(batch);

  private constructor(options: EndpointOptions) {
    this.options = {
      messageBytesMax: options.messageBytesMax ?? DEFAULTS.messageBytesMax,
      peerFailureTimeoutMs: options.peerFailureTimeoutMs ?? DEFAULTS.peerFailureTimeoutMs,
    };
    const addon = loadNativeAddon();
    const key = resolveKey(options);
    this.encrypted = key !== undefined;
    this.keyFile = key !== undefined ? options.keyFile : undefined;
    const { key: _bytes, keyFile: _file, ...plain } = options;
    try {
      this.native = new addon.NativeEndpoint(
        {
          ...plain,
          ...this.options,
          host: options.host ?? '127.0.0.1',
          port: options.port ?? 0,
          encryption: key !== undefined,
          keyText: key?.keyText,
        },
        this.onEventsBound,
      );
    } catch (error) {
      if (error instanceof RangeError && /^invalid (transport limits|congestion control)/.test(error.message)) {
        throw new TransportError(
          `${error.message}. Fix: correct that endpoint option (EndpointOptions, or the ` +
            `[transport] section of the node configuration).`,
          'BAD_OPTIONS',
          { cause: error },
        );
      }
      throw new TransportError(
        `cannot open a transport endpoint on ${options.host ?? '127.0.0.1'}:${options.port ?? 0}: ` +
          `${(error as Error).message}. Fix: use a free port (or 0) and a numeric local address.`,
        'ENDPOINT_OPEN',
        { cause: error },
      );
    }
    this.address = this.native.address();
  }

  /** Opens an endpoint bound to `host:port`. Throws TransportError if the socket cannot bind. */
  static async create(options: EndpointOptions = {}): Promise<Endpoint> {
    return new Endpoint(options);
  }

  handle(type: RequestType, handler: RequestHandler): void {
    assert(Number.isInteger(type) && type >= 0 && type <= REQUEST_TYPE_MAX, 'request type is 0..255');
    assert(this.handlers[type] === undefined, `request type ${type} already has a handler`);
    this.handlers[type] = handler;
    this.native.setHandled(type, true);
  }

  connect(remote: TransportAddress): Promise<NativeSession> {
    if (this.closed) return Promise.reject(this.closedError());
    const id = this.native.connect(remote);
    if (id < 0) {
      return Promise.reject(
        new TransportError(
          `cannot connect to "${remote}": not a numeric "host:port" / "[v6]:port" reachable from ` +
            `${this.address}. Fix: pass an address like "127.0.0.1:7000" or "[::1]:7000".`,
          'BAD_ADDRESS',
        ),
      );
    }
    const promise = new Promise<NativeSession>((resolve, reject) => {
      this.connects.set(id, { resolve, reject, remote });
    });
    this.process(this.native.drain());
    return promise;
  }

  stats(): TransportStats {
    return this.closed ? {} : this.native.stats();
  }

  /**
   * Installs a new group key (key-file text, or 32 bytes as `keyId`) as primary: sessions rekey
   * under it without dropping, and the previous keys stay accepted for graceMs, after which
   * sessions still on them are closed. Throws TransportError (BAD_KEY) if the key is malformed,
   * its id is already installed, or this endpoint does not encrypt.
   */
  rotateKey(key: string | Uint8Array, graceMs: number, keyId = 2): void {
    if (this.closed) throw this.closedError();
    const text = key instanceof Uint8Array ? keyFileLine(keyId, key) : key;
    const problem = loadNativeAddon().checkKeyFile(text, 'rotated key');
    if (problem !== '') throw new TransportError(problem, 'BAD_KEY');
    if (!this.native.rotateKey(text, graceMs)) {
      throw new TransportError(
        this.encrypted
          ? 'the rotated key id is already installed. Fix: give the new key a higher key id.'
          : 'this endpoint does not encrypt. Fix: create it with a group key to rotate keys.',
        'BAD_KEY',
      );
    }
  }

  /**
   * Re-reads the key file the endpoint was created with and, if its highest key id is new,
   * rotates to that key as rotateKey() does (the operator appended a line on every node).
   * Returns false if there is no new key. Throws TransportError (BAD_KEY) if the file is now
   * unreadable or malformed, or the endpoint was not created from a key file.
   */
  reloadKeyFile(graceMs: number): boolean {
    if (this.closed) throw this.closedError();
    if (this.keyFile === undefined) {
      throw new TransportError(
        'this endpoint was not created from a key file. Fix: use rotateKey(key, graceMs).',
        'BAD_KEY',
      );
    }
    const key = resolveKey({ keyFile: this.keyFile });
    return key !== undefined && this.native.rotateKey(key.keyText, graceMs);
  }

  /**
   * Takes back a received large message (Transport.release): its buffer is detached and reused.
   * False, changing nothing, for anything this endpoint did not lend (counted:
   * receiveReleasesIgnored), including a second release. Works after close() (the memory is
   * then freed).
   */
  release(bytes: Uint8Array): boolean {
    return this.native.release(bytes);
  }

  /** Called with the reason whenever this endpoint refuses a peer's session (wrong key, plaintext peer). */
  onRefused(listener: (reason: string) => void): void {
    this.refusedListeners.push(listener);
  }

  /** Turns test faults on or off (see FaultInjection). */
  injectFault(faults: FaultInjection): void {
    if (!this.closed) this.native.inject(faults);
  }

  /** @internal */
  sessionInfo(id: number): NativeSessionInfo {
    return this.closed
      ? { dataBytesPerPacket: 0, connected: false, sendEpoch: -1, keyId: 0 }
      : this.native.sessionInfo(id);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.process(this.native.close(true));
    for (const [, pending] of this.connects) pending.reject(this.closedError());
    this.connects.clear();
    for (const call of this.calls.takeAll()) call.reject(this.closedError());
  }

  /** @internal */
  enqueueCall(
    session: NativeSession,
    type: RequestType,
    request: Uint8Array,
    timeoutMs: number,
    lentBody?: Uint8Array,
  ): Promise<Uint8Array> {
    const refused = this.callRefused(session, type, request.byteLength + (lentBody?.byteLength ?? 0), timeoutMs);
    if (refused !== undefined) return Promise.reject(refused);
    const tag = this.nextTag++;
    const promise = new Promise<Uint8Array>((resolve, reject) => {
      this.calls.set(tag, { resolve, reject, session, type, timeoutMs });
    });
    this.submitCall(session, type, tag, request, timeoutMs, lentBody);
    return promise;
  }

  /** @internal: NativeSession.callWith; returns the error of a call refused at once. */
  enqueueCallWith(
    session: NativeSession,
    type: RequestType,
    request: Uint8Array,
    timeoutMs: number,
    resolve: (bytes: Uint8Array) => void,
    reject: (error: Error) => void,
  ): Error | undefined {
    const refused = this.callRefused(session, type, request.byteLength, timeoutMs);
    if (refused !== undefined) return refused;
    const tag = this.nextTag++;
    this.calls.set(tag, { resolve, reject, session, type, timeoutMs });
    this.submitCall(session, type, tag, request, timeoutMs, undefined);
    return undefined;
  }

  /** Why a call of `bytes` cannot be made (a closed session, too large), or undefined. */
  private callRefused(session: NativeSession, type: RequestType, bytes: number, timeoutMs: number): Error | undefined {
    if (this.closed || session.closed) {
      return new TransportError(`session to ${session.remote} is closed. Fix: connect again before calling.`, 'SESSION_CLOSED');
    }
    if (bytes > this.options.messageBytesMax) {
      return new PayloadTooLargeError('request', bytes, this.options.messageBytesMax, 'messageBytesMax');
    }
    assert(Number.isInteger(type) && type >= 0 && type <= REQUEST_TYPE_MAX, 'request type is 0..255');
    assert(timeoutMs >= 0 && timeoutMs <= TIMEOUT_MS_MAX, 'timeoutMs is 0..2^32-1');
    return undefined;
  }

  /** Queues call `tag` for the next flush (or flushes now: a lent or large one). */
  private submitCall(session: NativeSession, type: RequestType, tag: number, request: Uint8Array, timeoutMs: number, lentBody: Uint8Array | undefined): void {
    if (lentBody !== undefined) {
      // Submitted now: the body is referenced from native from then on, and a lent call is large.
      this.outbox.appendLent(type, session.id, Math.ceil(timeoutMs), tag, request, lentBody);
      this.flush();
      return;
    }
    const external = this.outbox.append(SubmitKind.Call, type, session.id, Math.ceil(timeoutMs), tag, request);
    // A large payload is not copied into the slab: submit it now, while the caller's buffer is
    // still unchanged.
    if (external) this.flush();
    else this.scheduleFlush();
  }

  /** @internal */
  disconnectSession(session: NativeSession): void {
    if (this.closed) {
      session.ended({ kind: 'disconnected' });
      return;
    }
    this.flush();
    const started = this.native.disconnect(session.id);
    this.process(this.native.drain());
    // Already ended natively (its end event is being delivered): nothing will answer.
    if (!started) session.ended({ kind: 'disconnected' });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // A reaction on a settled promise rather than queueMicrotask(): Node wraps each
    // queueMicrotask callback (an async resource and a bound function, then runMicrotask), which
    // was ~4 % of what a raft follower allocated per commit; this runs on every call and answer.
    void SETTLED.then(this.flushBound);
  }

  /** Transport.flush: submits what this turn queued now (the scheduled microtask then finds nothing). */
  flush(): void {
    this.flushScheduled = false;
    if (this.closed || this.outbox.empty) return;
    this.process(this.outbox.flushTo(this.native));
  }

  private respond(session: number, slot: number, requestNumber: number, status: Status, bytes: Uint8Array): void {
    if (this.closed) return;
    const external = this.outbox.append(SubmitKind.Respond, status, session, slot, requestNumber, bytes);
    if (external) this.flush();
    else this.scheduleFlush();
  }

  private process(batch: NativeBatch): void {
    if (batch === undefined) return;
    const [records, extras] = batch;
    const view = new DataView(records);
    let offset = 0;
    while (offset < records.byteLength) {
      const kind = view.getUint8(offset);
      const code = view.getUint8(offset + 1);
      const flags = view.getUint16(offset + 2, true);
      const session = view.getUint32(offset + 4, true);
      const slot = view.getUint32(offset + 8, true);
      const length = view.getUint32(offset + 12, true);
      const id = view.getFloat64(offset + 16, true);
      offset += RECORD_HEADER_BYTES;
      let payload: Buffer;
      if ((flags & FLAG_PAYLOAD_IN_EXTRAS) !== 0) {
        payload = Buffer.from(extras[length]!);
      } else {
        payload = Buffer.from(records, offset, length);
        offset += pad8(length);
      }
      if (kind === EventKind.Response) this.onResponse(id, code, payload);
      else if (kind === EventKind.Request) this.onRequest(session, slot, id, code, payload);
      else if (kind === EventKind.Session) this.onSessionEvent(session, code, id, payload);
    }
  }

  private onResponse(tag: number, status: number, payload: Buffer): void {
    const call = this.calls.get(tag);
    if (call === undefined) return;
    this.calls.delete(tag);
    if (status === Status.Ok) {
      call.resolve(payload);
      return;
    }
    call.reject(this.callError(call, status, payload));
  }

  private callError(call: PendingCall, status: number, payload: Buffer): Error {
    const where = `call of request type ${call.type} to ${call.session.remote}`;
    switch (status) {
      case Status.NoHandler:
        return new TransportError(
          `${where} failed: the server has no handler for type ${call.type}. ` +
            'Fix: register it with endpoint.handle() on the server before clients call it.',
          'NO_HANDLER',
        );
      case Status.HandlerError:
        return new TransportError(
          `${where} failed: the server's handler threw: ${payload.toString('utf8')}. ` +
            'Fix: see the server-side error; the handler ran once and will not be retried.',
          'HANDLER_FAILED',
        );
      case Status.Timeout:
        return new TimeoutError(where, call.timeoutMs);
      case Status.PeerFailed:
        return new PeerFailedError(call.session.remote, this.options.peerFailureTimeoutMs, failureSignal(payload[0] ?? 0));
      case Status.TooLarge:
        return new PayloadTooLargeError(
          `response to ${where}`,
          payload.byteLength,
          this.options.messageBytesMax,
          'messageBytesMax (on both endpoints)',
        );
      case Status.BacklogFull:
        return new TransportError(
          `${where} refused: too many calls queued on the session. ` +
            'Fix: wait for responses before issuing more, or raise queuedRequestsPerSessionMax.',
          'BACKLOG_FULL',
        );
      default:
        return new TransportError(
          `${where} failed: the session is closed. Fix: connect again and retry if the call is idempotent.`,
          'SESSION_CLOSED',
        );
    }
  }

  private onRequest(session: number, slot: number, requestNumber: number, type: number, payload: Buffer): void {
    const handler = this.handlers[type];
    if (handler === undefined) {
      this.respond(session, slot, requestNumber, Status.NoHandler, new Uint8Array(0));
      return;
    }
    const context = new ServerRequestContext(this, session, slot, requestNumber);
    let result: Uint8Array | Promise<Uint8Array>;
    try {
      result = handler(payload, context);
    } catch (error) {
      if (context.state === ResponseState.Deferred) context.state = ResponseState.Answered;
      this.respondError(session, slot, requestNumber, error);
      return;
    }
    if (context.state === ResponseState.Deferred) return; // context.respond() answers it
    context.state = ResponseState.Answered;
    if (result instanceof Uint8Array) {
      this.respond(session, slot, requestNumber, Status.Ok, result);
    } else {
      result.then(
        (bytes) => this.respond(session, slot, requestNumber, Status.Ok, bytes),
        (error: unknown) => this.respondError(session, slot, requestNumber, error),
      );
    }
  }

  /** @internal: the address of a server session's peer ('?' once it is gone). */
  serverPeer(session: number): TransportAddress {
    return this.serverPeers.get(session) ?? '?';
  }

  /** @internal: a deferred response (ServerRequestContext.respond). */
  respondDeferred(context: ServerRequestContext, bytes: Uint8Array): void {
    this.respond(context.sessionId, context.slot, context.requestNumber, Status.Ok, bytes);
  }

  /** Answers a request whose handler threw or rejected with the error's text. */
  private respondError(session: number, slot: number, requestNumber: number, error: unknown): void {
    const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    this.respond(session, slot, requestNumber, Status.HandlerError, Buffer.from(text.slice(0, 4096)));
  }

  private onSessionEvent(session: number, code: number, reason: number, payload: Buffer): void {
    switch (code) {
      case SessionEventCode.Connected: {
        const pending = this.connects.get(session);
        if (pending === undefined) return;
        this.connects.delete(session);
        const s = new NativeSession(this, session, pending.remote);
        this.sessions.set(session, s);
        pending.resolve(s);
        return;
      }
      case SessionEventCode.ConnectFailed: {
        const pending = this.connects.get(session);
        if (pending === undefined) return;
        this.connects.delete(session);
        pending.reject(
          new TransportError(
            `connect to ${pending.remote} failed: ` +
              (payload.length > 0
                ? `${payload.toString('utf8')}.`
                : (CONNECT_FAILURES[reason] ?? `reason ${reason}`)),
            'CONNECT_FAILED',
          ),
        );
        return;
      }
      case SessionEventCode.Accepted:
        this.serverPeers.set(session, payload.toString('utf8'));
        return;
      case SessionEventCode.Refused: {
        const text = payload.toString('utf8');
        for (const listener of this.refusedListeners) listener(text);
        return;
      }
      case SessionEventCode.Disconnected:
      case SessionEventCode.PeerFailed: {
        this.serverPeers.delete(session);
        const s = this.sessions.get(session);
        if (s === undefined) return;
        this.sessions.delete(session);
        const signal = failureSignal(reason);
        s.ended(
          code === SessionEventCode.Disconnected
            ? { kind: 'disconnected' }
            : {
              kind: 'peer-failed', signal,
              reason: signal === 'port-unreachable'
                ? 'its port is closed (ICMP port unreachable)'
                : `nothing heard for ${this.options.peerFailureTimeoutMs} ms`,
            },
        );
        return;
      }
    }
  }

  private closedError(): TransportError {
    return new TransportError(
      `endpoint ${this.address} is closed. Fix: create a new endpoint.`,
      'ENDPOINT_CLOSED',
    );
  }
}
