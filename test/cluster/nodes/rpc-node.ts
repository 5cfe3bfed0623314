/**
 * A node for the transport chaos scenario: one native endpoint that serves request type 1 and
 * keeps calling its peers with uniquely numbered requests, recording what it handled and what was
 * acknowledged, so the harness can check at-most-once and exactly-once-if-acknowledged across
 * kills, restarts, pauses, loss and partitions.
 *
 *   node rpc-node.js --id N --host H --port P --peers id@addr,id@addr --seed S [--key-file F]
 * With --key-file every packet is sealed (AES-GCM, handshake in CONNECT); without, plaintext.
 *
 * A request is "<origin id>:<origin incarnation>:<seq>"; the response is the server's incarnation.
 * Commands on stdin, one per line: `loss <p>` (transport fault injection), `calm` (reset the
 * per-peer success counts that the liveness check reads), `report` (prints `report <json>`),
 * `stop` (stops calling, reports, exits 0). Prints `ready <address>` once serving.
 */
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { Endpoint, type NativeSession } from '../../../src/transport/native-transport.js';

function optionalArg(name: string): string | undefined {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 ? process.argv[at + 1] : undefined;
}

function arg(name: string): string {
  const at = process.argv.indexOf(`--${name}`);
  const value = at >= 0 ? process.argv[at + 1] : undefined;
  if (value === undefined) {
    console.error(`rpc-node: missing --${name}`);
    process.exit(2);
  }
  return value;
}

const id = Number(arg('id'));
const peers = arg('peers')
  .split(',')
  .filter((p) => p !== '')
  .map((p) => {
    const at = p.indexOf('@');
    return { id: Number(p.slice(0, at)), address: p.slice(at + 1) };
  });
const incarnation = randomBytes(6).toString('hex');
const concurrency = 4;
// Calls outlive a quick restart (kill + 300 ms), so retransmissions reach the new incarnation.
const callTimeoutMs = 1500;

const endpoint = await Endpoint.create({
  host: arg('host'),
  port: Number(arg('port')),
  peerFailureTimeoutMs: 800,
  connectTimeoutMs: 500,
  seed: Number(arg('seed')),
  ...(optionalArg('key-file') !== undefined ? { keyFile: optionalArg('key-file')! } : { encryption: false }),
});

/** request key → times handled, for requests this incarnation served. */
const handled = new Map<string, number>();
// The harness's own test breaks the node on purpose to show the checks catch it.
const doubleHandleEvery = process.env.RPC_NODE_MUTATION === 'double-handle' ? 500 : 0;
endpoint.handle(1, (request) => {
  const key = Buffer.from(request).toString('utf8');
  const times = doubleHandleEvery > 0 && handled.size % doubleHandleEvery === 7 ? 2 : 1;
  handled.set(key, (handled.get(key) ?? 0) + times);
  return Buffer.from(incarnation);
});

/** [request key, target peer id, server incarnation that answered] for every acknowledged call. */
const acked: [string, number, string][] = [];
const failures: Record<string, number> = {};
const okSinceCalm = new Map<number, number>();
/**
 * Two sessions per peer (lanes alternate), so that after a peer restarts, one session can still
 * be retransmitting to the old incarnation while the other reconnects to the new one: stale
 * packets must never be taken for the new session's.
 */
const sessionsPerPeer = 2;
const sessions = new Map<string, Promise<NativeSession>>();
let seq = 0;
let running = true;

function session(peer: { id: number; address: string }, lane: number): [string, Promise<NativeSession>] {
  const name = `${peer.id}/${lane % sessionsPerPeer}`;
  let s = sessions.get(name);
  if (!s) {
    s = endpoint.connect(peer.address);
    sessions.set(name, s);
  }
  return [name, s];
}

async function dropSession(name: string, s: Promise<NativeSession>): Promise<void> {
  if (sessions.get(name) !== s) return;
  sessions.delete(name);
  try {
    await (await s).close();
  } catch {
    // A failed connect has nothing to close.
  }
}

/** What each lane is waiting on, and since when: a transport promise that never settles shows here. */
const lanePhase: { phase: string; sinceMs: number }[] = [];

function phase(lane: number, name: string): void {
  lanePhase[lane] = { phase: name, sinceMs: Date.now() };
}

async function caller(lane: number): Promise<void> {
  let turn = lane;
  while (running && peers.length > 0) {
    const peer = peers[turn++ % peers.length]!;
    const key = `${id}:${incarnation}:${seq++}`;
    const [name, s] = session(peer, lane);
    try {
      phase(lane, `connect to ${peer.id}`);
      const connected = await s;
      phase(lane, `call ${key} to ${peer.id}`);
      const reply = await connected.call(1, Buffer.from(key), { timeoutMs: callTimeoutMs });
      acked.push([key, peer.id, Buffer.from(reply).toString('utf8')]);
      okSinceCalm.set(peer.id, (okSinceCalm.get(peer.id) ?? 0) + 1);
    } catch (error) {
      const code = (error as { code?: string }).code ?? (error as Error).name;
      failures[code] = (failures[code] ?? 0) + 1;
      phase(lane, `close session to ${peer.id}`);
      await dropSession(name, s);
      phase(lane, 'back-off');
      await new Promise((r) => setTimeout(r, 20));
    }
    phase(lane, 'pace');
    // Paced, so a run's records stay small enough to report and check in full.
    await new Promise((r) => setTimeout(r, 2));
  }
}

function report(): string {
  return `report ${JSON.stringify({
    id,
    incarnation,
    handled: [...handled],
    acked,
    failures,
    okSinceCalm: Object.fromEntries(okSinceCalm),
    lanes: lanePhase.map((l) => ({ phase: l.phase, forMs: Date.now() - l.sinceMs })),
    stats: endpoint.stats(),
  })}`;
}

const lanes = Array.from({ length: concurrency }, (_, lane) => caller(lane));
console.log(`ready ${endpoint.address}`);

createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, value] = line.trim().split(/\s+/);
  if (command === 'loss') endpoint.injectFault({ dropProbability: Number(value) });
  else if (command === 'calm') okSinceCalm.clear();
  else if (command === 'report') console.log(report());
  else if (command === 'stop') {
    running = false;
    // A lane still busy after 3 s waits on a transport promise that never settled: report anyway
    // (the lanes field shows where it hangs) rather than hang the harness.
    const settled = Promise.all(lanes).then(() => true);
    void Promise.race([settled, new Promise((r) => setTimeout(() => r(false), 3000))]).then(async (done) => {
      const line = report().replace('{', `{"lanesSettled":${String(done)},`);
      if (done) await endpoint.close();
      // Exit only once the (large) line has reached the pipe: process.exit drops pending writes.
      process.stdout.write(`${line}\n`, () => process.exit(0));
    });
  } else console.error(`rpc-node: unknown command ${line}`);
});
