/** Flag parsing shared by the squall subcommands: named flags, then --section.key overrides. */
import { UsageError } from './command.js';

export interface ParsedArgs {
  /** Values of the named flags given (`--config x` or `--config=x`). */
  readonly flags: Map<string, string>;
  /** Booleans given (`--json`). */
  readonly switches: Set<string>;
  /** Everything else: configuration overrides for loadConfig. */
  readonly overrides: string[];
}

/** Splits `args` into the command's own flags and config overrides (`--section.key=value`). */
export function parseArgs(
  args: readonly string[],
  named: readonly string[],
  switchNames: readonly string[] = [],
): ParsedArgs {
  const flags = new Map<string, string>();
  const switches = new Set<string>();
  const overrides: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const name = named.find((n) => arg === `--${n}` || arg.startsWith(`--${n}=`));
    if (name !== undefined) {
      const value = arg === `--${name}` ? args[++i] : arg.slice(name.length + 3);
      if (value !== undefined) flags.set(name, value);
    } else if (switchNames.includes(arg.slice(2)) && arg.startsWith('--')) {
      switches.add(arg.slice(2));
    } else {
      overrides.push(arg);
    }
  }
  return { flags, switches, overrides };
}

/**
 * The whole number given for `--name` (`fallback` if absent), refused with a UsageError naming the
 * flag if it is not an integer or is below `min`.
 */
export function integerFlag(flags: ReadonlyMap<string, string>, name: string, what: string, options: { min?: number; fallback?: number } = {}): number {
  const text = flags.get(name);
  if (text === undefined && options.fallback !== undefined) return options.fallback;
  const value = Number(text);
  const min = options.min ?? Number.MIN_SAFE_INTEGER;
  if (text === undefined || !/^-?\d+$/.test(text) || value < min) {
    throw new UsageError(`--${name} takes a whole number of ${what}${options.min !== undefined ? ` (at least ${options.min})` : ''}, not "${text ?? ''}"`);
  }
  return value;
}
