/**
 * Client: a process that is not a member of the group. It learns the view from any member it can
 * reach, makes p2p calls to members directly, and makes ordered calls that a member of the shard
 * relays into it (RELAY_TYPE in wire.ts).
 *
 *   const client = await Client.connect({ contacts: ['127.0.0.1:7000', '127.0.0.1:7001'] });
 *   const kv = client.subgroup(KvStore);
 *   const { version, replies } = await kv.ordered.put('k', 'v');   // replies: Map<NodeId, R>
 *   await kv.p2p(1).get('k');
 *   await client.close();
 *
 * Retries: every ordered call carries an idempotency key (this client's random id, a request
 * number). If the relaying member fails or times out, the client asks the next sender of the
 * shard with the same key; every replica remembers the replies of relayed keys it delivered
 * (in delivery order, so all agree), so a call that was already delivered is answered with its
 * first replies instead of running twice. It refreshes the view before each retry.
 */
import { randomBytes } from 'node:crypto';
import { buildCallProxy, type MethodParams, type MethodResult, type OrderedMethodName, type P2PApi } from '../../decorators/api.js';
import { decodeReply } from '../../decorators/codec.js';
import { replicatedClassInfo, type AnyClass, type MethodInfo, type ReplicatedClassInfo } from '../../decorators/metadata.js';
import { decodeMessageCopy, encodeMessage } from '../core/codec.js';
import { PayloadTooLargeError, SquallError } from '../core/errors.js';
import { hlc, type Hlc } from '../core/hlc.js';
import { nodeId, type NodeId, type Version } from '../core/ids.js';
import type { SquallConfig } from '../config/schema.js';
import { decodeView, type View } from '../membership/view.js';
import { Endpoint } from '../transport/native-transport.js';
import type { TransportSession } from '../transport/transport.js';
import { GroupClosedError, NoSuchShardError, NotMemberError } from './errors.js';
import { staticMembersFromConfig } from './view-source.js';
import { SessionCache } from '../transport/session-cache.js';
import {
  P2P_NOT_HOSTED,
  P2P_OK,
  P2P_REPLY_TOO_LARGE,
  P2P_REQUEST_TYPE,
  RELAY_OK,
  RELAY_TYPE,
  VIEW_TYPE,
  type RelayResponse,
} from './wire.js';

export interface ClientOptions {
  /** Addresses ("host:port") of members to learn the view from; any one that answers will do. */
  readonly contacts: readonly string[];
  /** The local address to bind (port 0 is chosen); default 127.0.0.1. */
  readonly host?: string;
  /** Deadline of one call to one member, ms (default 10,000). */
  readonly requestTimeoutMs?: number;
  /** Largest p2p request, bytes (default 1 MiB). */
  readonly p2pRequestBytesMax?: number;
  /**
   * The group key (the members' transport.key_file, or the key text/bytes): required unless the
   * group runs with transport.encryption = false, in which case pass `encryption: false`.
   */
  readonly keyFile?: string;
  readonly key?: string | Uint8Array;
  readonly encryption?: boolean;
}

/** What an ordered call through a client resolves to. */
export interface ClientOrderedResult<R> {
  readonly version: Version;
  readonly timestamp: Hlc;
  /** Every member's reply; rejects (when awaited) with that member's RemoteError if it threw. */
  readonly replies: ReadonlyMap<NodeId, Promise<R>>;
}

export type ClientOrderedApi<C> = {
  readonly [K in OrderedMethodName<C>]: (...args: MethodParams<C, K>) => Promise<ClientOrderedResult<MethodResult<C, K>>>;
};

export interface ClientSubgroup<T> {
  readonly ordered: ClientOrderedApi<T>;
  p2p(node: NodeId | number): P2PApi<T>;
}

/**
 * The relaying members could not take the call (all failed, or all refused), or (`what` =
 * 'view') no contact or member gave the client the view.
 */
export class RelayFailedError extends SquallError {
  constructor(what: string, tried: readonly string[], options?: { cause?: unknown }) {
    // Each reason may end with its own "Fix: ….": joined without its final period.
    const reasons = tried.map((reason) => reason.replace(/\.+$/, '')).join('; ');
    super(
      `${what === 'view' ? 'no contact or member gave the view' : `${what} could not be relayed into the shard`}: ${reasons}. ` +
        'Fix: check that the group\'s members are running and reachable from this client.',
      'RELAY_FAILED',
      options,
    );
  }
}

