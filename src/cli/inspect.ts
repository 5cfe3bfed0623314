/**
 * `squall inspect --data <dir> --app <module.js>`: reads a node's LMDB store and prints every
 * replicated object's persistent fields with their version ranges and times; with --object,
 * --field and one of --version/--index/--time, the field's value at that point. The app module
 * supplies the classes, so each field is decoded with its own codec (delta-mode fields such as
 * PersistentMap need theirs).
 *
 * It reads a copy, never the node's files in place, so the node may be running: opening the
 * store there would write to it (and with a write-ahead log, persistence.write_ahead_log, fold
 * the log into LMDB and delete it under the node). The copy takes the log's files first, if
 * any, then LMDB's snapshot (lmdb-js backup, consistent under a writer): the node hands LMDB the
 * log's frames in order and deletes a file only once LMDB holds it durably, so the snapshot holds
 * a prefix of the log's frames and every frame of a file that went before it was copied;
 * replaying the copied frames over it (idempotent: store.ts replayLog) gives the state after the
 * later of the two.
 */
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { open } from 'lmdb';
import { replicatedClassInfo } from '../../decorators/metadata.js';
import { PersistenceStore, STORE_FILE } from '../../persistence/store.js';
import { walFileNames } from '../../persistence/wal.js';
import type { Persistent } from '../../persistence/persistent.js';
import { HLC_MAX, hlcAtOrBefore, type Hlc } from '../core/hlc.js';
import { UsageError, type CliIo, type Command } from './command.js';
import { integerFlag, parseArgs } from './args.js';
import { loadApp } from './node.js';

const formatVersion = (v: bigint): string => (v < 0n ? 'none' : `${v >> 32n}:${v & 0xffff_ffffn} (${v})`);
const formatTime = (t: Hlc | undefined): string =>
  t === undefined ? '-' : `${new Date(Math.floor(t.micros / 1000)).toISOString()} (${t.micros}.${t.logical})`;

/** "view:position" or a plain integer. */
function parseVersion(text: string): bigint {
  const match = /^(\d+):(\d+)$/.exec(text);
  if (match !== null) return (BigInt(match[1]!) << 32n) | BigInt(match[2]!);
  if (/^\d+$/.test(text)) return BigInt(text);
  throw new UsageError(`--version ${text} is not "view:position" or an integer`);
}

/** An ISO date, or epoch microseconds. */
function parseTime(text: string): Hlc {
  if (/^\d+$/.test(text)) return hlcAtOrBefore(Number(text));
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new UsageError(`--time ${text} is not an ISO date or epoch microseconds`);
  return hlcAtOrBefore(ms * 1000);
}

/** The registries ("Type/subgroup/shard") and fields in the store, from its database names. */
function storedFields(dataDir: string): Map<string, string[]> {
  const root = open({ path: join(dataDir, STORE_FILE), readOnly: true });
  const out = new Map<string, string[]>();
  try {
    for (const key of root.getKeys()) {
      if (typeof key !== 'string' || !key.startsWith('[')) continue;
      const [registry, field] = JSON.parse(key) as [string, string];
      out.set(registry, [...(out.get(registry) ?? []), field].sort());
    }
  } finally {
    void root.close();
  }
  return out;
}

