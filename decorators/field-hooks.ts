/**
 * The contract between a @persistent field's value (Persistent<T>, Volatile<T>, built in
 * persistence/) and the runtime pieces in decorators/ that must see inside it without depending
 * on persistence/: the dispatcher (which refuses a p2p call that writes persistent state) and the
 * object snapshot used for state transfer and replica digests.
 */
export const FIELD_HOOKS: unique symbol = Symbol.for('squall.fieldHooks');

export interface FieldHooks {
  /**
   * A counter that grows on every change to the field's current value (set, mutate, truncate).
   * The dispatcher reads it before and after a p2p call; a difference means the call wrote.
   */
  readonly writeCount: number;
  /** Deterministic bytes of the current value: equal values give equal bytes on every replica. */
  snapshotCurrent(): Uint8Array;
  /** Replaces the current value with one produced by snapshotCurrent() on another replica. */
  restoreCurrent(bytes: Uint8Array): void;
}

/** Values that carry hooks expose them under the FIELD_HOOKS symbol. */
export interface HasFieldHooks {
  readonly [FIELD_HOOKS]: FieldHooks;
}

export function fieldHooksOf(value: unknown): FieldHooks | undefined {
  if (value !== null && typeof value === 'object' && FIELD_HOOKS in value) {
    return (value as HasFieldHooks)[FIELD_HOOKS];
  }
  return undefined;
}