// Transport failures (the member may be down) and refusals that a fresher view can fix.
const RETRYABLE = new Set(['TIMEOUT', 'PEER_FAILED', 'SESSION_CLOSED', 'CONNECT_FAILED', 'NO_HANDLER', 'BACKLOG_FULL', 'NOT_MEMBER']);

export class Client {
  /** Random per client: with the request number, the idempotency key of each ordered call. */
  readonly clientId = randomBytes(8).toString('hex');
  private nextRequestId = 1;
  private closed = false;
  private readonly sessions: SessionCache;

  private constructor(
    private readonly endpoint: Endpoint,
    private currentView: View,
    private readonly contacts: readonly string[],
    private readonly options: ClientOptions,
  ) {
    this.sessions = new SessionCache(endpoint);
  }

  /** Connects to a group: `options.contacts`, or a node config's `group.members` addresses. */
  static async connect(source: ClientOptions | SquallConfig): Promise<Client> {
    const options: ClientOptions = 'contacts' in source
      ? source
      : {
          contacts: staticMembersFromConfig(source).map((m) => m.address),
          requestTimeoutMs: source.transport.request_timeout_ms,
          p2pRequestBytesMax: source.p2p.max_p2p_request_payload_size,
          encryption: source.transport.encryption,
          ...(source.transport.key_file !== undefined ? { keyFile: source.transport.key_file } : {}),
        };
    const endpoint = await Endpoint.create({
      host: options.host ?? '127.0.0.1',
      port: 0,
      ...(options.encryption !== undefined ? { encryption: options.encryption } : {}),
      ...(options.keyFile !== undefined ? { keyFile: options.keyFile } : {}),
      ...(options.key !== undefined ? { key: options.key } : {}),
    });
    const client = new Client(endpoint, undefined as unknown as View, options.contacts, options);
    try {
      client.currentView = await client.fetchView();
    } catch (error) {
      await endpoint.close();
      throw error;
    }
    return client;
  }

  get view(): View {
    return this.currentView;
  }

  /** Asks the contacts (then the current members) for the current view. */
  async refreshView(): Promise<View> {
    this.currentView = await this.fetchView();
    return this.currentView;
  }

