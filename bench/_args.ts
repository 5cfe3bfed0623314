/** The options every bench suite reads, checked before a suite runs (bench/run.ts). */

/**
 * The options each suite reads: 'switch', 'value' (the next argument is its value), or
 * 'optional' (a value follows unless the next argument is another option); `words` says what
 * bare arguments it takes, if any. An option a suite does not read is refused here, not ignored.
 */
type OptionKind = 'switch' | 'value' | 'optional';
export const OPTIONS: Record<string, { readonly options: Record<string, OptionKind>; readonly words?: string }> = {
  codec: { options: { quick: 'switch' } },
  group: { options: { quick: 'switch', durable: 'switch', wal: 'switch', plaintext: 'switch', raft: 'switch' } },
  kv: { options: { quick: 'switch', mode: 'value', storage: 'value', durable: 'switch', wal: 'switch', plaintext: 'switch' } },
  membership: { options: { quick: 'switch', reps: 'value', 'state-mb': 'value' } },
  multicast: { options: { quick: 'switch', mib: 'optional', 'no-ceiling': 'switch', warmup: 'value' } },
  persistence: { options: { quick: 'switch' }, words: 'a case name' },
  raft: {
    options: {
      quick: 'switch', transport: 'value', storage: 'value', fsync: 'value', profile: 'value',
      threads: 'switch', processes: 'switch', 'in-process': 'switch', pin: 'value', 'sched-batch': 'value',
    },
  },
  replica: { options: { quick: 'switch' } },
  transport: { options: { quick: 'switch', crypto: 'switch', incast: 'switch', loss: 'switch', 'no-release': 'switch', sessions: 'switch' } },
};

/** The problem with `args` for `suite`, or undefined if the suite reads every one of them. */
export function argumentProblem(suite: string, args: readonly string[]): string | undefined {
  const spec = OPTIONS[suite];
  if (spec === undefined) return `bench/run.ts lists no options for suite "${suite}": add its entry to OPTIONS`;
  const known = Object.keys(spec.options).map((o) => `--${o}`).join(', ');
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('--')) {
      if (spec.words === undefined) return `"${arg}": the ${suite} suite takes no bare arguments (its options: ${known})`;
      continue;
    }
    const kind = spec.options[arg.slice(2)];
    if (kind === undefined) return `${arg}: not an option of the ${suite} suite (its options: ${known})`;
    const next = args[i + 1];
    if (kind === 'value') {
      if (next === undefined || next.startsWith('--')) return `${arg} needs a value`;
      i++;
    } else if (kind === 'optional' && next !== undefined && !next.startsWith('--')) {
      i++;
    }
  }
  return undefined;
}
