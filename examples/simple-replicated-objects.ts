/**
 * Derecho's "simple replicated objects" demo (Foo and Bar), the Squall way: 6 nodes in this
 * process on loopback; Bar is replicated on nodes 0-2 and Foo on nodes 3-5 (types are laid out in name order). Foo's members change
 * its state with ordered calls; Bar's members append to its log; each side reads the other with
 * p2p calls through `nonmember`. Derecho needs a serialization macro, register_functions and
 * numeric tags for this; here the decorators carry it. Run:
 *   node dist/examples/simple-replicated-objects.js
 */
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  P2P_METHODS,
  Persistent,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  p2p,
  persistent,
  replicated,
} from '../src/index.js';
import { localGroupConfigs } from '../src/group/local.js';

@replicated()
export class Foo {
  declare readonly [ORDERED_METHODS]: 'changeState';
  declare readonly [P2P_METHODS]: 'readState';
  @persistent() state = new Persistent(() => 0);

  /** Sets the state; returns true if it changed. */
  @ordered() changeState(next: number): boolean {
    if (next === this.state.value) return false;
    this.state.value = next;
    return true;
  }
  @p2p() readState(): number {
    return this.state.value;
  }
}

@replicated()
export class Bar {
  declare readonly [ORDERED_METHODS]: 'append' | 'clear';
  declare readonly [P2P_METHODS]: 'print';
  @persistent() log = new Persistent(() => '');

  @ordered() append(words: string): void {
    this.log.value += words;
  }
  @ordered() clear(): void {
    this.log.value = '';
  }
  @p2p() print(): string {
    return this.log.value;
  }
}

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-foo-bar-'));
// Types are laid out in name order, so Bar gets the first three nodes and Foo the next three.
const layout = { Foo: oneSubgroup(fixedEvenShards(1, 3)), Bar: oneSubgroup(fixedEvenShards(1, 3)) };
const configs = await localGroupConfigs(6, { dataRoot });
const groups = await Promise.all(configs.map((config) => Group.start(config, { types: [Foo, Bar], layout })));
try {
  const [barNodes] = groups[0]!.members(Bar);
  const [fooNodes] = groups[0]!.members(Foo);
  console.log(`Bar is replicated on nodes [${barNodes!.join(', ')}], Foo on nodes [${fooNodes!.join(', ')}]`);
  const fooMember = groups[fooNodes![0]!]!;
  const foo = fooMember.subgroup(Foo);
  for (const value of [1, 1, 3]) {
    const changed = await foo.ordered.changeState(value);
    console.log(`node ${fooMember.nodeId}: foo.changeState(${value}) -> ${[...changed].map(([n, r]) => `node ${n}: ${r}`).join(', ')}`);
  }
  const barMember = groups[barNodes![1]!]!;
  const bar = barMember.subgroup(Bar);
  await bar.ordered.append('Write from node ' + barMember.nodeId + '. ');
  await bar.ordered.append('Another write. ').persisted();
  console.log(`node ${barMember.nodeId} reads Foo from node ${fooNodes![2]} (p2p, not a Foo member): ${await barMember.nonmember(Foo).p2p(fooNodes![2]!).readState()}`);
  console.log(`node ${fooMember.nodeId} reads Bar from node ${barNodes![0]} (p2p, not a Bar member): ${JSON.stringify(await fooMember.nonmember(Bar).p2p(barNodes![0]!).print())}`);
  await bar.ordered.clear().persisted();
  console.log(`after clear: ${JSON.stringify(await bar.p2p(barNodes![2]!).print())}; Bar's log has ${bar.versions('log').count()} versions`);
} finally {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
}
