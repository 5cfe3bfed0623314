// Compiles with the project (tsconfig includes test/): the typed call interfaces accept exactly
// the calls a user should be able to make. api.fail.ts holds the calls that must not compile.
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

@replicated()
export class TypedCache {
  declare readonly [ORDERED_METHODS]: 'put' | 'invalidate';
  declare readonly [P2P_METHODS]: 'get';
  private readonly entries = new Map<string, string>();

  @ordered() put(key: string, value: string): void {
    this.entries.set(key, value);
  }
  @ordered() async invalidate(key: string): Promise<boolean> {
    return this.entries.delete(key);
  }
  @p2p() get(key: string): string | undefined {
    return this.entries.get(key);
  }
  helper(): number {
    return this.entries.size;
  }
}

@replicated()
export class Unmarked {
  @ordered() add(amount: number, note?: string): number {
    return amount + (note?.length ?? 0);
  }
}

export async function calls(
  ordered: OrderedApi<TypedCache>,
  point: P2PApi<TypedCache>,
  unmarked: OrderedApi<Unmarked>,
): Promise<void> {
  const done: Promise<void> = ordered.put('k', 'v');
  const removed: boolean = await ordered.invalidate('k');
  const value: string | undefined = await point.get('k');
  const sum: number = await unmarked.add(1);
  await unmarked.add(1, 'note');
  (void done, removed, value, sum);
}
