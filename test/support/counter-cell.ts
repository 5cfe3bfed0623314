/**
 * The smallest replicated type a group test needs: one persistent total and an ordered add that
 * returns it. Tests that only check membership, starts and removals share it (each test file
 * runs in its own worker, so one registered name serves them all).
 */
import 'reflect-metadata';
import { ORDERED_METHODS, Persistent, ordered, persistent, replicated } from '../../src/index.js';

@replicated({ name: 'CounterCell' })
export class CounterCell {
  declare readonly [ORDERED_METHODS]: 'add';
  @persistent() total = new Persistent(() => 0);

  @ordered() add(n: number): number {
    this.total.value = this.total.value + n;
    return this.total.value;
  }
}
