/**
 * RaftStorage as one append-only file (`raft.log` in a directory): each flush() appends one
 * frame holding that flush's writes (appends, truncations, compactions, hard state, snapshot) in
 * order, so a Ready's writes land all or none, as with LmdbStorage's one transaction per flush.
 * Opening replays the frames in order into a MemoryStorage (the same replay rules) for the
 * start-up reads, dropped at the first flush: the log is not kept in memory beside the core's own
 * copy (a second copy of up to `compactEvery` entries was garbage-collector work on every put).
 * The rewrite at compaction reads the file back.
 *
 * Why a file beside LmdbStorage: a Raft log is written at its end and read only at start-up, so
 * it needs none of LMDB's B-tree. Measured on the 2-vCPU VM (2026-11-22, `bench/raft.ts` notes):
 *   - without fsync, one write() of a frame costs ~0.8 µs CPU in a loop and ~8-10 µs after the
 *     process slept (what every commit on a Raft path sees), against ~2.4 µs and ~15-20 µs for a
 *     one-entry LMDB noSync transaction; there is one such write on each node per commit
 *     (2026-11-22, later: ~2 µs after a sleep once the zeros ahead are written page by page,
 *     see writeZeros);
 *   - durable, a flush is that write then one fdatasync on libuv's thread pool, where LMDB
 *     (lmdb-js) fsyncs twice (data, then meta) and hops through its write thread and the event
 *     loop: with 64 puts outstanding the durable flush's wall time is what bounds throughput.
 *
 * Frame: `u32 body length | u32 crc32(body) | body`; body: ops, each `u8 kind` then
 *   append    u32 count, then per entry: f64 index | f64 term | u8 type | u32 length | data
 *   truncate  f64 index          (drop entries ≥ index)
 *   compact   f64 index          (drop entries ≤ index)
 *   hs        f64 term | f64 vote | f64 commit
 *   snap      u32 meta length | meta (JSON) | u32 data length | data
 * (all big-endian). Frames are written inside zeros written ahead of them (1 MiB at a time, a page
 * per write: see writeZeros), so the file ends in zeros, and a frame is never empty: a zero length
 * ends the log. A frame cut short or failing its checksum is a write torn by a crash: it was never
 * reported durable, and opening zeroes it. A failing frame followed by a whole frame is damage,
 * not a torn write: opening throws RaftStorageCorruptError.
 *
 * Compaction: a flush that compacts rewrites the file (snapshot, hard state, the entries after
 * the snapshot) to `raft.log.tmp` and renames it over `raft.log`, so the file stays about the
 * size of the snapshot plus `compactEvery` entries. Durable stores fsync the new file and the
 * directory first; a crash before the rename leaves the old file, whole, and the tmp file is
 * deleted at the next open.
 *
 * Durability: with `durable: true` (the default) flush() resolves after an fdatasync that started
 * after its write: one fdatasync is in flight at a time and the next covers every write made
 * meanwhile (group commit), so flushes resolve in order. With `durable: false` flush() writes and
 * returns undefined: a process crash keeps the data (it is in the OS page cache), a machine crash
 * may lose the tail — benchmarks, or a replicated quorum that tolerates it (as LmdbStorage's
 * noSync).
 */
