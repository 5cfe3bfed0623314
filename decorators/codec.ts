/**
 * The user-boundary codec: arguments, results and object state of replicated classes.
 *
 * Format: msgpackr with records, `moreTypes` and `mapsAsObjects: false`, so Date, Map, Set,
 * bigint (any size), Buffer, Uint8Array, every typed array, ArrayBuffer and plain objects come
 * back as what they were. Class instances carry their class's registered name (one msgpack
 * extension, type SQUALL_CLASS_EXTENSION_TYPE) and are rebuilt on the prototype of the class
 * registered under that name, at any depth (in arrays, Map values, Set members, other classes).
 *
 * class-transformer at the boundary: a registered class that uses class-transformer's
 * @Expose/@Exclude/@Transform is encoded with instanceToPlain and decoded with plainToInstance,
 * so those decorators mean what the user expects. Other classes skip it: class-transformer turns
 * Map, Set, Uint8Array and typed arrays into plain objects (measured; see README) and costs
 * several times the codec. Its @Type(() => Inner) is read to register nested classes.
 *
 * Decoded Buffers are copies (copyBuffers): the caller may recycle the input bytes and the
 * application may keep what it was given.
 */
import 'reflect-metadata';
import { addExtension, Packr } from 'msgpackr';
import { instanceToPlain, plainToInstance } from 'class-transformer';
import { defaultMetadataStorage } from 'class-transformer/cjs/storage.js';
import { SquallError } from '../src/core/errors.js';
import type { NodeId } from '../src/core/ids.js';
import {
  DecoratorUsageError,
  DispatchError,
  P2PWriteError,
  RemoteError,
  SerializationError,
} from './errors.js';
import { DesignKey, MetadataKey } from './keys.js';
import type { AnyClass, MethodInfo, RuntimeType } from './metadata.js';

/** The msgpack extension type that tags a class instance: 0x53, "S". */
export const SQUALL_CLASS_EXTENSION_TYPE = 0x53;

const packr = new Packr({
  useRecords: true,
  moreTypes: true,
  mapsAsObjects: false,
  copyBuffers: true,
  int64AsType: 'bigint',
});

// ---------------------------------------------------------------------------------------------
// Serializable classes

interface SerializableRecord {
  readonly name: string;
  readonly ctor: AnyClass;
  /** True if the class uses class-transformer decorators that change its plain form. */
  readonly viaClassTransformer: boolean;
}

const recordsByName = new Map<string, SerializableRecord>();
const recordsByCtor = new Map<RuntimeType, SerializableRecord>();
/** Classes whose @Type thunks threw (a class not yet defined); retried before the next encode. */
const pendingDiscovery = new Set<AnyClass>();

/** Types the codec carries natively: never registered, never tagged. */
const BUILTIN_TYPES: ReadonlySet<RuntimeType> = new Set<RuntimeType>([
  String,
  Number,
  Boolean,
  BigInt,
  Object,
  Array,
  Date,
  Map,
  Set,
  Buffer,
  ArrayBuffer,
  DataView,
  RegExp,
  Error,
  Uint8Array,
  Int8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
]);

/** Types no codec can carry between processes. */
const NON_SERIALIZABLE_TYPES: ReadonlyMap<RuntimeType, string> = new Map<RuntimeType, string>([
  [Promise, 'a Promise is a pending computation, not a value'],
  [WeakMap, 'a WeakMap cannot be enumerated'],
  [WeakSet, 'a WeakSet cannot be enumerated'],
  [WeakRef, 'a WeakRef points into one process'],
  [Symbol, 'a symbol is unique to one process'],
  [SharedArrayBuffer, 'a SharedArrayBuffer is memory shared inside one process'],
]);

export function isBuiltinType(type: RuntimeType): boolean {
  return BUILTIN_TYPES.has(type);
}

/** Why a type cannot be serialized, or undefined if it can. */
export function nonSerializableReason(type: RuntimeType): string | undefined {
  return NON_SERIALIZABLE_TYPES.get(type);
}

