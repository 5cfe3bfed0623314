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

test('bench options: every suite file has an entry', async (t) => {
  const { readdirSync } = await import('node:fs');
  const { fileURLToPath } = await import('node:url');
  const dir = fileURLToPath(new URL('../../bench/', import.meta.url));
  const suites = readdirSync(dir).filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_')).map((f) => f.slice(0, -3));
  t.true(suites.length > 5);
  for (const suite of suites) t.truthy(OPTIONS[suite], suite);
});
