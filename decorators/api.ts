/**
 * Typed call interfaces: from a class C, OrderedApi<C> and P2PApi<C> expose its replicated
 * methods with their parameter types and promised results, so a call with a wrong argument fails
 * to compile. buildCallProxy() gives the runtime an object of that shape.
 *
 * Decorators cannot change a class's type, so TypeScript cannot see on its own which methods are
 * decorated. A class that declares its method names with the two marker keys gets exact
 * interfaces, and then @ordered/@p2p on an unlisted method fails to compile too:
 *
 *   @replicated()
 *   class Cache {
 *     declare readonly [ORDERED_METHODS]: 'put' | 'invalidate';
 *     declare readonly [P2P_METHODS]: 'get';
 *     ...
 *   }
 *
 * Without a marker, the interface lists every method of the class (the runtime still refuses
 * undecorated ones with a DispatchError).
 */
import { encodeArguments } from './codec.js';
import type { MethodInfo, MethodKind, ReplicatedClassInfo } from './metadata.js';

/** Marker key: `declare readonly [ORDERED_METHODS]: 'a' | 'b'` lists a class's ordered methods. */
export const ORDERED_METHODS: unique symbol = Symbol.for('squall.orderedMethods');
/** Marker key: `declare readonly [P2P_METHODS]: 'c'` lists a class's p2p methods. */
export const P2P_METHODS: unique symbol = Symbol.for('squall.p2pMethods');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => any;

/** Names of the string-keyed methods of C. */
export type MethodNames<C> = {
  [K in keyof C]-?: C[K] extends AnyFunction ? K : never;
}[keyof C] &
  string;

export type OrderedMethodName<C> = C extends { readonly [ORDERED_METHODS]: infer K }
  ? Extract<K, MethodNames<C>>
  : MethodNames<C>;

export type P2PMethodName<C> = C extends { readonly [P2P_METHODS]: infer K }
  ? Extract<K, MethodNames<C>>
  : MethodNames<C>;

export type MethodParams<C, K extends keyof C> = C[K] extends (...args: infer A) => unknown
  ? A
  : never;
export type MethodResult<C, K extends keyof C> = C[K] extends (...args: never[]) => infer R
  ? Awaited<R>
  : never;

/** Ordered calls on C: each returns a promise of the method's (awaited) result. */
export type OrderedApi<C> = {
  readonly [K in OrderedMethodName<C>]: (
    ...args: MethodParams<C, K>
  ) => Promise<MethodResult<C, K>>;
};

/** Point-to-point calls on C: each returns a promise of the method's (awaited) result. */
export type P2PApi<C> = {
  readonly [K in P2PMethodName<C>]: (...args: MethodParams<C, K>) => Promise<MethodResult<C, K>>;
};

/** The method names a decorator may be applied to on class instance type T. */
export type DecoratableMethod<T, Marker extends symbol> = T extends {
  readonly [M in Marker]: infer K;
}
  ? K
  : string | symbol;

/**
 * An object with one function per `kind` method of the class, keyed by method name: calling
 * it encodes the arguments (encodeArguments) and hands method and bytes to `send`, whose result
 * it returns. The group layer casts it to OrderedApi<C>/P2PApi<C> with its own result wrapper.
 */
export function buildCallProxy<R>(
  info: ReplicatedClassInfo,
  kind: MethodKind,
  send: (method: MethodInfo, encodedArgs: Uint8Array) => R,
): Readonly<Record<string, (...args: unknown[]) => R>> {
  const proxy: Record<string, (...args: unknown[]) => R> = Object.create(null);
  for (const method of kind === 'ordered' ? info.ordered.values() : info.p2p.values()) {
    proxy[method.methodName] = (...args: unknown[]) => send(method, encodeArguments(method, args));
  }
  return Object.freeze(proxy);
}
