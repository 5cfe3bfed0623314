/**
 * ShardGate: the Transport the group hands its multicast drivers. It holds multicast frames for
 * a shard until that shard's driver exists on this node, then passes them on in arrival order.
 *
 * Why: members create their drivers at slightly different times, and a driver starts sending
 * (nulls, receive reports) as soon as it exists. The driver's demultiplexer drops a frame for a
 * shard it has no driver for, while the transport has already acknowledged it, so the sender
 * never re-sends it and the receiving core waits forever for the missing packets. Holding the
 * frames here keeps every link reliable across start-up without changing the driver.
 *
 * Everything except the multicast request type's handler is passed straight to the endpoint.
 */
import type {
  RequestContext,
  RequestHandler,
  RequestType,
  Transport,
  TransportAddress,
  TransportSession,
  TransportStats,
} from '../transport/transport.js';

const EMPTY = new Uint8Array(0);
const SHARD_HEADER_BYTES = 4;

export class ShardGate implements Transport {
  /** Frames held for shards without a driver yet (beyond `heldFramesMax`, dropped). */
  heldFrames = 0;
  droppedFrames = 0;
  private handler: RequestHandler | undefined;
  private readonly open = new Set<number>();
  private held: { shard: number; frame: Uint8Array; context: RequestContext }[] = [];

  constructor(
    private readonly inner: Transport,
    private readonly multicastType: RequestType,
    private readonly heldFramesMax = 65_536,
  ) {
    inner.handle(multicastType, (frame, context) => this.receive(frame, context));
  }

  get address(): TransportAddress {
    return this.inner.address;
  }

  handle(type: RequestType, handler: RequestHandler): void {
    if (type === this.multicastType) this.handler = handler;
    else this.inner.handle(type, handler);
  }

  connect(remote: TransportAddress): Promise<TransportSession> {
    return this.inner.connect(remote);
  }

  stats(): TransportStats {
    return this.inner.stats();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** The driver of `shard` now exists: hand it the frames held for it, in arrival order. */
  openShard(shard: number): void {
    this.open.add(shard);
    const handler = this.handler;
    if (handler === undefined) return;
    const keep = [];
    for (const item of this.held) {
      if (item.shard === shard) void handler(item.frame, item.context);
      else keep.push(item);
    }
    this.held = keep;
  }

  private receive(frame: Uint8Array, context: RequestContext): Uint8Array | Promise<Uint8Array> {
    if (frame.byteLength < SHARD_HEADER_BYTES) return this.handler?.(frame, context) ?? EMPTY;
    const shard = new DataView(frame.buffer, frame.byteOffset, frame.byteLength).getUint32(0, true);
    if (this.handler !== undefined && this.open.has(shard)) return this.handler(frame, context);
    if (this.held.length >= this.heldFramesMax) {
      this.droppedFrames++;
      return EMPTY;
    }
    this.heldFrames++;
    this.held.push({ shard, frame, context });
    return EMPTY;
  }
}
