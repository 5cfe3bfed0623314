// Proves encryption in the native transport over real UDP on loopback: endpoints with the same
// group key (from a key file, key-file text or raw bytes) talk at every size up to 8 MiB with
// every packet sealed; a wrong key or a plaintext peer is refused on both sides with a reason;
// bad keys throw named errors; forged datagrams are dropped and counted; calls survive loss and
// a key rotation while traffic flows.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Endpoint,
  endpointOptionsFromConfig,
  keyFileLine,
  type EndpointOptions,
} from '../../src/transport/native-transport.js';
import { TransportError } from '../../src/transport/errors.js';
import { loadNativeAddon } from '../../src/transport/native-binding.js';
import { parseConfig } from '../../src/config/load.js';

// The CPU features the native VAES AES-GCM path needs (native/src/crypto/gcm_vaes.h).
const cpuFlags = new Set(/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim().split(/\s+/));
const cpuHasVaes = ['avx512f', 'avx512bw', 'avx512vl', 'vaes', 'vpclmulqdq', 'aes', 'pclmulqdq']
  .every((flag) => cpuFlags.has(flag));

const secret = Buffer.alloc(32, 0).map((_, i) => (i * 7 + 1) & 0xff);
const keyText = keyFileLine(1, secret);

function pattern(bytes: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (seed + i * 31 + (i >> 9)) & 0xff;
  return out;
}

/**
 * Creates an endpoint that is closed when the test ends, pass or fail (ava 7 assertions throw,
 * and an endpoint left open keeps the test worker alive).
 */
async function open(t: ExecutionContext, options: EndpointOptions): Promise<Endpoint> {
  const endpoint = await Endpoint.create(options);
  t.teardown(() => endpoint.close());
  return endpoint;
}

async function pair(t: ExecutionContext, serverOptions: EndpointOptions, clientOptions: EndpointOptions = serverOptions) {
  const server = await open(t, serverOptions);
  const client = await open(t, clientOptions);
  server.handle(1, (bytes) => bytes);
  return { server, client };
}

test('same key: echo up to 8 MiB, every packet sealed and opened, none dropped', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'squall-key-'));
  const keyFile = join(dir, 'group.key');
  writeFileSync(keyFile, `# test key\n${keyText}`);
  // Three ways to give the same key interoperate.
  const { server, client } = await pair(t, { keyFile }, { key: secret });
  const other = await open(t, { key: keyText });
  t.true(server.encrypted && client.encrypted && other.encrypted);
  const session = await client.connect(server.address);
  const session2 = await other.connect(server.address);
  t.is(session.dataBytesPerPacket, 65000 - 32 - 24, 'the 24-byte trailer is kept free');
  for (const [i, size] of [0, 1, 100, 65000, 1 << 20, 8 << 20].entries()) {
    const request = pattern(size, i);
    t.true(Buffer.from(await session.call(1, request)).equals(request), `size ${size}`);
  }
  t.is(Buffer.from(await session2.call(1, Buffer.from('hi'))).toString(), 'hi');
  const c = client.stats();
  const s = server.stats();
  t.is(c.encrypted, 1);
  t.true(c['crypto.sealed']! > 100);
  // A sealed batch is one seal for several packets.
  t.is(
    c['crypto.sealed']! + c.sealedBatchPackets! - c.sealedBatches!,
    c.packetsSent! - c['sent.CONNECT']! - c['sent.CONNECT_CONFIRM']!,
    'every packet but the handshake is sealed',
  );
  t.true(c['sent.CONNECT_CONFIRM']! >= 1, 'resent only if the sealed answer was slow');
  // Large packets are sealed straight into the socket's send batch and opened straight into the
  // message being assembled (with Node's own OpenSSL, which the addon binds to here).
  for (const stats of [c, s]) {
    t.true(stats.sealedIntoSendBatch! > 100, 'sealed into the send batch');
    t.true(stats.openedIntoMessage! > 100, 'opened into the message');
    // Every packet goes through the VAES AES-GCM path where the CPU has it, else through EVP.
    t.is(stats['crypto.sealedVaes'], cpuHasVaes ? stats['crypto.sealed'] : 0, 'AES-GCM path');
  }
  t.is(s['crypto.handshakeOk'], 2);
  // (Go-Back-N may drop stale duplicates on a loaded machine; nothing fails to open.)
  for (const stats of [c, s]) {
    t.is(stats['drops.crypto'], 0);
    t.is(stats['drops.unsealed'], 0);
  }
  await client.close();
  await other.close();
  await server.close();
});

