/** The options every bench suite reads, checked before a suite runs (bench/run.ts). */

/**
 * The options each suite reads: 'switch', 'value' (the next argument is its value), or
 * 'optional' (a value follows unless the next argument is another option); a value option may
 * name the values it takes (`Check`), checked here too. `words` says what bare arguments a suite
 * takes, if any. An option a suite does not read, or a value it cannot use, is refused here, not
 * ignored or read as something else (`--fsync of` used to measure fsync off).
 */
type Check = (value: string) => string | undefined;
type OptionKind = 'switch' | 'value' | 'optional' | { readonly kind: 'value' | 'optional'; readonly check: Check };

/** One of `values`, exactly. */
const oneOf = (...values: string[]): Check => (v) => (values.includes(v) ? undefined : `takes ${values.join(', ')}, not "${v}"`);
/** A whole number of at least `min`. */
const whole = (min: number, what: string): Check => (v) =>
  (/^\d+$/.test(v) && Number(v) >= min ? undefined : `takes a whole number of ${what} (at least ${min}), not "${v}"`);
/** A number above zero. */
const positive = (what: string): Check => (v) => (Number(v) > 0 && Number.isFinite(Number(v)) ? undefined : `takes a number of ${what} above 0, not "${v}"`);
/** Node numbers 1 to 3, comma-separated (the raft bench's nodes). */
const nodeList: Check = (v) => (/^[123](,[123])*$/.test(v) ? undefined : `takes node numbers 1 to 3, comma-separated, like 2,3 (got "${v}")`);
/** `count` CPU numbers, comma-separated. */
const cpus = (count: number): Check => (v) =>
  (v.split(',').length === count && v.split(',').every((c) => /^\d+$/.test(c)) ? undefined : `takes ${count} CPU numbers, comma-separated, like 0,0,1 (got "${v}")`);

export const OPTIONS: Record<string, { readonly options: Record<string, OptionKind>; readonly words?: string }> = {
  codec: { options: { quick: 'switch' } },
  group: { options: { quick: 'switch', durable: 'switch', wal: 'switch', plaintext: 'switch', raft: 'switch' } },
  kv: {
    options: {
      quick: 'switch', mode: { kind: 'value', check: oneOf('raft', 'ordered') }, storage: { kind: 'value', check: oneOf('file', 'lmdb') },
      durable: 'switch', wal: 'switch', plaintext: 'switch',
    },
  },
  membership: { options: { quick: 'switch', reps: { kind: 'value', check: whole(1, 'runs') }, 'state-mb': { kind: 'value', check: positive('MB') } } },
  multicast: {
    options: {
      quick: 'switch', mib: { kind: 'optional', check: whole(1, 'rounds') }, 'no-ceiling': 'switch',
      warmup: { kind: 'value', check: whole(0, 'messages per member') },
    },
  },
  persistence: { options: { quick: 'switch' }, words: 'a case name' },
  raft: {
    options: {
      quick: 'switch', transport: { kind: 'value', check: oneOf('native', 'memory') },
      storage: { kind: 'value', check: oneOf('LmdbStorage', 'LogFileStorage', 'MemoryStorage') },
      fsync: { kind: 'value', check: oneOf('on', 'off') }, profile: 'value',
      threads: 'switch', processes: 'switch', 'in-process': 'switch', pin: { kind: 'value', check: cpus(3) },
      'sched-batch': { kind: 'value', check: nodeList },
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
    const option = spec.options[arg.slice(2)];
    if (option === undefined) return `${arg}: not an option of the ${suite} suite (its options: ${known})`;
    const kind = typeof option === 'string' ? option : option.kind;
    const check = typeof option === 'string' ? undefined : option.check;
    const next = args[i + 1];
    const hasValue = next !== undefined && !next.startsWith('--');
    if (kind === 'value' && !hasValue) return `${arg} needs a value`;
    if ((kind === 'value' || kind === 'optional') && hasValue) {
      const problem = check?.(next);
      if (problem !== undefined) return `${arg} ${problem}`;
      i++;
    }
  }
  return undefined;
}
