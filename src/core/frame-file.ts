/**
 * An append-only file of checksummed frames with group-committed fdatasync: what the Raft log
 * (src/raft/log-file-storage.ts) and the persistence store's write-ahead log (persistence/wal.ts)
 * both write.
 *
 * Frame: `u32 SYNCED_FLAG | n | u32 crc32(the n bytes) | f64 synced | body` (big-endian), n =
 * 8 + the body's length; a body is never empty. `synced` is how many bytes of the file a
 * completed fdatasync covered when the frame was written (below). Frames written before
 * 2026-11-22 have no flag and no `synced`: `u32 n | u32 crc32 | body`; they still read.
 * Callers encode a frame with FRAME_HEADER_BYTES reserved at its start; `write` seals it.
 * Frames are written inside zeros written ahead of them (GROW_BYTES at a time, a page per
 * write), so the file ends in zeros and a zero length ends the frames: a durable fdatasync then
 * writes data only. An append that grows the file also makes the fdatasync commit the file
 * system's journal (the size changed): measured here, ~240 µs instead of ~130 µs per fdatasync.
 *
 * Opening reads the whole frames from the start, up to the first frame cut short or failing its
 * checksum (at byte X). Whatever no completed fdatasync covered may reach the disk in any order
 * after a machine crash (the kernel writes dirty pages back as it likes): a frame spanning two
 * pages can have lost its second page while later frames on later pages arrived whole. So a bad
 * frame is a write torn by a crash unless a whole frame after it says (`synced` > X) that an
 * fdatasync covering X had completed: then it is damage, and opening throws the caller's
 * corruption error. Torn, it and everything after it were never reported durable (any sync that
 * covered a later frame covered it too); opening zeroes them (counted in `stats.tornTails`).
 * What this cannot tell apart: damage to a frame whose fdatasync completed after the last frame
 * was written (no later frame says so) reads as torn; and an old-format frame after a bad one
 * counts as damage, as before.
 *
 * Durability: with `durable`, `whenSynced(n)` resolves after an fdatasync that started after
 * frame n was written: one fdatasync runs at a time, on libuv's thread pool, and the next covers
 * every frame written meanwhile (group commit), so frames become durable in order.
 */
import { closeSync, existsSync, fdatasync, fdatasyncSync, fsyncSync, fstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';

/** Bytes reserved at a frame's start: length and flag, checksum, `synced` (see the file comment). */
export const FRAME_HEADER_BYTES = 16;
/** The length and flag word and the checksum: what the checksum does not cover. */
const OUTER_HEADER_BYTES = 8;
/** Set in the first word of frames that carry `synced`. */
const SYNCED_FLAG = 0x8000_0000;
/** The file grows by this many zero bytes at a time (see the file comment). */
const GROW_BYTES = 1 << 20;
/** The zeros ahead are written one page at a time (see FrameFile.writeZeros). */
const PAGE_BYTES = 4096;
const ZERO_PAGE = new Uint8Array(PAGE_BYTES);

/** Makes the error thrown for a damaged file: `offset` of the bad frame, and what is wrong. */
export type CorruptionError = (path: string, offset: number, detail: string) => Error;

/**
 * Fills in the header of `frame` (FRAME_HEADER_BYTES reserved at its start, body after), with
 * `synced` (see the file comment; FrameFile.write passes its own).
 */
export function sealFrame(frame: Uint8Array, synced = 0): Uint8Array {
  const view = new DataView(frame.buffer, frame.byteOffset, FRAME_HEADER_BYTES);
  view.setFloat64(OUTER_HEADER_BYTES, synced);
  const covered = frame.subarray(OUTER_HEADER_BYTES);
  view.setUint32(0, (SYNCED_FLAG | covered.byteLength) >>> 0);
  view.setUint32(4, crc32(covered));
  return frame;
}

/** A whole frame read back: its body, its `synced` (Infinity for an old-format frame), its size. */
interface ReadFrame {
  readonly body: Uint8Array;
  readonly synced: number;
  readonly size: number;
}

/**
 * The whole frame at `offset`, or undefined if there is none: the end of the bytes, the zeros
 * written ahead (a frame is never empty), a frame cut short, or one failing its checksum.
 */
function readFrame(bytes: Uint8Array, offset: number): ReadFrame | undefined {
  if (offset + OUTER_HEADER_BYTES > bytes.byteLength) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, OUTER_HEADER_BYTES);
  const word = view.getUint32(0);
  const flagged = (word & SYNCED_FLAG) !== 0;
  const length = flagged ? word & ~SYNCED_FLAG : word;
  const end = offset + OUTER_HEADER_BYTES + length;
  if (length === 0 || (flagged && length <= 8) || end > bytes.byteLength) return undefined;
  const covered = bytes.subarray(offset + OUTER_HEADER_BYTES, end);
  if (crc32(covered) !== view.getUint32(4)) return undefined;
  if (!flagged) return { body: covered, synced: Infinity, size: OUTER_HEADER_BYTES + length };
  const synced = new DataView(covered.buffer, covered.byteOffset, 8).getFloat64(0);
  return { body: covered.subarray(8), synced, size: OUTER_HEADER_BYTES + length };
}

