/**
 * Loads a node's configuration: the TOML file, then environment variables, then command-line
 * overrides, then validation. Every problem is collected and reported at once in one ConfigError,
 * each with its dotted key (`transport.key_file`, `subgroup.big.window_size`,
 * `env.SQUALL_NODE_PORT`, `--node.port`), so a user fixes them all in one pass.
 *
 * Overrides:
 *   environment  SQUALL_<SECTION>_<KEY>=value     e.g. SQUALL_NODE_PORT=7001
 *   arguments    --<section>.<key>=value  or  --<section>.<key> value
 *                (profiles: --subgroup.<profile>.<key>=value)
 * Values are parsed by the key's type: integers, true/false, comma-separated lists.
 */
import 'reflect-metadata';
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { plainToInstance } from 'class-transformer';
import { getMetadataStorage, validateSync, type ValidationError } from 'class-validator';
import { ConfigError } from '../core/errors.js';
import { multicastLimitsForProfile } from '../multicast/config.js';
import { ProfileSection, SECTIONS, SquallConfig, type SectionName } from './schema.js';

export interface ConfigProblem {
  key: string;
  message: string;
}

export interface LoadOptions {
  /** Environment to read SQUALL_* overrides from (default: none; pass process.env to use it). */
  env?: Record<string, string | undefined>;
  /** Command-line overrides, e.g. ['--node.port=7001']. Other arguments are not allowed here. */
  args?: readonly string[];
  /** Directory that relative paths (key_file, data_dir) are resolved against. */
  baseDir?: string;
}

type Plain = Record<string, unknown>;
type Kind = 'number' | 'boolean' | 'string' | 'list';

const SECTION_NAMES = Object.keys(SECTIONS) as SectionName[];

/** The keys of a section class and the kind of value each takes, from its defaults. */
function keysOf(section: SectionName | 'profile'): Map<string, Kind> {
  const instance: Plain =
    section === 'profile' ? (new ProfileSection() as unknown as Plain) : (new SECTIONS[section]() as unknown as Plain);
  const kinds = new Map<string, Kind>();
  const proto = Object.getPrototypeOf(instance) as object;
  const names = new Set([...Object.keys(instance), ...declaredKeys(proto.constructor)]);
  for (const key of names) {
    const value = instance[key];
    const designType = Reflect.getMetadata('design:type', proto, key) as unknown;
    if (Array.isArray(value) || designType === Array) kinds.set(key, 'list');
    else if (typeof value === 'number' || designType === Number) kinds.set(key, 'number');
    else if (typeof value === 'boolean' || designType === Boolean) kinds.set(key, 'boolean');
    else kinds.set(key, 'string');
  }
  return kinds;
}

/**
 * Every decorated property of a section class. Optional keys have no default value, so they are
 * not own properties of a fresh instance; class-validator's metadata lists them all.
 */
function declaredKeys(target: Function): string[] {
  const metas = getMetadataStorage().getTargetValidationMetadatas(target, '', true, false);
  return [...new Set(metas.map((m) => m.propertyName))];
}

function parseValue(raw: string, kind: Kind): { ok: true; value: unknown } | { ok: false; message: string } {
  switch (kind) {
    case 'number':
      if (!/^-?\d+(\.\d+)?$/.test(raw.trim())) return { ok: false, message: `expected a number, got "${raw}"` };
      return { ok: true, value: Number(raw) };
    case 'boolean':
      if (/^(true|1|yes|on)$/i.test(raw.trim())) return { ok: true, value: true };
      if (/^(false|0|no|off)$/i.test(raw.trim())) return { ok: true, value: false };
      return { ok: false, message: `expected true or false, got "${raw}"` };
    case 'list':
      return { ok: true, value: raw.split(',').map((s) => s.trim()).filter((s) => s.length > 0) };
    case 'string':
      return { ok: true, value: raw };
  }
}

