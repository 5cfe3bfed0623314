/**
 * The multicast driver: runs one MulticastCore (src/multicast/) per shard and view over the
 * Transport interface, with real timers. It is the only multicast code with timers and sockets
 * (STYLE.md); the ordering, stability, RDMC and ragged-edge logic all stay in the pure core.
 * README.md in this directory lists the core's duties it fulfils and its limits.
 *
 * Wire: every transport call is one *frame* of request type `requestType` (default 48):
 *   u32 shard | repeated { u32 length | one packet (encodePacket / encodeBlockInto) }
 * The driver coalesces every packet queued for a peer into as few frames as `frameBytesMax`
 * allows, with at most `callsInFlightPerPeerMax` calls outstanding per peer: while calls are in
 * flight, new packets wait and leave together in the next frame. SMC packets (which carry the
 * receive reports) go ahead of RDMC blocks; blocks also wait while `bytesInFlightPerPeerMax`
 * is reached (the transport has no congestion control yet). The core's own SMC packet
 * budget (`smc_packet_size`) bounds each packet; the frame only groups them. The handler answers
 * with an empty response (one-way message); the transport's sessions make each frame reliable
 * (retransmission, at most once), which is the reliability the core relies on (duty 4).
 *
 * Several shards may share one transport: one handler per transport demultiplexes frames by
 * shard number, and sessions to a peer are shared.
 */
import { assert } from '../core/assert.js';
import { PayloadTooLargeError } from '../core/errors.js';
import { SystemClock, type Clock } from '../core/clock.js';
import { HybridLogicalClock, compareHlc, type Hlc } from '../core/hlc.js';
import { VERSION_NONE, type NodeId, type Version, type ViewId } from '../core/ids.js';
import {
  MulticastCore,
  MulticastDecodeError,
  decodePacket,
  encodeBlockHeaderInto,
  encodeBlockInto,
  BLOCK_HEADER_BYTES,
  encodePacket,
  encodedBlockBytes,
  type BlockPacket,
  type MulticastLimits,
  type MulticastMode,
  type MulticastReady,
  type Packet,
} from '../multicast/index.js';
import type { ResendMessage } from '../multicast/types.js';
import { DEFAULT_MULTICAST_LIMITS } from '../multicast/config.js';
import { BlockQueue } from '../multicast/block-queue.js';
import { readU32LE } from '../core/bytes.js';
import { freshMessageBuffer } from '../multicast/rdmc-transfer.js';
import { SessionCache } from '../transport/session-cache.js';
import { TransportError } from '../transport/errors.js';
import type { RequestType, Transport, TransportAddress, TransportSession } from '../transport/transport.js';
import { REQUEST_TYPES } from '../transport/request-types.js';

export const MULTICAST_REQUEST_TYPE_DEFAULT = REQUEST_TYPES.multicast;

/** One view of one shard, as the membership layer installs it. */
export interface MulticastView {
  readonly viewId: ViewId;
  /** Members in rank order. */
  readonly members: readonly NodeId[];
  /** Members that may send (a subset of `members`). Defaults to all members. */
  readonly senders?: readonly NodeId[];
  /** Transport address of every member (this node's own entry is not used). */
  readonly addresses: ReadonlyMap<NodeId, TransportAddress>;
}

/** A delivered message, handed to `onDeliver` in delivery order. */
export interface MulticastDelivery {
  readonly viewId: ViewId;
  readonly sender: NodeId;
  readonly senderIndex: number;
  readonly index: number;
  readonly position: number;
  /** view id << 32 | position; null in raw mode. */
  readonly version: Version | null;
  /** The sender's HLC stamp (the same on every member). */
  readonly timestamp: Hlc;
  /**
   * Owned by the receiver; a view into a received frame (copy it to keep it long). With the
   * driver's `releaseReceived`, a large message's payload is valid only until onDeliver returns.
   */
  readonly payload: Uint8Array;
  readonly large: boolean;
}

export interface MulticastFrontiers {
  readonly viewId: ViewId;
  /** Messages delivered by this driver since it started (nulls excluded, all views). */
  readonly deliveredMessages: number;
  /** The version of the last delivered message (all views), VERSION_NONE if none. */
  readonly lastDeliveredVersion: Version;
  /** Min over members of their persisted version (never decreases across views). */
  readonly globalPersistedVersion: Version;
  /** Time-based stability frontier in µs (never decreases across views). */
  readonly stabilityFrontierMicros: number;
}

export interface SendReceipt {
  readonly viewId: ViewId;
  readonly index: number;
  readonly position: number;
  readonly timestamp: Hlc;
}

