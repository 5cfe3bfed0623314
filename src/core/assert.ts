import { AssertionError } from './errors.js';

/**
 * Checks an invariant and throws AssertionError if it does not hold. Assertions stay on in
 * production (TigerBeetle's rule): a broken invariant in a replication protocol must stop the
 * node rather than let it diverge silently.
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** For exhaustive switches: the compiler proves this is unreachable. */
export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