function tableAt(root: Plain, path: string[]): Plain {
  let table = root;
  for (const part of path) {
    const next = table[part];
    if (next === undefined) table[part] = {};
    else if (typeof next !== 'object' || next === null || Array.isArray(next)) table[part] = {};
    table = table[part] as Plain;
  }
  return table;
}

/** Applies one override `section.key` (or `subgroup.profile.key`) = raw text. */
function applyOverride(root: Plain, dotted: string, raw: string, origin: string, problems: ConfigProblem[]): void {
  const parts = dotted.split('.');
  let kinds: Map<string, Kind> | undefined;
  let tablePath: string[];
  if (parts.length === 3 && parts[0] === 'subgroup') {
    kinds = keysOf('profile');
    tablePath = parts.slice(0, 2);
  } else if (parts.length === 2 && (SECTION_NAMES as string[]).includes(parts[0]!)) {
    kinds = keysOf(parts[0] as SectionName);
    tablePath = parts.slice(0, 1);
  } else {
    problems.push({ key: origin, message: `"${dotted}" is not a configuration key. Fix: use <section>.<key>, one of ${SECTION_NAMES.join(', ')}, or subgroup.<profile>.<key>` });
    return;
  }
  const key = parts[parts.length - 1]!;
  const kind = kinds.get(key);
  if (!kind) {
    problems.push({ key: origin, message: `"${dotted}" is not a configuration key. Fix: use one of ${[...kinds.keys()].map((k) => `${tablePath.join('.')}.${k}`).join(', ')}` });
    return;
  }
  const parsed = parseValue(raw, kind);
  if (!parsed.ok) problems.push({ key: origin, message: parsed.message });
  else tableAt(root, tablePath)[key] = parsed.value;
}

function applyEnv(root: Plain, env: Record<string, string | undefined>, problems: ConfigProblem[]): void {
  const known = new Map<string, string>();
  for (const section of SECTION_NAMES) {
    for (const key of keysOf(section).keys()) known.set(`SQUALL_${section}_${key}`.toUpperCase(), `${section}.${key}`);
  }
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('SQUALL_')) continue;
    const dotted = known.get(name);
    if (!dotted) {
      problems.push({ key: `env.${name}`, message: 'is not a configuration variable. Fix: unset it, or use SQUALL_<SECTION>_<KEY> such as SQUALL_NODE_PORT' });
      continue;
    }
    applyOverride(root, dotted, env[name] ?? '', `env.${name}`, problems);
  }
}

function applyArgs(root: Plain, args: readonly string[], problems: ConfigProblem[]): void {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const match = /^--([a-z0-9_.-]+)(?:=(.*))?$/s.exec(arg);
    if (!match || !match[1]!.includes('.')) {
      problems.push({ key: arg, message: 'is not a configuration override. Fix: write --<section>.<key>=<value>, e.g. --node.port=7001' });
      continue;
    }
    let value = match[2];
    if (value === undefined) {
      value = args[i + 1];
      if (value === undefined) {
        problems.push({ key: `--${match[1]}`, message: 'has no value. Fix: write --<section>.<key>=<value>' });
        continue;
      }
      i++;
    }
    applyOverride(root, match[1]!, value, `--${match[1]}`, problems);
  }
}

function flattenValidation(errors: ValidationError[], prefix: string, problems: ConfigProblem[]): void {
  for (const error of errors) {
    const key = prefix ? `${prefix}.${error.property}` : error.property;
    if (error.constraints) {
      // A value of the wrong type fails its range checks too; report only the type then.
      const typeRules = ['isInt', 'isBoolean', 'isString', 'isIn', 'isArray', 'matches'];
      const failed = Object.entries(error.constraints);
      const typeFailures = failed.filter(([rule]) => typeRules.includes(rule));
      const messages = (typeFailures.length > 0 ? typeFailures : failed).map(([rule, text]) =>
        rule === 'whitelistValidation' ? 'is not a configuration key. Fix: remove it or check its spelling (see docs/configuration.md)' : text.replace(/^\S+ /, ''),
      );
      const got = error.constraints.whitelistValidation ? '' : `; got ${JSON.stringify(error.value)}`;
      problems.push({ key, message: messages.join('; ') + got });
    }
    if (error.children?.length) flattenValidation(error.children, key, problems);
  }
}

