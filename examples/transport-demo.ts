/**
 * `npm start` (until the group runtime exists): two transport endpoints on loopback. A server
 * registers three request types, a client opens a session and makes a few calls -- a greeting,
 * a burst of concurrent calls, one 8 MiB transfer and a call that hits its deadline -- then both
 * print their counters and close. Exits 0 within a few seconds.
 */
import { Endpoint } from '../src/transport/native-transport.js';
import { TimeoutError } from '../src/core/errors.js';

const GREET = 1;
const CHECKSUM = 2;
const SLOW = 3;

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 4096) sum = (sum * 31 + bytes[i]!) >>> 0;
  return sum;
}

const server = await Endpoint.create({ host: '127.0.0.1', port: 0 });
server.handle(GREET, (bytes, context) =>
  Buffer.from(`hello ${Buffer.from(bytes).toString()} (you are ${context.peer})`),
);
server.handle(CHECKSUM, (bytes) => Buffer.from(`${bytes.length} bytes, checksum ${checksum(bytes)}`));
server.handle(SLOW, () => new Promise((resolve) => setTimeout(() => resolve(Buffer.from('late')), 500)));

const client = await Endpoint.create({ host: '127.0.0.1', port: 0 });
console.log(`server listening on ${server.address}, client on ${client.address}`);
const session = await client.connect(server.address);
console.log(`session open: ${session.dataBytesPerPacket} data bytes per packet on this path`);

console.log(`greet -> ${Buffer.from(await session.call(GREET, Buffer.from('squall'))).toString()}`);

let started = performance.now();
const burst = await Promise.all(
  Array.from({ length: 1000 }, (_, i) => session.call(GREET, Buffer.from(`#${i}`))),
);
console.log(
  `1000 concurrent greets in ${(performance.now() - started).toFixed(1)} ms ` +
    `(last: "${Buffer.from(burst[999]!).toString()}")`,
);

const big = Buffer.alloc(8 * 1024 * 1024);
for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
started = performance.now();
const reply = Buffer.from(await session.call(CHECKSUM, big)).toString();
const ms = performance.now() - started;
console.log(
  `8 MiB request -> "${reply}" (expected checksum ${checksum(big)}) in ${ms.toFixed(1)} ms, ` +
    `${((big.length / ms) * 1000 / 1e6).toFixed(0)} MB/s`,
);

try {
  await session.call(SLOW, Buffer.alloc(0), { timeoutMs: 100 });
} catch (error) {
  console.log(`slow call with a 100 ms deadline -> ${(error as Error).name}: ${(error as Error).message}`);
  if (!(error instanceof TimeoutError)) process.exitCode = 1;
}

const pick = (stats: Record<string, number>): string =>
  ['packetsSent', 'packetsReceived', 'bytesSent', 'bytesReceived', 'retransmissions', 'dropsTotal',
    'requestsCompleted', 'handlersRun', 'jsBatchesDelivered', 'jsSubmits']
    .map((key) => `${key}=${stats[key]}`)
    .join(' ');
console.log(`client stats: ${pick(client.stats())}`);
console.log(`server stats: ${pick(server.stats())}`);
await session.close();
await client.close();
await server.close();
console.log('closed both endpoints');
