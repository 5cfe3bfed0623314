// Proves the multicast limits come from the real configuration: the core's defaults are those of
// src/config's [multicast] section (so a core built without a config behaves like one built from
// the default file), a [subgroup.<profile>] inherits every key it leaves unset from [multicast],
// an unknown profile and a value the core cannot use are ConfigErrors naming the dotted key.
import test from 'ava';
import { parseConfig } from '../../src/config/load.js';
import { MulticastSection } from '../../src/config/schema.js';
import {
  DEFAULT_MULTICAST_LIMITS,
  multicastLimitsForProfile,
  multicastLimitsFromConfig,
} from '../../src/multicast/config.js';
import { ConfigError } from '../../src/core/errors.js';

const MIB = 1024 * 1024;
/** The smallest valid file: encryption needs a key file, which these tests do not care about. */
const BASE = '[transport]\nencryption = false\n';

test('the core defaults equal src/config defaults, key by key', (t) => {
  const section = new MulticastSection();
  t.is(DEFAULT_MULTICAST_LIMITS.payloadBytesMax, section.max_payload_size);
  t.is(DEFAULT_MULTICAST_LIMITS.smcPayloadBytesMax, section.max_smc_payload_size);
  t.is(DEFAULT_MULTICAST_LIMITS.blockBytes, section.block_size);
  t.is(DEFAULT_MULTICAST_LIMITS.windowSize, section.window_size);
  t.is(DEFAULT_MULTICAST_LIMITS.rdmcAlgorithm as string, section.rdmc_send_algorithm);
  t.deepEqual(multicastLimitsForProfile(parseConfig(BASE, 'empty.toml')), DEFAULT_MULTICAST_LIMITS);
});

test('a profile inherits unset keys from [multicast]; [multicast] alone maps as itself', (t) => {
  const config = parseConfig(
    BASE + [
      '[multicast]', 'window_size = 64', 'block_size = 65536', 'rdmc_send_algorithm = "chain"',
      '[subgroup.big]', 'max_payload_size = 33554432', 'block_size = 262144',
      '[subgroup.small]', 'window_size = 8',
    ].join('\n'),
    'profiles.toml',
  );
  t.deepEqual(multicastLimitsForProfile(config), {
    ...DEFAULT_MULTICAST_LIMITS, windowSize: 64, blockBytes: 65536, rdmcAlgorithm: 'chain',
  });
  t.deepEqual(multicastLimitsForProfile(config, 'big'), {
    ...DEFAULT_MULTICAST_LIMITS,
    windowSize: 64, rdmcAlgorithm: 'chain', payloadBytesMax: 32 * MIB, blockBytes: 256 * 1024,
  });
  t.is(multicastLimitsForProfile(config, 'small').windowSize, 8);
  t.is(multicastLimitsForProfile(config, 'small').blockBytes, 65536);
});

test('an unknown profile, and values the core cannot use, name their keys', (t) => {
  const config = parseConfig(
    BASE + ['[subgroup.big]', 'max_smc_payload_size = 8192', 'smc_packet_size = 9000'].join('\n'),
    'profiles.toml',
  );
  const unknown = t.throws(() => multicastLimitsForProfile(config, 'huge'), { instanceOf: ConfigError });
  t.deepEqual((unknown as ConfigError).problems.map((p) => p.key), ['subgroup.huge']);
  t.regex(unknown!.message, /Fix: add a \[subgroup.huge\] table or use one of big/);
  t.is(multicastLimitsForProfile(config, 'big').packetBytesMax, 9000);
  // Below max_payload_size, so the per-key checks pass, but one SMC message must fit an SMC
  // packet: the loader runs the core's own check at start and names the key to change.
  const tooBig = t.throws(
    () => parseConfig(BASE + ['[subgroup.big]', 'max_smc_payload_size = 1048576'].join('\n'), 'bad.toml'),
    { instanceOf: ConfigError },
  );
  t.deepEqual((tooBig as ConfigError).problems.map((p) => p.key), ['subgroup.big.smc_packet_size']);
  const packet = t.throws(
    () => parseConfig(BASE + ['[multicast]', 'smc_packet_size = 4096', 'max_smc_payload_size = 8192'].join('\n'), 'bad.toml'),
    { instanceOf: ConfigError },
  );
  t.deepEqual((packet as ConfigError).problems.map((p) => p.key), ['multicast.smc_packet_size']);
  t.regex(packet!.message, /raise it to at least \d+ or lower max_smc_payload_size/);
  const fromFile = parseConfig(BASE + ['[multicast]', 'send_queue_size = 7', 'rdmc_repair_ms = 40'].join('\n'), 'ok.toml');
  t.like(multicastLimitsForProfile(fromFile), { sendQueueCountMax: 7, rdmcRepairMicros: 40_000 });
  const repair = t.throws(() => multicastLimitsFromConfig({ rdmc_repair_ms: 0.5 }), { instanceOf: ConfigError });
  t.deepEqual((repair as ConfigError).problems.map((p) => p.key), ['multicast.rdmc_repair_ms']);
  t.is(multicastLimitsFromConfig({ rdmc_repair_ms: 40 }).rdmcRepairMicros, 40_000);
});