test('a wrong key is refused on both sides with the reason', async (t) => {
  const { server, client } = await pair(t, { key: keyText }, { key: randomBytes(32) });
  const refused: string[] = [];
  server.onRefused((reason) => refused.push(reason));
  const error = await t.throwsAsync(client.connect(server.address), { instanceOf: TransportError });
  t.is(error?.code, 'CONNECT_FAILED');
  t.regex(error?.message ?? '', /does not hold the group key/);
  await new Promise((resolve) => setTimeout(resolve, 20));
  // On a loaded machine the client may have resent its hello before the refusal came back:
  // every copy is refused the same way.
  t.true(refused.length >= 1);
  for (const reason of refused) {
    t.regex(reason, /refused a session from 127\.0\.0\.1:\d+: peer does not hold the group key/);
  }
  t.is(server.stats().sessionsServer, 0);
  t.is(server.stats()['crypto.handshakeBadMac'], refused.length);
  await client.close();
  await server.close();
});

test('a plaintext peer and an encrypting one refuse each other', async (t) => {
  const { server, client } = await pair(t, { key: keyText }, { encryption: false });
  t.false(client.encrypted);
  const refused: string[] = [];
  server.onRefused((reason) => refused.push(reason));
  const error = await t.throwsAsync(client.connect(server.address), { instanceOf: TransportError });
  t.regex(error?.message ?? '', /one endpoint encrypts and the other does not/);
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.regex(refused[0] ?? '', /does not encrypt/);
  await client.close();
  await server.close();
});

test('bad keys throw BAD_KEY errors that say what to fix', async (t) => {
  const bad = async (options: EndpointOptions, message: RegExp): Promise<void> => {
    const error = await t.throwsAsync(Endpoint.create(options), { instanceOf: TransportError });
    t.is(error?.code, 'BAD_KEY');
    t.regex(error?.message ?? '', message);
  };
  await bad({ encryption: true }, /no group key was given\. Fix/);
  await bad({ key: Buffer.alloc(31) }, /32 bytes, got 31/);
  await bad({ key: 'squall-key v1 1 abcd\n' }, /key text line 1.*Fix/);
  await bad({ key: 'squall-key v1 1 ' + '00'.repeat(32) + '\n' }, /zero/);
  await bad({ keyFile: '/nonexistent/group.key' }, /cannot read the group key file \/nonexistent\/group\.key/);
  await bad({ keyFile: '/nonexistent/group.key', key: keyText }, /both keyFile and key were given\. Fix: pass one of them/);
  const plain = await open(t, {});
  t.false(plain.encrypted, 'no key and no encryption option: plaintext (the config layer requires a key)');
  const off = await open(t, { key: keyText, encryption: false });
  t.false(off.encrypted, 'encryption: false wins over a key');
  t.is(off.stats().encrypted, 0);
  await off.close();
  t.throws(() => plain.rotateKey(secret, 1000), { message: /does not encrypt/ });
  const fromText = await open(t, { key: keyText });
  t.throws(() => fromText.reloadKeyFile(1000), { code: 'BAD_KEY', message: /not created from a key file\. Fix: use rotateKey/ });
  await fromText.close();
  await plain.close();
});

