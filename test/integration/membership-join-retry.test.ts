// The join-retry rule of MembershipDriver.answerJoin, each case made deterministic: five in-process
// members on loopback (test/support/membership-local.ts) and node 6's processes played by raw
// 'join' and 'hb' wire requests from an endpoint of the test's own, so that the test decides
// which member hears what, and when (no timing race decides the outcome).
//
// A join from an address that is already a member's in the view is a retry: welcomed into the
// view the node joined in only if the member answering knows the asker as the process that was
// let in (it heard it speak under that incarnation, or it passed that incarnation's join on), or
// the asker carries a record (`after`: restarted over its data dir, placed by the record).
// (a) A new process under the id, without a record, whose earlier self joined through another
//     member and died before speaking here, gets 'pending'; it joins anew once the group removed
//     the earlier process, and gets the shard's state by transfer (never the earlier process's
//     place without its state).
// (b) The process that was let in, retrying through the member that passed its join on, or
//     through a member that heard it speak, is welcomed into that view.
// (c) A node restarted over its data dir, let in anew through one member, retrying through
//     another that never heard the new process is welcomed by its record (not taken for its
//     earlier self and removed again).
// (d) The same retry through a member whose core has moved on to the view that let the node in
//     anew but which is still installing it (its history ends before): 'pending', with no
//     removal; welcomed once that member installed the view.
import test, { type ExecutionContext } from 'ava';
import { Packr } from 'msgpackr';
import { nodeId } from '../../src/core/ids.js';
import { decodeView, type View } from '../../src/membership/view.js';
import { MEMBERSHIP_REQUEST_TYPE } from '../../src/runtime/membership-driver.js';
import type { Endpoint, NativeSession } from '../../src/transport/native-transport.js';
import {
  createEndpoint, createFounders, createNode, LAYOUT_HASH, sendSome, shardKey, waitFor, type LocalNode,
} from '../support/membership-local.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const SIX = nodeId(6);

type JoinReply =
  | { t: 'welcome'; view: Uint8Array; sealedAtIndex: number; epoch?: string }
  | { t: 'pending' } | { t: 'notMember' } | { t: 'refused'; code: string; message: string };

/**
 * One process of node 6, played from `endpoint` (whose address is node 6's in the view): it asks
 * members to join under its incarnation `inc` (with `after` when restarted over its data dir) and
 * sends heartbeats to the members it is told to.
 */
class RawProcess {
  private readonly sessions = new Map<string, Promise<NativeSession>>();
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Members that received a heartbeat of this process while node 6 was in their installed view. */
  readonly heardBy = new Set<number>();

  constructor(private readonly endpoint: Endpoint, readonly inc: string, private readonly after?: number) {}

  private session(to: LocalNode): Promise<NativeSession> {
    let s = this.sessions.get(to.endpoint.address);
    if (s === undefined) this.sessions.set(to.endpoint.address, (s = this.endpoint.connect(to.endpoint.address)));
    return s;
  }

  private async call(to: LocalNode, message: object): Promise<Uint8Array> {
    const session = await this.session(to);
    return session.call(MEMBERSHIP_REQUEST_TYPE, Uint8Array.from(packr.pack(message)), { timeoutMs: 5000 });
  }

  /** A 'join' wire request to `to`; its answer. */
  async ask(to: LocalNode): Promise<JoinReply> {
    const bytes = await this.call(to, {
      t: 'join', node: 6, address: this.endpoint.address, layoutHash: LAYOUT_HASH, inc: this.inc,
      ...(this.after !== undefined ? { after: this.after } : {}),
    });
    return packr.unpack(bytes) as JoinReply;
  }

