// Proves the squall command prints help, refuses bad usage with exit 2 and the usage text, and
// that `config check` reports a valid config (exit 0) or every problem with its key (exit 1).
import test from 'ava';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../../src/cli/main.js';
import { integerFlag } from '../../src/cli/args.js';
import { Endpoint } from '../../src/transport/native-transport.js';

function run(argv: string[], env: Record<string, string> = {}): { code: number; out: string; err: string } {
  const out: string[] = [];
  const err: string[] = [];
  const code = main(argv, { out: (l) => out.push(l), err: (l) => err.push(l), env }) as number;
  return { code, out: out.join('\n'), err: err.join('\n') };
}

const dir = mkdtempSync(join(tmpdir(), 'squall-cli-'));
const good = join(dir, 'node0.toml');
writeFileSync(good, '[node]\nid = 2\n[transport]\nencryption = false\n');

test('help lists the commands; no command is a usage error', (t) => {
  t.regex(run(['--help']).out, /squall config check/);
  t.is(run(['--help']).code, 0);
  t.is(run([]).code, 2);
  const unknown = run(['frobnicate']);
  t.is(unknown.code, 2);
  t.regex(unknown.err, /unknown command "frobnicate"/);
});

test('config check prints the resolved config with overrides applied', (t) => {
  const result = run(['config', 'check', '--config', good, '--node.port=7123'], { SQUALL_LOGGING_LEVEL: 'debug' });
  t.is(result.code, 0);
  t.regex(result.out, /valid/);
  t.regex(result.out, /node\.id = 2/);
  t.regex(result.out, /node\.port = 7123/);
  t.regex(result.out, /logging\.level = "debug"/);
  const json = run(['config', 'check', `--config=${good}`, '--json']);
  t.is(JSON.parse(json.out).node.id, 2);
});

test('config check lists every problem and exits 1; missing --config exits 2', (t) => {
  const bad = join(dir, 'bad.toml');
  writeFileSync(bad, '[node]\nport = 99999\nnope = 1\n');
  const result = run(['config', 'check', '--config', bad]);
  t.is(result.code, 1);
  t.regex(result.err, /node\.port: must not be greater than 65535/);
  t.regex(result.err, /node\.nope: is not a configuration key/);
  const usage = run(['config', 'check']);
  t.is(usage.code, 2);
  t.regex(usage.err, /--config <file> is required/);
  t.regex(run(['config', 'check', '--help']).out, /usage: squall config check/);
});

test('keygen writes a group key the loader and the transport accept, and will not overwrite it', async (t) => {
  const keyFile = join(dir, 'group.key');
  const made = run(['keygen', '--out', keyFile, '--key-id', '7']);
  t.is(made.code, 0, made.err);
  const text = readFileSync(keyFile, 'utf8');
  t.regex(text, /^squall-key v1 7 [0-9a-f]{64}\n$/);
  t.is(statSync(keyFile).mode & 0o777, 0o600);
  t.is(run(['keygen', '--out', keyFile]).code, 2, 'an existing key is not overwritten');
  t.is(run(['keygen', '--out', keyFile, '--force']).code, 0);
  t.is(run(['keygen', '--out', keyFile, '--key-id', '0', '--force']).code, 2);
  t.is(run(['keygen']).code, 2);
  // Two endpoints holding that file talk, sealed.
  const server = await Endpoint.create({ keyFile });
  const client = await Endpoint.create({ keyFile });
  try {
    server.handle(1, (b) => b);
    const session = await client.connect(server.address);
    t.deepEqual(Buffer.from(await session.call(1, Buffer.from('hi'))).toString(), 'hi');
    t.true(server.encrypted && client.encrypted);
  } finally {
    await client.close();
    await server.close();
  }
});

test('integerFlag: a whole number (negative allowed unless min says), the fallback when absent, else a UsageError naming the flag', (t) => {
  const flags = new Map([['n', '-1'], ['ms', '250'], ['bad', 'soon'], ['half', '1.5'], ['zero', '0']]);
  t.is(integerFlag(flags, 'n', 'items'), -1);
  t.is(integerFlag(flags, 'ms', 'milliseconds', { min: 1 }), 250);
  t.is(integerFlag(flags, 'absent', 'milliseconds', { min: 1, fallback: 2000 }), 2000);
  t.throws(() => integerFlag(flags, 'bad', 'items'), { code: 'USAGE', message: '--bad takes a whole number of items, not "soon"' });
  t.throws(() => integerFlag(flags, 'half', 'items'), { code: 'USAGE', message: '--half takes a whole number of items, not "1.5"' });
  t.throws(() => integerFlag(flags, 'zero', 'milliseconds', { min: 1 }), { code: 'USAGE', message: '--zero takes a whole number of milliseconds (at least 1), not "0"' });
  t.throws(() => integerFlag(flags, 'absent', 'items'), { code: 'USAGE', message: '--absent takes a whole number of items, not ""' });
});