export interface MulticastDriverOptions {
  readonly transport: Transport;
  readonly self: NodeId;
  /** Shard number carried in every frame, for several shards over one transport. */
  readonly shard: number;
  readonly view: MulticastView;
  readonly mode?: MulticastMode;
  /** From multicastLimitsFromConfig(); Derecho's defaults otherwise. */
  readonly limits?: MulticastLimits;
  /** Called in delivery order, synchronously from the driver's pump. */
  readonly onDeliver: (delivery: MulticastDelivery) => void;
  /**
   * Called once when a call to a member fails or its session cannot be opened (the membership
   * layer's input). With it, create() and installView() resolve although a member is
   * unreachable (its failure is reported here, and the owner removes it by a view change);
   * without it they reject, as nobody else would act on it.
   */
  readonly onPeerFailed?: (node: NodeId, error: Error) => void;
  readonly clock?: Clock;
  /** Replaceable HLC (a node shares one across its layers); one over `clock` by default. */
  readonly hlc?: HybridLogicalClock;
  readonly requestType?: RequestType;
  /** How often the core's clock input advances (and reports with the stability frontier go). */
  readonly tickIntervalMs?: number;
  readonly callsInFlightPerPeerMax?: number;
  readonly frameBytesMax?: number;
  /**
   * Bytes of frames outstanding per peer before new packets wait (one frame always may go).
   * The transport has no congestion control yet (issue #3): bursts of many MiB to one peer
   * overflow loopback socket buffers, and each loss costs a retransmission timeout.
   */
  readonly bytesInFlightPerPeerMax?: number;
  /**
   * Bytes of this member's own messages the core has accepted and this member has not yet
   * delivered (default 16 MiB). While at or above it, send() waits (as when the send queue is
   * full), so a burst of large messages enters the shard a few MiB at a time: the send queue and
   * window count messages, and 1,024 of 1 MiB each had every member hold hundreds of MiB (each a
   * fresh page, page faults were the largest CPU cost of the 1 MiB benchmark) and start every
   * transfer at once. One message may always go when below it, whatever its size.
   */
  readonly ownBytesUndeliveredMax?: number;
  /** Packets of views not installed yet, held until installView (beyond: dropped, counted). */
  readonly heldPacketsMax?: number;
  /**
   * How long a member whose transport answers "no handler for this request type" (its process
   * is up but has not created its first multicast driver yet: members start their drivers at
   * slightly different times) is waited for, re-sending the refused frames every
   * `notReadyRetryMs` (default 20), before it is reported failed. Default 30,000.
   */
  readonly peerNotReadyTimeoutMs?: number;
  readonly notReadyRetryMs?: number;
  /**
   * Called once for each payload given to send() when nothing here holds it any more: the core
   * is done with it (the message was delivered by every member, ordered mode, or received by
   * every member, raw mode; or the view ended with it inside the trim) and every call that sent
   * its bytes (lent, see flush) has settled and none is queued. From then on the application
   * may write it again, e.g. reuse it for a later send instead of allocating a fresh buffer
   * (for large messages: a fresh MiB costs page faults, zeroing and garbage collection). A
   * payload cut off by a trim is re-sent in the next view and released after that. Not called
   * after close().
   */
  readonly onPayloadReleased?: (payload: Uint8Array) => void;
  /**
   * Hands the large frames of one-block messages it received (RDMC blocks of 64 KiB or more,
   * each in a buffer of its own) back to the transport (`Transport.release`, when it has one)
   * as soon as nothing here needs them, so the transport assembles the next ones in that memory
   * at once instead of when the garbage collector finds them (at 1 MiB, a fresh buffer costs a
   * MiB of page faults, and collections ran on external memory pressure). (A block of a message
   * of several blocks goes back whatever this says, once the core copied it into the message:
   * the delivery is a view of that message, not of the frame.) A one-block message (the payload
   * is a view of the frame): once it was delivered here (onDeliver returned), the core let go of it
   * (MulticastReady.releasedReceived: relays taken, no repair needed) and no relay of it is
   * queued or in an unsettled call. The transport detaches the buffer: **onDeliver must not
   * keep a large payload** (copy what it needs, e.g. `new Uint8Array(payload)`: the payload may
   * be a Buffer, whose slice() is a view, not a copy; it reads as empty afterwards). A message of
   * several blocks (assembled here in a buffer of its own) is recycled under the same rule: once
   * released, its buffer assembles a later message of the same size (a fresh 16 MiB cost 16 MiB
   * of page faults per message); a kept view would read that message's bytes. Default false.
   */
  readonly releaseReceived?: boolean;
}

export interface MulticastDriverCounters {
  framesSent: number;
  framesReceived: number;
  packetsSent: number;
  bytesSent: number;
  decodeErrors: number;
  heldPackets: number;
  heldDropped: number;
  oldViewDropped: number;
  callFailures: number;
  resent: number;
  /**
   * Frames a member refused because it had no multicast handler yet (NO_HANDLER): their packets
   * went back to the queue and were sent again (see peerNotReadyTimeoutMs).
   */
  notReadyRefusals: number;
  /** RDMC blocks relayed in the frame they arrived in (header rewritten, no copy in JS). */
  blocksRelayedInPlace: number;
  /**
   * Large RDMC blocks (own or relayed) sent with the transport's callLent: only the 48-byte
   * frame and block header is built, the block's bytes are sent from where they already are.
   */
  blocksLent: number;
  /** Received frames handed back to the transport (Transport.release; see releaseReceived). */
  framesReleased: number;
  /**
   * Received messages of several blocks assembled in the buffer of an earlier one the core let
   * go of (releaseReceived), instead of a fresh buffer.
   */
  assembledBuffersReused: number;
  /**
   * Kept buffers of assembled messages let go because none was taken for ASSEMBLED_IDLE_TICKS
   * ticks (a stream of large messages ended: held, they cost the next workload fresh pages).
   */
  assembledBuffersDropped: number;
}

interface Peer {
  readonly node: NodeId;
  readonly address: TransportAddress;
  session: TransportSession | null;
  /** Encoded SMC packets (messages, nulls, reports): they leave before any block. */
  queue: Uint8Array[];
  /** RDMC block packets, in delivery order (BlockQueue), encoded straight into the frame. */
  blocks: BlockQueue<BlockPacket>;
  queuedBytes: number;
  inFlight: number;
  inFlightBytes: number;
  failed: boolean;
  /** When the member first refused a frame for want of a handler (0: it has not, or took one since). */
  notReadySinceMs: number;
  /** A re-send after a refusal is scheduled: flush waits for it. */
  retryTimer: ReturnType<typeof setTimeout> | null;
  /** Why the member was reported failed (diagnostics). */
  failure: string | null;
}

interface PendingSend {
  readonly payload: Uint8Array;
  readonly resolve: ((receipt: SendReceipt) => void) | null;
  readonly reject: ((error: Error) => void) | null;
}

const EMPTY = new Uint8Array(0);
const FRAME_HEADER_BYTES = 4;
const LENGTH_BYTES = 4;

/** One handler per transport, shared by the shards over it; sessions shared per address. */
class MulticastMux {
  readonly drivers = new Map<number, MulticastDriver>();
  private readonly sessions: SessionCache;
  unknownShardFrames = 0;
  /**
   * Frames for a shard that has no driver here yet, kept (bounded) for the driver created next
   * for it: a node that joins a shard hears from the shard's members, who installed the view
   * first, before it has installed that view itself (the transport already acknowledged them).
   */
  readonly early = new Map<number, Uint8Array[]>();
  earlyCount = 0;

  constructor(transport: Transport, requestType: RequestType) {
    this.sessions = new SessionCache(transport);
    transport.handle(requestType, (frame) => {
      if (frame.byteLength >= FRAME_HEADER_BYTES) {
        const shard = readU32LE(frame, 0);
        const driver = this.drivers.get(shard);
        if (driver !== undefined) driver.receiveFrame(frame);
        else if (this.earlyCount < EARLY_FRAMES_MAX) {
          const list = this.early.get(shard) ?? [];
          this.early.set(shard, list);
          list.push(frame.slice());
          this.earlyCount++;
        } else this.unknownShardFrames++;
      }
      return EMPTY;
    });
  }

  session(address: TransportAddress): Promise<TransportSession> {
    return this.sessions.get(address);
  }

  forget(address: TransportAddress): void {
    this.sessions.forget(address);
  }
}

const EARLY_FRAMES_MAX = 4096;
/** Bytes of released assembled RDMC messages a driver keeps for the next ones (releaseReceived). */
const ASSEMBLED_FREE_BYTES_MAX = 64 * 1024 * 1024;
/** Ticks (tickIntervalMs, default 50 ms) without a kept buffer taken or kept before they all go. */
const ASSEMBLED_IDLE_TICKS = 4;
/** A settled promise: a reaction on it is a microtask without queueMicrotask's per-call wrapper. */
const SETTLED = Promise.resolve();
const muxes = new WeakMap<Transport, Map<RequestType, MulticastMux>>();

