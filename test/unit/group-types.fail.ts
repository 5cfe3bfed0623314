// Must NOT compile: test/unit/group-types.test.ts compiles this file and checks that every line
// marked "expect-error" has a type error and no other line does. (tsconfig excludes *.fail.ts.)
import type { NodeId } from '../../src/core/ids.js';
import type { ClientSubgroup } from '../../src/group/client.js';
import type { Replicated } from '../../src/group/group.js';
import type { QueryResults } from '../../src/group/query-results.js';
import type { ORDERED_METHODS, P2P_METHODS } from '../../decorators/api.js';

/** The shape of examples/kv-store's KvStore (declared here to keep this compile small). */
declare class KvStore {
  readonly [ORDERED_METHODS]: 'put' | 'remove';
  readonly [P2P_METHODS]: 'get' | 'size';
  entries: { getByIndex(index: number): Map<string, string> };
  put(key: string, value: string): string;
  remove(key: string): boolean;
  get(key: string): string;
  size(): number;
}

export async function calls(kv: Replicated<KvStore>, client: ClientSubgroup<KvStore>): Promise<void> {
  const results: QueryResults<string> = kv.ordered.put('k', 'v');
  const replies: ReadonlyMap<NodeId, string> = await results;
  const value: string = await kv.p2p(1).get('k');
  const history = kv.versions('entries');
  const removed: boolean = await (await client.ordered.remove('k')).replies.get(0 as NodeId)!;
  kv.ordered.put(1, 'v'); // expect-error: a number key
  kv.ordered.put('k'); // expect-error: a missing argument
  kv.ordered.get('k'); // expect-error: get is p2p, not ordered
  await kv.p2p(1).put('k', 'v'); // expect-error: put is ordered, not p2p
  const wrong: number = await kv.p2p(1).get('k'); // expect-error: get returns a string
  const wrongMap: ReadonlyMap<NodeId, number> = await kv.ordered.put('k', 'v'); // expect-error: replies are strings
  kv.versions('nope'); // expect-error: not a field
  await client.ordered.put('k', 1); // expect-error: a number value through the client
  await client.p2p(0).size('extra'); // expect-error: size takes no argument
  void [replies, value, history, removed, wrong, wrongMap];
}
