/**
 * A node for the key-value chaos scenario (scenarios/kv.ts): one member of a group on the
 * membership service (`Group.start(config, { membership: true })`) hosting `ChaosKv`, a
 * replicated register map with put, compare-and-set and reads both ordered and p2p. While it is
 * in the shard it runs `--clients` closed-loop clients doing puts, CAS, ordered reads and p2p
 * reads of other members; outside the shard (a spare) it does p2p reads only.
 *
 *   node kv-node.js --config-file F --clients N --keys K --seed S
 *
 * Every operation goes to stdout as it happens, so a SIGKILL loses nothing the harness needs
 * (writes to a pipe are synchronous on Linux):
 *   `h inv {"o":…,"c":…,"op":…,"key":…,"value"?,"expected"?,"t":ms}` before the call is issued;
 *   `h ok {"o":…,"out":…,"v":"<version>","t":ms}` once it is acknowledged (a write: once
 *     `persisted()` resolved, i.e. durable on every member of the shard);
 *   `h unk {"o":…,"why":…}` when its outcome is unknown (an error or a timeout; it may have
 *     taken effect): the harness keeps it open.
 *   `p2p {"key","value","at":"<version>","node","t0","t1"}` for each p2p read: the value and the
 *     version of the state it was read from.
 *   `disagree {...}` when members replied differently to one ordered call.
 *   `removed <reason>` once the membership log removed this node.
 * Times are `performance.timeOrigin + performance.now()` (ms, shared by every process here).
 *
 * Commands on stdin: `loss <p>` (the endpoint's fault injection), `quiet` (stop the clients,
 * answer `quiet` once the in-flight calls settled or after 5 s), `report [full]` (`report <json>`:
 * view, leader, shard, frontier, digest; `full` adds the version history),
 * `where [[key, value], …]` (the first version holding each), `values [[key, version], …]` (the
 * value of each key at each version: `values <json>`), `at [[key, micros], …]` (temporal reads:
 * `at <json>`), `leave` (leave the group cleanly with `group.close()`, print `left`, exit 0),
 * `stop` (exit 0).
 *
 * KV_NODE_MUTATION=cas-ignores-expected breaks compare-and-set on purpose (it always swaps, on
 * every replica alike, so replicas agree and only the linearizability check can notice): the
 * scenario's own test shows the checks catch it. KV_NODE_MUTATION=forget-on-restart makes a node
 * started over its data directory wipe it instead (as if its disk lost everything): the restart
 * check must report the acknowledged writes as lost. KV_NODE_MUTATION=read-local-when-stalled
 * makes an ordered read that has no answer within 200 ms answer from this replica's own latest
 * state instead (a tempting "fallback" that is a stale read on a node cut off from the others):
 * the partition check must report it.
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import {
  Group,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  PersistentMap,
  RemovedFromGroupError,
  flexibleEvenShards,
  objectDigest,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
} from '../../../src/index.js';
import { parseConfig } from '../../../src/config/load.js';
import { SeededRandom } from '../../../src/core/random.js';
import type { Endpoint } from '../../../src/transport/native-transport.js';
import type { QueryResults } from '../../../src/group/query-results.js';

const casIgnoresExpected = process.env['KV_NODE_MUTATION'] === 'cas-ignores-expected';
const readLocalWhenStalled = process.env['KV_NODE_MUTATION'] === 'read-local-when-stalled';

@replicated({ name: 'ChaosKv' })
export class ChaosKv {
  declare readonly [ORDERED_METHODS]: 'put' | 'cas' | 'read';
  declare readonly [P2P_METHODS]: 'get' | 'getAt' | 'stateDigest';

  @persistent() entries = new Persistent(() => new PersistentMap<string, string>(), {
    delta: PersistentMap.codec<string, string>(),
    // The map holds a few keys, so a full record is small: a checkpoint every 8 versions keeps
    // reading any old version (the harness reads thousands) to at most 7 deltas.
    checkpointEvery: 8,
  });

  @ordered() put(key: string, value: string): boolean {
    this.entries.update((map) => {
      map.set(key, value);
    });
    return true;
  }

  /** Sets `key` to `value` if it holds `expected` ('' = absent); whether it swapped. */
  @ordered() cas(key: string, expected: string, value: string): boolean {
    const current = this.entries.value.get(key) ?? '';
    if (current !== expected && !casIgnoresExpected) return false;
    this.entries.update((map) => {
      map.set(key, value);
    });
    return true;
  }

  /** An ordered read: '' when absent. */
  @ordered() read(key: string): string {
    return this.entries.value.get(key) ?? '';
  }

  /** A p2p read: [value ('' when absent), the version of the state it came from]. */
  @p2p() get(key: string): string[] {
    return [this.entries.value.get(key) ?? '', String(this.entries.latestVersion())];
  }

  @p2p() getAt(key: string, micros: number): string {
    return this.entries.getByTime(micros).get(key) ?? '';
  }

  @p2p() stateDigest(): string {
    return objectDigest(this);
  }
}