import { closeSync, existsSync, fdatasync, fsyncSync, fstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { SquallError } from '../core/errors.js';
import type { Entry, HardState, Snapshot } from './types.js';
import { MemoryStorage, QueuedStorage, type RaftStorage, type StorageOp } from './storage.js';

/** The log file holds a frame that fails its checksum with more frames after it. */
export class RaftStorageCorruptError extends SquallError {
  constructor(path: string, offset: number, detail: string) {
    super(
      `raft log ${path} is corrupt at byte ${offset}: ${detail}. A torn write only ever hits the last frame, ` +
        'so this is damage to the file itself: restore this node from another member (remove its data dir and ' +
        'let it rejoin) rather than edit the file.',
      'RAFT_STORAGE_CORRUPT',
    );
  }
}

export interface LogFileStorageOptions {
  /** A directory (created if missing) that holds `raft.log`. */
  path: string;
  /** fdatasync every flush (default true). */
  durable?: boolean;
}

const FRAME_HEADER_BYTES = 8;
/** The file grows by this many zero bytes at a time (see `allocated`). */
const GROW_BYTES = 1 << 20;
/** The zeros ahead are written one page at a time (see writeZeros). */
const PAGE_BYTES = 4096;
const ZERO_PAGE = new Uint8Array(PAGE_BYTES);
const ENTRY_HEADER_BYTES = 21; // f64 index | f64 term | u8 type | u32 length
const enum OpKind { Append = 1, Truncate = 2, Compact = 3, HardState = 4, Snapshot = 5 }

export class LogFileStorage extends QueuedStorage implements RaftStorage {
  private readonly file: string;
  private readonly durable: boolean;
  /** With fsync, a flush waits on the disk: the driver overlaps a leader's writes (storage.ts). */
  readonly slowFlush: boolean;
  private fd: number;
  /** Where the next frame goes: the end of the last whole frame. */
  private end = 0;
  /**
   * The file's size: frames are written inside zeros written ahead of them (GROW_BYTES at a
   * time), so a durable flush's fdatasync writes data only. An append that grows the file also
   * makes the fdatasync commit the file system's journal (the size changed): measured here,
   * ~240 µs instead of ~130 µs per fdatasync.
   */
  private allocated = 0;
  /** The file as opened, replayed, for the start-up reads (load*); dropped at the first flush. */
  private opened: MemoryStorage | undefined;
  /** Frames written / known durable so far (durable stores), and who waits for which. */
  private written = 0;
  private synced = 0;
  private waiters: Array<{ upTo: number; resolve: () => void; reject: (e: Error) => void }> = [];
  private failure: Error | undefined;
  /** The fd the running fdatasync is on (-1: none); a rewrite that replaces it leaves it open until then. */
  private syncingFd = -1;
  /** Where flush() encodes its frame (encodeFrame). */
  private readonly scratch: FrameScratch = newScratch(4096);
  readonly stats = { frames: 0, fdatasyncs: 0, rewrites: 0, zeroWrites: 0 };

  constructor(options: LogFileStorageOptions) {
    super();
    this.durable = options.durable ?? true;
    this.slowFlush = this.durable;
    mkdirSync(options.path, { recursive: true });
    this.file = join(options.path, 'raft.log');
    rmSync(`${this.file}.tmp`, { force: true }); // a rewrite that crashed before its rename
    const fresh = !existsSync(this.file);
    this.fd = openSync(this.file, fresh ? 'w+' : 'r+');
    if (fresh && this.durable) this.syncDirectory(options.path);
    this.replay();
  }

  flush(): Promise<void> | undefined {
    if (this.failure) throw this.failure;
    const ops = this.takeOps();
    if (ops.length === 0) return this.durable ? this.whenSynced(this.written) : undefined;
    this.opened = undefined;
    this.writeFrame(encodeFrame(ops, this.scratch));
    if (ops.some((op) => op.kind === 'compact')) {
      this.rewrite();
      return this.durable ? this.whenSynced(this.written) : undefined;
    }
    if (!this.durable) return undefined;
    const done = this.whenSynced(this.written);
    this.startSync();
    return done;
  }

  async loadEntries(after: number): Promise<Entry[]> {
    return this.contents().loadEntries(after);
  }
  async loadHardState(): Promise<HardState | undefined> {
    return this.contents().loadHardState();
  }
  async loadSnapshot(): Promise<Snapshot | undefined> {
    return this.contents().loadSnapshot();
  }

  /** What the file holds, replayed (kept from the open until the first flush, else read again). */
  private contents(): MemoryStorage {
    return this.opened ?? readFrames(readFileSync(this.file)).state;
  }

  async close(): Promise<void> {
    if (this.durable) await this.whenSynced(this.written).catch(() => undefined);
    closeSync(this.fd);
  }

  /** Resolves once frames up to `upTo` are durable (at once if they are). */
  private whenSynced(upTo: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (upTo <= this.synced) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ upTo, resolve, reject }));
  }

  /** One fdatasync at a time; the next covers every frame written while this one ran. */
  private startSync(): void {
    if (this.syncingFd >= 0 || this.synced === this.written) return;
    const upTo = this.written;
    const fd = this.fd;
    this.syncingFd = fd;
    this.stats.fdatasyncs++;
    fdatasync(fd, (error) => {
      this.syncingFd = -1;
      if (fd !== this.fd) closeSync(fd); // replaced by a rewrite, which fsynced everything itself
      if (error) {
        this.fail(error);
        return;
      }
      this.markSynced(upTo);
      this.startSync();
    });
  }

  private markSynced(upTo: number): void {
    if (upTo <= this.synced) return;
    this.synced = upTo;
    let n = 0;
    while (n < this.waiters.length && this.waiters[n]!.upTo <= upTo) n++;
    const done = this.waiters.splice(0, n);
    for (const w of done) w.resolve();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const waiting = this.waiters;
    this.waiters = [];
    for (const w of waiting) w.reject(this.failure);
  }

  /**
   * Replaces the file with one frame holding the whole state (snapshot, hard state, entries
   * after the snapshot), read back from it: written to a tmp file, made durable, then renamed
   * over the log.
   */
  private rewrite(): void {
    const { snapshot, hardState, entries } = this.contents().contents();
    const ops: StorageOp[] = [];
    if (snapshot) ops.push({ kind: 'snap', snapshot });
    if (hardState) ops.push({ kind: 'hs', hs: hardState });
    ops.push({ kind: 'append', entries });
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w+');
    const frame = encodeFrame(ops);
    writeAll(fd, frame, 0);
    if (this.durable) fsyncSync(fd);
    renameSync(tmp, this.file);
    if (this.durable) this.syncDirectory(join(this.file, '..'));
    const old = this.fd;
    this.fd = fd;
    if (old !== this.syncingFd) closeSync(old); // (else closed when its fdatasync returns)
    this.end = frame.byteLength;
    this.allocated = frame.byteLength;
    this.written++;
    this.stats.frames++;
    this.stats.rewrites++;
    if (this.durable) this.markSynced(this.written); // fsynced above, with everything before it
  }

  /** Writes a frame at `end`, inside zeros written ahead (see `allocated`). */
  private writeFrame(frame: Uint8Array): void {
    if (this.end + frame.byteLength > this.allocated) {
      const grow = Math.max(GROW_BYTES, this.end + frame.byteLength - this.allocated);
      this.writeZeros(this.allocated, grow);
      this.allocated += grow;
    }
    writeAll(this.fd, frame, this.end);
    this.end += frame.byteLength;
    this.written++;
    this.stats.frames++;
  }

  /**
   * Writes `length` zero bytes at `position`, one page at a time (page-aligned). The page cache
   * keeps a file's pages in folios sized by the writes that created them: one 1 MiB write made
   * 1 MiB folios (this kernel, ext4 with large folios), and every later frame written into one
   * walked all 256 of its block buffers twice (ext4_block_write_begin, block_commit_write):
   * ~4.1-4.5 µs per 120-byte frame after a 50 µs sleep, against ~2.0-2.3 µs inside pages
   * created page by page (measured 2026-11-22, src/raft/README.md, Performance). The grow itself
   * is no slower (16 MiB: 11-15 ms page by page, 44 ms in 1 MiB writes). Zeros read back at open
   * from a file not in the page cache may come in large folios again (read-ahead): that lasts
   * until the next grow, at most GROW_BYTES of frames.
   */
  private writeZeros(position: number, length: number): void {
    const end = position + length;
    let at = position;
    while (at < end) {
      const next = Math.min(end, (Math.floor(at / PAGE_BYTES) + 1) * PAGE_BYTES);
      writeAll(this.fd, ZERO_PAGE, at, next - at);
      this.stats.zeroWrites++;
      at = next;
    }
  }

  private syncDirectory(dir: string): void {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Reads the file frame by frame into `state`, up to the zeros written ahead or a torn last
   * frame (then zeroed, so that no stale bytes follow the frames written next).
   */
  private replay(): void {
    const bytes = readFileSync(this.file);
    const { state, end: offset } = readFrames(bytes);
    this.opened = state;
    let last = bytes.byteLength; // past the last byte that is not zero
    while (last > offset && bytes[last - 1] === 0) last--;
    if (last > offset) {
      // A whole frame anywhere after the bad one means damage in place, not a write torn by a
      // crash (a crash tears only the last write): its length field may be what was damaged, so
      // every offset up to the last non-zero byte is tried.
      for (let o = offset + 1; o < last; o++) {
        if (frameAt(bytes, o) !== undefined) {
          throw new RaftStorageCorruptError(this.file, offset, `a frame fails its checksum and a whole frame follows it at byte ${o}`);
        }
      }
      writeAll(this.fd, new Uint8Array(last - offset), offset);
    }
    this.end = offset;
    this.allocated = fstatSync(this.fd).size;
  }
}

