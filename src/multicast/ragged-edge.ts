/**
 * The ragged-edge trim (Derecho's `global_min`, research §2): for each sender, the number of its
 * messages that *every* survivor received contiguously. Survivors then deliver exactly those, so
 * all of them end the view with the same deliveries. Pure; the membership layer gathers the
 * survivors' `receiveState()` and agrees on one result (computed by the shard leader).
 */
import { assert } from '../core/assert.js';

export function computeTrim(survivorReceivedCounts: readonly (readonly number[])[]): number[] {
  assert(survivorReceivedCounts.length > 0, 'a trim needs at least one survivor');
  const senderCount = survivorReceivedCounts[0]!.length;
  const trim = [...survivorReceivedCounts[0]!];
  for (const counts of survivorReceivedCounts) {
    assert(counts.length === senderCount, 'every survivor reports one count per sender');
    counts.forEach((count, s) => {
      assert(Number.isInteger(count) && count >= 0, 'received counts are non-negative integers');
      if (count < trim[s]!) trim[s] = count;
    });
  }
  return trim;
}
