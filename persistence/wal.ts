/**
 * The persistence store's write-ahead log (syncMode 'durable' with `writeAheadLog`): each event
 * turn's writes to LMDB (the same keys and bytes) as one checksummed frame appended to
 * `<dataDir>/squall.wal.<generation>`, with one fdatasync in flight covering every frame written
 * before it started (src/core/frame-file.ts, shared with the Raft log file). The persisted
 * frontier moves when that fdatasync completes; LMDB gets the same writes through lmdb-js's
 * crash-safe batched commits, off the frontier's path, and a log file is deleted once LMDB has
 * reported durable everything it holds.
 *
 * Frame body: the turn's writes in order, each
 *   u8 op (1 put bytes, 2 put JSON, 3 remove, 4 extend) | u16 db name length | db name (utf8)
 *   | u8 key kind (1 f64, 2 string) | key (f64, or u16 length | utf8)
 *   | for extend: u32 kept (bytes of the key's previous value that stay)
 *   | for puts and extend: u32 value length | value
 * (big-endian). Values are a field database's bytes (segments, large records) or the meta
 * database's small objects (as JSON). An extend is a put whose value starts with the first
 * `kept` bytes of the key's previous value (a storage's tail segment grows in place: each turn
 * appends a record or a few, so a put of the whole segment would log up to 32 records per turn;
 * lmdb-storage.ts says how many bytes are unchanged): the frame holds the rest only.
 * Replaying an extend takes the first `kept` bytes of the key's value as the replay left it (or
 * as LMDB holds it) and appends the rest (applyExtend). That ends in the logged value whatever
 * state LMDB holds from the log's start on: if no whole put of the key follows in the log, every
 * later write of it only extends, so the value LMDB holds starts with the `kept` bytes; if one
 * follows, it replaces whatever an earlier extend made.
 *
 * Files: one is written at a time. Once it holds ROTATE_BYTES, it is synced (on this thread, once
 * per ROTATE_BYTES) and the next frame goes to a new file of the next generation, so a torn or bad
 * frame is only ever legitimate at the end of the newest file. Replay reads every file in
 * generation order.
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fdatasync, fdatasyncSync } from 'node:fs';
import { FRAME_HEADER_BYTES, FrameFile, type Fdatasync, type FdatasyncSync } from '../src/core/frame-file.js';
import { WalCorruptError } from './errors.js';

export const WAL_PREFIX = 'squall.wal.';

/** The names of the write-ahead log's files in `dir` (none if it does not exist). */
export function walFileNames(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((name) => name.startsWith(WAL_PREFIX)) : [];
}
/** A log file is closed for writing, and a new one started, once it holds this many bytes. */
export const ROTATE_BYTES = 16 << 20;

/** Where the log's fdatasync runs: on the JS thread in the turn's commit, or on libuv's pool. */
export type WalSync = 'inline' | 'pool';

const enum WalOp { PutBytes = 1, PutJson = 2, Remove = 3, Extend = 4 }
const enum KeyKind { Number = 1, String = 2 }

/** One write of a turn: a put (value bytes or a JSON-able object), or a removal (undefined). */
export interface WalWrite {
  /** The LMDB database's name (the store's meta database, or a field's). */
  readonly name: string;
  readonly key: number | string;
  readonly value: unknown;
  /**
   * A put of bytes whose first `kept` bytes equal the key's previous value's (see the file
   * comment): logged as an extend. Read back, `value` holds only the bytes after them.
   */
  readonly kept?: number;
}