/** The whole frames at the start of `bytes`, replayed, and where they end. */
function readFrames(bytes: Uint8Array): { state: MemoryStorage; end: number } {
  const state = new MemoryStorage();
  let end = 0;
  for (;;) {
    const body = frameAt(bytes, end);
    if (body === undefined) break;
    for (const op of decodeFrame(body)) replayOp(state, op);
    state.flush();
    end += FRAME_HEADER_BYTES + body.byteLength;
  }
  return { state, end };
}

function replayOp(s: MemoryStorage, op: StorageOp): void {
  switch (op.kind) {
    case 'append': s.append(op.entries); return;
    case 'truncate': s.truncateFrom(op.index); return;
    case 'compact': s.compactTo(op.index); return;
    case 'hs': s.setHardState(op.hs); return;
    case 'snap': s.saveSnapshot(op.snapshot); return;
  }
}

/** Writes the first `length` bytes of `bytes` (default all) at `position`. */
function writeAll(fd: number, bytes: Uint8Array, position: number, length = bytes.byteLength): void {
  let at = 0;
  while (at < length) at += writeSync(fd, bytes, at, length - at, position + at);
}

/**
 * The body of the whole frame at `offset`, or undefined if there is none: the end of the bytes,
 * the zeros written ahead (a frame is never empty), a frame cut short, or one failing its checksum.
 */