/** Checks that need several keys at once. */
function crossChecks(config: SquallConfig, problems: ConfigProblem[]): void {
  const t = config.transport;
  if (t.encryption && !t.key_file) {
    problems.push({ key: 'transport.key_file', message: 'is required while transport.encryption is true. Fix: name the group key file (squall keygen writes one), or set transport.encryption = false on trusted networks' });
  }
  const checkMulticast = (where: string, m: { max_payload_size?: number | undefined; max_smc_payload_size?: number | undefined; block_size?: number | undefined }): void => {
    const payload = m.max_payload_size ?? config.multicast.max_payload_size;
    const smc = m.max_smc_payload_size ?? config.multicast.max_smc_payload_size;
    const block = m.block_size ?? config.multicast.block_size;
    if (smc > payload) problems.push({ key: `${where}.max_smc_payload_size`, message: `(${smc}) is above max_payload_size (${payload}). Fix: lower it or raise max_payload_size` });
    if (block > t.max_message_size) problems.push({ key: `${where}.block_size`, message: `(${block}) is above transport.max_message_size (${t.max_message_size}); a block travels as one message. Fix: lower block_size` });
    if (smc > t.max_message_size) problems.push({ key: `${where}.max_smc_payload_size`, message: `(${smc}) is above transport.max_message_size (${t.max_message_size}). Fix: lower it` });
  };
  checkMulticast('multicast', config.multicast);
  for (const [name, profile] of Object.entries(config.subgroup)) checkMulticast(`subgroup.${name}`, profile);
  // What the multicast core itself checks (one SMC message must fit an SMC packet), at start
  // rather than when a shard of that profile is first created; only for sections whose keys
  // passed the checks above, so one mistake is reported once.
  const reported = new Set(problems.map((p) => p.key.split('.').slice(0, p.key.startsWith('subgroup.') ? 2 : 1).join('.')));
  for (const profile of [undefined, ...Object.keys(config.subgroup)]) {
    if (reported.has(profile === undefined ? 'multicast' : `subgroup.${profile}`)) continue;
    try {
      multicastLimitsForProfile(config, profile);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      for (const p of error.problems) if (!problems.some((q) => q.key === p.key)) problems.push(p);
    }
  }
  for (const key of ['max_p2p_request_payload_size', 'max_p2p_reply_payload_size'] as const) {
    if (config.p2p[key] > t.max_message_size) problems.push({ key: `p2p.${key}`, message: `(${config.p2p[key]}) is above transport.max_message_size (${t.max_message_size}). Fix: lower it or raise transport.max_message_size` });
  }
  if (t.retransmit_timeout_min_ms > t.retransmit_timeout_ms) {
    problems.push({ key: 'transport.retransmit_timeout_min_ms', message: `(${t.retransmit_timeout_min_ms}) is above transport.retransmit_timeout_ms (${t.retransmit_timeout_ms}). Fix: lower it or raise retransmit_timeout_ms` });
  }
  if (t.peer_failure_timeout_ms < 4 * t.retransmit_timeout_ms) {
    problems.push({ key: 'transport.peer_failure_timeout_ms', message: `(${t.peer_failure_timeout_ms}) must be at least 4 x transport.retransmit_timeout_ms (${t.retransmit_timeout_ms}), or one slow round trip fails a peer. Fix: raise it or lower retransmit_timeout_ms` });
  }
  if ((t.cc_t_low_us === 0) !== (t.cc_t_high_us === 0) || (t.cc_t_low_us > 0 && t.cc_t_high_us <= t.cc_t_low_us)) {
    problems.push({ key: 'transport.cc_t_high_us', message: `(${t.cc_t_high_us}) with cc_t_low_us = ${t.cc_t_low_us}: set both thresholds (t_high above t_low) or leave both 0 to derive them from the measured RTT` });
  }
  if (config.persistence.write_ahead_log && config.persistence.sync !== 'durable') {
    problems.push({ key: 'persistence.write_ahead_log', message: `is true while persistence.sync is "${config.persistence.sync}": the log only changes how durable writes are acknowledged. Fix: set sync = "durable" or write_ahead_log = false` });
  }
  if (config.timeouts.failure_timeout_ms < 2 * config.timeouts.heartbeat_ms) {
    problems.push({ key: 'timeouts.failure_timeout_ms', message: `(${config.timeouts.failure_timeout_ms}) must be at least twice timeouts.heartbeat_ms (${config.timeouts.heartbeat_ms}), or one late heartbeat removes a healthy node. Fix: raise it or lower heartbeat_ms` });
  }
}