/** The value an extend makes: `kept` bytes of `previous` (zeros past its end), then `rest`. */
export function applyExtend(previous: Uint8Array | undefined, kept: number, rest: Uint8Array): Buffer {
  const value = Buffer.allocUnsafe(kept + rest.byteLength);
  const have = Math.min(kept, previous?.byteLength ?? 0);
  if (have > 0) value.set(previous!.subarray(0, have), 0);
  value.fill(0, have, kept);
  value.set(rest, kept);
  return value;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

interface LogFile {
  readonly generation: number;
  readonly file: FrameFile;
  /** The global number of this file's last frame (frames are numbered from 1 across files). */
  lastFrame: number;
}

export interface WalStats {
  /** Frames read back from the log when the store opened (replayed into LMDB). */
  replayedFrames: number;
  /** Torn frames found (and dropped) at the end of the log when the store opened. */
  tornTails: number;
  frames: number;
  /** Bytes of the frames written (headers included). */
  frameBytes: number;
  /** fdatasyncs of the log files deleted so far (see `fdatasyncs` for the total). */
  fdatasyncs: number;
  /** Log files started, and deleted once LMDB held all of their frames durably. */
  rotations: number;
  deletedFiles: number;
}

export class WriteAheadLog {
  private readonly files: LogFile[] = [];
  private framesWritten = 0;
  private readonly nameBytes = new Map<string, Uint8Array>();
  /** How the log's files are synced (a seam: tests hold syncs back to check the frontier waits). */
  fdatasync: Fdatasync = fdatasync;
  fdatasyncSync: FdatasyncSync = fdatasyncSync;
  readonly stats: WalStats = { replayedFrames: 0, tornTails: 0, frames: 0, frameBytes: 0, fdatasyncs: 0, rotations: 0, deletedFiles: 0 };

  /** The log in `dir`: `open()` reads what is there, `restart()` starts writing. */
  constructor(
    private readonly dir: string,
    private readonly durable: boolean,
    private readonly rotateBytes = ROTATE_BYTES,
    /** 'inline': fdatasync on this thread right after each frame's write; 'pool': on libuv's pool. */
    private readonly sync: WalSync = 'pool',
  ) {}

  /**
   * Reads the existing log files in generation order: the writes of every whole frame, for the
   * caller to apply to LMDB (and make durable) before calling `restart()`.
   */
  open(): WalWrite[][] {
    const generations = walFileNames(this.dir)
      .filter((name) => /^\d+$/.test(name.slice(WAL_PREFIX.length)))
      .map((name) => Number(name.slice(WAL_PREFIX.length)))
      .sort((a, b) => a - b);
    const frames: WalWrite[][] = [];
    for (const [i, generation] of generations.entries()) {
      const file = this.openFile(generation);
      if (file.stats.tornTails > 0 && i < generations.length - 1) {
        throw new WalCorruptError(file.path, file.bytes, 'a frame at the end of a log file that was synced whole before the next file started fails its checksum');
      }
      this.stats.tornTails += file.stats.tornTails;
      for (const body of file.opened) frames.push(decodeWrites(body));
      this.files.push({ generation, file, lastFrame: 0 });
    }
    this.stats.replayedFrames = frames.length;
    return frames;
  }

  /**
   * Starts writing a new, empty log file after the opened ones were applied to LMDB durably, and
   * deletes them.
   */
  restart(): void {
    const next = (this.files.at(-1)?.generation ?? 0) + 1;
    this.discard();
    this.startFile(next);
  }

  /** Deletes the opened log files (applied to LMDB) and writes no log. */
  discard(): void {
    for (const old of this.files.splice(0)) {
      void old.file.close();
      rmSync(old.file.path, { force: true });
    }
  }

  /** Appends one turn's writes as a frame; returns its number (for whenSynced / lmdbDurable). */
  append(writes: readonly WalWrite[]): number {
    let current = this.files.at(-1)!;
    if (current.file.bytes >= this.rotateBytes) {
      current.file.syncNow(); // whole and durable before any frame goes to the next file
      current = this.startFile(current.generation + 1);
    }
    const frame = this.encode(writes);
    current.file.write(frame);
    if (this.sync === 'inline') current.file.syncNow();
    current.lastFrame = ++this.framesWritten;
    this.stats.frames++;
    this.stats.frameBytes += frame.byteLength;
    return this.framesWritten;
  }

  /**
   * 'pool' and no fdatasync running: a frame appended now has its fdatasync started at once
   * (while one runs, a frame waits for it to end whenever it is appended).
   */
  get syncIdle(): boolean {
    return this.sync === 'pool' && !this.files.at(-1)!.file.syncing;
  }

  /** Resolves once frame `frame` and every frame before it are durable. */
  whenSynced(frame: number): Promise<void> {
    const current = this.files.at(-1)!;
    // Frames of earlier files were synced when the file was left (append).
    const before = current.lastFrame - current.file.frames;
    return frame <= before ? Promise.resolve() : current.file.whenSynced(frame - before);
  }

  /** LMDB holds every write of frames up to `frame` durably: delete the files they fill. */
  lmdbDurable(frame: number): void {
    while (this.files.length > 1 && this.files[0]!.lastFrame <= frame) {
      const done = this.files.shift()!;
      this.stats.fdatasyncs += done.file.stats.fdatasyncs;
      void done.file.close();
      rmSync(done.file.path, { force: true });
      this.stats.deletedFiles++;
    }
  }

  /** Closes the log; with `lmdbHasAll`, deletes its files (LMDB holds every frame durably). */
  async close(lmdbHasAll: boolean): Promise<void> {
    for (const { file } of this.files) {
      await file.close();
      if (lmdbHasAll) rmSync(file.path, { force: true });
    }
  }

  /** fdatasyncs of the log so far (durable). */
  get fdatasyncs(): number {
    let n = this.stats.fdatasyncs;
    for (const { file } of this.files) n += file.stats.fdatasyncs;
    return n;
  }

  private startFile(generation: number): LogFile {
    const file: LogFile = { generation, file: this.openFile(generation), lastFrame: this.framesWritten };
    this.files.push(file);
    this.stats.rotations++;
    return file;
  }

  private openFile(generation: number): FrameFile {
    const corrupt = (path: string, offset: number, detail: string) => new WalCorruptError(path, offset, detail);
    return new FrameFile(this.pathOf(generation), this.durable, corrupt, (fd, done) => this.fdatasync(fd, done), (fd) => this.fdatasyncSync(fd));
  }

  private pathOf(generation: number): string {
    return join(this.dir, `${WAL_PREFIX}${generation}`);
  }

  private nameOf(name: string): Uint8Array {
    let bytes = this.nameBytes.get(name);
    if (!bytes) this.nameBytes.set(name, (bytes = utf8.encode(name)));
    return bytes;
  }

  /** The frame (header reserved, then sealed) of one turn's writes. */
  private encode(writes: readonly WalWrite[]): Uint8Array {
    const values: (Uint8Array | undefined)[] = [];
    const keys: (Uint8Array | undefined)[] = [];
    let size = FRAME_HEADER_BYTES;
    for (const write of writes) {
      const kept = extendedBy(write);
      const value = write.value === undefined ? undefined
        : write.value instanceof Uint8Array ? (kept > 0 ? write.value.subarray(kept) : write.value)
        : utf8.encode(JSON.stringify(write.value));
      const key = typeof write.key === 'string' ? utf8.encode(write.key) : undefined;
      values.push(value);
      keys.push(key);
      size += 1 + 2 + this.nameOf(write.name).byteLength + 1 + (key ? 2 + key.byteLength : 8) + (kept > 0 ? 4 : 0) + (value ? 4 + value.byteLength : 0);
    }
    const out = new Uint8Array(size);
    const v = new DataView(out.buffer);
    let o = FRAME_HEADER_BYTES;
    for (let i = 0; i < writes.length; i++) {
      const write = writes[i]!;
      const value = values[i];
      const key = keys[i];
      const name = this.nameOf(write.name);
      const kept = extendedBy(write);
      v.setUint8(o, value === undefined ? WalOp.Remove : kept > 0 ? WalOp.Extend : write.value instanceof Uint8Array ? WalOp.PutBytes : WalOp.PutJson);
      v.setUint16(o + 1, name.byteLength);
      out.set(name, o + 3);
      o += 3 + name.byteLength;
      if (key) {
        v.setUint8(o, KeyKind.String);
        v.setUint16(o + 1, key.byteLength);
        out.set(key, o + 3);
        o += 3 + key.byteLength;
      } else {
        v.setUint8(o, KeyKind.Number);
        v.setFloat64(o + 1, write.key as number);
        o += 9;
      }
      if (kept > 0) {
        v.setUint32(o, kept);
        o += 4;
      }
      if (value) {
        v.setUint32(o, value.byteLength);
        out.set(value, o + 4);
        o += 4 + value.byteLength;
      }
    }
    return out;
  }
}

/** Bytes of `write`'s value logged as kept from the previous one (0: a whole put). */
function extendedBy(write: WalWrite): number {
  return write.kept !== undefined && write.kept > 0 && write.value instanceof Uint8Array ? write.kept : 0;
}

/**
 * A checked frame body's writes; values are copied (the body is a view of the whole file). An
 * extend comes back with `kept` and the bytes after them as `value` (applyExtend).
 */
function decodeWrites(body: Uint8Array): WalWrite[] {
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const writes: WalWrite[] = [];
  let o = 0;
  while (o < body.byteLength) {
    const op = v.getUint8(o) as WalOp;
    const nameLength = v.getUint16(o + 1);
    const name = fromUtf8.decode(body.subarray(o + 3, o + 3 + nameLength));
    o += 3 + nameLength;
    let key: number | string;
    if (v.getUint8(o) === KeyKind.String) {
      const keyLength = v.getUint16(o + 1);
      key = fromUtf8.decode(body.subarray(o + 3, o + 3 + keyLength));
      o += 3 + keyLength;
    } else {
      key = v.getFloat64(o + 1);
      o += 9;
    }
    if (op === WalOp.Remove) {
      writes.push({ name, key, value: undefined });
      continue;
    }
    let kept: number | undefined;
    if (op === WalOp.Extend) {
      kept = v.getUint32(o);
      o += 4;
    }
    const length = v.getUint32(o);
    const bytes = body.slice(o + 4, o + 4 + length);
    o += 4 + length;
    if (op === WalOp.PutBytes) writes.push({ name, key, value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) });
    else if (op === WalOp.Extend) writes.push({ name, key, value: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), kept });
    else if (op === WalOp.PutJson) writes.push({ name, key, value: JSON.parse(fromUtf8.decode(bytes)) });
    else throw new WalCorruptError('(frame)', o, `unknown write kind ${op as number} in a frame that passed its checksum`);
  }
  return writes;
}
