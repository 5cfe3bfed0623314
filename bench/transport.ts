/**
 * `npm run bench -- transport [--quick]`: the native transport against the baselines a user would
 * compare it with, all measured in this run on this machine (client on the main thread, server
 * on a worker thread, loopback):
 *   - 32-byte RPC rate with 64 calls outstanding (1 session; 8 sessions) vs a raw C++ UDP
 *     pipelined echo (no protocol, the kernel's ceiling) and Node dgram pipelined echo;
 *   - 32-byte round-trip latency p50/p99 with one call outstanding vs C++ and dgram ping-pong;
 *   - 8 MiB request bandwidth vs Node net TCP with length-prefixed messages;
 *   - the 32-byte rate over 2,000 sessions vs over 1 session.
 * Each line carries the 1-minute load average: these VMs are shared, so numbers are noisy.
 */
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect as tcpConnect } from 'node:net';
import { loadavg } from 'node:os';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { report } from './_report.js';
import { Endpoint, type NativeSession } from '../src/transport/native-transport.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const OUTSTANDING = 64;
const MESSAGE_BYTES = 32;
const BIG_BYTES = 8 * 1024 * 1024;

interface Server {
  address: string;
  stop(): Promise<void>;
}

async function startServer(mode: string, options: object = {}): Promise<Server> {
  const worker = new Worker(join(here, '_transport-worker.js'), { workerData: { mode, options } });
  const address = await new Promise<string>((resolve) => worker.once('message', (m) => resolve(m.address)));
  return {
    address,
    stop: async () => {
      const closed = new Promise((resolve) => worker.once('message', resolve));
      worker.postMessage({ kind: 'close' });
      await closed;
      await worker.terminate();
    },
  };
}

const load = (): number => Number(loadavg()[0]!.toFixed(2));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
}

/** Closed loop: `outstanding` lanes, each issuing its next call when the previous completes. */
async function squallRate(sessions: NativeSession[], seconds: number): Promise<number> {
  const payload = Buffer.alloc(MESSAGE_BYTES, 1);
  let next = 0;
  let count = 0;
  const run = async (ms: number, counting: boolean): Promise<number> => {
    const end = performance.now() + ms;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: OUTSTANDING }, async () => {
        while (performance.now() < end) {
          await sessions[next++ % sessions.length]!.call(1, payload);
          if (counting) count++;
        }
      }),
    );
    return (performance.now() - started) / 1000;
  };
  await run(300, false);
  const elapsed = await run(seconds * 1000, true);
  return count / elapsed;
}

async function squallLatency(session: NativeSession, seconds: number): Promise<number[]> {
  const payload = Buffer.alloc(MESSAGE_BYTES, 1);
  const samples: number[] = [];
  const warm = performance.now() + 200;
  while (performance.now() < warm) await session.call(1, payload);
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    const t = performance.now();
    await session.call(1, payload);
    samples.push((performance.now() - t) * 1000);
  }
  return samples;
}

async function squallBandwidth(session: NativeSession, seconds: number): Promise<number> {
  const big = Buffer.alloc(BIG_BYTES, 7);
  await session.call(2, big);
  let bytes = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  while (performance.now() < end) {
    await session.call(2, big);
    bytes += BIG_BYTES;
  }
  return bytes / ((performance.now() - started) / 1000) / 1e6;
}

async function dgramBaseline(address: string, seconds: number): Promise<{ rate: number; p50: number; p99: number }> {
  const [host, portText] = address.split(':');
  const port = Number(portText);
  const socket = createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const payload = Buffer.alloc(MESSAGE_BYTES, 1);
  // Ping-pong.
  const samples: number[] = [];
  let sentAt = 0;
  let end = performance.now() + seconds * 1000;
  await new Promise<void>((resolve) => {
    socket.on('message', () => {
      samples.push((performance.now() - sentAt) * 1000);
      if (performance.now() >= end) return resolve();
      sentAt = performance.now();
      socket.send(payload, port, host);
    });
    sentAt = performance.now();
    socket.send(payload, port, host);
  });
  socket.removeAllListeners('message');
  // Pipelined, 64 outstanding; a lost datagram is replaced after a quiet 50 ms.
  let replies = 0;
  let lastReply = performance.now();
  const started = performance.now();
  end = started + seconds * 1000;
  await new Promise<void>((resolve) => {
    const refill = setInterval(() => {
      if (performance.now() - lastReply > 50) for (let i = 0; i < OUTSTANDING; i++) socket.send(payload, port, host);
    }, 50);
    socket.on('message', () => {
      replies++;
      lastReply = performance.now();
      if (performance.now() >= end) {
        clearInterval(refill);
        return resolve();
      }
      socket.send(payload, port, host);
    });
    for (let i = 0; i < OUTSTANDING; i++) socket.send(payload, port, host);
  });
  const rate = replies / ((performance.now() - started) / 1000);
  socket.close();
  return { rate, p50: percentile(samples, 0.5), p99: percentile(samples, 0.99) };
}