/** One shard of at most 3 members (at least 2); the other nodes are spares that fill in. */
export const chaosKvLayout = { ChaosKv: oneSubgroup(flexibleEvenShards(1, 2, 3)) };

function arg(name: string, fallback?: string): string {
  const at = process.argv.indexOf(`--${name}`);
  const value = at >= 0 ? process.argv[at + 1] : fallback;
  if (value === undefined) {
    console.error(`kv-node: missing --${name}`);
    process.exit(2);
  }
  return value;
}

if (process.argv[1]?.endsWith('/kv-node.js')) {
  const configFile = arg('config-file');
  const config = parseConfig(readFileSync(configFile, 'utf8'), configFile);
  if (process.env['KV_NODE_MUTATION'] === 'forget-on-restart') config.persistence.reset = true;
  const clients = Number(arg('clients', '2'));
  const keys = Number(arg('keys', '4'));
  const random = new SeededRandom(Number(arg('seed', '1')));
  const now = (): number => performance.timeOrigin + performance.now();
  const self = config.node.id;
  const print = (line: string): void => void process.stdout.write(`${line}\n`);

  // KV_NODE_LOG=1: the membership driver's progress lines on stderr (for debugging a run).
  const membershipOption = process.env['KV_NODE_LOG'] === '1' ? { log: (line: string) => console.error(`[membership ${self}] ${line}`) } : true;
  const group = await Group.start(config, { types: [ChaosKv], layout: chaosKvLayout, membership: membershipOption }).catch((error: unknown) => {
    if (!(error instanceof RemovedFromGroupError)) throw error;
    // Removed while it started (welcomed, then taken for failed): say so, answer reports as a
    // removed node, and wait for the harness to replace it.
    print(`removed ${error.message.replace(/\s+/g, ' ')}`);
    createInterface({ input: process.stdin }).on('line', (line) => {
      if (line.startsWith('report')) print(`report ${JSON.stringify({ id: self, viewId: -1, members: [], shard: [], leader: false, removed: true })}`);
    });
    return new Promise<never>(() => undefined);
  });
  const endpoint = group.transport as Endpoint;
  let removed = false;
  // The Group keeps its view source private; the harness only needs to know who leads the log.
  const membership = (group as unknown as { membership?: { driver?: { isLeader?: boolean } } }).membership;
  group.on('removed', (error) => {
    removed = true;
    print(`removed ${error.message.replace(/\s+/g, ' ')}`);
  });

  // The read-local mutation gives up on every ordered call quickly, so that its clients go on
  // issuing (and falling back to local reads) while the shard is stalled.
  const opTimeoutMs = readLocalWhenStalled ? 300 : 8000;
  let running = true;
  let seq = 0;
  // Values stay unique when a node restarts over its data (the restart check) and counts again.
  const incarnation = randomBytes(2).toString('hex');
  const inFlight = new Set<Promise<unknown>>();
  const shardMembers = (): number[] => (group.members(ChaosKv)[0] ?? []).map(Number);
  const inShard = (): boolean => shardMembers().includes(self);

  /** Resolves with p's value, or rejects after `ms` (the call itself goes on). */
  const within = <T>(p: Promise<T>, ms: number): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
      p.then(
        (v) => (clearTimeout(timer), resolve(v)),
        (e) => (clearTimeout(timer), reject(e as Error)),
      );
    });

  const oneOrdered = async (client: number): Promise<void> => {
    const kv = group.subgroup(ChaosKv);
    const key = `k${random.int(keys)}`;
    const o = `${self}.${incarnation}.${seq++}`;
    const value = `${o}`;
    const pick = random.int(10);
    const op = pick < 4 ? 'put' : pick < 7 ? 'cas' : 'read';
    // A CAS expects a value this node last saw for the key (often stale: that is the point).
    const expected = op === 'cas' ? (lastSeen.get(key) ?? '') : undefined;
    print(`h inv ${JSON.stringify({ o, c: self * 100 + client, op, key, value: op === 'read' ? undefined : value, expected, t: now() })}`);
    try {
      const results = (op === 'put' ? kv.ordered.put(key, value) : op === 'cas' ? kv.ordered.cas(key, expected!, value) : kv.ordered.read(key)) as QueryResults<unknown>;
      if (op === 'read' && readLocalWhenStalled) {
        const stalled = await within(results.replies.get(group.nodeId)!, 200).then(() => false, () => true);
        if (stalled) {
          // The mutation: answer from this replica's own latest state, as if it were ordered.
          const entries = kv.versions('entries');
          const latest = entries.latestIndex();
          const local = latest < 0 ? '' : (entries.getByIndex(latest).get(key) ?? '');
          const at = latest < 0 ? '0' : String(entries.infoByIndex(latest).version);
          lastSeen.set(key, local);
          print(`h ok ${JSON.stringify({ o, out: local, v: at, t: now() })}`);
          return;
        }
      }
      const own = await within(results.replies.get(group.nodeId)!, opTimeoutMs);
      const version = await within(results.version, opTimeoutMs);
      // A write is acknowledged only once durable on every member; a read once answered.
      if (op !== 'read') await within(results.persisted(), opTimeoutMs);
      const t = now();
      const settled = await Promise.allSettled(results.replies.values());
      const answers = new Set(settled.filter((s) => s.status === 'fulfilled').map((s) => JSON.stringify((s as PromiseFulfilledResult<unknown>).value)));
      if (answers.size > 1) print(`disagree ${JSON.stringify({ o, answers: [...answers] })}`);
      if (op === 'read') lastSeen.set(key, own as string);
      else if (op === 'put' || own === true) lastSeen.set(key, value);
      print(`h ok ${JSON.stringify({ o, out: own, v: String(version), t })}`);
    } catch (error) {
      print(`h unk ${JSON.stringify({ o, why: `${(error as Error).name}: ${(error as Error).message}`.slice(0, 200) })}`);
      await sleep(50);
    }
  };

  const oneP2P = async (): Promise<void> => {
    const members = shardMembers();
    if (members.length === 0) return sleep(50);
    const node = members[random.int(members.length)]!;
    const key = `k${random.int(keys)}`;
    const t0 = now();
    try {
      const [value, at] = await within(group.nonmember(ChaosKv).p2p(node).get(key), opTimeoutMs);
      print(`p2p ${JSON.stringify({ key, value, at, node, t0, t1: now() })}`);
      lastSeen.set(key, value!);
    } catch {
      await sleep(50);
    }
  };

  const lastSeen = new Map<string, string>();
  const client = async (c: number): Promise<void> => {
    while (running) {
      if (removed) return;
      const call = inShard() && random.int(4) !== 0 ? oneOrdered(c) : oneP2P();
      inFlight.add(call);
      await call;
      inFlight.delete(call);
      await sleep(2 + random.int(6));
    }
  };
  const loops = Array.from({ length: clients }, (_, c) => client(c));

  const report = (full: boolean): Record<string, unknown> => {
    const view = group.view;
    const base = { id: self, viewId: view.id, members: view.memberIds.map(Number), shard: shardMembers(), leader: membership?.driver?.isLeader === true, removed };
    if (!inShard() || removed) return base;
    const kv = group.subgroup(ChaosKv);
    const entries = kv.versions('entries');
    const versions: [string, number, number][] = [];
    for (let i = 0; full && i <= entries.latestIndex(); i++) {
      const info = entries.infoByIndex(i);
      versions.push([String(info.version), info.time.micros, info.time.logical]);
    }
    const f = kv.frontier();
    return { ...base, delivered: String(f.delivered), persisted: String(f.persisted), stableMicros: f.stableTime.micros, digest: kv.digest(), ...(full ? { versions } : {}) };
  };

  createInterface({ input: process.stdin }).on('line', (line) => {
    const space = line.indexOf(' ');
    const command = space < 0 ? line.trim() : line.slice(0, space);
    const rest = space < 0 ? '' : line.slice(space + 1);
    try {
      if (command === 'loss') endpoint.injectFault({ dropProbability: Number(rest) });
      else if (command === 'report') print(`report ${JSON.stringify(report(rest === 'full'))}`);
      else if (command === 'quiet') {
        running = false;
        void Promise.race([Promise.allSettled([...loops, ...inFlight]), sleep(5000)]).then(() => print('quiet'));
      } else if (command === 'values') {
        const entries = group.subgroup(ChaosKv).versions('entries');
        const answers = (JSON.parse(rest) as [string, string][]).map(([key, version]) => {
          // null: this replica cannot read that version (before its kept history, beyond its
          // latest, or no history at all, as after a lost data directory).
          try {
            return entries.get(BigInt(version)).get(key) ?? '';
          } catch {
            return null;
          }
        });
        print(`values ${JSON.stringify(answers)}`);
      } else if (command === 'where') {
        // The first version at which each key took each value (for a violation's report).
        const entries = group.subgroup(ChaosKv).versions('entries');
        const answers = (JSON.parse(rest) as [string, string][]).map(([key, value]) => {
          for (let i = 0; i <= entries.latestIndex(); i++) {
            if (entries.getByIndex(i).get(key) === value) return String(entries.infoByIndex(i).version);
          }
          return null;
        });
        print(`where ${JSON.stringify(answers)}`);
      } else if (command === 'at') {
        const entries = group.subgroup(ChaosKv).versions('entries');
        const answers = (JSON.parse(rest) as [string, number][]).map(([key, micros]) => {
          try {
            return entries.getByTime(micros).get(key) ?? '';
          } catch (error) {
            return `!${(error as Error).name}`;
          }
        });
        print(`at ${JSON.stringify(answers)}`);
      } else if (command === 'leave') {
        // A clean leave: the group commits this node's departure, then it exits.
        running = false;
        void group.close().then(
          () => process.stdout.write('left\n', () => process.exit(0)),
          (error: Error) => print(`error leave: ${error.name}: ${error.message}`),
        );
      } else if (command === 'stop') {
        running = false;
        process.stdout.write('', () => process.exit(0));
      } else console.error(`kv-node: unknown command ${line}`);
    } catch (error) {
      print(`error ${command}: ${(error as Error).name}: ${(error as Error).message}`);
    }
  });
  print(`ready ${self}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