  /** Heartbeats to `members` every 20 ms until stop(), as a live member of the view would send. */
  speakTo(members: readonly LocalNode[]): void {
    this.timer = setInterval(() => {
      for (const m of members) {
        // Answered after the member handled it (synchronously): if node 6 was in its installed
        // view when sent, the member now knows this process as node 6 (its `speaking`).
        const inView = m.driver.current().isMember(SIX) && m.views.some((v) => v.id === m.driver.current().id);
        const sent = this.call(m, { t: 'hb', from: 6, address: this.endpoint.address, inc: this.inc })
          .then(() => { if (inView) this.heardBy.add(Number(m.id)); }, () => undefined);
        this.inFlight.add(sent);
        void sent.finally(() => this.inFlight.delete(sent));
      }
    }, 20);
  }

  /** This process dies: no heartbeat is sent or in flight once this resolves. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.inFlight]);
  }
}

const viewOf = (reply: JoinReply): View | undefined => (reply.t === 'welcome' ? decodeView(reply.view) : undefined);
const describe = (reply: JoinReply): string => {
  const view = viewOf(reply);
  return view !== undefined ? `welcome into view ${view.id} [${view.memberIds}]` : reply.t;
};
const installed = (n: LocalNode, id: number, withSix: boolean): boolean =>
  n.views.some((v) => v.id === id && v.isMember(SIX) === withSix);

/** `p` joins through `via`, speaks to every member in view 1 (so each knows it, and it records view 1), then dies. */
async function letInThenGone(t: ExecutionContext, p: RawProcess, via: LocalNode, nodes: readonly LocalNode[]): Promise<void> {
  t.is((await p.ask(via)).t, 'pending');
  p.speakTo(nodes);
  await waitFor('view 1 with node 6 installed everywhere', () => nodes.every((n) => installed(n, 1, true)));
  await waitFor('every member heard node 6 speak', () => nodes.every((n) => p.heardBy.has(Number(n.id))));
  await p.stop();
}

/** `p` (restarted over node 6's data dir) asks `via`: view 2 removes its earlier process; it asks again (let in anew). */
async function removedThenAskedAgain(t: ExecutionContext, p: RawProcess, via: LocalNode, nodes: readonly LocalNode[]): Promise<void> {
  t.is((await p.ask(via)).t, 'pending');
  await waitFor('view 2 without node 6 installed everywhere', () => nodes.every((n) => installed(n, 2, false)));
  t.is((await p.ask(via)).t, 'pending');
}

test.serial('a join retry: welcomed by the member that let the process in or heard it; a new process without a record waits for the removal and joins anew', async (t) => {
  t.timeout(60_000);
  // Nodes 1 and 2 never hear node 6's first process (the case under test), so their failure
  // detectors must not remove it meanwhile: their timeout is long. Nodes 3-5 hear it and
  // remove it once it goes silent (2 s: robust under load).
  const { nodes, founders } = await createFounders(1600, 5, (id) => ({ failureTimeoutMs: id <= 2 ? 60_000 : 2000 }));
  const [n1, n2, n3] = nodes as [LocalNode, LocalNode, LocalNode];
  const e6 = await createEndpoint(1606);
  const lines: string[] = [];
  let again: LocalNode | undefined;
  const earlier = new RawProcess(e6, 'earlier');
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    await Promise.all(nodes.map((n) => sendSome(n, 10, 'v0')));

    // Node 6's first process asks node 1 only: node 1 passes its join on, view 1 lets it in.
    t.is((await earlier.ask(n1)).t, 'pending');
    earlier.speakTo(nodes.slice(2));
    await waitFor('view 1 with node 6 installed everywhere', () => nodes.every((n) => installed(n, 1, true)));
    await waitFor('nodes 3-5 heard node 6 speak in view 1', () => [3, 4, 5].every((id) => earlier.heardBy.has(id)));

    // (a) A new process under id 6 at the same address, without a record (it lost its data dir):
    // node 2 never heard its earlier self, node 1 knows another incarnation. Neither welcomes it
    // into view 1 (the earlier process's place, without its state).
    const later = new RawProcess(e6, 'later');
    for (const member of [n2, n1]) {
      const reply = await later.ask(member);
      t.is(reply.t, 'pending', `node ${member.id} does not welcome a process it cannot place: ${describe(reply)}`);
    }
    for (const n of nodes) t.true(n.driver.current().id === 1 && n.driver.current().isMember(SIX), 'asked while node 6 was a member');

    // (b) The process that was let in, retrying: welcomed into view 1 by node 1 (it passed that
    // join on) and by node 3 (it heard that process speak).
    for (const member of [n1, n3]) {
      const reply = await earlier.ask(member);
      t.is(Number(viewOf(reply)?.id), 1, `node ${member.id} welcomes the process it knows: ${describe(reply)}`);
    }
    // Node 2 cannot place it: it waits, like any process node 2 does not know.
    t.is((await earlier.ask(n2)).t, 'pending', 'node 2 never heard the process it would welcome');

    // The earlier process dies; the new one (a real driver now, at the same address) asks node 2
    // only: it is let in once the group removed the earlier process, in a later view, with state.
    await earlier.stop();
    again = createNode(6, e6, {
      founders, found: false, seeds: [n2.endpoint.address], joinTimeoutMs: 30_000, log: (line) => lines.push(`n6 ${line}`),
    });
    await again.driver.start();
    const all = [...nodes, again];
    const removal = n3.views.find((v) => v.failed.includes(SIX));
    t.truthy(removal, `the group removed the earlier process (node 3's views: ${n3.views.map((v) => `${v.id}[${v.memberIds}]`).join(' ')})`);
    const first = again.views[0]!;
    t.true(first.id > removal!.id, `node 6 was let in anew in view ${first.id}, after its removal in view ${removal!.id}`);
    t.true(first.joined.includes(SIX), 'as a joiner');
    await waitFor('every member in node 6\'s view', () => all.every((n) => n.driver.current().id >= first.id));
    for (const s of again.driver.current().shardsOf(SIX)) {
      await waitFor('state transfer', () => !again!.driver.awaitingState(s));
      const shard = shardKey(s);
      const peers = all.filter((n) => n.driver.current().shardsOf(n.id).some((x) => shardKey(x) === shard));
      await waitFor('same state in node 6\'s shard', () => new Set(peers.map((n) => n.state.digest(shard))).size === 1);
      t.true((again.state.shards.get(shard)?.length ?? 0) >= 10, 'node 6 holds the shard\'s earlier deliveries');
    }
    t.true(again.driver.counters.stateChunks > 0, 'its state came by transfer');
  } catch (error) {
    t.log(lines.join('\n'));
    throw error;
  } finally {
    await earlier.stop();
    for (const n of [...nodes, ...(again ? [again] : [])]) await n.driver.close();
    for (const n of nodes) await n.endpoint.close();
    await e6.close();
  }
});

