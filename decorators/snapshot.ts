/**
 * Snapshot and restore of a whole replicated object, for state transfer to a joining replica and
 * for comparing replicas by digest.
 *
 * A snapshot holds every state field of the object: @persistent fields through their own
 * FieldHooks (snapshotCurrent/restoreCurrent, keyed by their stable names), and every other own
 * enumerable field except the class's transient ones, each encoded canonically (encodeCanonical:
 * sorted keys, sorted Map entries and Set members). Equal states therefore give equal bytes on
 * every replica, whatever order keys were inserted in.
 */
import { createHash } from 'node:crypto';
import { DecoratorUsageError, SerializationError } from './errors.js';
import { fieldHooksOf, type FieldHooks } from './field-hooks.js';
import { decodeValue, encodeCanonical, encodeValue } from './codec.js';
import { replicatedClassInfoOf, type ReplicatedClassInfo } from './metadata.js';

const SNAPSHOT_MAGIC = 'squall.snapshot';
const SNAPSHOT_FORMAT = 1;
const KIND_PERSISTENT = 0;
const KIND_PLAIN = 1;

/** The hooks of each persistent field, in info.persistentFields order. */
export function persistentHooks(info: ReplicatedClassInfo, target: object): FieldHooks[] {
  return info.persistentFields.map((field) => {
    const value = (target as Record<string, unknown>)[field.fieldName];
    const hooks = fieldHooksOf(value);
    if (hooks === undefined) {
      const holds =
        value === null || typeof value !== 'object'
          ? String(value)
          : `a ${(value as object).constructor?.name ?? 'object'}`;
      throw new DecoratorUsageError(
        `${info.name}.${field.fieldName} is @persistent but holds ${holds}, which has no field ` +
          `hooks. Fix: initialise it with a Persistent<T> or Volatile<T> in the constructor.`,
      );
    }
    return hooks;
  });
}

/** The names of the plain (not persistent, not transient) state fields, sorted. */
export function plainFieldNames(info: ReplicatedClassInfo, target: object): string[] {
  const persistentNames = new Set(info.persistentFields.map((f) => f.fieldName));
  return Object.keys(target)
    .filter((k) => !persistentNames.has(k) && !info.transientFields.has(k))
    .sort();
}

/**
 * Each state field's bytes, keyed "persistent:<stable name>" or "plain:<field>", in sorted order.
 * Used by snapshotObject and by the dispatcher's strict p2p write check.
 */
export function fieldSnapshots(target: object): Map<string, Uint8Array> {
  const info = replicatedClassInfoOf(target);
  const out = new Map<string, Uint8Array>();
  const hooks = persistentHooks(info, target);
  info.persistentFields.forEach((field, i) => {
    out.set(`persistent:${field.name}`, hooks[i]!.snapshotCurrent());
  });
  for (const name of plainFieldNames(info, target)) {
    const value = (target as Record<string, unknown>)[name];
    if (fieldHooksOf(value) !== undefined) {
      throw new DecoratorUsageError(
        `${info.name}.${name} holds a Persistent<T> or Volatile<T> but is not @persistent, so ` +
          `its history would be lost and p2p writes to it missed. ` +
          `Fix: add @persistent() above the field ${name}.`,
      );
    }
    out.set(`plain:${name}`, encodeCanonical(value, `${info.name}.${name}`));
  }
  return out;
}

/** Deterministic bytes of the object's whole state (see the file header). */
export function snapshotObject(target: object): Uint8Array {
  return snapshotFromFields(replicatedClassInfoOf(target), fieldSnapshots(target));
}

/** The snapshot bytes for field bytes from fieldSnapshots() of an object of class `info`. */
export function snapshotFromFields(
  info: ReplicatedClassInfo,
  fields: ReadonlyMap<string, Uint8Array>,
): Uint8Array {
  const entries: [number, string, Uint8Array][] = [];
  for (const [key, bytes] of fields) {
    const plain = key.startsWith('plain:');
    entries.push([plain ? KIND_PLAIN : KIND_PERSISTENT, key.slice(key.indexOf(':') + 1), bytes]);
  }
  return encodeValue([SNAPSHOT_MAGIC, SNAPSHOT_FORMAT, info.name, info.version, entries]);
}

/**
 * Replaces the object's state with a snapshot taken from another replica of the same class and
 * version: persistent fields through restoreCurrent, plain fields by assignment; plain fields the
 * snapshot lacks are deleted. Throws SerializationError for another class, version or format.
 */
export function restoreObject(target: object, snapshot: Uint8Array): void {
  const info = replicatedClassInfoOf(target);
  const decoded = decodeValue(snapshot);
  if (!Array.isArray(decoded) || decoded[0] !== SNAPSHOT_MAGIC || decoded[1] !== SNAPSHOT_FORMAT) {
    throw new SerializationError(
      `not a Squall object snapshot (format ${SNAPSHOT_FORMAT}). ` +
        `Fix: pass bytes from snapshotObject().`,
    );
  }
  const [, , className, version, entries] = decoded as [
    string,
    number,
    string,
    number,
    [number, string, Uint8Array][],
  ];
  if (className !== info.name || version !== info.version) {
    throw new SerializationError(
      `snapshot of ${className} version ${version} cannot restore ${info.name} version ` +
        `${info.version}. Fix: transfer state between replicas running the same class version.`,
    );
  }
  const hooks = persistentHooks(info, target);
  const byName = new Map(info.persistentFields.map((f, i) => [f.name, hooks[i]!]));
  const seenPersistent = new Set<string>();
  const plain = new Map<string, unknown>();
  for (const [kind, name, bytes] of entries) {
    if (kind === KIND_PERSISTENT) {
      const h = byName.get(name);
      if (h === undefined) {
        throw new SerializationError(
          `snapshot has persistent field "${name}", unknown to ${info.name}`,
        );
      }
      h.restoreCurrent(bytes);
      seenPersistent.add(name);
    } else {
      plain.set(name, decodeValue(bytes));
    }
  }
  for (const field of info.persistentFields) {
    if (!seenPersistent.has(field.name)) {
      throw new SerializationError(
        `snapshot lacks persistent field "${field.name}" of ${info.name}`,
      );
    }
  }
  const record = target as Record<string, unknown>;
  for (const name of plainFieldNames(info, target)) {
    if (!plain.has(name)) delete record[name];
  }
  for (const [name, value] of plain) record[name] = value;
}

/** SHA-256 (hex) of a snapshot: replicas with equal state have equal digests. */
export function snapshotDigest(snapshot: Uint8Array): string {
  return createHash('sha256').update(snapshot).digest('hex');
}

/** snapshotDigest(snapshotObject(target)). */
export function objectDigest(target: object): string {
  return snapshotDigest(snapshotObject(target));
}
