/**
 * The server side of the transport benchmark, on its own thread (so client and server each have
 * a core, as the baselines do). workerData.mode: "squall" (echo on type 1, 8-byte ack on type 2),
 * "dgram" (Node UDP echo) or "tcp" (Node TCP: each length-prefixed message gets an 8-byte ack).
 * Posts {address} when ready; "close" stops it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createSocket } from 'node:dgram';
import { createServer, type Socket } from 'node:net';
import { Endpoint } from '../src/transport/native-transport.js';

const port = parentPort!;
const mode = workerData.mode as string;
let close: () => Promise<void> = async () => {};

if (mode === 'squall') {
  const endpoint = await Endpoint.create({ sessionsMax: 4096, ...(workerData.options ?? {}) });
  const ack = Buffer.alloc(8);
  endpoint.handle(1, (bytes) => bytes);
  endpoint.handle(2, () => ack);
  close = () => endpoint.close();
  port.postMessage({ address: endpoint.address });
} else if (mode === 'dgram') {
  const socket = createSocket('udp4');
  socket.on('message', (message, remote) => socket.send(message, remote.port, remote.address));
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  close = async () => {
    socket.close();
  };
  port.postMessage({ address: `127.0.0.1:${socket.address().port}` });
} else if (mode === 'tcp') {
  const server = createServer((socket: Socket) => {
    socket.setNoDelay(true);
    let pending: Buffer[] = [];
    let buffered = 0;
    let need = -1;
    socket.on('data', (chunk: Buffer) => {
      pending.push(chunk);
      buffered += chunk.length;
      for (;;) {
        if (need < 0 && buffered >= 4) {
          const all = Buffer.concat(pending);
          need = all.readUInt32LE(0) + 4;
          pending = [all];
        }
        if (need < 0 || buffered < need) return;
        const all = Buffer.concat(pending);
        pending = [all.subarray(need)];
        buffered -= need;
        need = -1;
        const ack = Buffer.alloc(12);
        ack.writeUInt32LE(8, 0);
        socket.write(ack);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  close = async () => {
    server.close();
  };
  port.postMessage({ address: `127.0.0.1:${typeof address === 'object' && address ? address.port : 0}` });
}

port.on('message', async (message: { kind: string }) => {
  if (message.kind === 'close') {
    await close();
    port.postMessage({ kind: 'closed' });
    port.close();
  }
});
