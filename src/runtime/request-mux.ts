/**
 * RequestMux: several instances of one protocol behind one request type on one transport — the
 * membership log's Raft and one Raft per raft-ordered shard on a node all use RAFT_REQUEST_TYPE,
 * and every raft shard's forwarding and frontier reports share one type each. A transport allows
 * one handler per type (registering twice is a programmer error), so the first instance
 * registers the mux's handler and every instance registers with the mux under its group id.
 *
 * Each request names its instance in its own bytes: `groupOf(request)` reads it (the Raft codec
 * keeps a u32 group id in its batch header, so a Raft batch is not copied; other protocols put a
 * u32 in front of their body with `prefixGroup`). A request for a group not registered here
 * (not started yet, or closed) or one `groupOf` cannot read is answered with an empty response
 * and counted: every protocol using the mux tolerates a lost message.
 *
 * Responses need no group id: the caller's own instance made the call and receives the answer.
 */
import { assert } from '../core/assert.js';
import { underlyingTransport, type RequestHandler, type RequestType, type Transport } from '../transport/transport.js';

/** Reads the group id a request is for; -1 when it cannot (malformed). */
export type GroupOf = (request: Uint8Array) => number;

export interface RequestMuxCounters {
  /** Requests for a group id not registered (not started yet, or closed). */
  unknownGroup: number;
  /** Requests whose group id could not be read. */
  malformed: number;
}

const EMPTY = new Uint8Array(0);
const muxes = new WeakMap<Transport, Map<RequestType, RequestMux>>();

export class RequestMux {
  readonly counters: RequestMuxCounters = { unknownGroup: 0, malformed: 0 };
  private readonly handlers = new Map<number, RequestHandler>();

  private constructor(readonly type: RequestType, private readonly groupOf: GroupOf) {}

  /**
   * The mux for `type` on `transport` (on the endpoint under any wrappers), registering its
   * handler on first use. Every user of one
   * type must read group ids the same way (the same `groupOf` function).
   */
  static on(transport: Transport, type: RequestType, groupOf: GroupOf): RequestMux {
    // Keyed by the endpoint, not the wrapper: the membership driver reaches the node's endpoint
    // through a wrapper that notes each request as a sign of life, the group's raft shards
    // directly. The handler is registered through whichever came first.
    const endpoint = underlyingTransport(transport);
    let byType = muxes.get(endpoint);
    if (byType === undefined) muxes.set(endpoint, (byType = new Map()));
    let mux = byType.get(type);
    if (mux === undefined) {
      const created = new RequestMux(type, groupOf);
      transport.handle(type, (request, context) => created.dispatch(request, context));
      byType.set(type, (mux = created));
    }
    assert(mux.groupOf === groupOf, `request type ${type} is shared by protocols that frame group ids differently`);
    return mux;
  }

  /** Routes requests for `group` to `handler` until the returned function is called. */
  register(group: number, handler: RequestHandler): () => void {
    assert(Number.isInteger(group) && group >= 0 && group <= 0xffff_ffff, `group id must be a uint32, got ${group}`);
    assert(!this.handlers.has(group), `request type ${this.type} already has a handler for group ${group}`);
    this.handlers.set(group, handler);
    return () => {
      if (this.handlers.get(group) === handler) this.handlers.delete(group);
    };
  }

  private dispatch(request: Uint8Array, context: Parameters<RequestHandler>[1]): Uint8Array | Promise<Uint8Array> {
    const group = this.groupOf(request);
    if (group < 0) {
      this.counters.malformed++;
      return EMPTY;
    }
    const handler = this.handlers.get(group);
    if (handler === undefined) {
      this.counters.unknownGroup++;
      return EMPTY;
    }
    return handler(request, context);
  }
}

/** Bytes of the group id `prefixGroup` writes in front of a body. */
export const GROUP_PREFIX_BYTES = 4;

/** `body` with a big-endian u32 group id in front (for protocols without their own header). */
export function prefixGroup(group: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(GROUP_PREFIX_BYTES + body.byteLength);
  new DataView(out.buffer).setUint32(0, group);
  out.set(body, GROUP_PREFIX_BYTES);
  return out;
}

/** The group id `prefixGroup` wrote, or -1 if the request is too short. */
export const prefixedGroup: GroupOf = (request) =>
  request.byteLength < GROUP_PREFIX_BYTES
    ? -1
    : new DataView(request.buffer, request.byteOffset, request.byteLength).getUint32(0);
