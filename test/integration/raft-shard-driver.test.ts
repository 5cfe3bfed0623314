// A raft-ordered shard over an asynchronous transport with real timers: calls from any member are
// forwarded to the leader and committed by a majority, so the shard keeps serving with one member
// dead or cut off; a reply lost on the way back is retried and answered from the session cache
// without running the call again; read() makes a follower's local state linearizable.
import test from 'ava';
import { compareHlc } from '../../src/core/hlc.js';
import { SeededRandom } from '../../src/core/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { RaftShardDriver, type ShardApplication, type ShardCallMeta } from '../../src/runtime/raft-shard-driver.js';
import { MemoryNetwork } from '../../src/transport/memory-transport.js';

const text = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const untext = (b: Uint8Array): unknown => JSON.parse(new TextDecoder().decode(b));

/** A key-value store that counts how often each call ran. */
class Kv implements ShardApplication {
  data = new Map<string, string>();
  runs = new Map<string, number>();
  lastMeta: ShardCallMeta | undefined;
  execute(payload: Uint8Array, meta: ShardCallMeta): Uint8Array {
    const op = untext(payload) as { op: 'put' | 'get'; key: string; value?: string; id: string };
    this.runs.set(op.id, (this.runs.get(op.id) ?? 0) + 1);
    if (this.lastMeta) {
      if (meta.version <= this.lastMeta.version) throw new Error('versions must increase along the log');
      if (compareHlc(meta.timestamp, this.lastMeta.timestamp) <= 0) throw new Error('times must increase along the log');
    }
    this.lastMeta = meta;
    if (op.op === 'put') this.data.set(op.key, op.value!);
    return text(op.op === 'put' ? 'ok' : this.data.get(op.key) ?? null);
  }
  snapshot(): Uint8Array {
    return text({ data: [...this.data], runs: [...this.runs] });
  }
  restore(bytes: Uint8Array): void {
    const s = untext(bytes) as { data: [string, string][]; runs: [string, number][] };
    this.data = new Map(s.data);
    this.runs = new Map(s.runs);
  }
}

const ids = [1, 2, 3];
const peers = new Map(ids.map((id) => [id, `mem:${id}`]));

