/** What every squall subcommand is: its help, and a run function returning the exit code. */
import { SquallError } from '../core/errors.js';

export interface CliIo {
  out(line: string): void;
  err(line: string): void;
  env: Record<string, string | undefined>;
}

export interface Command {
  summary: string;
  usage: string;
  /** The exit code; long-running commands (node, demo) resolve it when they end. */
  run(args: string[], io: CliIo): number | Promise<number>;
}

/** Thrown for bad command-line usage; printed with the command's usage, exit code 2. */
export class UsageError extends SquallError {
  constructor(message: string) {
    super(message, 'USAGE');
  }
}