/**
 * Registers the multicast handler on `transport` now (the first driver does it otherwise), so
 * that frames for shards this node is about to enter are kept until their driver exists, not
 * refused. The membership driver calls it before it joins.
 */
export function prepareMulticastTransport(transport: Transport, requestType: RequestType = MULTICAST_REQUEST_TYPE_DEFAULT): void {
  muxFor(transport, requestType);
}

/**
 * Drivers created or installed from now on open a new session to `address` (SessionCache.forget):
 * for a node that joins at the address of an earlier process, e.g. a member restarted there.
 */
export function forgetMulticastSession(
  transport: Transport, address: TransportAddress, requestType: RequestType = MULTICAST_REQUEST_TYPE_DEFAULT,
): void {
  muxes.get(transport)?.get(requestType)?.forget(address);
}

function muxFor(transport: Transport, requestType: RequestType): MulticastMux {
  let byType = muxes.get(transport);
  if (byType === undefined) muxes.set(transport, (byType = new Map()));
  let mux = byType.get(requestType);
  if (mux === undefined) byType.set(requestType, (mux = new MulticastMux(transport, requestType)));
  return mux;
}

/**
 * Blocks at least this large go alone in their frame: the transport hands such a request over
 * in a buffer of its own (its slab limit is 64 KiB), and a relay can forward it in place.
 */
const LARGE_BLOCK_BYTES = 64 * 1024;

function isLargeBlock(item: Uint8Array | BlockPacket): boolean {
  return !(item instanceof Uint8Array) && item.bytes.byteLength >= LARGE_BLOCK_BYTES;
}

/** Where a block's message stands in the round-robin delivery order (BlockQueue's key). */
function deliveryRank(block: BlockPacket, senderCount: number): number {
  return block.index * senderCount + block.senderIndex;
}

/** The member answered that it has no handler for the multicast request type (not yet). */
function isNoHandler(error: Error): boolean {
  return error instanceof TransportError && error.code === 'NO_HANDLER';
}

function itemBytes(item: Uint8Array | BlockPacket): number {
  return item instanceof Uint8Array ? item.byteLength : encodedBlockBytes(item);
}

export class MulticastDriver {
  readonly self: NodeId;
  readonly shard: number;
  readonly mode: MulticastMode;
  readonly limits: MulticastLimits;
  readonly counters: MulticastDriverCounters = {
    framesSent: 0,
    framesReceived: 0,
    packetsSent: 0,
    bytesSent: 0,
    decodeErrors: 0,
    heldPackets: 0,
    heldDropped: 0,
    oldViewDropped: 0,
    callFailures: 0,
    resent: 0,
    notReadyRefusals: 0,
    blocksRelayedInPlace: 0,
    blocksLent: 0,
    framesReleased: 0,
    assembledBuffersReused: 0,
    assembledBuffersDropped: 0,
  };

  private readonly options: MulticastDriverOptions;
  private readonly mux: MulticastMux;
  private readonly clock: Clock;
  private readonly hlc: HybridLogicalClock;
  private readonly callsInFlightMax: number;
  private readonly frameBytesMax: number;
  private readonly bytesInFlightMax: number;
  private readonly ownBytesUndeliveredMax: number;
  /** See MulticastDriverOptions.ownBytesUndeliveredMax. */
  private ownBytesUndelivered = 0;
  private readonly heldPacketsMax: number;
  private readonly peerNotReadyTimeoutMs: number;
  private readonly notReadyRetryMs: number;
  private view: MulticastView;
  private core: MulticastCore | null;
  private peers = new Map<NodeId, Peer>();
  /** Sends not yet accepted by a core (full queue, wedged, between views). */
  private readonly pending: PendingSend[] = [];
  /** Own messages the last trim cut off, for the next view's core (they keep their stamps). */
  private carryOver: ResendMessage[] = [];
  private pendingHead = 0;
  private held: Packet[] = [];
  private pumpScheduled = false;
  private pumpSoonScheduled = false;
  private readonly ticker: ReturnType<typeof setInterval>;
  private closed = false;
  private deliveredMessages = 0;
  private lastDeliveredVersion: Version = VERSION_NONE;
  private globalPersistedVersion: Version = VERSION_NONE;
  private stabilityFrontierMicros = 0;
  private persistedVersion: Version = VERSION_NONE;
  private frontierListeners: ((frontiers: MulticastFrontiers) => void)[] = [];
  /** The frontiers last published to the listeners (-1: none yet). */
  private emittedDelivered = -1;
  private emittedPersisted: Version = VERSION_NONE;
  private emittedStability = -1;
  /** The buffer every outgoing frame is built in (see flush), grown to the largest frame. */
  private frameScratch: Uint8Array = Buffer.allocUnsafeSlow(64 * 1024);
  private frameScratchView = new DataView(this.frameScratch.buffer, this.frameScratch.byteOffset, this.frameScratch.byteLength);
  /**
   * With onPayloadReleased or releaseReceived: block packets queued or in calls not settled
   * yet, by the buffer their bytes are in (own payloads and received frames alike; an entry
   * goes at 0).
   */
  private readonly blockRefs = new Map<ArrayBufferLike, number>();
  private readonly countsBlocks: boolean;
  /** Payloads the core released whose buffer blockRefs still counts. */
  private readonly releaseWaiting = new Map<ArrayBufferLike, Uint8Array[]>();
  /** The transport's release (Transport.release), if it takes received buffers back. */
  private readonly releaseFrame: ((frame: Uint8Array) => boolean) | null;
  /** releaseReceived, and the transport takes buffers back: one-block frames go back too. */
  private readonly releasesDelivered: boolean;
  /** Received one-block frames the core let go of whose buffer blockRefs still counts. */
  private readonly framesWaiting = new Map<ArrayBufferLike, Uint8Array>();
  /**
   * Received frames that hold exactly one block packet and own their whole buffer (the
   * transport hands large requests over that way), by buffer: a relay of that block can go
   * out in the same frame, only its header rewritten (see relayFrame).
   */
  private readonly singleBlockFrames = new WeakMap<ArrayBufferLike, Uint8Array>();
  /** releaseReceived: buffers of assembled messages are recycled (see takeAssembled). */
  private readonly recyclesAssembled: boolean;
  /** Buffers of released assembled messages, by length, for the next ones (at most ASSEMBLED_FREE_BYTES_MAX). */
  private readonly assembledFree = new Map<number, Uint8Array[]>();
  private assembledFreeBytes = 0;
  /** Ticks since a buffer was last kept or taken (see dropIdleAssembled). */
  private assembledIdleTicks = 0;
  /** Released assembled messages whose buffer blockRefs still counts (relays queued or in flight). */
  private readonly assembledWaiting = new Map<ArrayBufferLike, Uint8Array>();

