// The bench command's option check (bench/_args.ts): an option a suite does not read, a value
// option without its value, or a bare word where none is taken is refused with a message naming
// it; what the suites' documented commands pass is accepted.
import test from 'ava';
import { argumentProblem, OPTIONS } from '../../bench/_args.js';

test('bench options: documented commands pass', (t) => {
  for (const [suite, args] of [
    ['multicast', ['--mib', '3']], ['multicast', ['--mib', '--no-ceiling']], ['multicast', []],
    ['kv', ['--mode', 'ordered', '--quick']], ['raft', ['--storage', 'LogFileStorage', '--fsync', 'off', '--profile', '/tmp/p']],
    ['persistence', ['append', '--quick']], ['group', ['--durable', '--wal']], ['membership', ['--reps', '3', '--state-mb', '10']],
  ] as const) {
    t.is(argumentProblem(suite, args), undefined, `${suite} ${args.join(' ')}`);
  }
});

test('bench options: unknown options, missing values and stray words are refused by name', (t) => {
  t.regex(argumentProblem('multicast', ['--bogus']) ?? '', /--bogus: not an option of the multicast suite \(its options: --quick, --mib, --no-ceiling, --warmup\)/);
  t.is(argumentProblem('raft', ['--storage']), '--storage needs a value');
  t.is(argumentProblem('kv', ['--mode', '--quick']), '--mode needs a value');
  t.regex(argumentProblem('codec', ['fast']) ?? '', /"fast": the codec suite takes no bare arguments/);
  t.regex(argumentProblem('newsuite', []) ?? '', /lists no options for suite "newsuite"/);
});

test('bench options: a value a suite cannot use is refused by name, with what it takes', (t) => {
  t.is(argumentProblem('raft', ['--fsync', 'of']), '--fsync takes on, off, not "of"');
  t.is(argumentProblem('raft', ['--storage', 'lmdb']), '--storage takes LmdbStorage, LogFileStorage, MemoryStorage, not "lmdb"');
  t.regex(argumentProblem('raft', ['--pin', '0,1']) ?? '', /^--pin takes 3 CPU numbers/);
  t.regex(argumentProblem('raft', ['--pin', '0,x,1']) ?? '', /^--pin takes 3 CPU numbers/);
  t.is(argumentProblem('kv', ['--mode', 'smc']), '--mode takes raft, ordered, not "smc"');
  t.is(argumentProblem('kv', ['--storage', 'LmdbStorage']), '--storage takes file, lmdb, not "LmdbStorage"');
  t.is(argumentProblem('multicast', ['--mib', 'three']), '--mib takes a whole number of rounds (at least 1), not "three"');
  t.is(argumentProblem('multicast', ['--mib', '0']), '--mib takes a whole number of rounds (at least 1), not "0"');
  t.is(argumentProblem('multicast', ['--warmup', '-1']), '--warmup takes a whole number of messages per member (at least 0), not "-1"');
  t.is(argumentProblem('multicast', ['--warmup', '1.5']), '--warmup takes a whole number of messages per member (at least 0), not "1.5"');
  t.is(argumentProblem('membership', ['--state-mb', '0']), '--state-mb takes a number of MB above 0, not "0"');
  t.is(argumentProblem('membership', ['--reps', 'x']), '--reps takes a whole number of runs (at least 1), not "x"');
  for (const [suite, args] of [
    ['raft', ['--fsync', 'on', '--pin', '0,0,1', '--transport', 'memory']], ['multicast', ['--warmup', '0', '--mib']],
    ['membership', ['--state-mb', '2.5']], ['kv', ['--storage', 'lmdb']],
  ] as const) {
    t.is(argumentProblem(suite, args), undefined, `${suite} ${args.join(' ')}`);
  }
});

test('bench options: every suite file has an entry', async (t) => {
  const { readdirSync } = await import('node:fs');
  const { fileURLToPath } = await import('node:url');
  const dir = fileURLToPath(new URL('../../bench/', import.meta.url));
  const suites = readdirSync(dir).filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_')).map((f) => f.slice(0, -3));
  t.true(suites.length > 5);
  for (const suite of suites) t.truthy(OPTIONS[suite], suite);
});