function frameAt(bytes: Uint8Array, offset: number): Uint8Array | undefined {
  if (offset + FRAME_HEADER_BYTES > bytes.byteLength) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, FRAME_HEADER_BYTES);
  const length = view.getUint32(0);
  const end = offset + FRAME_HEADER_BYTES + length;
  if (length === 0 || end > bytes.byteLength) return undefined;
  const body = bytes.subarray(offset + FRAME_HEADER_BYTES, end);
  return crc32(body) === view.getUint32(4) ? body : undefined;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function opBytes(op: StorageOp): number {
  switch (op.kind) {
    case 'append': {
      let n = 5;
      for (const e of op.entries) n += ENTRY_HEADER_BYTES + e.data.byteLength;
      return n;
    }
    case 'truncate':
    case 'compact':
      return 9;
    case 'hs':
      return 25;
    case 'snap':
      return 9 + utf8.encode(JSON.stringify(op.snapshot.meta)).byteLength + op.snapshot.data.byteLength;
  }
}

/** A buffer a store encodes its frames into, reused from flush to flush (grown as needed). */
interface FrameScratch { bytes: Uint8Array; view: DataView }

function newScratch(size: number): FrameScratch {
  const bytes = new Uint8Array(size);
  return { bytes, view: new DataView(bytes.buffer) };
}

/**
 * One flush's ops as a frame (header, then body): a new array, or, given `scratch`, a view of
 * its bytes valid until its next use. A flush on a commit's path writes one small frame, and a
 * new array per frame was one more off-heap buffer for the garbage collector to track and free.
 */