  /** Creates the driver, installs `options.view` and connects to its members. */
  static async create(options: MulticastDriverOptions): Promise<MulticastDriver> {
    const driver = new MulticastDriver(options);
    try {
      await driver.connectAll();
    } catch (error) {
      await driver.close(); // its shard registration and ticker must not outlive the failure
      throw error;
    }
    return driver;
  }

  private constructor(options: MulticastDriverOptions) {
    this.options = options;
    this.self = options.self;
    this.shard = options.shard;
    this.mode = options.mode ?? 'ordered';
    this.limits = options.limits ?? DEFAULT_MULTICAST_LIMITS;
    this.clock = options.clock ?? SystemClock;
    this.hlc = options.hlc ?? new HybridLogicalClock(this.clock);
    this.callsInFlightMax = options.callsInFlightPerPeerMax ?? 8;
    this.frameBytesMax = options.frameBytesMax ?? 256 * 1024;
    this.bytesInFlightMax = options.bytesInFlightPerPeerMax ?? 1024 * 1024;
    this.ownBytesUndeliveredMax = options.ownBytesUndeliveredMax ?? 16 * 1024 * 1024;
    this.heldPacketsMax = options.heldPacketsMax ?? 65_536;
    this.peerNotReadyTimeoutMs = options.peerNotReadyTimeoutMs ?? 30_000;
    this.notReadyRetryMs = options.notReadyRetryMs ?? 20;
    const transport = options.transport;
    this.releaseFrame = transport.release !== undefined ? (frame) => transport.release!(frame) : null;
    this.releasesDelivered = options.releaseReceived === true && this.releaseFrame !== null;
    this.recyclesAssembled = options.releaseReceived === true;
    this.countsBlocks = options.onPayloadReleased !== undefined || this.releasesDelivered || this.recyclesAssembled;
    assert(Number.isInteger(options.shard) && options.shard >= 0 && options.shard <= 0xffff_ffff, 'shard is a uint32');
    this.mux = muxFor(options.transport, options.requestType ?? MULTICAST_REQUEST_TYPE_DEFAULT);
    assert(!this.mux.drivers.has(options.shard), `shard ${options.shard} already has a driver on this transport`);
    this.mux.drivers.set(options.shard, this);
    this.view = options.view;
    this.core = this.makeCore(options.view);
    this.peers = this.makePeers(options.view, new Map());
    this.ticker = setInterval(() => this.onTick(), options.tickIntervalMs ?? 50);
    this.ticker.unref?.();
    const early = this.mux.early.get(options.shard);
    if (early !== undefined) {
      this.mux.early.delete(options.shard);
      this.mux.earlyCount -= early.length;
      for (const frame of early) this.receiveFrame(frame);
    }
    this.onTick();
  }

  // ------------------------------------------------------------------------------------------
  // Application API