async function runInspect(args: string[], io: CliIo): Promise<number> {
  const { flags, overrides } = parseArgs(args, ['data', 'app', 'object', 'field', 'version', 'index', 'time']);
  if (overrides.length > 0) throw new UsageError(`unknown argument ${overrides[0]}`);
  const dataDir = flags.get('data');
  const appPath = flags.get('app');
  if (!dataDir) throw new UsageError('--data <dir> is required');
  if (!appPath) throw new UsageError('--app <module.js> is required (it supplies the classes and their codecs)');
  if (!existsSync(join(dataDir, STORE_FILE))) throw new UsageError(`${dataDir} holds no ${STORE_FILE}`);
  const app = await loadApp(appPath);
  const classes = new Map(app.types.map((t) => [replicatedClassInfo(t).name, replicatedClassInfo(t)]));
  const copy = await snapshot(dataDir);
  let store: PersistenceStore | undefined;
  try {
    // Durable: the copy's store replays the copied log (a replay is a synced commit).
    store = PersistenceStore.open({ dataDir: copy.dir, syncMode: 'durable' });
    const fields = storedFields(copy.dir);
    if (copy.logs.length > 0) {
      io.out(`${dataDir} holds a write-ahead log (${copy.logs.join(', ')}): its ${store.walStats.replayedFrames} frame(s) replayed over the snapshot`);
    }
    io.out(`${join(dataDir, STORE_FILE)}: ${fields.size} object(s)`);
    for (const [registryName, names] of fields) {
      const info = classes.get(registryName.split('/')[0]!);
      if (info === undefined) {
        io.out(`${registryName}: class not in the app module; fields ${names.join(', ')}`);
        continue;
      }
      const object = info.create(undefined) as Record<string, unknown>;
      const registry = store.registry(registryName);
      const attached = new Map<string, Persistent<unknown>>();
      for (const f of info.persistentFields) {
        if (!names.includes(f.name)) continue;
        attached.set(f.name, registry.attach(f.name, object[f.fieldName] as Persistent<unknown>));
      }
      registry.setStabilityFrontier(HLC_MAX); // offline: what is on disk is all there is
      if (flags.has('object') && flags.get('object') !== registryName) continue;
      io.out(`${registryName} (class ${info.name} v${info.version})`);
      for (const [name, field] of attached) {
        io.out(`  ${name}: ${field.count()} version(s), ${formatVersion(field.earliestVersion())} … ${formatVersion(field.latestVersion())}, times ${formatTime(field.earliestTime())} … ${formatTime(field.latestTime())}`);
      }
      const fieldName = flags.get('field');
      if (fieldName === undefined) continue;
      const field = attached.get(fieldName);
      if (field === undefined) throw new UsageError(`${registryName} has no persistent field "${fieldName}" (it has ${[...attached.keys()].join(', ')})`);
      let value: unknown;
      let where: string;
      if (flags.has('version')) {
        const v = parseVersion(flags.get('version')!);
        value = field.get(v);
        where = `version ${formatVersion(field.versionAt(v))}`;
      } else if (flags.has('index')) {
        const i = integerFlag(flags, 'index', 'versions from the first (-1 is the latest)');
        value = field.getByIndex(i);
        where = `index ${i}, version ${formatVersion(field.versionOfIndex(i))}`;
      } else if (flags.has('time')) {
        const t = parseTime(flags.get('time')!);
        value = field.getByTime(t);
        where = `time ${formatTime(t)}, version ${formatVersion(field.versionAtTime(t))}`;
      } else {
        value = field.getByIndex(-1);
        where = `latest, version ${formatVersion(field.latestVersion())}`;
      }
      const shown = value instanceof Map || (value !== null && typeof value === 'object' && Symbol.iterator in value && typeof (value as { size?: unknown }).size === 'number')
        ? new Map([...(value as Iterable<[unknown, unknown]>)].sort(([a], [b]) => (String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0)))
        : value; // map-like values are shown sorted by key (the first 50 entries)
      io.out(`  ${fieldName} at ${where}: ${inspect(shown, { depth: 4, maxArrayLength: 50, breakLength: 100 })}`);
    }
  } finally {
    await store?.close();
    rmSync(copy.dir, { recursive: true, force: true });
  }
  return 0;
}

/**
 * A copy of `dataDir`'s write-ahead log files, if any, then of its LMDB (in that order: see the
 * header), in a new temporary directory. A log file the node deleted between the listing and the
 * copy is skipped (LMDB held it before it went).
 */
async function snapshot(dataDir: string): Promise<{ dir: string; logs: string[] }> {
  const logs = walFileNames(dataDir);
  const dir = mkdtempSync(join(tmpdir(), 'squall-inspect-'));
  try {
    const copied: string[] = [];
    for (const name of logs) {
      try {
        copyFileSync(join(dataDir, name), join(dir, name));
        copied.push(name);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    }
    const live = open({ path: join(dataDir, STORE_FILE), readOnly: true });
    try {
      await live.backup(join(dir, STORE_FILE), false);
    } finally {
      await live.close();
    }
    return { dir, logs: copied };
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

export const inspectCommand: Command = {
  summary: "read a node's LMDB store: objects, fields, versions, a field's value at a point",
  usage: `usage: squall inspect --data <dir> --app <module.js> [--object <Type/subgroup/shard>]
                      [--field <name> [--version <view:position> | --index <i> | --time <iso|µs>]]

Reads a snapshot of the node's store (persistence.data_dir), so the node may be running, and lists each replicated
object ("Type/subgroup/shard") with its persistent fields: how many versions are kept, the first
and last version and their HLC times. With --field, also prints the field's value at a version
(the newest at or below it), an index (-1 is the latest) or a time (the newest version stamped at
or before it); the latest value without one of them. The app module supplies the classes, so
each field is decoded with its own codec. The snapshot goes to the system's temporary directory
(as much space as the store's used pages) and is deleted afterwards; a write-ahead log in the
data dir (persistence.write_ahead_log) is copied first and replayed over it. The node's files
are not changed. Exit status: 0 done, 1 a read failed, 2 bad arguments.`,
  run: runInspect,
};
