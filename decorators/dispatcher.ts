/**
 * The dispatcher runs one call on one replica: it looks the method up by kind and wire name,
 * decodes and checks the arguments, invokes the method (sync or async), and encodes the reply.
 * Every outcome becomes reply bytes for decodeReply() at the caller:
 *   - the result;
 *   - an exception the method threw (the application's error, rethrown there as RemoteError);
 *   - a framework refusal (DispatchError, P2PWriteError, SerializationError), rethrown as itself.
 * dispatch() itself throws only on a Squall bug (AssertionError).
 *
 * p2p write detection: a @p2p method must not change state. The dispatcher reads every
 * @persistent field's FieldHooks.writeCount before the call and after it (after the promise
 * settles for an async method); a difference fails the call with P2PWriteError. In 'strict'
 * mode it also compares canonical bytes of every plain field before and after (O(state) per
 * call: for tests and debugging), and on a violation restores the state it saw before the call.
 * For an async p2p method the part before its first await is checked at once; the rest is
 * checked when it settles unless an ordered call through this dispatcher started, ran or settled
 * meanwhile (then the writes cannot be attributed, and that part goes unchecked rather than
 * failing a correct call). A write made by other code (not through this dispatcher) while it
 * awaits is attributed to it.
 */
import { SquallError } from '../src/core/errors.js';
import { DispatchError, P2PWriteError, SerializationError } from './errors.js';
import {
  decodeArguments,
  encodeApplicationError,
  encodeFrameworkError,
  encodeResult,
} from './codec.js';
import {
  replicatedClassInfoOf,
  type MethodInfo,
  type MethodKind,
  type ReplicatedClassInfo,
} from './metadata.js';
import { fieldSnapshots, persistentHooks, restoreObject, snapshotFromFields } from './snapshot.js';
import { fieldHooksOf } from './field-hooks.js';

export type P2PWriteCheck = 'persistent' | 'strict';

export interface DispatcherOptions {
  /** 'persistent' (default): write counts of @persistent fields; 'strict': all state. */
  p2pWriteCheck?: P2PWriteCheck;
}

/** Reply bytes, synchronously when the method was synchronous. */
export type DispatchResult = Uint8Array | Promise<Uint8Array>;

interface WriteWatch {
  /** Dispatcher.orderedActivity when the p2p call started. */
  activity: number;
  /** No ordered call was in flight when the p2p call started. */
  quiet: boolean;
  /** The persistent field values before the call (a reassigned field is a write). */
  values: unknown[];
  counts: number[];
  fields?: Map<string, Uint8Array>;
  snapshot?: Uint8Array;
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

export class Dispatcher<T extends object> {
  readonly info: ReplicatedClassInfo<T>;
  readonly target: T;
  private readonly strict: boolean;
  private orderedActivity = 0;
  private orderedInFlight = 0;

  constructor(target: T, options: DispatcherOptions = {}) {
    this.target = target;
    this.info = replicatedClassInfoOf(target);
    this.strict = options.p2pWriteCheck === 'strict';
  }

  /** Runs the call `wireName` of kind `kind` with encoded arguments; returns reply bytes. */
  dispatch(kind: MethodKind, wireName: string, encodedArgs: Uint8Array): DispatchResult {
    const method = (kind === 'ordered' ? this.info.ordered : this.info.p2p).get(wireName);
    if (method === undefined) return encodeFrameworkError(this.unknownMethod(kind, wireName));
    let args: unknown[];
    try {
      args = decodeArguments(method, encodedArgs, this.info.name);
    } catch (error) {
      return encodeFrameworkError(asFrameworkError(error));
    }
    if (kind === 'ordered') return this.trackOrdered(this.invoke(method, args, undefined));
    let watch: WriteWatch;
    try {
      watch = this.watchWrites();
    } catch (error) {
      return encodeFrameworkError(asFrameworkError(error));
    }
    return this.invoke(method, args, watch);
  }

  /** Counts ordered calls starting and settling, so p2p checks know what ran meanwhile. */
  private trackOrdered(result: DispatchResult): DispatchResult {
    this.orderedActivity++;
    if (!(result instanceof Promise)) return result;
    this.orderedInFlight++;
    return result.finally(() => {
      this.orderedInFlight--;
      this.orderedActivity++;
    });
  }

  private unknownMethod(kind: MethodKind, wireName: string): DispatchError {
    const other = (kind === 'ordered' ? this.info.p2p : this.info.ordered).get(wireName);
    const name = this.info.name;
    if (other !== undefined) {
      const otherKind = kind === 'ordered' ? 'p2p' : 'ordered';
      return new DispatchError(
        name,
        wireName,
        `${name}.${other.methodName} is @${otherKind} but was called as ${kind}. ` +
          `Fix: call it through the ${otherKind} interface.`,
      );
    }
    return new DispatchError(
      name,
      wireName,
      `${name} has no @${kind} method with wire name "${wireName}". Fix: check that caller and ` +
        `replica run the same version of ${name} and that the method is decorated @${kind}.`,
    );
  }

