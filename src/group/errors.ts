/**
 * Errors of the group API. Operating errors carry what a caller needs to act (the node, the
 * subgroup); programmer errors say what to change. Application exceptions never appear here:
 * they reach the caller as decorators/'s RemoteError.
 */
import { SquallError } from '../core/errors.js';
import type { NodeId } from '../core/ids.js';

/** This node is not where the call needs it: not a member (or sender) of the shard. */
export class NotMemberError extends SquallError {
  readonly nodeId: NodeId;
  readonly typeName: string;
  readonly subgroupIndex: number;
  constructor(nodeId: NodeId, typeName: string, subgroupIndex: number, detail: string) {
    super(`node ${nodeId} ${detail} of ${typeName} subgroup ${subgroupIndex}`, 'NOT_MEMBER');
    this.nodeId = nodeId;
    this.typeName = typeName;
    this.subgroupIndex = subgroupIndex;
  }
}

/**
 * A subgroup index or shard index the layout does not have (a programmer error: the index passed
 * to `group.subgroup(Type, index)`, `group.members` or `client.subgroup(Type, index, shard)`).
 */
export class NoSuchShardError extends SquallError {
  readonly typeName: string;
  readonly subgroupIndex: number;
  readonly shardIndex: number | undefined;
  /** `count`: how many subgroups the type has (shard undefined), or shards the subgroup has. */
  constructor(typeName: string, subgroupIndex: number, shardIndex: number | undefined, count: number) {
    super(
      shardIndex === undefined
        ? `${typeName} has no subgroup ${subgroupIndex} in the layout: it has ${count} (indexes 0 to ${count - 1}). Fix: pass a subgroup index below ${count}`
        : `${typeName} subgroup ${subgroupIndex} has no shard ${shardIndex} in the layout: it has ${count} (indexes 0 to ${count - 1}). Fix: pass a shard index below ${count}`,
      'NO_SUCH_SHARD',
    );
    this.typeName = typeName;
    this.subgroupIndex = subgroupIndex;
    this.shardIndex = shardIndex;
  }
}

/**
 * An ordered call was made while an ordered call was running on this replica. Every replica
 * runs the outer call, so each would send the inner one again (n copies), and the outer call's
 * reply would depend on a delivery that comes later in the order. p2p calls are allowed there.
 */
export class OrderedCallInOrderedError extends SquallError {
  constructor(outer: string, inner: string) {
    super(
      `${inner} was called as an ordered call from inside the ordered call ${outer}. Every ` +
        `replica runs ${outer}, so each would multicast ${inner} again, and ${outer} cannot wait ` +
        `for a delivery ordered after itself. Fix: make the change inside ${outer} directly, ` +
        `return what the caller needs and let the caller make the second ordered call, or use a ` +
        `p2p call (allowed here) for reads.`,
      'ORDERED_IN_ORDERED',
    );
  }
}

/** A member left the view before it replied (the reply will never come). */
export class NodeRemovedError extends SquallError {
  readonly nodeId: NodeId;
  constructor(nodeId: NodeId, what: string) {
    super(
      `node ${nodeId} was removed from the group before it replied to ${what}. ` +
        `Fix: use the other members' replies; the call itself was delivered in order to every ` +
        `member that stayed.`,
      'NODE_REMOVED',
    );
    this.nodeId = nodeId;
  }
}

/** The group was closed while a call or wait was outstanding, or used after close(). */
export class GroupClosedError extends SquallError {
  constructor(what: string) {
    super(`${what}: the group on this node is closed. Fix: start a new group.`, 'GROUP_CLOSED');
  }
}

/**
 * This member entered the shard by state transfer after the call had been applied by the member
 * it got the state from: the call's effect is in its state, but it ran nothing and has no reply.
 * The other members' replies are the call's answer.
 */
export class AppliedByTransferError extends SquallError {
  constructor(nodeId: NodeId, version: bigint) {
    super(
      `node ${nodeId} holds this call's effect through the state it received when it entered the ` +
        `shard (version ${version >> 32n}:${version & 0xffffffffn}), so it ran nothing and has no ` +
        `reply; take another member's reply`,
      'APPLIED_BY_TRANSFER',
    );
  }
}

/**
 * An ordered call waited `waitedMs` for its subgroup to be adequately provisioned (every shard
 * with the nodes and senders its policy asks for) and it was not: not sent, not applied.
 */
export class SubgroupInadequateError extends SquallError {
  constructor(label: string, viewId: number, problems: readonly string[], waitedMs: number) {
    super(
      `${label}: not sent; its subgroup is inadequately provisioned in view ${viewId} (` +
        `${problems.join('; ')}) and was still after ${waitedMs} ms. Fix: start more nodes ` +
        `so that they join, lower the layout's minimum, or raise group.inadequate_wait_ms`,
      'SUBGROUP_INADEQUATE',
    );
  }
}

/** Group.start could not reach every member of the static view in time. */
export class GroupStartError extends SquallError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'GROUP_START', options);
  }
}

/**
 * A relayed call was retried, and this replica knows the shard already ran it (so it did not
 * run it again), but it holds no copy of the first reply: it entered the shard by state
 * transfer or restarted since. The other members' replies are the call's answer.
 */
export class RelayedReplyUnavailableError extends SquallError {
  constructor(nodeId: NodeId, clientId: string, requestId: number) {
    super(
      `node ${nodeId} did not run retried call ${requestId} of client ${clientId} again (the ` +
        `shard already ran it) and keeps no copy of its first reply (it joined or restarted ` +
        `since); take another member's reply`,
      'RELAYED_REPLY_UNAVAILABLE',
    );
  }
}
