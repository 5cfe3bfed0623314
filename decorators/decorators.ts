/**
 * @replicated, @ordered, @p2p and @persistent (legacy TypeScript decorators, see NOTES.md).
 * Member decorators check their own use and record it; @replicated checks the class as a whole
 * and freezes the ReplicatedClassInfo the runtime reads. Every misuse throws a
 * DecoratorUsageError whose message ends with the fix.
 */
import 'reflect-metadata';
import { DecoratorUsageError } from './errors.js';
import { DesignKey } from './keys.js';
import type { DecoratableMethod, ORDERED_METHODS, P2P_METHODS } from './api.js';
import {
  addMethodRecord,
  addPersistentRecord,
  isReplicated,
  ownMethodRecords,
  ownPersistentRecords,
  registerReplicatedName,
  setReplicatedInfo,
  type AnyClass,
  type MethodInfo,
  type MethodKind,
  type MethodOptions,
  type MethodRecord,
  type PersistentFieldInfo,
  type PersistentOptions,
  type ReplicatedClassInfo,
  type ReplicatedOptions,
  type RuntimeType,
} from './metadata.js';
import {
  isBuiltinType,
  isSerializableClass,
  makeCallPlan,
  nonSerializableReason,
  registerSerializable,
} from './codec.js';

/** Throws unless reflect-metadata's API is present on Reflect. */
export function checkReflectMetadata(): void {
  const r = Reflect as unknown as Record<string, unknown>;
  if (typeof r['getMetadata'] !== 'function' || typeof r['defineMetadata'] !== 'function') {
    throw new DecoratorUsageError(
      `reflect-metadata is not loaded: Reflect.getMetadata is missing, so parameter types and ` +
        `Squall's records cannot be stored. Fix: import 'reflect-metadata' once at the start ` +
        `of your program, before any decorated class is defined.`,
    );
  }
}

function memberLabel(target: object, key: string | symbol): string {
  const ctor = typeof target === 'function' ? target : target.constructor;
  return `${(ctor as RuntimeType).name || '(anonymous class)'}.${String(key)}`;
}

// ---------------------------------------------------------------------------------------------
// @ordered / @p2p

/** Classes with member decorators whose @replicated is checked once their module has run. */
const awaitingClassDecorator = new Set<RuntimeType>();
/** Classes whose definition already threw a DecoratorUsageError: one error per mistake. */
const failedDefinitions = new WeakSet<RuntimeType>();

/** Runs a decorator body; if it throws, the class is marked failed (no follow-up error). */
function guarded<R>(ctor: RuntimeType, body: () => R): R {
  try {
    return body();
  } catch (error) {
    failedDefinitions.add(ctor);
    throw error;
  }
}

function expectClassDecorator(ctor: RuntimeType, what: string): void {
  if (awaitingClassDecorator.has(ctor)) return;
  awaitingClassDecorator.add(ctor);
  // Member decorators run before the class decorator, in the same synchronous pass over the class
  // definition; by the next microtask a @replicated class has been marked.
  queueMicrotask(() => {
    awaitingClassDecorator.delete(ctor);
    if (!isReplicated(ctor) && !failedDefinitions.has(ctor)) {
      const name = ctor.name || '(anonymous class)';
      throw new DecoratorUsageError(
        `${name} has ${what} members but no @replicated decorator, so no replica will ever run ` +
          `them. Fix: add @replicated() above "class ${name}".`,
      );
    }
  });
}

