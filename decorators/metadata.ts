/**
 * The one metadata storage of decorators/: what the decorators recorded, kept with
 * reflect-metadata on the class constructors, and the query API the runtime uses. Decorators
 * only record; @replicated validates the whole class once and freezes a ReplicatedClassInfo,
 * which is all the runtime ever reads.
 */
import 'reflect-metadata';
import { DecoratorUsageError } from './errors.js';
import { MetadataKey } from './keys.js';
import type { CallPlan } from './codec.js';

/** How a method is invoked: in total order on every replica, or point-to-point on one member. */
export type MethodKind = 'ordered' | 'p2p';

/** A runtime type: a constructor such as String, Number, Buffer, Map or an application class. */
// eslint-disable-next-line @typescript-eslint/no-unsafe-function-type
export type RuntimeType = Function;

/** Any class constructor (abstract ones included). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyClass<T = object> = abstract new (...args: any[]) => T;

/** Options of @ordered and @p2p. */
export interface MethodOptions {
  /**
   * The method's identity on the wire (default: the method name). Keep it when renaming the
   * method so that old and new nodes still agree.
   */
  name?: string;
  /**
   * Parameter types, one per parameter, where reflection cannot see them (interfaces, unions,
   * `import type`, `any`). `Object` means "any serializable value, not checked".
   */
  params?: readonly RuntimeType[];
  /** The result type, for documentation and the runtime's checks (reflection sees only Promise). */
  returns?: RuntimeType;
}

/** Options of @persistent. */
export interface PersistentOptions {
  /** The field's stable name in version logs and snapshots (default: the property name). */
  name?: string;
}

/** Options of @replicated. */
export interface ReplicatedOptions<T extends object = object> {
  /** The class's stable name between nodes (default: the class name). */
  name?: string;
  /**
   * The version of the class's state layout (default 1). Snapshots record it and restore refuses
   * a snapshot of another version.
   */
  version?: number;
  /**
   * Builds a fresh replica; the runtime passes its own context object. Default: `new C()`.
   */
  factory?: (context: unknown) => T;
  /**
   * Own fields that are not replicated state (a logger, a cache of derived data): not part of
   * snapshots, digests or the strict p2p write check.
   */
  transient?: readonly string[];
}

/** One @ordered/@p2p method as the runtime sees it. */
export interface MethodInfo {
  readonly kind: MethodKind;
  /** The property name on the prototype (what the dispatcher invokes). */
  readonly methodName: string;
  /** The name on the wire (MethodOptions.name or the method name). */
  readonly wireName: string;
  readonly paramTypes: readonly RuntimeType[];
  /** The declared or reflected result type; undefined for void. Promise if only that is known. */
  readonly returnType: RuntimeType | undefined;
  /** The class whose body declared the decorator. */
  readonly declaringClass: AnyClass;
  /** Precomputed encode/decode plan (see codec.ts). */
  readonly plan: CallPlan;
}

/** One @persistent field. */
export interface PersistentFieldInfo {
  /** The property name on the instance. */
  readonly fieldName: string;
  /** The stable name (PersistentOptions.name or the property name). */
  readonly name: string;
  readonly declaringClass: AnyClass;
}

/** Everything the runtime needs about one @replicated class; frozen. */
export interface ReplicatedClassInfo<T extends object = object> {
  readonly ctor: AnyClass<T>;
  /** Stable class name (ReplicatedOptions.name or the class name). */
  readonly name: string;
  readonly version: number;
  /** Ordered and p2p methods, inherited ones included, sorted by wire name. */
  readonly methods: readonly MethodInfo[];
  readonly ordered: ReadonlyMap<string, MethodInfo>;
  readonly p2p: ReadonlyMap<string, MethodInfo>;
  /** Persistent fields, inherited ones included, sorted by field name. */
  readonly persistentFields: readonly PersistentFieldInfo[];
  readonly transientFields: ReadonlySet<string>;
  /** Builds a fresh replica with the factory or the constructor. */
  create(context?: unknown): T;
}

/** What @ordered/@p2p record before @replicated has run. */
export interface MethodRecord {
  readonly kind: MethodKind;
  readonly methodName: string;
  readonly wireName: string;
  readonly paramTypes: readonly RuntimeType[];
  readonly returnType: RuntimeType | undefined;
  readonly declaringClass: AnyClass;
}

export interface PersistentFieldRecord {
  readonly fieldName: string;
  readonly name: string;
  readonly declaringClass: AnyClass;
}

export function ownMethodRecords(ctor: RuntimeType): readonly MethodRecord[] {
  return (Reflect.getOwnMetadata(MetadataKey.methods, ctor) as MethodRecord[] | undefined) ?? [];
}

export function addMethodRecord(ctor: RuntimeType, record: MethodRecord): void {
  Reflect.defineMetadata(MetadataKey.methods, [...ownMethodRecords(ctor), record], ctor);
}

export function ownPersistentRecords(ctor: RuntimeType): readonly PersistentFieldRecord[] {
  return (
    (Reflect.getOwnMetadata(MetadataKey.persistentFields, ctor) as
      PersistentFieldRecord[] | undefined) ?? []
  );
}

export function addPersistentRecord(ctor: RuntimeType, record: PersistentFieldRecord): void {
  Reflect.defineMetadata(
    MetadataKey.persistentFields,
    [...ownPersistentRecords(ctor), record],
    ctor,
  );
}

export function setReplicatedInfo(ctor: RuntimeType, info: ReplicatedClassInfo): void {
  Reflect.defineMetadata(MetadataKey.replicated, info, ctor);
}

/** True if `ctor` itself (not only a base class) is decorated with @replicated. */
export function isReplicated(ctor: RuntimeType): boolean {
  return Reflect.hasOwnMetadata(MetadataKey.replicated, ctor);
}

/**
 * The runtime's entry point: everything about a @replicated class. Throws DecoratorUsageError if
 * the class itself is not decorated (a subclass of a replicated class needs its own @replicated).
 */
export function replicatedClassInfo<T extends object>(ctor: AnyClass<T>): ReplicatedClassInfo<T> {
  const info = Reflect.getOwnMetadata(MetadataKey.replicated, ctor) as
    ReplicatedClassInfo<T> | undefined;
  if (info === undefined) {
    const name = typeof ctor === 'function' ? ctor.name || '(anonymous class)' : String(ctor);
    throw new DecoratorUsageError(
      `${name} is not a replicated class: it has no @replicated decorator of its own ` +
        `(a subclass of a replicated class needs its own). ` +
        `Fix: add @replicated() above "class ${name}".`,
    );
  }
  return info;
}

/** The ReplicatedClassInfo of an instance's class (see replicatedClassInfo). */
export function replicatedClassInfoOf<T extends object>(instance: T): ReplicatedClassInfo<T> {
  return replicatedClassInfo(instance.constructor as AnyClass<T>);
}

const replicatedByName = new Map<string, AnyClass>();

/** The @replicated class registered under a stable name, or undefined. */
export function replicatedClassByName(name: string): AnyClass | undefined {
  return replicatedByName.get(name);
}

export function registerReplicatedName(name: string, ctor: AnyClass): void {
  const existing = replicatedByName.get(name);
  if (existing !== undefined && existing !== ctor) {
    throw new DecoratorUsageError(
      `@replicated: two classes use the stable name "${name}" (${existing.name} and ` +
        `${ctor.name}); nodes could not tell them apart. ` +
        `Fix: give one its own name: @replicated({ name: '${name}2' }).`,
    );
  }
  replicatedByName.set(name, ctor);
}
