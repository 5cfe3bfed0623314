// Bad input at a live group node (issue #11): a sealed 3-node group keeps serving while one node's
// endpoint is flooded with random datagrams and header-shaped garbage (all dropped and counted);
// while a peer holding the group key sends junk bodies on every request type Squall registers
// (sealed and well-formed at the transport, nonsense to the layer above);
// a client holding another group key, or none, is refused with the reason; and a node started on
// a corrupt data directory is refused with an error naming the path and the fix.
import test, { type ExecutionContext } from 'ava';
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Group, fixedEvenShards, oneSubgroup } from '../../src/index.js';
import { localGroupConfigs, localGroupKeyFile } from '../../src/group/local.js';
import { parseConfig } from '../../src/config/load.js';
import { Endpoint, keyFileLine } from '../../src/transport/native-transport.js';
import { REQUEST_TYPES } from '../../src/transport/request-types.js';
import { encodeMessage } from '../../src/core/codec.js';
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

/** Junk bodies for a request type: empty, random bytes, msgpack of odd values, a u32 prefix (mux group id) then noise. */
function junkBodies(): Uint8Array[] {
  const bodies: Uint8Array[] = [new Uint8Array(0)];
  for (let i = 0; i < 20; i++) bodies.push(randomBytes(1 + ((i * 37) % 300)));
  for (const value of [[1, 2, 3], { t: 'join', node: 9 }, 'text', 2 ** 60, [0, 0, 'put', []], [[]], null, { t: 'hb' }]) {
    bodies.push(encodeMessage(value));
  }
  for (const group of [0, 1, 7, 0xffffffff]) {
    const b = Buffer.alloc(4 + 40);
    b.writeUInt32BE(group, 0);
    randomBytes(40).copy(b, 4);
    bodies.push(b);
  }
  return bodies;
}

/**
 * Sends every junk body on every Squall request type to each of `targets` from a peer holding the
 * group key; then the group must still serve: a put replied by all, persisted, equal digests.
 */
async function junkEveryType(t: ExecutionContext, targets: readonly Group[], keyFile: string): Promise<void> {
  const peer = await Endpoint.create({ host: '127.0.0.1', port: 0, keyFile });
  let answered = 0;
  let failed = 0;
  try {
    for (const target of targets) {
      const session = await peer.connect(target.transport.address);
      for (const [name, type] of Object.entries(REQUEST_TYPES)) {
        await Promise.all(junkBodies().map((body) => session.call(type, body, { timeoutMs: 1500 }).then(
          () => { answered++; },
          (error: Error) => {
            failed++;
            // A timeout (one-way types, dropped requests) or an error response is fine; a closed
            // session would mean the node tore it down over a body.
            t.notRegex(error.message, /closed|disconnected/i, `type ${name} (${type}): ${error.message}`);
          },
        )));
      }
    }
  } finally {
    await peer.close();
  }
  t.log(`answered ${answered}, failed or timed out ${failed}`);
  t.true(answered > 0);
  const kv = targets[targets.length - 1]!.subgroup(KvStore);
  const results = kv.ordered.put('after-junk', 'served');
  t.is((await results).size, 3, 'every member replied');
  await results.persisted();
  const members = targets.map((g) => g.nodeId);
  const digests = await Promise.all(members.map((n) => kv.p2p(n).stateDigest()));
  t.is(new Set(digests).size, 1, 'replicas agree after the junk');
  t.is(await kv.p2p(members[0]!).get('after-junk'), 'served');
}

test.serial('junk bodies on every request type from a peer with the group key: answered or dropped, the group keeps serving', async (t) => {
  await junkEveryType(t, groups, localGroupKeyFile(dataRoot));
});

test.serial('the same junk at a group on the membership service (its Raft log and view-change messages): it keeps serving', async (t) => {
  t.timeout(60_000);
  const root = join(dataRoot, 'membership');
  const configs = await localGroupConfigs(3, { dataRoot: root, firstId: 1 });
  const members = await Promise.all(configs.map((config) => Group.start(config, { types: [KvStore], layout, membership: true })));
  try {
    const viewBefore = members[0]!.view.id;
    await junkEveryType(t, members, localGroupKeyFile(root));
    t.true(members.every((g) => g.view.id === viewBefore), 'no view change: junk is no failure');
  } finally {
    await Promise.all(members.map((g) => g.close()));
  }
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
