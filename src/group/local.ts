/**
 * Configs for a group of `count` nodes on this machine (loopback), for tests, the demo and
 * benchmarks: free UDP ports, one data directory per node under `dataRoot`, every packet sealed
 * with a group key written to `<dataRoot>/group.key` (unless `encryption: false`),
 * `persistence.reset` on, and `sync = "nosync"` unless asked otherwise.
 */
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keyFileLine } from '../transport/native-transport.js';
import { parseConfig } from '../config/load.js';
import type { SquallConfig } from '../config/schema.js';

/** `count` UDP ports that were free a moment ago (bound to port 0, then released). */
export async function freeUdpPorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const sockets = await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<ReturnType<typeof createSocket>>((resolve, reject) => {
        const socket = createSocket('udp4');
        socket.once('error', reject);
        socket.bind(0, host, () => resolve(socket));
      }),
    ),
  );
  const ports = sockets.map((s) => s.address().port);
  await Promise.all(sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  return ports;
}

export interface LocalGroupOptions {
  readonly dataRoot: string;
  /** Extra TOML appended to every node's file (sections other than [node], [group]). */
  readonly extraToml?: string;
  readonly sync?: 'durable' | 'nosync';
  /** `persistence.write_ahead_log` (needs sync 'durable'); default false. */
  readonly writeAheadLog?: boolean;
  readonly ports?: readonly number[];
  /** Seal every packet with the group key `<dataRoot>/group.key` (created if missing). Default true. */
  readonly encryption?: boolean;
  /** Node id of the first node (the others follow); default 0. The membership driver needs ≥ 1. */
  readonly firstId?: number;
  /** How many of the nodes `group.members` lists (the rest join later); default all. */
  readonly listed?: number;
  /** Wipe each node's data dir at start (`persistence.reset`); default true. False: restart over it. */
  readonly reset?: boolean;
}

/** The group key file of a local group: `<dataRoot>/group.key`, a fresh secret if missing. */
export function localGroupKeyFile(dataRoot: string): string {
  const file = join(dataRoot, 'group.key');
  if (!existsSync(file)) {
    mkdirSync(dataRoot, { recursive: true });
    writeFileSync(file, keyFileLine(1, randomBytes(32)), { mode: 0o600 });
  }
  return file;
}

/** The TOML of node `index` of a local group over `ports`. */
export function localConfigToml(index: number, ports: readonly number[], options: LocalGroupOptions): string {
  const first = options.firstId ?? 0;
  const members = ports.slice(0, options.listed ?? ports.length)
    .map((port, i) => `"${first + i}@127.0.0.1:${port}"`).join(', ');
  return [
    '[node]',
    `id = ${first + index}`,
    'host = "127.0.0.1"',
    `port = ${ports[index]}`,
    '[group]',
    `members = [${members}]`,
    'restart_timeout_s = 20',
    '[transport]',
    ...(options.encryption === false
      ? ['encryption = false']
      : ['encryption = true', `key_file = ${JSON.stringify(localGroupKeyFile(options.dataRoot))}`]),
    '[persistence]',
    `data_dir = ${JSON.stringify(join(options.dataRoot, `node${index}`))}`,
    `reset = ${options.reset ?? true}`,
    `sync = "${options.sync ?? 'nosync'}"`,
    ...(options.writeAheadLog ? ['write_ahead_log = true'] : []),
    '[logging]',
    'level = "warn"',
    options.extraToml ?? '',
  ].join('\n');
}

/** Validated configs for `count` local nodes. */
export async function localGroupConfigs(count: number, options: LocalGroupOptions): Promise<SquallConfig[]> {
  const ports = options.ports ?? (await freeUdpPorts(count));
  return ports.map((_, i) => parseConfig(localConfigToml(i, ports, options), `node${i}.toml`));
}
