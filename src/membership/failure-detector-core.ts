/**
 * A heartbeat failure detector as a pure state machine.
 *
 * Time is ticks. Every `heartbeatTicks` ticks the node owes every peer of the current view a
 * heartbeat; a peer from which nothing was heard for `timeoutTicks` ticks is suspected. A
 * transport report that a peer failed (its session died) is a suspicion at once. Each suspicion
 * is reported once per view: the driver turns it into a removal proposal in the membership log.
 * Suspicions are final within a view (a late heartbeat does not clear one: the other members may
 * already be acting on it, and Derecho's rule is the same). `resetView` starts over for the next
 * view, clearing suspicions and giving every peer a full timeout.
 *
 * Driver duties, in order: call `tick()` on every tick of its timer; feed `heartbeatReceived` for
 * every heartbeat (or any other message from a peer, which proves it alive just as well) and
 * `peerFailed` for transport session failures; after each batch of inputs, `ready()` returns the
 * heartbeats to send now and the new suspicions, and forgets them.
 */
import { SquallError } from '../core/errors.js';
import type { NodeId, ViewId } from '../core/ids.js';

export interface FailureDetectorConfig {
  readonly self: NodeId;
  /** Ticks between heartbeats to each peer; >= 1. */
  readonly heartbeatTicks: number;
  /** Ticks of silence after which a peer is suspected; > heartbeatTicks. */
  readonly timeoutTicks: number;
}

export type SuspicionCause = 'timeout' | 'transport';

export interface Suspicion {
  readonly node: NodeId;
  readonly cause: SuspicionCause;
  /** The view the suspicion was raised in (proposals for an older view are stale). */
  readonly viewId: ViewId;
  /** Ticks since the last heartbeat from the node (or since the view began). */
  readonly silentTicks: number;
}

export interface FailureDetectorReady {
  /** Peers to send a heartbeat to now, ascending by node id. */
  readonly heartbeatsTo: readonly NodeId[];
  /** New suspicions since the last ready(), in the order they were raised. */
  readonly suspicions: readonly Suspicion[];
}

/** The failure detector's settings contradict each other. */
export class FailureDetectorConfigError extends SquallError {
  constructor(problem: string, fix: string) {
    super(
      `invalid failure detector configuration: ${problem}. Fix: ${fix}`,
      'FAILURE_DETECTOR_CONFIG',
    );
  }
}

export class FailureDetectorCore {
  private readonly self: NodeId;
  private readonly heartbeatTicks: number;
  private readonly timeoutTicks: number;
  private viewId: ViewId | undefined;
  /** Peers of the current view (self excluded), ascending. */
  private peers: NodeId[] = [];
  private nowTicks = 0;
  private lastHeardTicks = new Map<NodeId, number>();
  private suspected = new Set<NodeId>();
  private heartbeatDue = false;
  private nextHeartbeatTicks = 0;
  private newSuspicions: Suspicion[] = [];

  constructor(config: FailureDetectorConfig) {
    const { heartbeatTicks, timeoutTicks } = config;
    if (!Number.isInteger(heartbeatTicks) || heartbeatTicks < 1) {
      throw new FailureDetectorConfigError(
        `heartbeatTicks is ${heartbeatTicks}`,
        'use an integer >= 1',
      );
    }
    if (!Number.isInteger(timeoutTicks) || timeoutTicks <= heartbeatTicks) {
      throw new FailureDetectorConfigError(
        `timeoutTicks (${timeoutTicks}) must be an integer above ` +
          `heartbeatTicks (${heartbeatTicks}), ` +
          'or live peers are suspected between two heartbeats',
        'raise the timeout to a few heartbeat periods (3x or more tolerates a lost heartbeat)',
      );
    }
    this.self = config.self;
    this.heartbeatTicks = heartbeatTicks;
    this.timeoutTicks = timeoutTicks;
  }

  /**
   * Starts watching the members of a new view: every peer gets a full timeout from now, earlier
   * suspicions and unreported ones are dropped, and a heartbeat to everyone is due at once (so
   * that peers of the new view hear from us before their first timeout).
   */
  resetView(view: ViewId, members: readonly NodeId[]): void {
    this.viewId = view;
    this.peers = [...new Set(members)].filter((n) => n !== this.self).sort((a, b) => a - b);
    this.lastHeardTicks = new Map(this.peers.map((n) => [n, this.nowTicks]));
    this.suspected = new Set();
    this.newSuspicions = [];
    this.heartbeatDue = this.peers.length > 0;
    this.nextHeartbeatTicks = this.nowTicks + this.heartbeatTicks;
  }

  /** Advances time by one tick: may make heartbeats due and raise timeout suspicions. */
  tick(): void {
    this.nowTicks += 1;
    if (this.viewId === undefined) return;
    if (this.nowTicks >= this.nextHeartbeatTicks) {
      this.heartbeatDue = this.peers.length > 0;
      this.nextHeartbeatTicks = this.nowTicks + this.heartbeatTicks;
    }
    for (const peer of this.peers) {
      const silent = this.nowTicks - this.lastHeardTicks.get(peer)!;
      if (silent >= this.timeoutTicks) this.suspect(peer, 'timeout', silent);
    }
  }

  /** A heartbeat (or any message) arrived from `from`. Non-members are ignored. */
  heartbeatReceived(from: NodeId): void {
    if (this.lastHeardTicks.has(from)) this.lastHeardTicks.set(from, this.nowTicks);
  }

  /** The transport says the session to `peer` failed: suspect it now. Non-members are ignored. */
  peerFailed(peer: NodeId): void {
    const last = this.lastHeardTicks.get(peer);
    if (last !== undefined) this.suspect(peer, 'transport', this.nowTicks - last);
  }

  /** Peers suspected in the current view, ascending. */
  suspects(): NodeId[] {
    return [...this.suspected].sort((a, b) => a - b);
  }

  isSuspected(node: NodeId): boolean {
    return this.suspected.has(node);
  }

  /** Heartbeats owed now and new suspicions; both are forgotten once returned. */
  ready(): FailureDetectorReady {
    const heartbeatsTo = this.heartbeatDue ? this.peers.filter((n) => !this.suspected.has(n)) : [];
    this.heartbeatDue = false;
    const suspicions = this.newSuspicions;
    this.newSuspicions = [];
    return { heartbeatsTo, suspicions };
  }

  private suspect(node: NodeId, cause: SuspicionCause, silentTicks: number): void {
    if (this.suspected.has(node)) return;
    this.suspected.add(node);
    this.newSuspicions.push({ node, cause, viewId: this.viewId!, silentTicks });
  }
}