function checkMethodTarget(
  decorator: string,
  target: object,
  key: string | symbol,
  descriptor: PropertyDescriptor | undefined,
): void {
  const label = memberLabel(target, key);
  if (typeof target === 'function') {
    throw new DecoratorUsageError(
      `${decorator} on static member ${label}: replicated methods run on a replica's instance. ` +
        `Fix: remove "static" from ${String(key)}.`,
    );
  }
  if (typeof key === 'symbol') {
    throw new DecoratorUsageError(
      `${decorator} on ${label}: a method keyed by a symbol has no name to send on the wire. ` +
        `Fix: give the method a string name.`,
    );
  }
  if (descriptor === undefined) {
    throw new DecoratorUsageError(
      `${decorator} on field ${label}: only methods can be called on replicas (a field, even ` +
        `one holding an arrow function, is not on the prototype). ` +
        `Fix: declare it as a method: ${key}(...) { ... }.`,
    );
  }
  if (descriptor.get !== undefined || descriptor.set !== undefined) {
    throw new DecoratorUsageError(
      `${decorator} on accessor ${label}: getters and setters cannot be called on replicas. ` +
        `Fix: make ${key} a method, e.g. ${decorator === '@p2p' ? 'get' : 'set'}` +
        `${key[0]!.toUpperCase()}${key.slice(1)}(...).`,
    );
  }
  if (typeof descriptor.value !== 'function') {
    throw new DecoratorUsageError(
      `${decorator} on ${label}, which is not a method. Fix: declare ${key} as a method.`,
    );
  }
}

function paramTypeProblem(type: unknown): string | undefined {
  if (type === undefined || type === null) {
    return 'has no runtime type (reflection gave undefined: void, null or undefined type)';
  }
  if (type === Object) {
    return (
      'has no runtime type (design:paramtypes gave Object). This happens when the type is ' +
      'an interface, a union, a type alias of an object type, any or unknown'
    );
  }
  if (type === Function) {
    return (
      'has no runtime type (design:paramtypes gave Function). This happens when the type is ' +
      'imported with "import type" or is a function type'
    );
  }
  if (typeof type !== 'function') return `has no runtime type (reflection gave ${String(type)})`;
  return undefined;
}

function resolveParamTypes(
  decorator: string,
  label: string,
  method: (...args: unknown[]) => unknown,
  reflected: unknown[] | undefined,
  options: MethodOptions,
): RuntimeType[] {
  const explicit = options.params;
  if (explicit !== undefined) {
    const declared = reflected?.length ?? method.length;
    if (explicit.length !== declared) {
      throw new DecoratorUsageError(
        `${label} has ${declared} parameters but ${decorator}({ params }) lists ` +
          `${explicit.length} types. Fix: list exactly one type per parameter.`,
      );
    }
    explicit.forEach((type, index) => {
      if (typeof type !== 'function') {
        throw new DecoratorUsageError(
          `${label} parameter ${index}: ${decorator}({ params }) entry is ${String(type)}, not a ` +
            `constructor. Fix: use String, Number, Boolean, BigInt, Buffer, a class, or Object ` +
            `for "any serializable value".`,
        );
      }
      checkSerializable(label, index, type);
    });
    return [...explicit];
  }
  if (reflected === undefined) {
    if (method.length === 0) return [];
    throw new DecoratorUsageError(
      `${label} has parameters but no design:paramtypes metadata: the code was compiled ` +
        `without emitDecoratorMetadata, or by a tool that drops it (esbuild, tsx). ` +
        `Fix: compile with tsc and "emitDecoratorMetadata": true, or declare the types: ` +
        `${decorator}({ params: [...] }).`,
    );
  }
  reflected.forEach((type, index) => {
    const problem = paramTypeProblem(type);
    if (problem !== undefined) {
      const example = reflected.map((t, i) =>
        i === index || paramTypeProblem(t) ? 'Type' : (t as RuntimeType).name,
      );
      throw new DecoratorUsageError(
        `${label} parameter ${index} ${problem}. Fix: import the class as a value, or ` +
          `declare it: ${decorator}({ params: [${example.join(', ')}] }) (Object accepts any ` +
          `serializable value).`,
      );
    }
    checkSerializable(label, index, type as RuntimeType);
  });
  return reflected as RuntimeType[];
}

function checkSerializable(label: string, index: number, type: RuntimeType): void {
  const reason = nonSerializableReason(type);
  if (reason !== undefined) {
    throw new DecoratorUsageError(
      `${label} parameter ${index} has type ${type.name}, which cannot be serialized: ${reason}. ` +
        `Fix: pass the value itself (await the Promise, copy the entries into a Map or array).`,
    );
  }
  if (type === Function) {
    throw new DecoratorUsageError(
      `${label} parameter ${index} has type Function, which cannot be serialized: code does ` +
        `not travel between nodes. Fix: pass data that selects the behaviour (a name or enum).`,
    );
  }
  if (!isBuiltinType(type) && !isSerializableClass(type)) registerSerializable(type as AnyClass);
}