test.serial('a join retry with a record: a node restarted over its data dir, let in anew through one member, is welcomed by another that never heard it', async (t) => {
  t.timeout(60_000);
  // No failure detector timeout acts during the test: the only removal is the one the restarted
  // node's join causes.
  const { nodes } = await createFounders(1650, 5, () => ({ failureTimeoutMs: 60_000 }));
  const [n1, n2, n3] = nodes as [LocalNode, LocalNode, LocalNode];
  const e6 = await createEndpoint(1656);
  const p1 = new RawProcess(e6, 'p1');
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    // Node 6's first process joins through node 1 and speaks to every member in view 1 (which
    // it records), then dies.
    await letInThenGone(t, p1, n1, nodes);

    // Restarted over its data dir (record: view 1) at the same address, it asks node 1: its earlier
    // process is removed, and the next ask lets it in anew.
    const p2 = new RawProcess(e6, 'p2', 1);
    await removedThenAskedAgain(t, p2, n1, nodes);
    t.deepEqual(n2.views.find((v) => v.id === 2)!.failed, [SIX]);
    await waitFor('view 3 with node 6 installed everywhere', () => nodes.every((n) => installed(n, 3, true)));
    t.true(n1.driver.current().joined.includes(SIX));

    // It did not hear the welcome and asks node 2 (and node 3): neither heard the new process nor
    // passed its join on, and both welcome it into view 3 by its record.
    for (const member of [n2, n3]) {
      const reply = await p2.ask(member);
      t.is(Number(viewOf(reply)?.id), 3, `node ${member.id} places the restarted node by its record: ${describe(reply)}`);
    }
    for (const n of nodes) t.true(n.driver.current().id === 3 && n.driver.current().isMember(SIX), `node ${n.id} still has node 6 in view 3`);
  } finally {
    await p1.stop();
    for (const n of nodes) await n.driver.close();
    for (const n of nodes) await n.endpoint.close();
    await e6.close();
  }
});