export function encodeFrame(ops: readonly StorageOp[], scratch?: FrameScratch): Uint8Array {
  let size = FRAME_HEADER_BYTES;
  for (const op of ops) size += opBytes(op);
  if (scratch !== undefined && scratch.bytes.byteLength < size) Object.assign(scratch, newScratch(Math.max(size, 2 * scratch.bytes.byteLength)));
  const out = scratch === undefined ? new Uint8Array(size) : scratch.bytes.subarray(0, size);
  const v = scratch === undefined ? new DataView(out.buffer) : scratch.view;
  let o = FRAME_HEADER_BYTES;
  for (const op of ops) {
    switch (op.kind) {
      case 'append':
        v.setUint8(o, OpKind.Append);
        v.setUint32(o + 1, op.entries.length);
        o += 5;
        for (const e of op.entries) {
          v.setFloat64(o, e.index);
          v.setFloat64(o + 8, e.term);
          v.setUint8(o + 16, e.type);
          v.setUint32(o + 17, e.data.byteLength);
          out.set(e.data, o + ENTRY_HEADER_BYTES);
          o += ENTRY_HEADER_BYTES + e.data.byteLength;
        }
        break;
      case 'truncate':
      case 'compact':
        v.setUint8(o, op.kind === 'truncate' ? OpKind.Truncate : OpKind.Compact);
        v.setFloat64(o + 1, op.index);
        o += 9;
        break;
      case 'hs':
        v.setUint8(o, OpKind.HardState);
        v.setFloat64(o + 1, op.hs.term);
        v.setFloat64(o + 9, op.hs.vote);
        v.setFloat64(o + 17, op.hs.commit);
        o += 25;
        break;
      case 'snap': {
        const meta = utf8.encode(JSON.stringify(op.snapshot.meta));
        v.setUint8(o, OpKind.Snapshot);
        v.setUint32(o + 1, meta.byteLength);
        out.set(meta, o + 5);
        o += 5 + meta.byteLength;
        v.setUint32(o, op.snapshot.data.byteLength);
        out.set(op.snapshot.data, o + 4);
        o += 4 + op.snapshot.data.byteLength;
        break;
      }
    }
  }
  const body = out.subarray(FRAME_HEADER_BYTES);
  v.setUint32(0, body.byteLength);
  v.setUint32(4, crc32(body));
  return out;
}

/** A checked frame body's ops; data is copied (the body is a view of the whole file). */
function decodeFrame(body: Uint8Array): StorageOp[] {
  const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const ops: StorageOp[] = [];
  let o = 0;
  while (o < body.byteLength) {
    const kind = v.getUint8(o) as OpKind;
    switch (kind) {
      case OpKind.Append: {
        const n = v.getUint32(o + 1);
        o += 5;
        const entries: Entry[] = [];
        for (let i = 0; i < n; i++) {
          const length = v.getUint32(o + 17);
          const start = o + ENTRY_HEADER_BYTES;
          entries.push({ index: v.getFloat64(o), term: v.getFloat64(o + 8), type: v.getUint8(o + 16) as Entry['type'], data: body.slice(start, start + length) });
          o = start + length;
        }
        ops.push({ kind: 'append', entries });
        break;
      }
      case OpKind.Truncate:
      case OpKind.Compact:
        ops.push({ kind: kind === OpKind.Truncate ? 'truncate' : 'compact', index: v.getFloat64(o + 1) });
        o += 9;
        break;
      case OpKind.HardState:
        ops.push({ kind: 'hs', hs: { term: v.getFloat64(o + 1), vote: v.getFloat64(o + 9), commit: v.getFloat64(o + 17) } });
        o += 25;
        break;
      case OpKind.Snapshot: {
        const metaLength = v.getUint32(o + 1);
        const meta = JSON.parse(fromUtf8.decode(body.subarray(o + 5, o + 5 + metaLength))) as Snapshot['meta'];
        o += 5 + metaLength;
        const dataLength = v.getUint32(o);
        ops.push({ kind: 'snap', snapshot: { meta, data: body.slice(o + 4, o + 4 + dataLength) } });
        o += 4 + dataLength;
        break;
      }
      default:
        throw new RaftStorageCorruptError('(frame)', o, `unknown op kind ${kind as number} in a frame that passed its checksum`);
    }
  }
  return ops;
}