function methodDecorator(kind: MethodKind, options: MethodOptions): MethodDecorator {
  const decorator = kind === 'ordered' ? '@ordered' : '@p2p';
  return (target, key, descriptor) =>
    guarded(typeof target === 'function' ? target : target.constructor, () => {
      checkReflectMetadata();
      checkMethodTarget(decorator, target, key, descriptor);
      const methodName = key as string;
      const ctor = target.constructor as AnyClass;
      const label = memberLabel(target, key);
      const previous = ownMethodRecords(ctor).find((r) => r.methodName === methodName);
      if (previous !== undefined) {
        const keepAdvice = '@ordered if it writes state, else @p2p';
        const both = previous.kind === kind ? `${decorator} twice` : '@ordered and @p2p';
        throw new DecoratorUsageError(
          `${label} has ${both}; a method is either ordered (may change state, delivered in ` +
            `order everywhere) or p2p (read-only, served by one member). ` +
            `Fix: keep ${previous.kind === kind ? 'one' : keepAdvice}.`,
        );
      }
      const wireName = options.name ?? methodName;
      if (typeof wireName !== 'string' || wireName.length === 0) {
        throw new DecoratorUsageError(
          `${label}: ${decorator}({ name }) must be a non-empty string. ` +
            `Fix: pass a name or omit it.`,
        );
      }
      const reflected = Reflect.getMetadata(DesignKey.paramTypes, target, key) as
        unknown[] | undefined;
      const method = (descriptor as PropertyDescriptor).value as (...args: unknown[]) => unknown;
      const paramTypes = resolveParamTypes(decorator, label, method, reflected, options);
      let returnType =
        options.returns ??
        (Reflect.getMetadata(DesignKey.returnType, target, key) as RuntimeType | undefined);
      if (
        returnType !== undefined &&
        !isBuiltinType(returnType) &&
        nonSerializableReason(returnType) === undefined &&
        returnType !== Promise &&
        returnType !== Function &&
        !isSerializableClass(returnType)
      ) {
        registerSerializable(returnType as AnyClass);
      }
      if (returnType === Object) returnType = undefined;
      const record: MethodRecord = {
        kind,
        methodName,
        wireName,
        paramTypes,
        returnType,
        declaringClass: ctor,
      };
      addMethodRecord(ctor, record);
      expectClassDecorator(ctor, decorator);
    });
}

/**
 * Marks a method that may change the object's state. Calls are delivered in the same total order
 * to every replica of the subgroup, and each replica returns its own reply.
 */
export function ordered(options: MethodOptions = {}) {
  return methodDecorator('ordered', options) as <T extends object>(
    target: T,
    key: DecoratableMethod<T, typeof ORDERED_METHODS>,
    descriptor: PropertyDescriptor,
  ) => void;
}

/**
 * Marks a read-only method, served point-to-point by one chosen member. The dispatcher fails a
 * call that writes a @persistent field (and, in strict mode, any state).
 */
export function p2p(options: MethodOptions = {}) {
  return methodDecorator('p2p', options) as <T extends object>(
    target: T,
    key: DecoratableMethod<T, typeof P2P_METHODS>,
    descriptor: PropertyDescriptor,
  ) => void;
}

// ---------------------------------------------------------------------------------------------
// @persistent

/**
 * Marks a field that holds a Persistent<T> or Volatile<T> (persistence/): its versions are kept,
 * snapshots use its own hooks, and p2p calls must not write it.
 */