  private invoke(
    method: MethodInfo,
    args: unknown[],
    watch: WriteWatch | undefined,
  ): DispatchResult {
    const fn = (this.target as Record<string, unknown>)[method.methodName] as (
      ...a: unknown[]
    ) => unknown;
    let result: unknown;
    try {
      result = fn.apply(this.target, args);
    } catch (error) {
      return this.finish(method, watch, false, error);
    }
    if (isPromiseLike(result)) {
      // The part before the first await ran alone: check it now. After that, ordered calls may
      // run while this one awaits; its writes can be told apart only if none did.
      const early = watch === undefined ? undefined : this.safeCheckWrites(method, watch);
      if (early !== undefined) {
        const refuse = (): Uint8Array => encodeFrameworkError(early);
        return Promise.resolve(result).then(refuse, refuse);
      }
      return Promise.resolve(result).then(
        (value) => this.finish(method, this.attributable(watch), true, value),
        (error: unknown) => this.finish(method, this.attributable(watch), false, error),
      );
    }
    return this.finish(method, watch, true, result);
  }

  private finish(
    method: MethodInfo,
    watch: WriteWatch | undefined,
    ok: boolean,
    value: unknown,
  ): Uint8Array {
    if (watch !== undefined) {
      const violation = this.safeCheckWrites(method, watch);
      if (violation !== undefined) return encodeFrameworkError(violation);
    }
    if (!ok) return encodeApplicationError(value);
    try {
      return encodeResult(value);
    } catch (error) {
      return encodeFrameworkError(
        new SerializationError(
          `${this.info.name}.${method.methodName} returned a value that cannot be encoded: ` +
            `${String(error)}. Fix: return serializable data (see decorators/README.md).`,
        ),
      );
    }
  }

  /** The watch if no ordered call ran or was running since it started, else undefined. */
  private attributable(watch: WriteWatch | undefined): WriteWatch | undefined {
    if (watch === undefined || !watch.quiet || watch.activity !== this.orderedActivity)
      return undefined;
    return watch;
  }

  private watchWrites(): WriteWatch {
    const hooks = persistentHooks(this.info, this.target);
    const record = this.target as Record<string, unknown>;
    const watch: WriteWatch = {
      activity: this.orderedActivity,
      quiet: this.orderedInFlight === 0,
      values: this.info.persistentFields.map((f) => record[f.fieldName]),
      counts: hooks.map((h) => h.writeCount),
    };
    if (this.strict) {
      watch.fields = fieldSnapshots(this.target);
      watch.snapshot = snapshotFromFields(this.info, watch.fields);
    }
    return watch;
  }

  /** checkWrites, with a failure of the check itself (e.g. unencodable state) as its error. */
  private safeCheckWrites(method: MethodInfo, watch: WriteWatch): SquallError | undefined {
    try {
      return this.checkWrites(method, watch);
    } catch (error) {
      // The state changed into something that cannot even be encoded: a write. Strict mode
      // still holds the state from before the call and puts it back.
      if (watch.snapshot !== undefined) restoreObject(this.target, watch.snapshot);
      return asFrameworkError(error);
    }
  }

  private checkWrites(method: MethodInfo, watch: WriteWatch): P2PWriteError | undefined {
    const written: string[] = [];
    const record = this.target as Record<string, unknown>;
    this.info.persistentFields.forEach((f, i) => {
      const value = record[f.fieldName];
      if (value !== watch.values[i] || fieldHooksOf(value)?.writeCount !== watch.counts[i]) {
        written.push(f.fieldName);
      }
    });
    if (watch.fields !== undefined) {
      const after = fieldSnapshots(this.target);
      const keys = new Set([...watch.fields.keys(), ...after.keys()]);
      for (const key of [...keys].sort()) {
        const b = watch.fields.get(key);
        const a = after.get(key);
        const name = key.slice(key.indexOf(':') + 1);
        const field = key.startsWith('persistent:')
          ? (this.info.persistentFields.find((f) => f.name === name)?.fieldName ?? name)
          : name;
        const changed = a === undefined || b === undefined || Buffer.compare(a, b) !== 0;
        if (changed && !written.includes(field)) written.push(field);
      }
    }
    if (written.length === 0) return undefined;
    if (watch.snapshot !== undefined) restoreObject(this.target, watch.snapshot);
    return new P2PWriteError(this.info.name, method.methodName, written);
  }
}

function asFrameworkError(error: unknown): SquallError {
  if (error instanceof SquallError) return error;
  return new SerializationError(String(error), { cause: error });
}