/** The body of the whole frame at `offset` (a view into `bytes`), or undefined (readFrame). */
export function frameAt(bytes: Uint8Array, offset: number): Uint8Array | undefined {
  return readFrame(bytes, offset)?.body;
}

/** The bodies of the whole frames at the start of `bytes` (views into it), and where they end. */
export function frameBodies(bytes: Uint8Array): { bodies: Uint8Array[]; end: number } {
  const bodies: Uint8Array[] = [];
  let end = 0;
  for (;;) {
    const frame = readFrame(bytes, end);
    if (frame === undefined) return { bodies, end };
    bodies.push(frame.body);
    end += frame.size;
  }
}

/** Writes the first `length` bytes of `bytes` (default all) at `position`. */
export function writeAll(fd: number, bytes: Uint8Array, position: number, length = bytes.byteLength): void {
  let at = 0;
  while (at < length) at += writeSync(fd, bytes, at, length - at, position + at);
}

export function syncDirectory(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** How a file descriptor's data is synced: node's fdatasync, or a test's stand-in. */
export type Fdatasync = (fd: number, callback: (error: Error | null) => void) => void;
/** The same, on the calling thread (throws on failure). */
export type FdatasyncSync = (fd: number) => void;

export interface FrameFileStats {
  frames: number;
  fdatasyncs: number;
  rewrites: number;
  /** Frames found torn (cut short or failing their checksum) at the end when opening. */
  tornTails: number;
  /** Page-sized writes of the zeros ahead (writeZeros). */
  zeroWrites: number;
}

export class FrameFile {
  private fd: number;
  /** Where the next frame goes: the end of the last whole frame. */
  private end = 0;
  /** The file's size: frames are written inside zeros written ahead of them. */
  private allocated = 0;
  /** Frames known durable so far (durable files; written: stats.frames), and who waits for which. */
  private synced = 0;
  /** Bytes a completed fdatasync covered (what each frame written next records as `synced`). */
  private syncedBytes = 0;
  private waiters: Array<{ upTo: number; resolve: () => void; reject: (e: Error) => void }> = [];
  private failure: Error | undefined;
  /** The fd the running fdatasync is on (-1: none); a rewrite that replaces it leaves it open until then. */
  private syncingFd = -1;
  /** The bodies of the frames found when opening (views into the file as read). */
  readonly opened: Uint8Array[];
  readonly stats: FrameFileStats = { frames: 0, fdatasyncs: 0, rewrites: 0, tornTails: 0, zeroWrites: 0 };

  /**
   * Opens (creating if missing) the file at `path` and reads its whole frames into `opened`;
   * a torn last frame is zeroed, damage throws `corrupt(...)`.
   */
  constructor(
    readonly path: string,
    readonly durable: boolean,
    private readonly corrupt: CorruptionError,
    private readonly sync: Fdatasync = fdatasync,
    private readonly syncSync: FdatasyncSync = fdatasyncSync,
  ) {
    rmSync(`${path}.tmp`, { force: true }); // a rewrite that crashed before its rename
    const fresh = !existsSync(path);
    this.fd = openSync(path, fresh ? 'w+' : 'r+');
    if (fresh && durable) syncDirectory(dirname(path));
    this.opened = this.replay();
  }

  /** Frames written so far (a frame's number is the count after writing it). */
  get frames(): number {
    return this.stats.frames;
  }
  /** True while an fdatasync of this file runs (a whenSynced now waits for it and the next). */
  get syncing(): boolean {
    return this.syncingFd >= 0;
  }
  /** Bytes of whole frames in the file. */
  get bytes(): number {
    return this.end;
  }

  /**
   * Seals `frame` (FRAME_HEADER_BYTES reserved at its start) and writes it at the end, inside
   * zeros written ahead; returns its number.
   */
  write(frame: Uint8Array): number {
    if (this.failure) throw this.failure;
    sealFrame(frame, this.syncedBytes);
    if (this.end + frame.byteLength > this.allocated) {
      const grow = Math.max(GROW_BYTES, this.end + frame.byteLength - this.allocated);
      this.writeZeros(this.allocated, grow);
      this.allocated += grow;
    }
    writeAll(this.fd, frame, this.end);
    this.end += frame.byteLength;
    return ++this.stats.frames;
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

  /** Resolves once frames up to `upTo` are durable (at once if they are), starting a sync if needed. */
  whenSynced(upTo = this.stats.frames): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (upTo <= this.synced) return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ upTo, resolve, reject }));
    this.startSync();
    return done;
  }

  /** Makes every frame written so far durable now, on this thread. Throws (and fails the file) if the sync fails. */
  syncNow(): void {
    if (this.failure) throw this.failure;
    if (!this.durable || this.synced === this.stats.frames) return;
    this.stats.fdatasyncs++;
    try {
      this.syncSync(this.fd);
    } catch (error) {
      this.fail(error as Error);
      throw error;
    }
    this.markSynced(this.stats.frames, this.end);
  }

  /**
   * Replaces the file with one frame: written to `<path>.tmp`, made durable (durable files), then
   * renamed over the file. Counts as a written (and, durable, synced) frame.
   */
  rewrite(frame: Uint8Array): void {
    sealFrame(frame, 0);
    const tmp = `${this.path}.tmp`;
    const fd = openSync(tmp, 'w+');
    writeAll(fd, frame, 0);
    if (this.durable) fsyncSync(fd);
    renameSync(tmp, this.path);
    if (this.durable) syncDirectory(dirname(this.path));
    const old = this.fd;
    this.fd = fd;
    if (old !== this.syncingFd) closeSync(old); // (else closed when its fdatasync returns)
    this.end = frame.byteLength;
    this.allocated = frame.byteLength;
    this.stats.frames++;
    this.stats.rewrites++;
    this.syncedBytes = 0; // (offsets of the old file mean nothing in this one)
    if (this.durable) this.markSynced(this.stats.frames, this.end); // fsynced above, with everything before it
  }

  /** Waits for the syncs of everything written (durable), then closes the file. */
  async close(): Promise<void> {
    if (this.durable) await this.whenSynced(this.stats.frames).catch(() => undefined);
    closeSync(this.fd);
  }

  /** One fdatasync at a time; the next covers every frame written while this one ran. */
  private startSync(): void {
    if (!this.durable || this.syncingFd >= 0 || this.synced === this.stats.frames) return;
    const upTo = this.stats.frames;
    const upToBytes = this.end;
    const fd = this.fd;
    this.syncingFd = fd;
    this.stats.fdatasyncs++;
    this.sync(fd, (error) => {
      this.syncingFd = -1;
      if (fd !== this.fd) closeSync(fd); // replaced by a rewrite, which fsynced everything itself
      if (error) {
        this.fail(error);
        return;
      }
      if (fd === this.fd) this.markSyncedBytes(upToBytes); // (a rewrite's file: its own offsets)
      this.markSynced(upTo);
      this.startSync();
    });
  }

  private markSyncedBytes(bytes: number): void {
    if (bytes > this.syncedBytes) this.syncedBytes = bytes;
  }

  private markSynced(upTo: number, bytes?: number): void {
    if (bytes !== undefined) this.markSyncedBytes(bytes);
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
   * Reads the file frame by frame, up to the zeros written ahead or a torn last frame (then
   * zeroed, so that no stale bytes follow the frames written next).
   */
  private replay(): Uint8Array[] {
    const bytes = readFileSync(this.path);
    const { bodies, end: offset } = frameBodies(bytes);
    let last = bytes.byteLength; // past the last byte that is not zero
    while (last > offset && bytes[last - 1] === 0) last--;
    if (last > offset) {
      // A whole frame after the bad one whose `synced` passes it means an fdatasync covering the
      // bad one had completed: damage in place, not a write torn by a crash (file comment). Its
      // length field may be what was damaged, so every offset up to the last non-zero byte is
      // tried.
      for (let o = offset + 1; o < last; o++) {
        const later = readFrame(bytes, o);
        if (later !== undefined && later.synced > offset) {
          const why = later.synced === Infinity ? 'a whole frame (written before frames said what was synced) follows it' : `a whole frame follows it that was written after an fdatasync covered it (to byte ${later.synced})`;
          throw this.corrupt(this.path, offset, `a frame fails its checksum and ${why}, at byte ${o}`);
        }
      }
      writeAll(this.fd, new Uint8Array(last - offset), offset);
      this.stats.tornTails++;
    }
    this.end = offset;
    this.allocated = fstatSync(this.fd).size;
    return bodies;
  }
}
