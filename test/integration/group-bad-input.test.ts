// Bad input at a live group node (issue #11): a sealed 3-node group keeps serving while one node's
// endpoint is flooded with random datagrams and header-shaped garbage (all dropped and counted);
// a client holding another group key, or none, is refused with the reason; and a node started on
// a corrupt data directory is refused with an error naming the path and the fix.
import test from 'ava';
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Group, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { localGroupConfigs, localGroupKeyFile } from '../../src/group/local.js';
import { parseConfig } from '../../src/config/load.js';
import { keyFileLine } from '../../src/transport/native-transport.js';
import { loadNativeAddon } from '../../src/transport/native-binding.js';
import { KvStore } from '../../examples/kv-store/app.js';

/** native/src/version.h kWireVersion, as the addon reports it. */
const WIRE_VERSION = loadNativeAddon().wireVersion;
const dataRoot = mkdtempSync(join(tmpdir(), 'squall-bad-input-'));
const layout = { KvStore: oneSubgroup(fixedEvenShards(1, 3)) };
let groups: Group[] = [];

test.before(async () => {
  const configs = await localGroupConfigs(3, { dataRoot });
  groups = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout })));
});

test.after.always(async () => {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
});

/** A 32-byte Squall-shaped header (magic and version right) with random fields, or pure noise. */
function garbage(i: number): Buffer {
  if (i % 3 === 0) return randomBytes(i % 200);
  const packet = randomBytes(32 + (i % 64));
  packet.writeUInt16LE(0x5153, 0); // the wire's magic ("SQ"), so the header parser gets past it
  packet[2] = WIRE_VERSION;
  return packet;
}

test.serial('40,000 junk datagrams at a member are dropped and counted; the group keeps serving', async (t) => {
  const target = groups[1]!;
  const before = target.transport.stats();
  const [host, port] = [target.transport.address.slice(0, target.transport.address.lastIndexOf(':')), Number(target.transport.address.split(':').pop())];
  const attacker = createSocket('udp4');
  await new Promise<void>((resolve) => attacker.bind(0, '127.0.0.1', resolve));
  const total = 40_000;
  for (let sent = 0; sent < total; sent += 500) {
    await Promise.all(Array.from({ length: 500 }, (_, k) =>
      new Promise<void>((resolve) => attacker.send(garbage(sent + k), port, host, () => resolve()))));
    await new Promise((resolve) => setImmediate(resolve));
  }
  attacker.close();
  const kv = groups[0]!.subgroup(KvStore);
  const results = kv.ordered.put('after-the-flood', 'still-here');
  const replies = await results;
  t.is(replies.size, 3, 'every member replied');
  await results.persisted();
  t.is(await kv.p2p(1).get('after-the-flood'), 'still-here');
  const after = target.transport.stats();
  const dropped = (after.dropsTotal ?? 0) - (before.dropsTotal ?? 0);
  t.log(`dropped ${dropped}`);
  t.true(dropped > total * 0.5, `dropped ${dropped} of ${total} (the rest may still sit in the socket or were lost by the kernel)`);
  const digests = await Promise.all([0, 1, 2].map((n) => kv.p2p(n).stateDigest()));
  t.is(new Set(digests).size, 1, 'replicas agree after the flood');
});

test.serial('a client with another group key, or without one, is refused with the reason', async (t) => {
  const contacts = [groups[2]!.transport.address];
  const otherKey = join(dataRoot, 'other.key');
  writeFileSync(otherKey, keyFileLine(1, randomBytes(32)), { mode: 0o600 });
  const wrongKey = await t.throwsAsync(Client.connect({ contacts, keyFile: otherKey, requestTimeoutMs: 2000 }));
  t.log(wrongKey!.message);
  t.regex(wrongKey!.message, /group key/i);
  const plaintext = await t.throwsAsync(Client.connect({ contacts, encryption: false, requestTimeoutMs: 2000 }));
  t.log(plaintext!.message);
  t.regex(plaintext!.message, /encrypt/i);
  // The right key still works.
  const client = await Client.connect({ contacts, keyFile: localGroupKeyFile(dataRoot), requestTimeoutMs: 5000 });
  try {
    t.is(client.view.members.length, 3);
  } finally {
    await client.close();
  }
});

test.serial('a node on a corrupt data directory is refused, naming the path and the fix', async (t) => {
  const dir = join(dataRoot, 'corrupt');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'squall.mdb'), randomBytes(64 * 1024));
  const config = parseConfig(
    `[node]\nid = 0\nport = 0\n[group]\nmembers = ["0@127.0.0.1:0"]\n[transport]\nkey_file = ${JSON.stringify(localGroupKeyFile(dataRoot))}\n` +
      `[persistence]\ndata_dir = ${JSON.stringify(dir)}\n`,
    'corrupt.toml',
  );
  const error = await t.throwsAsync(Group.start(config, { types: [KvStore], layout: { KvStore: oneSubgroup(fixedEvenShards(1, 1)) } }));
  t.regex(error!.message, /corrupt|not a Squall persistence store/);
  t.regex(error!.message, /Fix:/);
  t.log(error!.message);
});