// class-transformer 0.5.1 keeps its decorator metadata in maps keyed by class; these are the
// fields of its MetadataStorage we read (its public methods need a property name up front).
interface ClassTransformerStorage {
  _typeMetadatas: Map<RuntimeType, Map<string, { typeFunction?: () => unknown }>>;
  _transformMetadatas: Map<RuntimeType, Map<string, unknown>>;
  _exposeMetadatas: Map<RuntimeType, Map<string, unknown>>;
  _excludeMetadatas: Map<RuntimeType, Map<string, unknown>>;
}
const ctStorage = defaultMetadataStorage as unknown as ClassTransformerStorage;

function ancestry(ctor: RuntimeType): RuntimeType[] {
  const chain: RuntimeType[] = [];
  for (let c: unknown = ctor; typeof c === 'function' && c !== Function.prototype;) {
    chain.push(c as RuntimeType);
    c = Object.getPrototypeOf(c);
  }
  return chain;
}

function usesClassTransformer(ctor: RuntimeType): boolean {
  return ancestry(ctor).some(
    (c) =>
      (ctStorage._transformMetadatas?.get(c)?.size ?? 0) > 0 ||
      (ctStorage._exposeMetadatas?.get(c)?.size ?? 0) > 0 ||
      (ctStorage._excludeMetadatas?.get(c)?.size ?? 0) > 0,
  );
}

/** Registers the classes a class's fields name through @Type or decorator metadata. */
function discoverNested(ctor: AnyClass): void {
  for (const c of ancestry(ctor)) {
    const types = ctStorage._typeMetadatas?.get(c);
    if (types === undefined) continue;
    for (const [property, meta] of types) {
      let nested: unknown;
      try {
        nested = meta.typeFunction?.();
      } catch {
        pendingDiscovery.add(ctor); // the thunk names a class defined later in its module
        continue;
      }
      if (nested === undefined) {
        nested = Reflect.getMetadata(
          DesignKey.type,
          (c as { prototype: object }).prototype,
          property,
        );
      }
      if (typeof nested === 'function' && !isBuiltinType(nested) && !recordsByCtor.has(nested)) {
        registerSerializable(nested as AnyClass);
      }
    }
  }
}

function retryPendingDiscovery(): void {
  const pending = [...pendingDiscovery];
  pendingDiscovery.clear();
  for (const ctor of pending) discoverNested(ctor);
}

/** Options of @serializable / registerSerializable. */
export interface SerializableOptions {
  /** The class's stable name on the wire (default: the class name). */
  name?: string;
}

/**
 * Lets the codec carry instances of `ctor` with their class intact. Classes used as parameter
 * types and their @Type(() => Nested) fields are registered automatically; register others
 * (a class only found nested without @Type) explicitly or with @serializable(). Idempotent.
 */
export function registerSerializable(ctor: AnyClass, options: SerializableOptions = {}): void {
  const existing = recordsByCtor.get(ctor);
  const name = options.name ?? existing?.name ?? ctor.name;
  if (existing !== undefined && existing.name === name) return;
  if (existing !== undefined) {
    throw new DecoratorUsageError(
      `${ctor.name} is already serializable as "${existing.name}", not "${name}". ` +
        `Fix: register it once, before it is used as a parameter type.`,
    );
  }
  const unserializable = NON_SERIALIZABLE_TYPES.get(ctor);
  if (unserializable !== undefined) {
    throw new DecoratorUsageError(
      `${ctor.name} cannot be serialized: ${unserializable}. Fix: remove the registration.`,
    );
  }
  if (isBuiltinType(ctor)) {
    throw new DecoratorUsageError(
      `${ctor.name} is a built-in type; the codec handles it without registration. ` +
        `Fix: remove the registration.`,
    );
  }
  if (!name) {
    throw new DecoratorUsageError(
      `an anonymous class cannot be serialized: it has no name to send. ` +
        `Fix: name the class, or pass { name: 'SomeName' }.`,
    );
  }
  const other = recordsByName.get(name);
  if (other !== undefined) {
    throw new DecoratorUsageError(
      `two serializable classes are named "${name}" (${other.ctor.name} and ${ctor.name}); a ` +
        `receiver could not tell which to rebuild. ` +
        `Fix: give one a stable name: @serializable({ name: 'Other${name}' }).`,
    );
  }
  const record: SerializableRecord = {
    name,
    ctor,
    viaClassTransformer: usesClassTransformer(ctor),
  };
  recordsByName.set(name, record);
  recordsByCtor.set(ctor, record);
  Reflect.defineMetadata(MetadataKey.serializable, record, ctor);
  addExtension({
    Class: ctor,
    type: SQUALL_CLASS_EXTENSION_TYPE,
    write: writeInstance,
    read: readInstance,
  });
  discoverNested(ctor);
}