  /**
   * Multicasts `payload` (the driver keeps it: do not change it). Resolves when the core has
   * accepted and numbered it (at once while the window and send queue have room; otherwise
   * when room frees up or, if the view is wedged, in the next view). Throws PayloadTooLargeError
   * above `max_payload_size`.
   */
  send(payload: Uint8Array): Promise<SendReceipt> {
    if (this.closed) return Promise.reject(new Error('multicast driver is closed'));
    if (payload.length > this.limits.payloadBytesMax) {
      return Promise.reject(
        new PayloadTooLargeError('multicast payload', payload.length, this.limits.payloadBytesMax, 'max_payload_size'),
      );
    }
    if (this.pendingHead === this.pending.length) {
      const receipt = this.offerToCore(payload);
      if (receipt !== null) return Promise.resolve(receipt);
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ payload, resolve, reject });
    });
  }

  /** The persistence layer made every version up to `version` durable on this node. */
  persisted(version: Version): void {
    if (version > this.persistedVersion) this.persistedVersion = version;
    this.core?.persisted(version);
    // Caught up with every delivery here, and nothing received waits to be delivered (one put at
    // a time; 'nosync' commits in the turn of the delivery): nothing more is coming soon to batch
    // the report with, so it goes now. Otherwise (a write-ahead log's fdatasync covering an older
    // turn while deliveries went on; a pipelined stream, where the next turn's reports go anyway)
    // at the next setImmediate, with whatever that turn sends: pumped at once there it was one
    // report frame more per turn, and fewer puts/s at 64 outstanding (src/group/README.md).
    if (version >= this.lastDeliveredVersion && this.core?.caughtUp === true) this.schedulePumpSoon();
    else this.schedulePump();
  }

  frontiers(): MulticastFrontiers {
    return {
      viewId: this.view.viewId,
      deliveredMessages: this.deliveredMessages,
      lastDeliveredVersion: this.lastDeliveredVersion,
      globalPersistedVersion: this.globalPersistedVersion,
      stabilityFrontierMicros: this.stabilityFrontierMicros,
    };
  }

  /** Called whenever a frontier moves (after the deliveries that moved it). */
  onFrontiers(listener: (frontiers: MulticastFrontiers) => void): void {
    this.frontierListeners.push(listener);
  }

  get currentView(): MulticastView {
    return this.view;
  }

  get isWedged(): boolean {
    return this.core === null || this.core.isWedged;
  }

  /**
   * A snapshot for diagnosing a stall: the core's state (MulticastCore.diagnostics), each
   * peer's queues and calls in flight, and the sends waiting to enter the core.
   */
  diagnostics(): Record<string, unknown> {
    return {
      core: this.core?.diagnostics() ?? null,
      pendingSends: this.pending.length - this.pendingHead,
      ownBytesUndelivered: this.ownBytesUndelivered,
      peers: [...this.peers.values()].map((p) => ({
        node: p.node, connected: p.session !== null, failed: p.failed, smcQueued: p.queue.length,
        blocksQueued: p.blocks.length, queuedBytes: p.queuedBytes, inFlight: p.inFlight, inFlightBytes: p.inFlightBytes,
        notReadyForMs: p.notReadySinceMs === 0 ? 0 : Date.now() - p.notReadySinceMs, failure: p.failure,
      })),
    };
  }

  /** The core's counters for the current view (packets, duplicates, nulls, other views). */
  coreCounters(): MulticastCore['counters'] | null {
    return this.core === null ? null : { ...this.core.counters };
  }

  // ------------------------------------------------------------------------------------------
  // View change, driven by the membership layer (README of src/multicast, duty 5)

  /** Stops sending and delivering in the current view; arriving packets are still recorded. */
  wedge(): void {
    assert(this.core !== null, 'wedge() needs an installed view');
    this.core.wedge();
  }

  /** After wedge(): what this member received from each sender, for computeTrim. */
  receiveState(): { readonly receivedCounts: number[] } {
    assert(this.core !== null, 'receiveState() needs an installed view');
    return this.core.receiveState();
  }

  /**
   * Delivers exactly up to the agreed trim (synchronously, through onDeliver), ends the view and
   * keeps this member's cut-off messages to re-send first in the next view. Returns how many of
   * them there are.
   */
  applyTrim(trim: readonly number[]): { readonly resendCount: number } {
    assert(this.core !== null, 'applyTrim() needs an installed view');
    const { resend, released } = this.core.applyTrim(trim);
    this.pumpCore(this.core);
    this.releasePayloads(released);
    this.core = null;
    // Cut-off own messages go first in the next view, in their original order and with their
    // original stamps (the next core queues them before anything else).
    this.carryOver = resend;
    this.counters.resent += resend.length;
    this.emitFrontiers();
    return { resendCount: resend.length };
  }

  /**
   * Installs the next view (after applyTrim): connects to new members, feeds the packets of that
   * view that arrived early, and re-sends the cut-off messages first. A re-sent message keeps its
   * HLC stamp (the receipt's `timestamp`) but gets a new index, position and version in this
   * view: a receipt's numbering is final only if its view's trim did not cut the message off.
   */
  async installView(view: MulticastView): Promise<void> {
    assert(this.core === null, 'installView() after applyTrim()');
    assert(view.viewId > this.view.viewId, 'views only move forward');
    assert(view.members.includes(this.self), 'this node is a member of the new view');
    this.view = view;
    const old = this.peers;
    this.peers = this.makePeers(view, old);
    const core = this.makeCore(view, this.carryOver);
    this.carryOver = [];
    this.core = core;
    if (this.persistedVersion !== VERSION_NONE) core.persisted(this.persistedVersion);
    const held = this.held;
    this.held = [];
    for (const packet of held) {
      if (packet.viewId === view.viewId) core.receive(packet);
      else if (packet.viewId > view.viewId) this.held.push(packet);
      else this.counters.oldViewDropped++;
    }
    this.drainPending();
    this.onTick();
    await this.connectAll();
  }

  /** Stops timers and unregisters the shard; does not close the transport. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.ticker);
    for (const peer of this.peers.values()) {
      if (peer.retryTimer !== null) clearTimeout(peer.retryTimer);
      peer.retryTimer = null;
    }
    this.mux.drivers.delete(this.shard);
    const error = new Error('multicast driver closed');
    for (let i = this.pendingHead; i < this.pending.length; i++) this.pending[i]!.reject?.(error);
    this.pending.length = 0;
    this.pendingHead = 0;
  }

  // ------------------------------------------------------------------------------------------
  // Inputs from the transport

  /** A frame from the transport handler (called by the mux). */
  receiveFrame(frame: Uint8Array): void {
    if (this.closed) return;
    this.counters.framesReceived++;
    let offset = FRAME_HEADER_BYTES;
    while (offset + LENGTH_BYTES <= frame.byteLength) {
      const length = readU32LE(frame, offset);
      offset += LENGTH_BYTES;
      if (offset + length > frame.byteLength) {
        this.counters.decodeErrors++;
        break;
      }
      let packet: Packet;
      try {
        packet = decodePacket(frame.subarray(offset, offset + length));
      } catch (error) {
        if (!(error instanceof MulticastDecodeError)) throw error;
        this.counters.decodeErrors++;
        offset += length;
        continue;
      }
      offset += length;
      if (
        packet.kind === 'block' && length === frame.byteLength - FRAME_HEADER_BYTES - LENGTH_BYTES &&
        frame.byteOffset === 0 && frame.byteLength === frame.buffer.byteLength
      ) {
        this.singleBlockFrames.set(frame.buffer, frame);
        if (this.receivePacket(packet) && this.releaseFrame !== null && packet.totalBytes > this.limits.blockBytes) {
          // A block of a message of several blocks: the core copied it into the message (see
          // RdmcTransferState.receiveBlock) or dropped it; relays and the delivery use views of
          // the message. Nothing reads the frame again, whatever the application does: always.
          this.giveBack(frame);
        }
        continue;
      }
      this.receivePacket(packet);
    }
    this.schedulePump();
  }

  /** Hands a received frame nothing here reads any more back to the transport. */
  private giveBack(frame: Uint8Array): void {
    if (this.releaseFrame!(frame)) this.counters.framesReleased++;
  }

  /**
   * The core let go of these received large payloads (releaseReceived): their frames go back to
   * the transport, buffers assembled here are kept for the next messages; both once no relay
   * from them is queued or unsettled (blockRefs).
   */
  private releaseReceivedFrames(payloads: readonly Uint8Array[]): void {
    if (!this.recyclesAssembled) return;
    for (const payload of payloads) {
      const frame = this.singleBlockFrames.get(payload.buffer);
      if (frame !== undefined) {
        if (!this.releasesDelivered) continue;
        if (this.blockRefs.has(payload.buffer)) this.framesWaiting.set(payload.buffer, frame);
        else this.giveBack(frame);
      } else if (
        payload.byteLength > this.limits.blockBytes && payload.byteOffset === 0 &&
        payload.byteLength === payload.buffer.byteLength
      ) {
        // A message of several blocks, assembled here in a buffer of its own (RdmcTransferState).
        if (this.blockRefs.has(payload.buffer)) this.assembledWaiting.set(payload.buffer, payload);
        else this.keepAssembled(payload);
      }
    }
  }

  /** Keeps a released assembled message's buffer for takeAssembled (within the byte bound). */
  private keepAssembled(buffer: Uint8Array): void {
    this.assembledIdleTicks = 0;
    if (this.assembledFreeBytes + buffer.byteLength > ASSEMBLED_FREE_BYTES_MAX) return;
    const list = this.assembledFree.get(buffer.byteLength);
    if (list === undefined) this.assembledFree.set(buffer.byteLength, [buffer]);
    else list.push(buffer);
    this.assembledFreeBytes += buffer.byteLength;
  }

  /**
   * Lets the kept buffers go once none was kept or taken for ASSEMBLED_IDLE_TICKS ticks: held
   * after a burst of 16 MiB messages, 64 MiB of them made the next workload's first round (the
   * benchmark's raw 1 MiB case) take ~2x the page faults and ~20 % more CPU.
   */
  private dropIdleAssembled(): void {
    if (this.assembledFreeBytes === 0 || ++this.assembledIdleTicks < ASSEMBLED_IDLE_TICKS) return;
    for (const list of this.assembledFree.values()) this.counters.assembledBuffersDropped += list.length;
    this.assembledFree.clear();
    this.assembledFreeBytes = 0;
  }

  /** The core's MessageAllocator with releaseReceived: a kept buffer of that length, or a fresh one. */
  private takeAssembled(bytes: number): Uint8Array {
    this.assembledIdleTicks = 0;
    const buffer = this.assembledFree.get(bytes)?.pop();
    if (buffer === undefined) return freshMessageBuffer(bytes);
    this.assembledFreeBytes -= bytes;
    this.counters.assembledBuffersReused++;
    return buffer;
  }

  /**
   * The received frame `block`'s bytes still sit in, laid out as this block's own frame would be
   * ([shard][length][36-byte header][bytes], alone), or null. Rewriting the header there is safe:
   * what else refers to that frame (the core's stored message, a delivered payload) are views of
   * the block's bytes, which stay as they are, and the transport copies a request in call().
   */
  private relayFrame(block: BlockPacket): Uint8Array | null {
    const frame = this.singleBlockFrames.get(block.bytes.buffer);
    const start = FRAME_HEADER_BYTES + LENGTH_BYTES + BLOCK_HEADER_BYTES;
    if (frame === undefined || block.bytes.byteOffset !== start || block.bytes.byteLength !== frame.byteLength - start) {
      return null;
    }
    return frame;
  }

  /** Returns true if the packet went to the core (false: held for a later view, or dropped). */
  private receivePacket(packet: Packet): boolean {
    const core = this.core;
    if (core !== null && packet.viewId === core.viewId) {
      core.receive(packet);
      return true;
    } else if (packet.viewId > this.view.viewId) {
      // A view this node has not installed yet: hold it for installView (duty 5).
      if (this.held.length < this.heldPacketsMax) {
        this.held.push(packet);
        this.counters.heldPackets++;
      } else {
        this.counters.heldDropped++;
      }
    } else {
      this.counters.oldViewDropped++;
    }
    return false;
  }

  // ------------------------------------------------------------------------------------------
  // The pump: one ready() per event-loop turn with inputs

  private schedulePump(): void {
    if (this.pumpScheduled || this.closed) return;
    this.pumpScheduled = true;
    setImmediate(this.pumpBound);
  }

  /**
   * A pump in a microtask, for persisted() caught up with the deliveries: the persistence layer
   * reports a version at the end of a turn's work (after its commit), and the report that carries
   * it is urgent (the persisted frontier waits on it). Pumped at the next setImmediate, it left one event-loop turn later in
   * a transport flush of its own; pumped here, it joins the flush the transport makes at the end
   * of this turn's microtasks, with the replies and responses of the same turn (one send, one
   * wake-up of the caller, instead of two; see README, "Per-batch costs"). A pump already
   * scheduled for setImmediate then finds nothing to do and returns.
   */
  private schedulePumpSoon(): void {
    if (this.pumpSoonScheduled || this.closed) return;
    this.pumpSoonScheduled = true;
    void SETTLED.then(this.pumpSoonBound);
  }

  private readonly pumpBound = (): void => {
    if (this.pumpScheduled) this.runPump();
  };

  private readonly pumpSoonBound = (): void => {
    this.pumpSoonScheduled = false;
    this.runPump();
  };

  private runPump(): void {
    if (this.closed) return;
    this.drainPending();
    this.pumpScheduled = false;
    if (this.core !== null) this.pumpCore(this.core);
  }

  private pumpCore(core: MulticastCore): void {
    const ready = core.ready();
    this.sendPackets(ready, core.senderCount);
    this.deliver(ready);
    if (ready.released.length > 0) this.releasePayloads(ready.released);
    if (ready.releasedReceived.length > 0) this.releaseReceivedFrames(ready.releasedReceived);
    const room = ready.sendCapacity > 0 && this.ownBytesUndelivered < this.ownBytesUndeliveredMax;
    if (room && this.pendingHead < this.pending.length) this.schedulePump();
  }

  private deliver(ready: MulticastReady): void {
    let newest: Hlc | null = null;
    for (const d of ready.deliveries) {
      this.deliveredMessages++;
      if (d.version !== null) this.lastDeliveredVersion = d.version;
      if (newest === null || compareHlc(d.timestamp, newest) > 0) {
        newest = d.timestamp;
      }
      // (Never below 0: raw mode may deliver a re-sent message twice across a view change.)
      if (d.sender === this.self) this.ownBytesUndelivered = Math.max(0, this.ownBytesUndelivered - d.payload.byteLength);
      // The core's own object (it carries the view id): no copy per delivery.
      this.options.onDeliver(d);
    }
    if (newest !== null) this.hlc.observe(newest);
    if (ready.lastDeliveredVersion > this.lastDeliveredVersion) this.lastDeliveredVersion = ready.lastDeliveredVersion;
    if (ready.globalPersistedVersion > this.globalPersistedVersion) {
      this.globalPersistedVersion = ready.globalPersistedVersion;
    }
    if (ready.stabilityFrontierMicros > this.stabilityFrontierMicros) {
      this.stabilityFrontierMicros = ready.stabilityFrontierMicros;
    }
    this.emitFrontiers();
  }

  private emitFrontiers(): void {
    if (this.frontierListeners.length === 0) return;
    // (Compared field by field: a string key of the three was built on every ready().)
    if (
      this.deliveredMessages === this.emittedDelivered &&
      this.globalPersistedVersion === this.emittedPersisted &&
      this.stabilityFrontierMicros === this.emittedStability
    ) return;
    this.emittedDelivered = this.deliveredMessages;
    this.emittedPersisted = this.globalPersistedVersion;
    this.emittedStability = this.stabilityFrontierMicros;
    const frontiers = this.frontiers();
    for (const listener of this.frontierListeners) listener(frontiers);
  }

  /** Hands queued sends to the core while it accepts them. */
  private drainPending(): void {
    while (this.pendingHead < this.pending.length) {
      const item = this.pending[this.pendingHead]!;
      const receipt = this.offerToCore(item.payload);
      if (receipt === null) break;
      this.pending[this.pendingHead++] = undefined as unknown as PendingSend;
      item.resolve?.(receipt);
    }
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
    } else if (this.pendingHead > 4096) {
      this.pending.splice(0, this.pendingHead);
      this.pendingHead = 0;
    }
  }

  private offerToCore(payload: Uint8Array): SendReceipt | null {
    const core = this.core;
    if (core === null || core.isWedged || this.ownBytesUndelivered >= this.ownBytesUndeliveredMax) return null;
    const timestamp = this.hlc.now();
    const result = core.send(payload, timestamp);
    if (!result.accepted) return null;
    this.ownBytesUndelivered += payload.byteLength;
    this.schedulePump();
    return { viewId: this.view.viewId, index: result.index, position: result.position, timestamp };
  }

  private onTick(): void {
    if (this.core === null || this.closed) return;
    this.dropIdleAssembled();
    // The HLC never runs behind the wall clock, so stamps are never below this tick (core rule).
    this.core.tick(Math.floor(Number(this.clock.wallMicros())));
    this.schedulePump();
  }

  // ------------------------------------------------------------------------------------------
  // Sending

  private sendPackets(ready: MulticastReady, senderCount: number): void {
    for (const out of ready.packets) {
      // A block goes to one member: it is encoded straight into that member's frame.
      const packet = out.packet;
      const item = packet.kind === 'block' ? packet : encodePacket(packet);
      const bytes = itemBytes(item);
      for (const node of out.to) {
        const peer = this.peers.get(node);
        if (peer === undefined || peer.failed) continue;
        if (packet.kind === 'block') {
          peer.blocks.push(packet, deliveryRank(packet, senderCount));
          if (this.countsBlocks) this.refBlock(packet.bytes.buffer, 1);
        } else {
          peer.queue.push(item as Uint8Array);
        }
        peer.queuedBytes += bytes;
      }
    }
    for (const peer of this.peers.values()) this.flush(peer);
  }

  private flush(peer: Peer): void {
    const session = peer.session;
    if (session === null || peer.failed || peer.retryTimer !== null) return;
    while (peer.inFlight < this.callsInFlightMax) {
      // SMC packets first, and past the byte cap: stability and RDMC repair wait on the
      // reports they carry, which must not queue behind MiBs of blocks. Blocks only while the
      // bytes in flight allow. Packets up to the frame budget (always at least one).
      const blocksAllowed = peer.inFlight === 0 || peer.inFlightBytes < this.bytesInFlightMax;
      if (peer.queue.length === 0 && (!blocksAllowed || peer.blocks.length === 0)) break;
      const items: (Uint8Array | BlockPacket)[] = [];
      let bytes = FRAME_HEADER_BYTES;
      const take = (item: Uint8Array | BlockPacket): boolean => {
        const next = LENGTH_BYTES + itemBytes(item);
        if (items.length > 0 && bytes + next > this.frameBytesMax) return false;
        // A large block travels alone, so that its receiver can relay it in that very frame.
        if (items.length > 0 && (isLargeBlock(item) || isLargeBlock(items[0]!))) return false;
        bytes += next;
        items.push(item);
        return true;
      };
      let smcCount = 0;
      while (smcCount < peer.queue.length && take(peer.queue[smcCount]!)) smcCount++;
      if (blocksAllowed) {
        for (let block = peer.blocks.peek(); block !== undefined && take(block); block = peer.blocks.peek()) {
          peer.blocks.pop();
        }
      }
      peer.queue.splice(0, smcCount);
      const count = items.length;
      if (count === 1 && isLargeBlock(items[0]!) && session.callLent !== undefined) {
        // A large block alone, and a transport that sends from lent bytes: only the headers are
        // built; the block's bytes (a view of the sender's payload or of the received frame,
        // never changed: see send() and receiveFrame) are lent until the call settles.
        const block = items[0] as BlockPacket;
        const head = this.blockFrameHead(peer, new Uint8Array(FRAME_HEADER_BYTES + LENGTH_BYTES + BLOCK_HEADER_BYTES), block);
        this.counters.blocksLent++;
        this.callFrame(peer, session, head, items, block.bytes);
        continue;
      }
      const inPlace = count === 1 && !(items[0] instanceof Uint8Array) ? this.relayFrame(items[0]!) : null;
      if (inPlace !== null) {
        // A relayed block alone in its frame: forward the frame it arrived in (no JS copy).
        this.blockFrameHead(peer, inPlace, items[0] as BlockPacket);
        this.counters.blocksRelayedInPlace++;
        this.callFrame(peer, session, inPlace, items);
        continue;
      }
      // Every frame is built in one reused buffer: the transport copies a request before call()
      // returns (Transport's buffer rule), and a fresh MiB per block frame cost page faults
      // and garbage collection. Not zero-filled: every byte is written below.
      if (this.frameScratch.byteLength < bytes) {
        this.frameScratch = Buffer.allocUnsafeSlow(bytes);
        this.frameScratchView = new DataView(this.frameScratch.buffer, this.frameScratch.byteOffset, bytes);
      }
      const frame = this.frameScratch.subarray(0, bytes);
      const view = this.frameScratchView;
      view.setUint32(0, this.shard, true);
      let offset = FRAME_HEADER_BYTES;
      for (const item of items) {
        const length = itemBytes(item);
        view.setUint32(offset, length, true);
        if (item instanceof Uint8Array) frame.set(item, offset + LENGTH_BYTES);
        else encodeBlockInto(item, frame, offset + LENGTH_BYTES);
        offset += LENGTH_BYTES + length;
        peer.queuedBytes -= length;
      }
      this.callFrame(peer, session, frame, items);
    }
  }

  /**
   * Writes the frame head of `block` travelling alone ([shard][length][block header]) at the start
   * of `target` (its bytes follow there, or are lent), and takes the block off `peer`'s queued
   * bytes. Returns `target`.
   */
  private blockFrameHead(peer: Peer, target: Uint8Array, block: BlockPacket): Uint8Array {
    const view = new DataView(target.buffer, target.byteOffset, FRAME_HEADER_BYTES + LENGTH_BYTES);
    view.setUint32(0, this.shard, true);
    view.setUint32(FRAME_HEADER_BYTES, itemBytes(block), true);
    encodeBlockHeaderInto(block, target, FRAME_HEADER_BYTES + LENGTH_BYTES);
    peer.queuedBytes -= itemBytes(block);
    return target;
  }

  /**
   * Sends one built frame of the packets `items` to `peer` (the transport copies it at once), or,
   * with `lent`, the frame `frame` ++ `lent` through callLent (`lent` is held until it settles).
   */
  private callFrame(
    peer: Peer, session: TransportSession, frame: Uint8Array, items: (Uint8Array | BlockPacket)[], lent?: Uint8Array,
  ): void {
    const count = items.length;
    const bytes = frame.byteLength + (lent?.byteLength ?? 0);
    peer.inFlight++;
    peer.inFlightBytes += bytes;
    this.counters.framesSent++;
    this.counters.packetsSent += count;
    this.counters.bytesSent += bytes;
    const type = this.options.requestType ?? MULTICAST_REQUEST_TYPE_DEFAULT;
    const sent = lent === undefined ? session.call(type, frame) : session.callLent!(type, frame, lent);
    sent.then(
      () => {
        peer.inFlight--;
        peer.inFlightBytes -= bytes;
        peer.notReadySinceMs = 0;
        this.unrefBlocks(items);
        this.flush(peer);
      },
      (error: Error) => {
        peer.inFlight--;
        peer.inFlightBytes -= bytes;
        if (isNoHandler(error) && this.peerNotReady(peer, items, error)) return;  // queued again
        if (!isNoHandler(error)) this.peerFailed(peer, error);
        this.unrefBlocks(items);
      },
    );
  }

  // ------------------------------------------------------------------------------------------
  // Payload release (onPayloadReleased)

  /** The core let go of these own payloads: released now, or when their buffer's blocks are sent. */
  private releasePayloads(payloads: readonly Uint8Array[]): void {
    const onReleased = this.options.onPayloadReleased;
    if (onReleased === undefined || this.closed) return;
    for (const payload of payloads) {
      if (!this.blockRefs.has(payload.buffer)) {
        onReleased(payload);
        continue;
      }
      const waiting = this.releaseWaiting.get(payload.buffer);
      if (waiting === undefined) this.releaseWaiting.set(payload.buffer, [payload]);
      else waiting.push(payload);
    }
  }

  /** Counts a block packet whose bytes are in `buffer` in or out of a queue or an unsettled call. */
  private refBlock(buffer: ArrayBufferLike, delta: 1 | -1): void {
    const count = (this.blockRefs.get(buffer) ?? 0) + delta;
    if (count > 0) {
      this.blockRefs.set(buffer, count);
      return;
    }
    this.blockRefs.delete(buffer);
    const frame = this.framesWaiting.get(buffer);
    if (frame !== undefined) {
      this.framesWaiting.delete(buffer);
      this.giveBack(frame);
    }
    const assembled = this.assembledWaiting.get(buffer);
    if (assembled !== undefined) {
      this.assembledWaiting.delete(buffer);
      this.keepAssembled(assembled);
    }
    const waiting = this.releaseWaiting.get(buffer);
    if (waiting === undefined) return;
    this.releaseWaiting.delete(buffer);
    if (this.closed) return;
    for (const payload of waiting) this.options.onPayloadReleased!(payload);
  }

  /** A call's block packets left for good (settled, or dropped with their peer). */
  private unrefBlocks(items: Iterable<Uint8Array | BlockPacket>): void {
    if (!this.countsBlocks) return;
    for (const item of items) if (!(item instanceof Uint8Array)) this.refBlock(item.bytes.buffer, -1);
  }

  /** Empties `peer`'s block queue (its blocks will never be sent). */
  private dropBlocks(peer: Peer): void {
    const dropped: BlockPacket[] = [];
    for (let block = peer.blocks.pop(); block !== undefined; block = peer.blocks.pop()) dropped.push(block);
    this.unrefBlocks(dropped);
  }

  /**
   * `peer` refused a frame because it has no multicast handler yet: its process runs but has not
   * created a multicast driver (nor called prepareMulticastTransport). The frame did not reach
   * its core, so its packets go back to the queues (the core relies on every packet arriving;
   * duty 4) and are sent again after `notReadyRetryMs`. Reporting such a member failed, as this
   * driver used to, dropped everything for it for good: a member that started its driver a
   * moment after the others then never heard from one of them and the shard stalled
   * (test/integration/multicast-driver.test.ts). After `peerNotReadyTimeoutMs` it is failed.
   */
  private peerNotReady(peer: Peer, items: (Uint8Array | BlockPacket)[], error: Error): boolean {
    this.counters.notReadyRefusals++;
    if (peer.failed || this.closed || this.peers.get(peer.node) !== peer) return false;
    const now = Date.now();
    if (peer.notReadySinceMs === 0) peer.notReadySinceMs = now;
    if (now - peer.notReadySinceMs >= this.peerNotReadyTimeoutMs) {
      this.peerFailed(peer, error);
      return false;
    }
    const smc: Uint8Array[] = [];
    for (const item of items) {
      if (item instanceof Uint8Array) smc.push(item);
      else peer.blocks.push(item, deliveryRank(item, this.core?.senderCount ?? 1));
      peer.queuedBytes += itemBytes(item);
    }
    // The refused SMC packets go first again, in their order (the core takes any arrival order,
    // but reports should not fall behind).
    if (smc.length > 0) peer.queue.unshift(...smc);
    if (peer.retryTimer === null) {
      peer.retryTimer = setTimeout(() => {
        peer.retryTimer = null;
        if (!this.closed) this.flush(peer);
      }, this.notReadyRetryMs);
    }
    return true;
  }

  private peerFailed(peer: Peer, error: Error): void {
    this.counters.callFailures++;
    // A peer of an earlier view, left behind by makePeers: its session (to a process that may
    // have been replaced at that address since) no longer speaks for the node.
    if (peer.failed || this.closed || this.peers.get(peer.node) !== peer) return;
    peer.failed = true;
    peer.failure = error.message;
    if (peer.retryTimer !== null) clearTimeout(peer.retryTimer);
    peer.retryTimer = null;
    peer.queue = [];
    this.dropBlocks(peer);
    peer.queuedBytes = 0;
    this.options.onPeerFailed?.(peer.node, error);
  }

  private makeCore(view: MulticastView, resend: readonly ResendMessage[] = []): MulticastCore {
    return new MulticastCore({
      resend,
      viewId: view.viewId,
      members: view.members,
      senders: view.senders ?? view.members,
      self: this.self,
      mode: this.mode,
      limits: this.limits,
      ...(this.recyclesAssembled ? { allocateMessage: (bytes: number) => this.takeAssembled(bytes) } : {}),
    });
  }

  /** Peers of `view`, keeping the state (session, queue) of those already known. */
  private makePeers(view: MulticastView, old: Map<NodeId, Peer>): Map<NodeId, Peer> {
    const peers = new Map<NodeId, Peer>();
    for (const node of view.members) {
      if (node === this.self) continue;
      const address = view.addresses.get(node);
      assert(address !== undefined, `no address for member ${node}`);
      const known = old.get(node);
      if (known !== undefined && known.address === address && !known.failed) {
        peers.set(node, known);
      } else {
        peers.set(node, {
          node, address, session: null, queue: [], blocks: new BlockQueue(), queuedBytes: 0, inFlight: 0,
          inFlightBytes: 0,
          failed: false, notReadySinceMs: 0, retryTimer: null, failure: null,
        });
      }
    }
    // A member that left (or moved): what was queued for it belongs to a view that ended.
    for (const [node, peer] of old) {
      if (peers.get(node) === peer || peer.failed) continue;
      peer.queue = [];
      this.dropBlocks(peer);
      peer.queuedBytes = 0;
    }
    return peers;
  }

  private async connectAll(): Promise<void> {
    await Promise.all(
      [...this.peers.values()].map(async (peer) => {
        if (peer.session !== null) return;
        try {
          peer.session = await this.mux.session(peer.address);
          peer.session.onEvent((event) => {
            if (event.kind === 'peer-failed') this.peerFailed(peer, new Error(event.reason));
          });
        } catch (error) {
          this.peerFailed(peer, error as Error);
          // Reported: the driver goes on without the peer (as when a call to it fails later).
          if (this.options.onPeerFailed !== undefined) return;
          throw error;
        }
        this.flush(peer);
      }),
    );
  }
}
