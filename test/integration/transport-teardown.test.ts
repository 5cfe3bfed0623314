// An endpoint left open when its thread ends must not crash the process: a worker terminated (or
// exiting) with a live endpoint, and a process exiting with one. Node unloads the addon after a
// worker's environment is torn down, so the endpoint's libuv handles must have closed before
// (ava runs test files in worker threads: a failed test that skips close() used to turn into a
// segfault of the whole run).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const transport = join(dirname(fileURLToPath(import.meta.url)), '../../src/transport/native-transport.js');

function run(script: string): { status: number | null; signal: NodeJS.Signals | null; out: string } {
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, signal: r.signal, out: r.stdout + r.stderr };
}

const inWorker = (ending: string): string => `
  const { Worker } = require('node:worker_threads');
  const w = new Worker(\`import(${JSON.stringify(transport)}).then(async (m) => {
    const a = await m.Endpoint.create({});
    const b = await m.Endpoint.create({});
    b.handle(1, () => new Uint8Array(1));
    const s = await a.connect(b.address);
    await s.call(1, new Uint8Array(1));
    require('node:worker_threads').parentPort.postMessage('up');
    ${ending}
  })\`, { eval: true });
  w.on('message', () => { ${ending.includes('exit') ? '' : "w.terminate().then(() => console.log('done'));"} });
  w.on('exit', () => console.log('worker gone'));
`;

test('terminating a worker with open endpoints and a live session', (t) => {
  const r = run(inWorker(''));
  t.is(r.signal, null, r.out);
  t.is(r.status, 0, r.out);
  t.regex(r.out, /done/);
});

test('a worker that exits with open endpoints', (t) => {
  const r = run(inWorker('setTimeout(() => process.exit(0), 20);'));
  t.is(r.signal, null, r.out);
  t.is(r.status, 0, r.out);
  t.regex(r.out, /worker gone/);
});

test('a process that exits with open endpoints', (t) => {
  const r = run(`import(${JSON.stringify(transport)}).then(async (m) => {
    const a = await m.Endpoint.create({});
    await a.connect((await m.Endpoint.create({})).address);
    process.exit(0);
  })`);
  t.is(r.signal, null, r.out);
  t.is(r.status, 0, r.out);
});