/** Class decorator form of registerSerializable. */
export function serializable(options: SerializableOptions = {}): ClassDecorator {
  return (target) => {
    registerSerializable(target as unknown as AnyClass, options);
  };
}

export function isSerializableClass(ctor: RuntimeType): boolean {
  return recordsByCtor.has(ctor);
}

function writeInstance(instance: object): unknown {
  const record = recordsByCtor.get(instance.constructor);
  if (record === undefined) {
    throw new SerializationError(
      `cannot encode an instance of ${instance.constructor.name}: it extends a serializable ` +
        `class but is not registered itself, so it would arrive as its base class. ` +
        `Fix: add @serializable() above "class ${instance.constructor.name}".`,
    );
  }
  const fields = record.viaClassTransformer ? instanceToPlain(instance) : { ...instance };
  return [record.name, fields];
}

function readInstance(data: unknown): unknown {
  if (!Array.isArray(data) || typeof data[0] !== 'string') {
    throw new SerializationError('malformed class instance in encoded data');
  }
  const record = recordsByName.get(data[0]);
  if (record === undefined) {
    throw new SerializationError(
      `encoded data holds an instance of class "${data[0]}", which is not registered on this ` +
        `node. Fix: load the module that defines it and mark it @serializable() (or use it as a ` +
        `parameter type) on every node.`,
    );
  }
  const fields = data[1] as Record<string, unknown>;
  if (record.viaClassTransformer) return plainToInstance(record.ctor as never, fields);
  return Object.assign(Object.create((record.ctor as { prototype: object }).prototype), fields);
}

// ---------------------------------------------------------------------------------------------
// Values

/**
 * Encodes any serializable value (see the file header for what survives). The result is a fresh
 * view the caller owns (msgpackr never writes over bytes it has returned).
 */
export function encodeValue(value: unknown): Uint8Array {
  if (pendingDiscovery.size > 0) retryPendingDiscovery();
  return packr.pack(value);
}

/** Decodes bytes from encodeValue. Buffers are copied; the input may be reused afterwards. */
export function decodeValue(bytes: Uint8Array): unknown {
  if (pendingDiscovery.size > 0) retryPendingDiscovery();
  try {
    return packr.unpack(bytes);
  } catch (error) {
    if (error instanceof SquallError) throw error;
    throw new SerializationError(`cannot decode ${bytes.byteLength} bytes: ${String(error)}`, {
      cause: error,
    });
  }
}

/**
 * Encodes `value` so that equal states give equal bytes on every replica: plain-object and
 * class-instance fields in sorted key order, Map entries and Set members sorted by the canonical
 * bytes of their key/member. Refuses what it cannot reproduce on another node (functions,
 * symbols, instances of unregistered classes, cycles), naming the place from `path` on.
 * For snapshots and digests, not hot paths.
 */
