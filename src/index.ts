// Public exports of the squall package: what an application calls. Internal layers (pure cores,
// drivers, the simulator) are imported from their own paths by Squall's own code and tests.
import 'reflect-metadata';

export * from './core/errors.js';
export * from './core/ids.js';
export { type Hlc } from './core/hlc.js';

// The programming model.
export {
  ordered,
  p2p,
  persistent,
  replicated,
  serializable,
  registerSerializable,
  replicatedClassInfo,
  objectDigest,
  snapshotObject,
  restoreObject,
  ORDERED_METHODS,
  P2P_METHODS,
  DecoratorUsageError,
  DispatchError,
  P2PWriteError,
  RemoteError,
  type OrderedApi,
  type P2PApi,
  type ReplicatedOptions,
  type MethodOptions,
} from '../decorators/index.js';

// Versioned state.
export {
  Persistent,
  Volatile,
  PersistentMap,
  PersistenceStore,
  PersistentRegistry,
  type PersistentOptions as PersistentFieldOptions,
  type TimeQuery,
  type VersionInfo,
} from '../persistence/index.js';

// Configuration.
export { loadConfig, parseConfig, type LoadOptions } from './config/load.js';
export { SquallConfig } from './config/schema.js';

// The transport.
export type { Transport, TransportSession, RequestHandler, CallOptions, PeerFailureSignal } from './transport/transport.js';
export {
  Endpoint,
  NativeSession,
  endpointOptionsFromConfig,
  keyFileLine,
  type EndpointOptions,
  type TransportConfigKeys,
} from './transport/native-transport.js';
export { TransportError, PeerFailedError } from './transport/errors.js';

// The group API.
export * from './group/index.js';
export {
  oneSubgroup,
  identicalSubgroups,
  fixedEvenShards,
  flexibleEvenShards,
  customShards,
  LayoutPolicyError,
  type LayoutPolicies,
  type TypePolicy,
  type SubgroupPolicy,
  type ShardPolicy,
  type Allocator,
} from './membership/layout.js';
export { View, type Layout, type ShardMembership } from './membership/view.js';
export { HLC_MAX, HLC_ZERO, hlcAtOrBefore, formatHlc, compareHlc } from './core/hlc.js';