test.serial('a join retry with a record through a member still installing the view that let the node in anew: pending, not a removal; welcomed once installed', async (t) => {
  t.timeout(60_000);
  // Node 2's install of view 3 (the view that lets node 6's restarted process in anew) is held at
  // its record write: its core has moved on to view 3, its history still ends at view 2. Asked
  // then, node 2 cannot tell the restarted process from its earlier self by the history, and
  // must not remove it (that would undo the join the group just made).
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => { release = resolve; });
  let holding = false;
  const lines2: string[] = [];
  const { nodes } = await createFounders(1700, 5, (id) => ({
    failureTimeoutMs: 60_000,
    ...(id === 2 ? {
      log: (line: string) => lines2.push(line),
      saveRecord: async (record: { view: Uint8Array; trims?: unknown }) => {
        if (decodeView(record.view).id === 3 && record.trims === undefined) {
          holding = true;
          await held;
        }
      },
    } : {}),
  }));
  const [n1, n2] = nodes as [LocalNode, LocalNode];
  const e6 = await createEndpoint(1706);
  const p1 = new RawProcess(e6, 'p1');
  const p2 = new RawProcess(e6, 'p2', 1);
  try {
    await Promise.all(nodes.map((n) => n.driver.start()));
    await letInThenGone(t, p1, n1, nodes);
    // Restarted over its data dir (record: view 1): removed in view 2, let in anew in view 3.
    await removedThenAskedAgain(t, p2, n1, nodes);
    const others = nodes.filter((n) => n !== n2);
    await waitFor('view 3 with node 6 installed by nodes 1, 3-5', () => others.every((n) => installed(n, 3, true)));
    await waitFor('node 2 holding its install of view 3', () => holding && n2.driver.current().id === 3);
    t.false(n2.views.some((v) => v.id === 3), 'node 2 has not installed view 3');

    // Asked while installing: pending, and node 2 does not take the asker for its earlier self
    // (that removal logs its reason at once, and a view after 3 would follow).
    t.is((await p2.ask(n2)).t, 'pending', 'node 2, still installing, answers pending');
    t.false(lines2.some((line) => line.includes('restarted')), `node 2 took node 6 for its earlier process:\n${lines2.join('\n')}`);
    const moved = await waitFor('a view after 3', () => nodes.some((n) => n.driver.current().id > 3), 1000).then(() => true, () => false);
    t.false(moved, `no view removes node 6 again (node 1 at view ${n1.driver.current().id} [${n1.driver.current().memberIds}])`);

    release();
    await waitFor('node 2 installed view 3', () => installed(n2, 3, true));
    const reply = await p2.ask(n2);
    t.is(Number(viewOf(reply)?.id), 3, `installed, node 2 places the restarted node by its record: ${describe(reply)}`);
    for (const n of nodes) t.true(n.driver.current().id === 3 && n.driver.current().isMember(SIX), `node ${n.id} still has node 6 in view 3`);
  } finally {
    release();
    await p1.stop();
    for (const n of nodes) await n.driver.close();
    for (const n of nodes) await n.endpoint.close();
    await e6.close();
  }
});