export function persistent(
  options: PersistentOptions = {},
): (target: object, key: string | symbol, descriptor?: PropertyDescriptor) => void {
  // A field decorator gets no descriptor; methods and accessors get one (the typing admits them
  // so that the misuse reaches this check and its message).
  return (target, key, descriptor) =>
    guarded(typeof target === 'function' ? target : target.constructor, () => {
      checkReflectMetadata();
      const label = memberLabel(target, key);
      if (typeof target === 'function') {
        throw new DecoratorUsageError(
          `@persistent on static field ${label}: persistent state belongs to each replica. ` +
            `Fix: remove "static" from ${String(key)}.`,
        );
      }
      if (typeof key === 'symbol') {
        throw new DecoratorUsageError(
          `@persistent on ${label}: a symbol-keyed field has no stable name for the version log. ` +
            `Fix: give the field a string name.`,
        );
      }
      if (descriptor !== undefined) {
        throw new DecoratorUsageError(
          `@persistent on ${label}, which is a method or accessor: ` +
            `@persistent marks a field that ` +
            `holds a Persistent<T> or Volatile<T>. ` +
            `Fix: declare a field: ${key} = new Persistent<T>(...).`,
        );
      }
      const ctor = target.constructor as AnyClass;
      if (ownPersistentRecords(ctor).some((r) => r.fieldName === key)) {
        throw new DecoratorUsageError(`${label} has @persistent twice. Fix: keep one.`);
      }
      addPersistentRecord(ctor, {
        fieldName: key,
        name: options.name ?? key,
        declaringClass: ctor,
      });
      expectClassDecorator(ctor, '@persistent');
    });
}

// ---------------------------------------------------------------------------------------------
// @replicated

/**
 * True if the class's compiled source defines `field` with [[Define]] semantics (a class field
 * or Object.defineProperty(this, "field")), which tsc emits when useDefineForClassFields is on.
 */
export function definesClassField(ctor: RuntimeType, field: string): boolean {
  const source = Function.prototype.toString.call(ctor);
  const escaped = field.replace(/[$]/g, '\\$');
  const classField = new RegExp(
    `(^|[;{}\\n])\\s*(?:readonly\\s+)?["']?${escaped}["']?\\s*[=;]`,
    'm',
  );
  const bodyStart = source.indexOf('{');
  const defineProperty = new RegExp(`Object\\.defineProperty\\(this,\\s*["']${escaped}["']`);
  return classField.test(source.slice(bodyStart + 1)) || defineProperty.test(source);
}

function checkSetSemantics(ctor: AnyClass, fields: readonly string[]): void {
  for (const field of fields) {
    if (definesClassField(ctor, field)) {
      throw new DecoratorUsageError(
        `${ctor.name}.${field} is compiled as a [[Define]] class field (useDefineForClassFields ` +
          `semantics): such fields replace anything a decorator installs on the prototype, and ` +
          `Squall's decorators assume assignment semantics. ` +
          `Fix: set "useDefineForClassFields": false in tsconfig.json (NOTES.md).`,
      );
    }
  }
}

function collectMethods(ctor: AnyClass, className: string): MethodInfo[] {
  const byMethod = new Map<string, MethodRecord>();
  const chain: RuntimeType[] = [];
  for (let c: unknown = ctor; typeof c === 'function' && c !== Function.prototype;) {
    chain.unshift(c as RuntimeType);
    c = Object.getPrototypeOf(c);
  }
  for (const c of chain) {
    for (const record of ownMethodRecords(c)) {
      const inherited = byMethod.get(record.methodName);
      if (inherited !== undefined && inherited.kind !== record.kind) {
        throw new DecoratorUsageError(
          `${className}.${record.methodName} is @${record.kind} in ${record.declaringClass.name} ` +
            `but @${inherited.kind} in ${inherited.declaringClass.name}: a method keeps its kind ` +
            `in subclasses. Fix: use @${inherited.kind} on the override, or rename it.`,
        );
      }
      byMethod.set(record.methodName, record);
    }
  }
  const byWire = new Map<string, MethodRecord>();
  for (const record of byMethod.values()) {
    const other = byWire.get(record.wireName);
    if (other !== undefined) {
      throw new DecoratorUsageError(
        `${className}.${other.methodName} and ${className}.${record.methodName} both use the ` +
          `wire name "${record.wireName}", so a call could not say which to run. ` +
          `Fix: give one its own name: @${record.kind}({ name: '${record.methodName}' }).`,
      );
    }
    byWire.set(record.wireName, record);
  }
  return [...byMethod.values()]
    .sort((a, b) => (a.wireName < b.wireName ? -1 : a.wireName > b.wireName ? 1 : 0))
    .map((r) =>
      Object.freeze({
        ...r,
        paramTypes: Object.freeze([...r.paramTypes]),
        plan: makeCallPlan(r.paramTypes),
      }),
    );
}