async function startShard(net: MemoryNetwork) {
  const apps = new Map<number, Kv>();
  const drivers = new Map<number, RaftShardDriver>();
  await Promise.all(ids.map(async (id) => {
    const app = new Kv();
    apps.set(id, app);
    drivers.set(id, await RaftShardDriver.start({
      id, peers, voters: ids, transport: net.endpoint(id), storage: new MemoryStorage(), application: app,
      tickMs: 5, compactEvery: 25, core: { electionTicks: 10, heartbeatTicks: 2 },
      callTimeoutMs: 8000, attemptTimeoutMs: 150,
    }));
  }));
  return { apps, drivers };
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

let opId = 0;
const put = (d: RaftShardDriver, key: string, value: string, id = `op${++opId}`) => d.call(text({ op: 'put', key, value, id }));

test('calls from every member commit in one order; a dead leader or a cut-off member does not stop the shard', async (t) => {
  const net = new MemoryNetwork({ lossRate: 0.02, delayMsMax: 2, random: new SeededRandom(5) });
  const { apps, drivers } = await startShard(net);
  try {
    // Every member calls; replies carry increasing versions per caller.
    for (let round = 0; round < 10; round++) {
      const replies = await Promise.all(ids.map((id) => put(drivers.get(id)!, `k${round % 3}`, `v${round}.${id}`)));
      for (const r of replies) t.deepEqual(untext(r.reply), 'ok');
    }
    await until('all applied', () => ids.every((id) => apps.get(id)!.runs.size === 30));
    const digest = (id: number) => JSON.stringify([...apps.get(id)!.data].sort());
    t.is(digest(1), digest(2));
    t.is(digest(2), digest(3));
    for (const app of apps.values()) t.true([...app.runs.values()].every((n) => n === 1));

    // Cut one follower off: the other two (a majority) keep committing; it catches up on heal.
    const leaderNow = ids.find((id) => drivers.get(id)!.raft.core.role === 'leader')!;
    const cutOff = ids.find((id) => id !== leaderNow)!;
    for (const other of ids) if (other !== cutOff) net.cut(`mem:${cutOff}`, `mem:${other}`);
    for (let i = 0; i < 5; i++) t.deepEqual(untext((await put(drivers.get(leaderNow)!, 'during-cut', `c${i}`)).reply), 'ok');
    t.is(apps.get(cutOff)!.data.get('during-cut'), undefined);
    net.heal();
    await until('the cut-off member catches up', () => apps.get(cutOff)!.data.get('during-cut') === 'c4');

    // Kill the leader: the other two elect a new one and keep committing.
    const leader = ids.find((id) => drivers.get(id)!.raft.core.role === 'leader')!;
    await drivers.get(leader)!.close();
    await net.lookup(`mem:${leader}`)!.close();
    const rest = ids.filter((id) => id !== leader);
    for (let i = 0; i < 5; i++) {
      const r = await put(drivers.get(rest[i % 2]!)!, 'after-leader-death', `x${i}`);
      t.deepEqual(untext(r.reply), 'ok');
    }
    const [a, b] = rest.map((id) => apps.get(id)!);
    await until('survivors agree', () => a!.data.get('after-leader-death') === 'x4' && b!.data.get('after-leader-death') === 'x4');
    t.pass(`leader ${leader} died; ${rest} kept committing`);
  } finally {
    for (const d of drivers.values()) await d.close();
  }
});

test('a reply lost on the way back is retried and answered from the session, without running twice', async (t) => {
  const net = new MemoryNetwork({ delayMsMax: 1, random: new SeededRandom(9) });
  const { apps, drivers } = await startShard(net);
  try {
    await put(drivers.get(1)!, 'warm', 'up');
    const leader = ids.find((id) => drivers.get(id)!.raft.core.role === 'leader')!;
    const caller = ids.find((id) => id !== leader)!;
    await put(drivers.get(caller)!, 'caller-session', 'open'); // the caller's session exists
    // Replies from the leader to the caller vanish for a while; requests still arrive.
    net.cutOneWay(`mem:${leader}`, `mem:${caller}`);
    const id = 'the-call-whose-reply-is-lost';
    const pending = put(drivers.get(caller)!, 'once', 'only', id);
    await until('the call ran on the leader', () => apps.get(leader)!.data.get('once') === 'only');
    await new Promise((r) => setTimeout(r, 400)); // at least two attempts time out
    net.heal();
    const reply = await pending;
    t.deepEqual(untext(reply.reply), 'ok');
    t.true(drivers.get(leader)!.counters.duplicates + drivers.get(caller)!.counters.retries > 0);
    await until('applied everywhere', () => ids.every((n) => apps.get(n)!.runs.get(id) !== undefined));
    for (const n of ids) t.is(apps.get(n)!.runs.get(id), 1, `member ${n} ran ${id} once`);
  } finally {
    for (const d of drivers.values()) await d.close();
  }
});

test('read() on a follower sees every call committed before it', async (t) => {
  const net = new MemoryNetwork({ delayMsMax: 3, random: new SeededRandom(11) });
  const { apps, drivers } = await startShard(net);
  try {
    for (let i = 0; i < 20; i++) {
      const writer = drivers.get(ids[i % 3]!)!;
      await put(writer, 'x', `v${i}`);
      const reader = ids[(i + 1) % 3]!;
      await drivers.get(reader)!.read();
      t.is(apps.get(reader)!.data.get('x'), `v${i}`, `member ${reader} after read() at step ${i}`);
    }
  } finally {
    for (const d of drivers.values()) await d.close();
  }
});

test('a call at a leader cut off from every follower gives up each attempt after attemptTimeoutMs and retries, then completes once healed', async (t) => {
  const net = new MemoryNetwork({ delayMsMax: 1, random: new SeededRandom(4) });
  const { apps, drivers } = await startShard(net);
  try {
    await put(drivers.get(1)!, 'warm', 'up');
    const leaderId = ids.find((id) => drivers.get(id)!.raft.core.role === 'leader')!;
    const leader = drivers.get(leaderId)!;
    await put(leader, 'session', 'open');
    for (const id of ids) if (id !== leaderId) net.cut(`mem:${leaderId}`, `mem:${id}`);
    const attemptsBefore = leader.counters.retries;
    const pending = put(leader, 'cut', 'off', 'the-call-at-a-cut-off-leader');
    // Attempts are 150 ms (startShard): an attempt waiting at the leader itself must be given
    // up (the waiter sweep) and retried, not wait for an outcome that cannot come.
    await until('attempts given up and retried', () => leader.counters.retries - attemptsBefore >= 2, 3000);
    net.heal();
    t.deepEqual(untext((await pending).reply), 'ok');
    await until('applied everywhere', () => ids.every((n) => apps.get(n)!.runs.get('the-call-at-a-cut-off-leader') !== undefined));
    for (const n of ids) t.is(apps.get(n)!.runs.get('the-call-at-a-cut-off-leader'), 1, `member ${n} ran it once`);
  } finally {
    net.heal();
    for (const d of drivers.values()) await d.close();
  }
});
