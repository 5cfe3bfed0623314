/**
 * Temporal queries: a persistent counter on 3 replicas, read by version, by index and by time on
 * every replica, with the same answers everywhere (the HLC time travels with each ordered call,
 * so every replica stamps each version alike). Run:
 *   node dist/examples/temporal-queries.js
 */
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Group,
  ORDERED_METHODS,
  Persistent,
  fixedEvenShards,
  formatHlc,
  oneSubgroup,
  ordered,
  persistent,
  replicated,
  type Hlc,
  type Version,
} from '../src/index.js';
import { localGroupConfigs } from '../src/group/local.js';

@replicated()
export class Counter {
  declare readonly [ORDERED_METHODS]: 'add';
  @persistent() total = new Persistent(() => 0);
  @ordered() add(n: number): number {
    this.total.value += n;
    return this.total.value;
  }
}

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-temporal-'));
const configs = await localGroupConfigs(3, { dataRoot });
const groups = await Promise.all(configs.map((c) => Group.start(c, { types: [Counter], layout: { Counter: oneSubgroup(fixedEvenShards(1, 3)) } })));
try {
  const counter = groups[0]!.subgroup(Counter);
  const history: { version: Version; time: Hlc; total: number }[] = [];
  for (const n of [5, 10, 20, 40]) {
    const results = counter.ordered.add(n);
    const total = (await results).get(groups[0]!.nodeId)!;
    history.push({ version: await results.version, time: await results.timestamp, total });
    await results.persisted(); // every replica has it durably before the next one
  }
  for (const g of groups) {
    const replica = g.subgroup(Counter);
    await replica.whenStable(history[history.length - 1]!.time);
    const field = replica.versions('total');
    const byVersion = history.map((h) => field.get(h.version));
    const byIndex = history.map((_, i) => field.getByIndex(i));
    const byTime = history.map((h) => field.getByTime(h.time));
    const between = field.getByTime({ micros: history[2]!.time.micros - 1, logical: 0 });
    console.log(`node ${g.nodeId}: by version ${byVersion.join(',')}; by index ${byIndex.join(',')}; by time ${byTime.join(',')}; just before the 3rd call ${between}; latest ${field.getByIndex(-1)}`);
  }
  console.log(`versions ${history.map((h) => h.version).join(', ')} at HLC ${history.map((h) => formatHlc(h.time)).join(', ')}`);
} finally {
  await Promise.all(groups.map((g) => g.close()));
  rmSync(dataRoot, { recursive: true, force: true });
}
