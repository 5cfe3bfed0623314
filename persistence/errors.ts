/**
 * Operating errors of persistent fields. Each names the field and the version or time involved,
 * says why, and ends with the fix.
 */
import { SquallError } from '../src/core/errors.js';
import { formatHlc, type Hlc } from '../src/core/hlc.js';

function describeVersion(version: bigint): string {
  if (version < 0n) return 'none';
  return `${version} (view ${version >> 32n}, position ${version & 0xffff_ffffn})`;
}

/** The requested version existed but trim() has dropped it. */
export class VersionTrimmedError extends SquallError {
  readonly version: bigint;
  readonly earliestVersion: bigint;
  constructor(field: string, version: bigint, earliestVersion: bigint) {
    super(
      `${field}: version ${describeVersion(version)} was trimmed; the earliest kept version is ` +
        `${describeVersion(earliestVersion)}. Fix: read at or after the earliest version, ` +
        `or trim less history.`,
      'VERSION_TRIMMED',
    );
    this.version = version;
    this.earliestVersion = earliestVersion;
  }
}

/** The requested version (or time) is before the first version this field ever had. */
export class VersionNotFoundError extends SquallError {
  constructor(field: string, what: string) {
    super(
      `${field}: no version exists at or before ${what}; the field's history starts later. ` +
        `Fix: check earliestVersion()/earliestTime() before reading.`,
      'VERSION_NOT_FOUND',
    );
  }
}

/** The requested version is above the latest version this replica has. */
export class VersionBeyondLatestError extends SquallError {
  readonly version: bigint;
  readonly latestVersion: bigint;
  constructor(field: string, version: bigint, latestVersion: bigint) {
    super(
      `${field}: version ${describeVersion(version)} is beyond the latest version ` +
        `${describeVersion(latestVersion)} on this replica. Fix: wait until the version is ` +
        `delivered here, or read latestVersion() first.`,
      'VERSION_BEYOND_LATEST',
    );
    this.version = version;
    this.latestVersion = latestVersion;
  }
}

/** An index outside [-count, count). */
export class IndexOutOfRangeError extends SquallError {
  constructor(field: string, index: number, count: number) {
    super(
      `${field}: index ${index} is outside the ${count} kept versions. Fix: use 0..${count - 1} ` +
        `or -${count}..-1 (negative counts from the latest).`,
      'INDEX_OUT_OF_RANGE',
    );
  }
}

/**
 * A temporal query asked about a time the runtime has not declared stable: versions stamped at
 * or before it may still be delivered, so the answer could change.
 */
export class TimeNotStableError extends SquallError {
  readonly time: Hlc;
  readonly stabilityFrontier: Hlc;
  constructor(field: string, time: Hlc, stabilityFrontier: Hlc) {
    super(
      `${field}: time ${formatHlc(time)} is beyond the stability frontier ` +
        `${formatHlc(stabilityFrontier)}, so versions stamped at or before it may still arrive. ` +
        `Fix: query an earlier time, or retry after the frontier passes it.`,
      'TIME_NOT_STABLE',
    );
    this.time = time;
    this.stabilityFrontier = stabilityFrontier;
  }
}

/** The data directory holds an LMDB file Squall did not write, or of another format version. */
export class ForeignDataDirError extends SquallError {
  constructor(path: string, found: string) {
    super(
      `${path} is not a Squall persistence store of this format (${found}). Squall will not ` +
        `write into data it does not own. Fix: point persistence dataDir at an empty or Squall ` +
        `directory, or open with reset: true to wipe it.`,
      'FOREIGN_DATA_DIR',
    );
  }
}

/** The data file cannot be opened or a record cannot be decoded. */
export class CorruptDataDirError extends SquallError {
  constructor(path: string, detail: string, cause?: unknown) {
    super(
      `${path} is corrupt: ${detail}. Fix: restore this node's data from a replica (delete the ` +
        `directory or open with reset: true and let state transfer refill it).`,
      'CORRUPT_DATA_DIR',
      { cause },
    );
  }
}

/** The store reached its configured size. */
export class MapFullError extends SquallError {
  readonly usedBytes: number;
  readonly mapSizeBytes: number;
  constructor(path: string, usedBytes: number, mapSizeBytes: number, cause?: unknown) {
    super(
      `${path} is full: ${usedBytes} bytes used of the ${mapSizeBytes}-byte map. New versions ` +
        `are refused. Fix: raise persistence mapSizeBytes (and disk space), or trim() old history.`,
      'MAP_FULL',
      { cause },
    );
    this.usedBytes = usedBytes;
    this.mapSizeBytes = mapSizeBytes;
  }
}

/** A field was used before a registry attached it, or after the store was closed. */
export class FieldNotAttachedError extends SquallError {
  constructor(field: string, operation: string) {
    super(
      `${field}: ${operation} needs a history, but the field is not attached to a ` +
        `PersistentRegistry (or its store was closed). Fix: call registry.attach(name, field) ` +
        `(the runtime does this for @persistent fields) and keep the store open.`,
      'FIELD_NOT_ATTACHED',
    );
  }
}

/** makeVersion() was called with a version not above the previous one. */
export class VersionOrderError extends SquallError {
  constructor(registry: string, version: bigint, previous: bigint) {
    super(
      `${registry}: makeVersion(${version}) is not above the previous version ${previous}. ` +
        `Versions must increase. Fix: the runtime must pass each delivered message's version ` +
        `once, in delivery order (after a restart, truncate() first).`,
      'VERSION_ORDER',
    );
  }
}

/**
 * A store opened with syncMode 'buffered' (persistence.sync = "nosync") found a write-ahead log
 * left by a durable run: folding it into LMDB without a sync and deleting it could lose writes
 * that were acknowledged durable, so it is refused.
 */
export class WalReplayNotDurableError extends SquallError {
  constructor(dataDir: string, frames: number) {
    super(
      `${dataDir} holds a write-ahead log (${frames} frame(s), squall.wal.*) left by a run with persistence.sync = "durable" ` +
        'that did not close cleanly, and this store opens with sync "nosync": folding the log into LMDB without a sync, then ' +
        'deleting it, could lose writes already acknowledged durable. Fix: start this node once with persistence.sync = ' +
        '"durable" (a clean close then leaves no log), then switch to "nosync".',
      'WAL_REPLAY_NOT_DURABLE',
    );
  }
}

/**
 * The store's write-ahead log (`squall.wal.*`) holds a damaged frame that is not a write torn by
 * a crash: a frame failing its checksum with a whole frame after it, or a bad frame in a log file
 * that was complete (synced) before the next one started.
 */
export class WalCorruptError extends SquallError {
  constructor(path: string, offset: number, detail: string) {
    super(
      `write-ahead log ${path} is corrupt at byte ${offset}: ${detail}. A crash only tears writes no ` +
        'fdatasync had covered yet, so this is damage to the file itself, and versions reported persisted may be in it. ' +
        'Fix: restore this node from another replica (remove its data dir and let it rejoin) rather ' +
        'than edit or delete the file.',
      'WAL_CORRUPT',
    );
  }
}
