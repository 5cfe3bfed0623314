/** decorators/: the programming model's decorators, metadata, codec, dispatcher and snapshots. */
export { ordered, p2p, persistent, replicated, checkReflectMetadata } from './decorators.js';
export {
  isReplicated,
  replicatedClassByName,
  replicatedClassInfo,
  replicatedClassInfoOf,
  type AnyClass,
  type MethodInfo,
  type MethodKind,
  type MethodOptions,
  type PersistentFieldInfo,
  type PersistentOptions,
  type ReplicatedClassInfo,
  type ReplicatedOptions,
  type RuntimeType,
} from './metadata.js';
export {
  decodeArguments,
  decodeReply,
  decodeValue,
  encodeArguments,
  encodeCanonical,
  encodeValue,
  registerSerializable,
  serializable,
  SQUALL_CLASS_EXTENSION_TYPE,
  type CallPlan,
  type SerializableOptions,
} from './codec.js';
export {
  Dispatcher,
  type DispatcherOptions,
  type DispatchResult,
  type P2PWriteCheck,
} from './dispatcher.js';
export {
  fieldSnapshots,
  objectDigest,
  restoreObject,
  snapshotDigest,
  snapshotObject,
} from './snapshot.js';
export {
  buildCallProxy,
  ORDERED_METHODS,
  P2P_METHODS,
  type MethodNames,
  type MethodParams,
  type MethodResult,
  type OrderedApi,
  type OrderedMethodName,
  type P2PApi,
  type P2PMethodName,
} from './api.js';
export {
  DecoratorUsageError,
  DispatchError,
  P2PWriteError,
  RemoteError,
  SerializationError,
} from './errors.js';
export { FIELD_HOOKS, fieldHooksOf, type FieldHooks, type HasFieldHooks } from './field-hooks.js';
