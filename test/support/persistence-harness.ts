/**
 * A seeded random workload over one registry with four fields (a full-mode object, a delta-mode
 * PersistentMap, a full-mode Map fed the same operations, a Volatile number), mirrored into
 * reference models, for the property tests.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { hlc, HLC_MAX, type Hlc } from '../../src/core/hlc.js';
import { makeVersion, viewId, type Version } from '../../src/core/ids.js';
import { SeededRandom } from '../../src/core/random.js';
import {
  Persistent,
  PersistentMap,
  Volatile,
  type PersistentRegistry,
} from '../../persistence/index.js';
import { checkField, FieldModel } from './persistence-model.js';

export interface Doc {
  n: number;
  tag: string;
}

export interface Fields {
  doc: Persistent<Doc>;
  map: Persistent<PersistentMap<string, number>>;
  plainMap: Persistent<Map<string, number>>;
  vol: Volatile<number>;
}

export function makeFields(checkpointEvery = 8): Fields {
  return {
    doc: new Persistent<Doc>(() => ({ n: -1, tag: 'initial' })),
    map: new Persistent(() => new PersistentMap<string, number>(), {
      delta: PersistentMap.codec(),
      checkpointEvery,
    }),
    plainMap: new Persistent(() => new Map<string, number>()),
    vol: new Volatile(() => 0),
  };
}

export function attachAll(registry: PersistentRegistry, fields: Fields): void {
  registry.attach('doc', fields.doc);
  registry.attach('map', fields.map);
  registry.attach('plainMap', fields.plainMap);
  registry.attach('vol', fields.vol);
  registry.setStabilityFrontier(HLC_MAX);
}

export function tempDir(t: ExecutionContext, label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `squall-${label}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Map contents in key order (insertion order differs between replay paths). */
export function sortedEntries<V>(map: Iterable<[string, V]>): [string, V][] {
  return [...map].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

export class Scenario {
  readonly random: SeededRandom;
  readonly models = {
    doc: new FieldModel<Doc>(),
    map: new FieldModel<[string, number][]>(),
    plainMap: new FieldModel<[string, number][]>(),
    vol: new FieldModel<number>(),
  };
  private view = 1;
  private position = 0;
  private counter = 1; // never the initial values (0, -1): every write is a change
  private timeMicros = 1_000_000_000_000;
  lastVersion: Version = makeVersion(viewId(1), 0);

  constructor(
    seed: number,
    public registry: PersistentRegistry,
    public fields: Fields,
    private readonly allowTrimTruncate = true,
  ) {
    this.random = new SeededRandom(seed);
  }

  private nextVersion(): Version {
    if (this.random.next() < 0.05) {
      this.view += 1;
      this.position = 0;
    } else this.position += 1 + this.random.int(3);
    this.lastVersion = makeVersion(viewId(this.view), this.position);
    return this.lastVersion;
  }

  private nextTime(): Hlc {
    this.timeMicros += 1 + this.random.int(20);
    // Sender timestamps are not always in delivery order (different senders' clocks).
    const jitter = this.random.next() < 0.15 ? this.random.int(60) : 0;
    return hlc(this.timeMicros - jitter, this.random.int(3));
  }

  /** One random operation; returns its kind. */
  step(): string {
    const roll = this.random.next();
    if (this.allowTrimTruncate && roll < 0.04) return this.trim();
    if (this.allowTrimTruncate && roll < 0.07) return this.truncate();
    if (roll < 0.1) {
      this.makeVersion();
      return 'unchanged';
    }
    const { doc, map, plainMap, vol } = this.fields;
    const changed = { doc: false, map: false, vol: false };
    if (this.random.next() < 0.5) {
      doc.value = { n: this.counter++, tag: `t${this.random.int(1000)}` };
      changed.doc = true;
    }
    if (this.random.next() < 0.6) {
      // Distinct keys, each op a real change: so the full-mode Map logs exactly when the
      // delta-mode map does, and the two can be compared version by version.
      const keys = new Set<string>();
      for (let i = 1 + this.random.int(3); i > 0; i--) keys.add(`k${this.random.int(20)}`);
      for (const key of keys) {
        if (map.value.has(key) && this.random.next() < 0.3) {
          map.value.delete(key);
          plainMap.update((m) => void m.delete(key));
        } else {
          const value = this.counter++;
          map.value.set(key, value);
          plainMap.update((m) => void m.set(key, value));
        }
      }
      changed.map = true;
    }
    if (this.random.next() < 0.3) {
      vol.value = this.counter++;
      changed.vol = true;
    }
    const { version, time } = this.makeVersion();
    if (changed.doc) this.models.doc.append(version, time, { ...doc.value });
    if (changed.map) {
      this.models.map.append(version, time, sortedEntries(map.value));
      this.models.plainMap.append(version, time, sortedEntries(plainMap.value));
    }
    if (changed.vol) this.models.vol.append(version, time, vol.value);
    return 'version';
  }

  private makeVersion(): { version: Version; time: Hlc } {
    const version = this.nextVersion();
    const time = this.nextTime();
    this.registry.makeVersion(version, time);
    return { version, time };
  }

  private trim(): string {
    const entries = this.models.doc.entries;
    if (entries.length === 0) return 'skip';
    const pick = entries[this.random.int(entries.length)]!;
    if (this.random.next() < 0.5) {
      const point = pick.version + BigInt(this.random.int(2));
      void this.registry.trim(point);
      for (const model of Object.values(this.models)) {
        (model as FieldModel<unknown>).trim((model as FieldModel<unknown>).floorByVersion(point));
      }
      return 'trim-version';
    }
    const point = pick.effectiveTime;
    void this.registry.trim(point);
    for (const model of Object.values(this.models)) {
      (model as FieldModel<unknown>).trim((model as FieldModel<unknown>).floorByTime(point));
    }
    return 'trim-time';
  }

  private truncate(): string {
    const entries = this.models.doc.entries;
    if (entries.length < 2) return 'skip';
    const pick = entries[entries.length - 1 - this.random.int(Math.min(5, entries.length))]!;
    const point = pick.version - BigInt(this.random.int(2));
    void this.registry.truncate(point);
    for (const model of Object.values(this.models)) (model as FieldModel<unknown>).truncate(point);
    return 'truncate';
  }

  /** Compares every read path of every field (`withVolatile`: false after a restart). */
  check(t: ExecutionContext, queries = 10, withVolatile = true): void {
    const { doc, map, plainMap, vol } = this.fields;
    const r = this.random;
    checkField(t, doc, this.models.doc, (v) => v, r, queries);
    checkField(t, map, this.models.map, sortedEntries, r, queries);
    checkField(t, plainMap, this.models.plainMap, sortedEntries, r, queries);
    if (withVolatile) checkField(t, vol, this.models.vol, (v) => v, r, queries);
    const lastDoc = this.models.doc.entries.at(-1);
    if (lastDoc) t.deepEqual(doc.value, lastDoc.value, 'current doc');
    const lastMap = this.models.map.entries.at(-1);
    if (lastMap) {
      t.deepEqual(sortedEntries(map.value), lastMap.value, 'current map');
      t.deepEqual(sortedEntries(plainMap.value), lastMap.value, 'current plain map');
    }
  }
}
