// Proves a node's configuration is loaded from TOML, overridden by environment then arguments,
// and that every kind of bad input stops the start with a ConfigError naming each dotted key.
import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configKeys, loadConfig, parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/core/errors.js';
import { endpointOptionsFromConfig } from '../../src/transport/config-options.js';

const plain = '[transport]\nencryption = false\n';

function problemsOf(fn: () => unknown): Record<string, string> {
  const error = (() => {
    try {
      fn();
    } catch (e) {
      return e;
    }
    throw new Error('expected a ConfigError, nothing was thrown');
  })();
  if (!(error instanceof ConfigError)) throw error;
  const byKey: Record<string, string> = {};
  for (const p of error.problems) byKey[p.key] = byKey[p.key] ? `${byKey[p.key]} | ${p.message}` : p.message;
  return byKey;
}

test('an almost empty file gives every default', (t) => {
  const config = parseConfig(plain, 'node.toml');
  t.is(config.node.port, 7000);
  t.deepEqual(config.group.seeds, ['127.0.0.1:7000']);
  t.is(config.multicast.window_size, 1024);
  t.is(config.persistence.sync, 'durable');
  t.is(config.group.restart_grace_ms, 1000);
  t.deepEqual(config.subgroup, {});
});

test('file values, then environment, then arguments take effect in that order', (t) => {
  const text = `${plain}[node]\nid = 4\nport = 7100\nhost = "::1"\n[multicast]\nwindow_size = 64\n`;
  const config = parseConfig(text, 'node.toml', {
    env: { SQUALL_NODE_PORT: '7200', SQUALL_MULTICAST_WINDOW_SIZE: '32', PATH: '/bin' },
    args: ['--node.port=7300', '--group.seeds', '10.0.0.1:1,[::1]:2', '--persistence.reset=true'],
  });
  t.is(config.node.id, 4);
  t.is(config.node.host, '::1');
  t.is(config.node.port, 7300, 'the argument beats the environment');
  t.is(config.multicast.window_size, 32, 'the environment beats the file');
  t.deepEqual(config.group.seeds, ['10.0.0.1:1', '[::1]:2']);
  t.true(config.persistence.reset);
});

test('profiles are validated and inherit unset keys', (t) => {
  const config = parseConfig(`${plain}[subgroup.bulk]\nblock_size = 4096\nrdmc_send_algorithm = "chain"\n`, 'n', {
    args: ['--subgroup.bulk.window_size=8'],
  });
  t.is(config.subgroup.bulk!.block_size, 4096);
  t.is(config.subgroup.bulk!.window_size, 8);
  t.is(config.subgroup.bulk!.max_payload_size, undefined);
  const problems = problemsOf(() => parseConfig(`${plain}[subgroup.bulk]\nwindow_size = 0\nspeed = 1\n`, 'n'));
  t.regex(problems['subgroup.bulk.window_size']!, /must not be less than 1; got 0/);
  t.regex(problems['subgroup.bulk.speed']!, /not a configuration key/);
});

test('every problem is reported at once with its dotted key', (t) => {
  const text = '[node]\nid = -1\nport = "x"\nbogus = 1\n[mystery]\na = 1\n[multicast]\nrdmc_send_algorithm = "fast"\n[group]\nseeds = ["nohost"]\nrestart_grace_ms = -5\n';
  const problems = problemsOf(() =>
    parseConfig(text, 'node.toml', {
      env: { SQUALL_NODE_PORTT: '1', SQUALL_METRICS_PORT: 'abc' },
      args: ['--bad', '--node.nothing=1', '--timeouts.heartbeat_ms'],
    }),
  );
  t.regex(problems['node.id']!, /must not be less than 0; got -1/);
  t.regex(problems['node.port']!, /must be an integer number; got "x"/);
  t.regex(problems['node.bogus']!, /not a configuration key\. Fix:/);
  t.regex(problems['mystery']!, /not a configuration section\. Fix: use one of node, group/);
  t.regex(problems['multicast.rdmc_send_algorithm']!, /binomial, chain, sequential, tree/);
  t.regex(problems['group.seeds']!, /host:port/);
  t.regex(problems['group.restart_grace_ms']!, /must not be less than 0; got -5/);
  t.regex(problems['env.SQUALL_NODE_PORTT']!, /not a configuration variable/);
  t.regex(problems['env.SQUALL_METRICS_PORT']!, /expected a number, got "abc"/);
  t.regex(problems['--bad']!, /--<section>\.<key>=<value>/);
  t.regex(problems['--node.nothing']!, /not a configuration key\. Fix: use one of node\.id, node\.host, node\.port/);
  t.regex(problems['--timeouts.heartbeat_ms']!, /has no value/);
});