  /** Calls into shard `shard` of `Type`'s subgroup `index`. */
  subgroup<T extends object>(type: AnyClass<T>, index = 0, shard = 0): ClientSubgroup<T> {
    const info = replicatedClassInfo(type);
    this.shardLayout(info.name, index, shard);
    const ordered = buildCallProxy(info, 'ordered', (method, args) => this.ordered(info, index, shard, method, args));
    return {
      ordered: ordered as unknown as ClientOrderedApi<T>,
      p2p: (node) => {
        const target = nodeId(node);
        if (!this.shardLayout(info.name, index, shard).members.includes(target)) {
          throw new NotMemberError(target, info.name, index, `is not in shard ${shard}`);
        }
        return buildCallProxy(info, 'p2p', (method, args) => this.p2p(info, index, shard, target, method, args)) as unknown as P2PApi<T>;
      },
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.endpoint.close();
    await new Promise((resolve) => setTimeout(resolve, 1));
  }

  /** @internal Sends one relayed call with an explicit key through `via` (tests of retries). */
  async relayOnce<R>(type: AnyClass, index: number, shard: number, via: NodeId, methodName: string, args: unknown[], requestId: number): Promise<ClientOrderedResult<R>> {
    const info = replicatedClassInfo(type);
    const method = [...info.ordered.values()].find((m) => m.methodName === methodName)!;
    const { encodeArguments } = await import('../../decorators/codec.js');
    return this.relayVia<R>(info, index, shard, via, method, encodeArguments(method, args), requestId);
  }

  /** Index among a shard's senders where the next relayed call starts. */
  private relayStart = 0;

  private async ordered(info: ReplicatedClassInfo, index: number, shard: number, method: MethodInfo, args: Uint8Array): Promise<ClientOrderedResult<unknown>> {
    if (this.closed) throw new GroupClosedError(`${info.name}.${method.methodName}`);
    const requestId = this.nextRequestId++;
    const tried: string[] = [];
    let lastError: unknown;
    for (let attempt = 0; attempt < 2 * this.currentView.members.length; attempt++) {
      const senders = this.shardLayout(info.name, index, shard).senders;
      // Start at the sender that answered last: a dead one (a static view keeps listing it)
      // then costs one timeout, not one per call.
      const at = (this.relayStart + attempt) % senders.length;
      const via = senders[at]!;
      try {
        const result = await this.relayVia(info, index, shard, via, method, args, requestId);
        this.relayStart = at;
        return result;
      } catch (error) {
        const code = error instanceof SquallError ? error.code : '';
        if (!RETRYABLE.has(code)) throw error;
        tried.push(`node ${via}: ${(error as Error).message}`);
        lastError = error;
        await this.refreshView().catch(() => undefined);
      }
    }
    throw new RelayFailedError(`${info.name}.${method.methodName}`, tried, { cause: lastError });
  }

  private async relayVia<R>(info: ReplicatedClassInfo, index: number, shard: number, via: NodeId, method: MethodInfo, args: Uint8Array, requestId: number): Promise<ClientOrderedResult<R>> {
    const subgroupId = this.currentView.subgroup(info.name, index)!.subgroupId;
    const session = await this.session(this.addressOf(via));
    const request = encodeMessage([this.clientId, requestId, subgroupId, shard, method.wireName, args]);
    const response = decodeMessageCopy<RelayResponse>(
      await session.call(RELAY_TYPE, request, { timeoutMs: this.options.requestTimeoutMs ?? 10_000 }),
    );
    if (response[0] !== RELAY_OK) throw new SquallError(`node ${via} refused: ${response[2]}`, response[1]);
    const [, version, micros, logical, replies] = response;
    const map = new Map<NodeId, Promise<R>>();
    for (const [node, bytes] of replies) {
      const promise = (async () => decodeReply<R>(bytes, nodeId(node)))();
      promise.catch(() => undefined);
      map.set(nodeId(node), promise);
    }
    return { version: version as Version, timestamp: hlc(micros, logical), replies: map };
  }

  private async p2p(info: ReplicatedClassInfo, index: number, shard: number, node: NodeId, method: MethodInfo, args: Uint8Array): Promise<unknown> {
    if (this.closed) throw new GroupClosedError(`${info.name}.${method.methodName}`);
    const what = `p2p call ${info.name}.${method.methodName} to node ${node}`;
    const requestMax = this.options.p2pRequestBytesMax ?? 1024 * 1024;
    if (args.byteLength > requestMax) throw new PayloadTooLargeError(what, args.byteLength, requestMax, 'p2p.max_p2p_request_payload_size');
    const subgroupId = this.currentView.subgroup(info.name, index)!.subgroupId;
    const session = await this.session(this.addressOf(node));
    const response = await session.call(P2P_REQUEST_TYPE, encodeMessage([subgroupId, shard, method.wireName, args]), {
      timeoutMs: this.options.requestTimeoutMs ?? 10_000,
    });
    const [status, body, limit] = decodeMessageCopy<[number, Uint8Array | number | string, number?]>(response);
    if (status === P2P_OK) return decodeReply(body as Uint8Array, node);
    if (status === P2P_REPLY_TOO_LARGE) throw new PayloadTooLargeError(`reply to ${what}`, body as number, limit ?? -1, 'p2p.max_p2p_reply_payload_size');
    if (status === P2P_NOT_HOSTED) throw new NotMemberError(node, info.name, index, String(body));
    throw new SquallError(`malformed p2p response from node ${node}`, 'MALFORMED');
  }

  private async fetchView(): Promise<View> {
    const candidates = [...new Set([...(this.currentView?.members.map((m) => m.address) ?? []), ...this.contacts])];
    const problems: string[] = [];
    for (const address of candidates) {
      try {
        const session = await this.session(address);
        return decodeView(await session.call(VIEW_TYPE, new Uint8Array(0), { timeoutMs: this.options.requestTimeoutMs ?? 10_000 }));
      } catch (error) {
        problems.push(`${address}: ${(error as Error).message}`);
      }
    }
    throw new RelayFailedError('view', problems);
  }

  private session(address: string): Promise<TransportSession> {
    return this.sessions.get(address);
  }

  private addressOf(node: NodeId): string {
    const address = this.currentView.addressOf(node);
    if (address === undefined) throw new NotMemberError(node, 'the group', 0, 'is not a member of the current view');
    return address;
  }

  private shardLayout(typeName: string, index: number, shard: number) {
    const subgroups = this.currentView.typeLayout(typeName)?.subgroups ?? [];
    const subgroup = subgroups[index];
    if (subgroup === undefined) throw new NoSuchShardError(typeName, index, undefined, subgroups.length);
    const layout = subgroup.shards[shard];
    if (layout === undefined) throw new NoSuchShardError(typeName, index, shard, subgroup.shards.length);
    return layout;
  }
}