/**
 * Builds a validated configuration from TOML text plus overrides. Throws ConfigError listing every
 * problem. `source` names the file in messages.
 */
export function parseConfig(text: string, source: string, options: LoadOptions = {}): SquallConfig {
  const problems: ConfigProblem[] = [];
  let root: Plain;
  try {
    root = parseToml(text) as Plain;
  } catch (error) {
    throw new ConfigError([{ key: source, message: `is not valid TOML: ${(error as Error).message.split('\n')[0]}. Fix: correct the syntax at that line` }]);
  }
  for (const [name, value] of Object.entries(root)) {
    const isTable = typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
    if (name !== 'subgroup' && !(SECTION_NAMES as string[]).includes(name)) {
      problems.push({ key: name, message: `is not a configuration section. Fix: use one of ${SECTION_NAMES.join(', ')}, subgroup` });
      delete root[name];
    } else if (!isTable) {
      problems.push({ key: name, message: `must be a table ([${name}]), got ${JSON.stringify(value)}` });
      delete root[name];
    }
  }
  applyEnv(root, options.env ?? {}, problems);
  applyArgs(root, options.args ?? [], problems);

  const profiles = (root.subgroup ?? {}) as Plain;
  delete root.subgroup;
  const config = plainToInstance(SquallConfig, root);
  const validation = { whitelist: true, forbidNonWhitelisted: true, forbidUnknownValues: true };
  flattenValidation(validateSync(config, validation), '', problems);
  for (const [name, raw] of Object.entries(profiles).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      problems.push({ key: `subgroup.${name}`, message: `must be a table ([subgroup.${name}])` });
      continue;
    }
    const profile = plainToInstance(ProfileSection, raw);
    flattenValidation(validateSync(profile, validation), `subgroup.${name}`, problems);
    config.subgroup[name] = profile;
  }
  if (problems.length === 0) crossChecks(config, problems);
  if (problems.length > 0) throw new ConfigError(problems);

  if (options.baseDir) {
    const base = options.baseDir;
    const absolute = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
    config.persistence.data_dir = absolute(config.persistence.data_dir);
    if (config.transport.key_file) config.transport.key_file = absolute(config.transport.key_file);
  }
  return config;
}

/** Reads and validates a node's config file; relative paths resolve against its directory. */
export function loadConfig(path: string, options: Omit<LoadOptions, 'baseDir'> = {}): SquallConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError([{ key: path, message: `cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}). Fix: check the --config path` }]);
  }
  return parseConfig(text, path, { ...options, baseDir: dirname(resolve(path)) });
}

/** Every key of every section, dotted, with its default (for docs and `squall config --defaults`). */
export function configKeys(): { key: string; kind: Kind; defaultValue: unknown }[] {
  const out: { key: string; kind: Kind; defaultValue: unknown }[] = [];
  for (const section of SECTION_NAMES) {
    const instance = new SECTIONS[section]() as unknown as Plain;
    for (const [key, kind] of keysOf(section)) out.push({ key: `${section}.${key}`, kind, defaultValue: instance[key] });
  }
  for (const [key, kind] of keysOf('profile')) out.push({ key: `subgroup.<profile>.${key}`, kind, defaultValue: undefined });
  return out;
}
