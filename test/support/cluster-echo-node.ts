/**
 * A stand-in node for the fault harness's own tests: a UDP echo server.
 *   node cluster-echo-node.js <host> [port] [--crash-after-ms N]
 * Prints "listening <host> <port>" once bound, answers every datagram with "echo:" + its bytes, and
 * with --crash-after-ms exits with status 3 by itself (an unexpected death the harness must report).
 */
import { createSocket } from 'node:dgram';

const [host = '127.0.0.1', portText = '0', ...rest] = process.argv.slice(2);
const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
socket.on('message', (message, from) => {
  socket.send(Buffer.concat([Buffer.from('echo:'), message]), from.port, from.address);
});
socket.bind(Number(portText), host, () => {
  const { address, port } = socket.address();
  console.log(`listening ${address} ${port}`);
});
const crashAt = rest.indexOf('--crash-after-ms');
if (crashAt >= 0) {
  setTimeout(() => {
    console.error('crashing on purpose');
    process.exit(3);
  }, Number(rest[crashAt + 1]));
}
