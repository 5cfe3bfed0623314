/**
 * The base of every error Squall throws. `name` is the subclass name (so logs and `instanceof`
 * agree), and `code` is a stable string a caller can switch on.
 *
 * Programmer errors (DecoratorUsageError, ConfigError, AssertionError) are thrown at once.
 * Operating errors (TimeoutError, PeerFailedError, NotLeaderError, ...) carry what a caller needs
 * to retry. Messages say what happened, where, why, and end with the fix.
 */
export class SquallError extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** An internal invariant was broken: a bug in Squall, never a user error. */
export class AssertionError extends SquallError {
  constructor(message: string) {
    super(message, 'ASSERTION');
  }
}

/** A configuration value is missing, has the wrong type, or contradicts another. */
export class ConfigError extends SquallError {
  /** Every problem found, each with its dotted key. */
  readonly problems: readonly { key: string; message: string }[];
  constructor(problems: readonly { key: string; message: string }[]) {
    super(
      `invalid configuration:\n${problems.map((p) => `  ${p.key}: ${p.message}`).join('\n')}`,
      'CONFIG',
    );
    this.problems = problems;
  }
}

/** A payload exceeds a configured limit; the message names the limit and its config key. */
export class PayloadTooLargeError extends SquallError {
  readonly bytes: number;
  readonly bytesMax: number;
  constructor(what: string, bytes: number, bytesMax: number, configKey: string) {
    super(
      `${what} is ${bytes} bytes, above the limit of ${bytesMax} bytes. ` +
        `Fix: send less per call, or raise ${configKey}.`,
      'PAYLOAD_TOO_LARGE',
    );
    this.bytes = bytes;
    this.bytesMax = bytesMax;
  }
}

/** An operation did not complete before its deadline. */
export class TimeoutError extends SquallError {
  readonly timeoutMs: number;
  constructor(what: string, timeoutMs: number) {
    super(`${what} did not complete within ${timeoutMs} ms`, 'TIMEOUT');
    this.timeoutMs = timeoutMs;
  }
}