test('forged datagrams into a live session are dropped and counted; the handler never runs', async (t) => {
  const { server, client } = await pair(t, { key: keyText });
  let handled = 0;
  let serverSession = -1;
  server.handle(2, (bytes, context) => {
    handled++;
    serverSession = context.sessionId;
    return bytes;
  });
  const session = await client.connect(server.address);
  await session.call(2, Buffer.from('real'));
  t.is(handled, 1);
  const socket = createSocket('udp4');
  const port = Number(server.address.split(':').pop());
  const header = Buffer.alloc(32);
  header.writeUInt16LE(0x5153, 0);
  header[2] = loadNativeAddon().wireVersion;
  header[3] = 0; // REQ
  header[4] = 1; // sealed
  header[5] = 2;
  header.writeUInt32LE(serverSession, 8);
  header.writeUInt32LE(100, 12);
  header.writeBigUInt64LE(16n, 24);
  const forged = [Buffer.concat([header, randomBytes(124)]), Buffer.concat([header, randomBytes(10)])];
  const plaintext = Buffer.from(header);
  plaintext[4] = 0;
  for (const datagram of [...forged, Buffer.concat([plaintext, Buffer.alloc(100)])]) {
    await new Promise<void>((resolve) => socket.send(datagram, port, '127.0.0.1', () => resolve()));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  socket.close();
  const s = server.stats();
  // Random trailer bytes name a random epoch and counter: refused as unknown epoch, too old,
  // replay or bad tag, whichever check comes first.
  const rejected = ['dropBadTag', 'dropUnknownEpoch', 'dropReplay', 'dropTooOld'];
  t.is(rejected.reduce((sum, key) => sum + s[`crypto.${key}`]!, 0), 1);
  t.is(s['crypto.dropTruncated'], 1);
  t.is(s['drops.unsealed'], 1);
  t.is(s['drops.crypto'], 2);
  t.is(handled, 1);
  t.is(Buffer.from(await session.call(2, Buffer.from('still'))).toString(), 'still');
  await client.close();
  await server.close();
});

test('calls survive 20% loss and a key rotation while traffic flows', async (t) => {
  const { server, client } = await pair(t, { key: keyText, retransmitTimeoutMs: 5 });
  const session = await client.connect(server.address);
  client.injectFault({ dropProbability: 0.2 });
  server.injectFault({ dropProbability: 0.2 });
  const newKey = randomBytes(32);
  const calls: Promise<Uint8Array>[] = [];
  for (let i = 0; i < 200; i++) {
    calls.push(session.call(1, pattern(i % 10 === 0 ? 20_000 : 50, i)));
    if (i === 50) {
      server.rotateKey(newKey, 10_000);
      client.rotateKey(newKey, 10_000);
    }
    if (i % 20 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  const responses = await Promise.all(calls);
  responses.forEach((r, i) => t.true(Buffer.from(r).equals(pattern(i % 10 === 0 ? 20_000 : 50, i))));
  client.injectFault({ dropProbability: 0 });
  server.injectFault({ dropProbability: 0 });
  // The rekey may still await its proof if the last answers were lost: one more call settles it.
  await session.call(1, Buffer.from('x'));
  const c = client.stats();
  t.true(c.retransmissions! > 0);
  t.is(c['crypto.keyRotations'], 1);
  t.true(c['crypto.rekeysCompleted']! >= 1);
  t.is(client.sessionInfo(session.id).keyId, 2);
  t.is(c.sessionsClosed, 0);
  t.is(c['crypto.dropBadTag'], 0);
  await client.close();
  await server.close();
});

test('appending a key to the key file and reloading rotates without dropping the session', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'squall-key-'));
  const keyFile = join(dir, 'group.key');
  writeFileSync(keyFile, keyText);
  const { server, client } = await pair(t, { keyFile });
  const session = await client.connect(server.address);
  t.false(client.reloadKeyFile(1000), 'nothing new in the file');
  writeFileSync(keyFile, keyText + keyFileLine(5, randomBytes(32)));
  t.true(server.reloadKeyFile(60_000));
  t.true(client.reloadKeyFile(60_000));
  for (let i = 0; i < 20; i++) t.is(Buffer.from(await session.call(1, Buffer.from(`${i}`))).toString(), `${i}`);
  t.is(client.sessionInfo(session.id).keyId, 5);
  t.is(client.stats().sessionsClosed, 0);
  writeFileSync(keyFile, 'squall-key v1 6 xyz\n');
  t.throws(() => client.reloadKeyFile(1000), { instanceOf: TransportError, message: /line 1/ });
  await client.close();
  await server.close();
});

test('endpointOptionsFromConfig turns encryption on with the configured key file', (t) => {
  const config = parseConfig('[transport]\nkey_file = "/etc/squall/group.key"\nmax_message_size = 16777216\n', 'n');
  const options = endpointOptionsFromConfig(config.transport);
  t.is(options.encryption, true, 'on by default');
  t.is(options.keyFile, '/etc/squall/group.key');
  t.is(options.forwardSecrecy, true);
  t.is(options.messageBytesMax, 16 << 20);
  const noForwardSecrecy = parseConfig('[transport]\nkey_file = "/k"\nforward_secrecy = false\n', 'n');
  t.is(endpointOptionsFromConfig(noForwardSecrecy.transport).forwardSecrecy, false);
  const off = endpointOptionsFromConfig({ encryption: false, max_message_size: 1024, peer_failure_timeout_ms: 10 });
  t.is(off.encryption, false);
  t.is(off.keyFile, undefined);
});
