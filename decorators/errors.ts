/**
 * Errors raised by decorators/: misuse found when a class is defined, calls the dispatcher
 * refuses, values the codec cannot carry, and an application's exception coming back from a
 * replica. Application errors (RemoteError) are kept apart from framework errors (the others).
 */
import { SquallError } from '../src/core/errors.js';
import type { NodeId } from '../src/core/ids.js';

/**
 * A decorator was used in a way Squall cannot run: thrown while the class is being defined (or,
 * for "@ordered without @replicated", right after the defining module finishes). The message
 * names the class and member and ends with the fix.
 */
export class DecoratorUsageError extends SquallError {
  constructor(message: string) {
    super(message, 'DECORATOR_USAGE');
  }
}

/**
 * A value cannot be encoded or bytes cannot be decoded (unregistered class name, malformed
 * bytes, a snapshot of another class or version).
 */
export class SerializationError extends SquallError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'SERIALIZATION', options);
  }
}

/**
 * The dispatcher refused a call before or after running it: unknown wire name, wrong kind
 * (an ordered method called point-to-point or the reverse), arguments of the wrong count or type.
 * This is a framework error: it travels back as a framework error, never as a RemoteError.
 */
export class DispatchError extends SquallError {
  readonly className: string;
  readonly wireName: string;
  constructor(className: string, wireName: string, message: string) {
    super(message, 'DISPATCH');
    this.className = className;
    this.wireName = wireName;
  }
}

/**
 * A @p2p method changed state during the call. The replica that served it has already applied the
 * change (unless the dispatcher runs in strict mode, which rolls it back), so its state may now
 * differ from the other replicas': this is a bug in the application's class.
 */
export class P2PWriteError extends SquallError {
  readonly className: string;
  readonly methodName: string;
  /** The fields found changed (persistent fields by hook write counts, plain ones by snapshot). */
  readonly fields: readonly string[];
  constructor(className: string, methodName: string, fields: readonly string[]) {
    super(
      `${className}.${methodName} is @p2p (read-only) but wrote ${fields.join(', ')} ` +
        `while it ran. ` +
        `A p2p call is served by one replica, so a write there makes the replicas diverge. ` +
        `Fix: make ${methodName} @ordered, or move the write out of it.`,
      'P2P_WRITE',
    );
    this.className = className;
    this.methodName = methodName;
    this.fields = fields;
  }
}

/**
 * A replicated method threw on a replica. The exception travelled back as data and is rethrown
 * here at the caller: `remoteName` is the thrown error's `name` (e.g. "RangeError" or the
 * application's own class name), `remoteMessage` its message, `remoteCode` its `code` if it had a
 * string one, and `nodeId` the replica that threw (undefined if the caller did not say).
 */
export class RemoteError extends SquallError {
  readonly remoteName: string;
  readonly remoteMessage: string;
  readonly remoteCode: string | undefined;
  readonly nodeId: NodeId | undefined;
  constructor(remoteName: string, remoteMessage: string, nodeId?: NodeId, remoteCode?: string) {
    const where = nodeId === undefined ? 'a replica' : `node ${nodeId}`;
    super(`${remoteName} thrown on ${where}: ${remoteMessage}`, 'REMOTE');
    this.remoteName = remoteName;
    this.remoteMessage = remoteMessage;
    this.remoteCode = remoteCode;
    this.nodeId = nodeId;
  }
}