function collectPersistentFields(ctor: AnyClass, className: string): PersistentFieldInfo[] {
  const byField = new Map<string, PersistentFieldInfo>();
  for (let c: unknown = ctor; typeof c === 'function' && c !== Function.prototype;) {
    for (const record of ownPersistentRecords(c as RuntimeType)) {
      if (!byField.has(record.fieldName))
        byField.set(record.fieldName, Object.freeze({ ...record }));
    }
    c = Object.getPrototypeOf(c);
  }
  const names = new Map<string, string>();
  for (const f of byField.values()) {
    const other = names.get(f.name);
    if (other !== undefined) {
      throw new DecoratorUsageError(
        `${className}.${other} and ${className}.${f.fieldName} are both persistent as ` +
          `"${f.name}". ` +
          `Fix: give one its own name: @persistent({ name: '${f.fieldName}' }).`,
      );
    }
    names.set(f.name, f.fieldName);
  }
  return [...byField.values()].sort((a, b) => (a.fieldName < b.fieldName ? -1 : 1));
}

function checkReplicatedOptions(
  ctor: AnyClass,
  options: ReplicatedOptions,
): { name: string; version: number } {
  const name = options.name ?? ctor.name;
  if (typeof name !== 'string' || name.length === 0) {
    throw new DecoratorUsageError(
      `@replicated on an anonymous class: replicas find a class by its name. ` +
        `Fix: name the class, or pass @replicated({ name: 'MyService' }).`,
    );
  }
  const version = options.version ?? 1;
  if (!Number.isInteger(version) || version < 0 || version > 0xffff_ffff) {
    throw new DecoratorUsageError(
      `@replicated on ${name}: version ${String(version)} is not a uint32. ` +
        `Fix: use a whole number such as @replicated({ version: 2 }).`,
    );
  }
  if (options.factory !== undefined && typeof options.factory !== 'function') {
    throw new DecoratorUsageError(
      `@replicated on ${name}: factory must be a function returning a new ${name}. ` +
        `Fix: @replicated({ factory: (context) => new ${name}(...) }).`,
    );
  }
  return { name, version };
}

/**
 * Marks a class whose instances are replicated objects, checks every decorated member, and
 * freezes the class's ReplicatedClassInfo (see replicatedClassInfo()).
 */
export function replicated<T extends object>(options: ReplicatedOptions<T> = {}) {
  return <C extends AnyClass<T>>(ctor: C): void =>
    guarded(ctor, () => {
      checkReflectMetadata();
      const { name, version } = checkReplicatedOptions(ctor, options as ReplicatedOptions);
      const methods = collectMethods(ctor, name);
      const persistentFields = collectPersistentFields(ctor, name);
      checkSetSemantics(
        ctor,
        persistentFields.map((f) => f.fieldName),
      );
      const transient = new Set(options.transient ?? []);
      for (const f of persistentFields) {
        if (transient.has(f.fieldName)) {
          throw new DecoratorUsageError(
            `${name}.${f.fieldName} is both @persistent and transient. Fix: drop one of them.`,
          );
        }
      }
      const factory = options.factory;
      const info: ReplicatedClassInfo<T> = Object.freeze({
        ctor: ctor as AnyClass<T>,
        name,
        version,
        methods: Object.freeze(methods),
        ordered: new Map(methods.filter((m) => m.kind === 'ordered').map((m) => [m.wireName, m])),
        p2p: new Map(methods.filter((m) => m.kind === 'p2p').map((m) => [m.wireName, m])),
        persistentFields: Object.freeze(persistentFields),
        transientFields: transient,
        create(context?: unknown): T {
          if (factory !== undefined) return factory(context);
          return new (ctor as unknown as new () => T)();
        },
      });
      registerReplicatedName(name, ctor);
      setReplicatedInfo(ctor, info as unknown as ReplicatedClassInfo);
    });
}
