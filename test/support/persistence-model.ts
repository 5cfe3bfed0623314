/**
 * A reference model of one field's history (a plain array, searched linearly), and a checker
 * that compares every read path of a Persistent<T> against it.
 */
import type { ExecutionContext } from 'ava';
import { compareHlc, hlc, maxHlc, type Hlc } from '../../src/core/hlc.js';
import { VERSION_NONE, type Version } from '../../src/core/ids.js';
import type { Persistent } from '../../persistence/index.js';
import type { SeededRandom } from '../../src/core/random.js';

export interface ModelEntry<V> {
  version: Version;
  time: Hlc;
  effectiveTime: Hlc;
  value: V;
}

export class FieldModel<V> {
  entries: ModelEntry<V>[] = [];
  trimmed = false;

  append(version: Version, time: Hlc, value: V): void {
    const last = this.entries[this.entries.length - 1];
    const effectiveTime = last ? maxHlc(last.effectiveTime, time) : time;
    this.entries.push({ version, time, effectiveTime, value });
  }

  floorByVersion(version: bigint): number {
    let found = -1;
    this.entries.forEach((e, i) => {
      if (e.version <= version) found = i;
    });
    return found;
  }
  floorByTime(time: Hlc): number {
    let found = -1;
    this.entries.forEach((e, i) => {
      if (compareHlc(e.effectiveTime, time) <= 0) found = i;
    });
    return found;
  }
  trim(index: number): void {
    if (index <= 0) return;
    this.entries = this.entries.slice(index);
    this.trimmed = true;
  }
  truncate(version: bigint): void {
    this.entries = this.entries.filter((e) => e.version <= version);
  }
}

/** Error name a read should throw, or undefined for a value. */
function expectedVersionError<V>(model: FieldModel<V>, version: bigint): string | undefined {
  const latest = model.entries[model.entries.length - 1]?.version ?? VERSION_NONE;
  if (version > latest) return 'VersionBeyondLatestError';
  if (model.floorByVersion(version) < 0) {
    return model.trimmed ? 'VersionTrimmedError' : 'VersionNotFoundError';
  }
  return undefined;
}

function throwsNamed(t: ExecutionContext, fn: () => unknown, name: string, what: string): void {
  try {
    fn();
    t.fail(`${what}: expected ${name}, got a value`);
  } catch (error) {
    if ((error as Error).name !== name) t.fail(`${what}: expected ${name}, got ${String(error)}`);
  }
}

/**
 * Checks count, bounds, every index, and `queries` random plus edge versions and times.
 * `view` maps a field value to something deepEqual can compare.
 */
export function checkField<T, V>(
  t: ExecutionContext,
  field: Persistent<T>,
  model: FieldModel<V>,
  view: (value: T) => unknown,
  random: SeededRandom,
  queries = 20,
): void {
  const label = field.name;
  const entries = model.entries;
  const n = entries.length;
  t.is(field.count(), n, `${label} count`);
  if (n === 0) {
    t.is(field.latestVersion(), VERSION_NONE, `${label} latest of empty`);
    return;
  }
  t.is(field.earliestVersion(), entries[0]!.version, `${label} earliest version`);
  t.is(field.latestVersion(), entries[n - 1]!.version, `${label} latest version`);
  t.is(field.earliestIndex(), 0);
  t.is(field.latestIndex(), n - 1);
  t.deepEqual(field.earliestTime(), entries[0]!.time, `${label} earliest time`);
  t.deepEqual(field.latestTime(), entries[n - 1]!.time, `${label} latest time`);
  for (let i = 0; i < Math.min(n, queries); i++) {
    const index = random.int(n);
    t.deepEqual(view(field.getByIndex(index)), entries[index]!.value, `${label} index ${index}`);
    const fromEnd = view(field.getByIndex(index - n));
    t.deepEqual(fromEnd, entries[index]!.value, `${label} index ${index - n}`);
    t.is(field.versionOfIndex(index), entries[index]!.version);
  }
  throwsNamed(t, () => field.getByIndex(n), 'IndexOutOfRangeError', `${label} index n`);
  throwsNamed(t, () => field.getByIndex(-n - 1), 'IndexOutOfRangeError', `${label} index -n-1`);

  const lo = entries[0]!.version;
  const hi = entries[n - 1]!.version;
  const versions = [lo, hi, lo - 1n, hi + 1n, 0n];
  for (let i = 0; i < queries; i++) {
    const e = entries[random.int(n)]!.version;
    versions.push(e, e - 1n, e + 1n, lo + BigInt(Math.floor(random.next() * Number(hi - lo + 2n))));
  }
  for (const version of versions) {
    const error = expectedVersionError(model, version);
    if (error) {
      throwsNamed(t, () => field.get(version), error, `${label} get(${version})`);
      continue;
    }
    const index = model.floorByVersion(version);
    t.deepEqual(view(field.get(version)), entries[index]!.value, `${label} get(${version})`);
    t.is(field.versionAt(version), entries[index]!.version);
    t.is(field.indexOfVersion(version), index);
    const previous = model.floorByVersion(version - 1n);
    t.is(field.previousVersion(version), entries[previous]?.version ?? VERSION_NONE);
    const next = entries.find((e) => e.version > version)?.version ?? VERSION_NONE;
    t.is(field.nextVersion(version), next, `${label} next(${version})`);
  }
  t.is(field.nextVersion(lo - 1n), lo);
  t.is(field.previousVersion(hi + 5n), hi);

  const times: Hlc[] = [entries[0]!.effectiveTime, entries[n - 1]!.effectiveTime, hlc(0, 0)];
  for (let i = 0; i < queries; i++) {
    const e = entries[random.int(n)]!.effectiveTime;
    times.push(e, hlc(e.micros, e.logical + 1), hlc(Math.max(0, e.micros - 1), 7));
  }
  for (const time of times) {
    const index = model.floorByTime(time);
    if (index < 0) {
      const name = model.trimmed ? 'VersionTrimmedError' : 'VersionNotFoundError';
      throwsNamed(t, () => field.getByTime(time), name, `${label} time ${time.micros}`);
      continue;
    }
    t.deepEqual(view(field.getByTime(time)), entries[index]!.value, `${label} time ${time.micros}`);
    t.is(field.versionAtTime(time), entries[index]!.version);
    t.is(field.indexAtTime(time), index);
  }
}