export function encodeCanonical(value: unknown, path = '$'): Uint8Array {
  return encodeValue(canonicalize(value, new Set(), path));
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

function sortedCanonical(items: unknown[], seen: Set<object>, path: string): unknown[] {
  const keyed = items.map((item, index) => {
    const canonical = canonicalize(item, seen, `${path}[${index}]`);
    return { canonical, bytes: encodeValue(canonical) };
  });
  keyed.sort((x, y) => compareBytes(x.bytes, y.bytes));
  return keyed.map((k) => k.canonical);
}

function canonicalFields(
  source: object,
  target: Record<string, unknown>,
  seen: Set<object>,
  path: string,
): void {
  for (const key of Object.keys(source).sort()) {
    target[key] = canonicalize((source as Record<string, unknown>)[key], seen, `${path}.${key}`);
  }
}

function canonicalize(value: unknown, seen: Set<object>, path: string): unknown {
  switch (typeof value) {
    case 'function':
    case 'symbol':
      throw new SerializationError(
        `${path} is a ${typeof value}, which cannot be copied to another node. ` +
          `Fix: keep it out of replicated state (ReplicatedOptions.transient).`,
      );
    case 'object':
      break;
    default:
      return value;
  }
  if (value === null) return null;
  if (ArrayBuffer.isView(value) || value instanceof Date || value instanceof ArrayBuffer)
    return value;
  if (value instanceof RegExp || value instanceof Error) return value;
  if (seen.has(value)) {
    throw new SerializationError(
      `${path} refers back to an enclosing value (a cycle). ` +
        `Fix: break the cycle, e.g. store ids instead of references.`,
    );
  }
  seen.add(value);
  try {
    const proto = Object.getPrototypeOf(value) as object | null;
    if (Array.isArray(value)) return value.map((v, i) => canonicalize(v, seen, `${path}[${i}]`));
    if (value instanceof Map) {
      const entries = sortedCanonical([...value.entries()], seen, path) as [unknown, unknown][];
      return new Map(entries);
    }
    if (value instanceof Set) return new Set(sortedCanonical([...value], seen, path));
    if (proto === Object.prototype || proto === null) {
      const out: Record<string, unknown> = {};
      canonicalFields(value, out, seen, path);
      return out;
    }
    const record = recordsByCtor.get((value as object).constructor);
    if (record === undefined) {
      const name = (value as object).constructor?.name ?? 'an unnamed class';
      throw new SerializationError(
        `${path} holds an instance of ${name}, which is not registered as serializable, so ` +
          `another node could not rebuild it. Fix: add @serializable() above "class ${name}".`,
      );
    }
    if (NON_SERIALIZABLE_TYPES.has((value as object).constructor)) {
      throw new SerializationError(
        `${path} is a ${(value as object).constructor.name}, which cannot be copied.`,
      );
    }
    const out = Object.create(proto) as Record<string, unknown>;
    canonicalFields(value, out, seen, path);
    return out;
  } finally {
    seen.delete(value);
  }
}

// ---------------------------------------------------------------------------------------------
// Calls

/**
 * A method's encode/decode plan, built once when @replicated validates the class: the parameter
 * count and one cheap check per parameter, so that a call whose parameters are primitives or
 * Buffers costs one msgpackr pack and one unpack plus a few typeof tests.
 */
export interface CallPlan {
  readonly paramCount: number;
  readonly checks: readonly ((value: unknown) => boolean)[];
  readonly typeNames: readonly string[];
}

function checkFor(type: RuntimeType): (value: unknown) => boolean {
  // null and undefined pass every check: optional parameters; the compiler checks the rest.
  switch (type) {
    case Object:
      return () => true;
    case String:
      return (v) => v == null || typeof v === 'string';
    case Number:
      return (v) => v == null || typeof v === 'number';
    case Boolean:
      return (v) => v == null || typeof v === 'boolean';
    case BigInt:
      return (v) => v == null || typeof v === 'bigint';
    case Array:
      return (v) => v == null || Array.isArray(v);
    default:
      return (v) => v == null || v instanceof (type as AnyClass);
  }
}

export function makeCallPlan(paramTypes: readonly RuntimeType[]): CallPlan {
  return {
    paramCount: paramTypes.length,
    checks: paramTypes.map(checkFor),
    typeNames: paramTypes.map((t) => t.name),
  };
}

/** Encodes a call's arguments (the caller side). Throws DispatchError on too many arguments. */
export function encodeArguments(method: MethodInfo, args: readonly unknown[]): Uint8Array {
  if (args.length > method.plan.paramCount) {
    throw new DispatchError(
      method.declaringClass.name,
      method.wireName,
      `${method.declaringClass.name}.${method.methodName} takes ${method.plan.paramCount} ` +
        `arguments, got ${args.length}. Fix: pass at most ${method.plan.paramCount}.`,
    );
  }
  return encodeValue(args);
}

/**
 * Decodes and checks a call's arguments (the dispatcher side). Throws DispatchError if they are
 * not an array, are too many, or one has the wrong runtime type.
 */
export function decodeArguments(
  method: MethodInfo,
  bytes: Uint8Array,
  className: string,
): unknown[] {
  const args = decodeValue(bytes);
  const plan = method.plan;
  if (!Array.isArray(args) || args.length > plan.paramCount) {
    throw new DispatchError(
      className,
      method.wireName,
      `${className}.${method.methodName}: the encoded arguments are not an array of at most ` +
        `${plan.paramCount} values. Fix: encode calls with encodeArguments().`,
    );
  }
  for (let i = 0; i < args.length; i++) {
    if (!plan.checks[i]!(args[i])) {
      throw new DispatchError(
        className,
        method.wireName,
        `${className}.${method.methodName} parameter ${i} must be ${plan.typeNames[i]}, got ` +
          `${describe(args[i])}. Fix: pass a ${plan.typeNames[i]} (check both nodes run the ` +
          `same version of the class).`,
      );
    }
  }
  return args;
}

function describe(value: unknown): string {
  if (value === null || typeof value !== 'object') return typeof value;
  return (value as object).constructor?.name ?? 'object';
}

// ---------------------------------------------------------------------------------------------
// Replies: [0, value] | [1, name, message, code] | [2, code, message, details]

const REPLY_OK = 0;
const REPLY_APPLICATION_ERROR = 1;
const REPLY_FRAMEWORK_ERROR = 2;

export function encodeResult(value: unknown): Uint8Array {
  return encodeValue([REPLY_OK, value]);
}

/** Encodes an exception thrown by the application's method: it travels as data. */
export function encodeApplicationError(error: unknown): Uint8Array {
  let name = 'Error';
  let message: string;
  let code: string | null = null;
  if (error instanceof Error) {
    name = error.name;
    message = error.message;
    const c = (error as { code?: unknown }).code;
    if (typeof c === 'string') code = c;
  } else {
    message = String(error); // a thrown string, number, ...: name stays "Error"
  }
  return encodeValue([REPLY_APPLICATION_ERROR, name, message, code]);
}

/** Encodes a framework refusal (DispatchError, P2PWriteError, ...) for the caller to rethrow. */
export function encodeFrameworkError(error: SquallError): Uint8Array {
  let details: unknown[] = [];
  if (error instanceof DispatchError) details = [error.className, error.wireName];
  if (error instanceof P2PWriteError) details = [error.className, error.methodName, error.fields];
  return encodeValue([REPLY_FRAMEWORK_ERROR, error.code, error.message, details]);
}

/**
 * Decodes a reply at the caller: returns the result, or throws a RemoteError (the method threw)
 * or the framework error the replica reported (DispatchError, P2PWriteError, SerializationError).
 */
export function decodeReply<R = unknown>(bytes: Uint8Array, nodeId?: NodeId): R {
  const reply = decodeValue(bytes);
  if (!Array.isArray(reply)) throw new SerializationError('malformed reply: not an array');
  switch (reply[0]) {
    case REPLY_OK:
      return reply[1] as R;
    case REPLY_APPLICATION_ERROR:
      throw new RemoteError(String(reply[1]), String(reply[2]), nodeId, reply[3] ?? undefined);
    case REPLY_FRAMEWORK_ERROR:
      throw frameworkError(String(reply[1]), String(reply[2]), (reply[3] ?? []) as unknown[]);
    default:
      throw new SerializationError(`malformed reply: unknown kind ${String(reply[0])}`);
  }
}

function frameworkError(code: string, message: string, details: unknown[]): SquallError {
  if (code === 'DISPATCH') {
    const error = new DispatchError(String(details[0]), String(details[1]), message);
    return error;
  }
  if (code === 'P2P_WRITE') {
    return new P2PWriteError(String(details[0]), String(details[1]), details[2] as string[]);
  }
  if (code === 'SERIALIZATION') return new SerializationError(message);
  return new SquallError(message, code);
}
