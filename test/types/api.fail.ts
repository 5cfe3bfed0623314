// Must NOT compile: test/unit/decorators-types.test.ts compiles this file and checks that every
// line marked "expect-error" has a type error and no other line does. (tsconfig excludes it.)
import 'reflect-metadata';
import {
  ORDERED_METHODS,
  ordered,
  P2P_METHODS,
  p2p,
  replicated,
  type OrderedApi,
  type P2PApi,
} from '../../decorators/index.js';
import type { TypedCache, Unmarked } from './api-ok.js';

export async function wrongCalls(
  cache: OrderedApi<TypedCache>,
  point: P2PApi<TypedCache>,
  unmarked: OrderedApi<Unmarked>,
): Promise<void> {
  await cache.put(1, 'v'); // expect-error: a number key
  await cache.put('k'); // expect-error: a missing argument
  await cache.put('k', 'v', 'extra'); // expect-error: an extra argument
  await point.get(1); // expect-error: a number key on the p2p interface
  await cache.get('k'); // expect-error: get is p2p, not ordered
  await point.put('k', 'v'); // expect-error: put is ordered, not p2p
  await cache.helper(); // expect-error: helper is not decorated
  const n: number = await point.get('k'); // expect-error: the result is string | undefined
  const b: string = await cache.invalidate('k'); // expect-error: the result is boolean
  await unmarked.add('1'); // expect-error: a string amount
  (void n, b);
}

@replicated()
export class Marked {
  declare readonly [ORDERED_METHODS]: 'put';
  declare readonly [P2P_METHODS]: 'get';
  @ordered() put(): void {}
  @p2p() get(): void {}
  @ordered() forgotten(): void {} // expect-error: not listed in [ORDERED_METHODS]
  @p2p() alsoForgotten(): void {} // expect-error: not listed in [P2P_METHODS]
  @ordered() field = 1; // expect-error: a field is not a method
}