async function tcpBandwidth(address: string, seconds: number): Promise<number> {
  const [host, portText] = address.split(':');
  const socket = tcpConnect(Number(portText), host);
  socket.setNoDelay(true);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const message = Buffer.alloc(BIG_BYTES + 4, 7);
  message.writeUInt32LE(BIG_BYTES, 0);
  let acked = 0;
  let waiter: (() => void) | undefined;
  let ackBytes = 0;
  socket.on('data', (chunk: Buffer) => {
    ackBytes += chunk.length;
    while (ackBytes >= 12) {
      ackBytes -= 12;
      acked++;
      waiter?.();
    }
  });
  const once = async (): Promise<void> => {
    const target = acked + 1;
    const done = new Promise<void>((resolve) => {
      waiter = () => acked >= target && resolve();
    });
    socket.write(message);
    await done;
  };
  await once();
  let bytes = 0;
  const started = performance.now();
  const end = started + seconds * 1000;
  while (performance.now() < end) {
    await once();
    bytes += BIG_BYTES;
  }
  socket.destroy();
  return bytes / ((performance.now() - started) / 1000) / 1e6;
}

function cppBaseline(seconds: number): { pingpong_p50_us: number; pingpong_p99_us: number; pipelined_per_s: number } {
  const binary = join(root, 'build', 'bin', 'transport_udp_baseline');
  return JSON.parse(execFileSync(binary, [String(seconds), String(OUTSTANDING)]).toString());
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const seconds = quick ? 1.5 : 5;
  const suite = 'transport';

  const cpp = cppBaseline(seconds);
  const dgramServer = await startServer('dgram');
  const dgram = await dgramBaseline(dgramServer.address, seconds);
  await dgramServer.stop();
  const tcpServer = await startServer('tcp');
  const tcp = await tcpBandwidth(tcpServer.address, seconds);
  await tcpServer.stop();

  const server = await startServer('squall');
  const client = await Endpoint.create({ sessionsMax: 4096 });
  const one = [await client.connect(server.address)];
  const rateOne = await squallRate(one, seconds);
  const rateBaselines = { cpp_udp_pipelined: cpp.pipelined_per_s, node_dgram_pipelined: dgram.rate };
  report({ suite, case: 'rpc_rate_32B_64_outstanding_1_session', value: Math.round(rateOne), unit: 'calls/s',
    baselines: rateBaselines, load1: load() });
  const eight = [...one, ...(await Promise.all(Array.from({ length: 7 }, () => client.connect(server.address))))];
  const rateEight = await squallRate(eight, seconds);
  report({ suite, case: 'rpc_rate_32B_64_outstanding_8_sessions', value: Math.round(rateEight), unit: 'calls/s',
    baselines: rateBaselines, load1: load() });

  await sleep(100);
  const samples = await squallLatency(one[0]!, seconds);
  report({ suite, case: 'rpc_latency_32B_p50', value: Number(percentile(samples, 0.5).toFixed(1)), unit: 'us',
    baselines: { cpp_udp_pingpong: cpp.pingpong_p50_us, node_dgram_pingpong: Number(dgram.p50.toFixed(1)) },
    samples: samples.length, load1: load() });
  report({ suite, case: 'rpc_latency_32B_p99', value: Number(percentile(samples, 0.99).toFixed(1)), unit: 'us',
    baselines: { cpp_udp_pingpong: cpp.pingpong_p99_us, node_dgram_pingpong: Number(dgram.p99.toFixed(1)) },
    load1: load() });

  const bandwidth = await squallBandwidth(one[0]!, seconds);
  report({ suite, case: 'request_bandwidth_8MiB', value: Number(bandwidth.toFixed(1)), unit: 'MB/s',
    baselines: { node_net_tcp: Number(tcp.toFixed(1)) }, load1: load() });

  const many = [...eight];
  while (many.length < 2000) {
    many.push(...(await Promise.all(Array.from({ length: Math.min(200, 2000 - many.length) }, () => client.connect(server.address)))));
  }
  const rateMany = await squallRate(many, seconds);
  report({ suite, case: 'rpc_rate_32B_64_outstanding_2000_sessions', value: Math.round(rateMany), unit: 'calls/s',
    baselines: { squall_1_session: Math.round(rateOne) }, load1: load() });

  await client.close();
  await server.stop();
}