test('impossible combinations are refused with the key to change', (t) => {
  t.regex(problemsOf(() => parseConfig('', 'n'))['transport.key_file']!, /required while transport\.encryption is true/);
  const smc = problemsOf(() => parseConfig(`${plain}[multicast]\nmax_payload_size = 1000\nmax_smc_payload_size = 2000\n`, 'n'));
  t.regex(smc['multicast.max_smc_payload_size']!, /above max_payload_size/);
  const block = problemsOf(() => parseConfig(`[transport]\nencryption = false\nmax_message_size = 65536\n[multicast]\nmax_smc_payload_size = 1000\n[p2p]\nmax_p2p_request_payload_size = 65536\nmax_p2p_reply_payload_size = 65536\n`, 'n'));
  t.regex(block['multicast.block_size']!, /above transport\.max_message_size/);
  const p2p = problemsOf(() => parseConfig(`${plain}[p2p]\nmax_p2p_reply_payload_size = 99999999\n`, 'n'));
  t.regex(p2p['p2p.max_p2p_reply_payload_size']!, /above transport\.max_message_size/);
  const timing = problemsOf(() => parseConfig(`${plain}[timeouts]\nheartbeat_ms = 100\nfailure_timeout_ms = 150\n`, 'n'));
  t.regex(timing['timeouts.failure_timeout_ms']!, /at least twice timeouts\.heartbeat_ms/);
  const wal = problemsOf(() => parseConfig(`${plain}[persistence]\nsync = "nosync"\nwrite_ahead_log = true\n`, 'n'));
  t.regex(wal['persistence.write_ahead_log']!, /while persistence\.sync is "nosync".*Fix: set sync = "durable"/);
  t.notThrows(() => parseConfig(`${plain}[persistence]\nwrite_ahead_log = true\n`, 'n'));
  const profile = problemsOf(() => parseConfig(`${plain}[subgroup.x]\nmax_smc_payload_size = 99999999\n`, 'n'));
  t.regex(profile['subgroup.x.max_smc_payload_size']!, /above max_payload_size/);
});

test('a TOML syntax error names the file', (t) => {
  const problems = problemsOf(() => parseConfig('[node\nid = 1', 'conf/node0.toml'));
  t.regex(problems['conf/node0.toml']!, /not valid TOML/);
});

test('loadConfig resolves relative paths against the file and names a missing file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'squall-config-'));
  const file = join(dir, 'node1.toml');
  writeFileSync(file, '[transport]\nkey_file = "keys/group.key"\n[persistence]\ndata_dir = "data/n1"\n');
  const config = loadConfig(file);
  t.is(config.transport.key_file, join(dir, 'keys/group.key'));
  t.is(config.persistence.data_dir, join(dir, 'data/n1'));
  const missing = problemsOf(() => loadConfig(join(dir, 'nope.toml')));
  t.regex(Object.values(missing)[0]!, /cannot be read \(ENOENT\)\. Fix: check the --config path/);
});

test('docs/configuration.md documents every key with its default', (t) => {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
  const docs = readFileSync(join(root, 'docs/configuration.md'), 'utf8');
  const keys = configKeys();
  t.true(keys.length >= 30);
  for (const { key, defaultValue } of keys) {
    const row = docs.split('\n').find((line) => line.startsWith(`| \`${key}\` |`));
    t.truthy(row, `docs/configuration.md has no row for ${key}`);
    if (row && defaultValue !== undefined) {
      t.true(row.includes(`\`${JSON.stringify(defaultValue)}\``), `${key}: docs do not show default ${JSON.stringify(defaultValue)}`);
    }
  }
});

test('transport.port_unreachable_reports reaches the endpoint options (0 counts reports only)', (t) => {
  const config = parseConfig(`${plain}port_unreachable_reports = 0\n`, 'node.toml');
  t.is(endpointOptionsFromConfig(config.transport, { host: '127.0.0.1', port: 0 }).portUnreachableReports, 0);
  t.is(endpointOptionsFromConfig(parseConfig(plain, 'node.toml').transport, { host: '127.0.0.1', port: 0 }).portUnreachableReports, 2);
});
