/** src/group: the public runtime API (Group, Replicated<T>, QueryResults, ExternalCaller). */
export { Group, type GroupOptions, type Replicated, type ExternalCaller, type OrderedQueryApi } from './group.js';
export { QueryResults, type OrderedReceipt } from './query-results.js';
export { type ReplicaContext, type ShardFrontier } from './replica.js';
export { StaticViewSource, staticMembersFromConfig, type ViewSource, type ViewListener } from './view-source.js';
export {
  GroupClosedError, GroupStartError, NoSuchShardError, NodeRemovedError, NotMemberError, OrderedCallInOrderedError, RelayedReplyUnavailableError,
  SubgroupInadequateError, AppliedByTransferError,
} from './errors.js';
export { hashKey } from './wire.js';
export { Client, RelayFailedError, type ClientOptions, type ClientOrderedResult, type ClientOrderedApi, type ClientSubgroup } from './client.js';
export { MembershipViewSource, layoutHashOf, type MembershipViewSourceOptions, type MembershipSink } from './membership-view-source.js';
export { RemovedFromGroupError } from '../runtime/membership-driver.js';
