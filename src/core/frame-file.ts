/**
 * An append-only file of checksummed frames with group-committed fdatasync: what the Raft log
 * (src/raft/log-file-storage.ts) and the persistence store's write-ahead log (persistence/wal.ts)
 * both write.
 *
 * Frame: `u32 body length | u32 crc32(body) | body` (big-endian); a body is never empty. Frames
 * are written inside zeros written ahead of them (GROW_BYTES at a time, a page per write), so
 * the file ends in zeros and a zero length ends the frames: a durable fdatasync then writes data
 * only. An append that grows the file also makes the fdatasync commit the file system's journal
 * (the size changed): measured here, ~240 µs instead of ~130 µs per fdatasync.
 *
 * Opening reads the whole frames from the start. A frame cut short or failing its checksum is a
 * write torn by a crash: it was never reported durable, and opening zeroes it (counted in
 * `stats.tornTails`). A failing frame followed by a whole frame is damage, not a torn write (a
 * crash tears only the last write): opening throws the caller's corruption error.
 *
 * Durability: with `durable`, `whenSynced(n)` resolves after an fdatasync that started after
 * frame n was written: one fdatasync runs at a time, on libuv's thread pool, and the next covers
 * every frame written meanwhile (group commit), so frames become durable in order.
 */
import { closeSync, existsSync, fdatasync, fdatasyncSync, fsyncSync, fstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { crc32 } from 'node:zlib';

export const FRAME_HEADER_BYTES = 8;
/** The file grows by this many zero bytes at a time (see the file comment). */
const GROW_BYTES = 1 << 20;
/** The zeros ahead are written one page at a time (see FrameFile.writeZeros). */
const PAGE_BYTES = 4096;
const ZERO_PAGE = new Uint8Array(PAGE_BYTES);

/** Makes the error thrown for a damaged file: `offset` of the bad frame, and what is wrong. */
export type CorruptionError = (path: string, offset: number, detail: string) => Error;

/** Fills in the header of `frame` (FRAME_HEADER_BYTES reserved at its start, body after). */
export function sealFrame(frame: Uint8Array): Uint8Array {
  const view = new DataView(frame.buffer, frame.byteOffset, FRAME_HEADER_BYTES);
  const body = frame.subarray(FRAME_HEADER_BYTES);
  view.setUint32(0, body.byteLength);
  view.setUint32(4, crc32(body));
  return frame;
}

/**
 * The body of the whole frame at `offset`, or undefined if there is none: the end of the bytes,
 * the zeros written ahead (a frame is never empty), a frame cut short, or one failing its checksum.
 */
export function frameAt(bytes: Uint8Array, offset: number): Uint8Array | undefined {
  if (offset + FRAME_HEADER_BYTES > bytes.byteLength) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, FRAME_HEADER_BYTES);
  const length = view.getUint32(0);
  const end = offset + FRAME_HEADER_BYTES + length;
  if (length === 0 || end > bytes.byteLength) return undefined;
  const body = bytes.subarray(offset + FRAME_HEADER_BYTES, end);
  return crc32(body) === view.getUint32(4) ? body : undefined;
}

/** The bodies of the whole frames at the start of `bytes` (views into it), and where they end. */
export function frameBodies(bytes: Uint8Array): { bodies: Uint8Array[]; end: number } {
  const bodies: Uint8Array[] = [];
  let end = 0;
  for (;;) {
    const body = frameAt(bytes, end);
    if (body === undefined) return { bodies, end };
    bodies.push(body);
    end += FRAME_HEADER_BYTES + body.byteLength;
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
  /** Frames written / known durable so far (durable files), and who waits for which. */
  private written = 0;
  private synced = 0;
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
    return this.written;
  }
  /** Bytes of whole frames in the file. */
  get bytes(): number {
    return this.end;
  }

  /** Writes a sealed frame at the end, inside zeros written ahead; returns its number. */
  write(frame: Uint8Array): number {
    if (this.failure) throw this.failure;
    if (this.end + frame.byteLength > this.allocated) {
      const grow = Math.max(GROW_BYTES, this.end + frame.byteLength - this.allocated);
      this.writeZeros(this.allocated, grow);
      this.allocated += grow;
    }
    writeAll(this.fd, frame, this.end);
    this.end += frame.byteLength;
    this.written++;
    this.stats.frames++;
    return this.written;
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
  whenSynced(upTo = this.written): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (upTo <= this.synced) return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ upTo, resolve, reject }));
    this.startSync();
    return done;
  }

  /** Makes every frame written so far durable now, on this thread. Throws (and fails the file) if the sync fails. */
  syncNow(): void {
    if (this.failure) throw this.failure;
    if (!this.durable || this.synced === this.written) return;
    this.stats.fdatasyncs++;
    try {
      this.syncSync(this.fd);
    } catch (error) {
      this.fail(error as Error);
      throw error;
    }
    this.markSynced(this.written);
  }

  /**
   * Replaces the file with one frame: written to `<path>.tmp`, made durable (durable files), then
   * renamed over the file. Counts as a written (and, durable, synced) frame.
   */
  rewrite(frame: Uint8Array): void {
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
    this.written++;
    this.stats.frames++;
    this.stats.rewrites++;
    if (this.durable) this.markSynced(this.written); // fsynced above, with everything before it
  }

  /** Waits for the syncs of everything written (durable), then closes the file. */
  async close(): Promise<void> {
    if (this.durable) await this.whenSynced(this.written).catch(() => undefined);
    closeSync(this.fd);
  }

  /** One fdatasync at a time; the next covers every frame written while this one ran. */
  private startSync(): void {
    if (!this.durable || this.syncingFd >= 0 || this.synced === this.written) return;
    const upTo = this.written;
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
   * Reads the file frame by frame, up to the zeros written ahead or a torn last frame (then
   * zeroed, so that no stale bytes follow the frames written next).
   */
  private replay(): Uint8Array[] {
    const bytes = readFileSync(this.path);
    const { bodies, end: offset } = frameBodies(bytes);
    let last = bytes.byteLength; // past the last byte that is not zero
    while (last > offset && bytes[last - 1] === 0) last--;
    if (last > offset) {
      // A whole frame anywhere after the bad one means damage in place, not a write torn by a
      // crash (a crash tears only the last write): its length field may be what was damaged, so
      // every offset up to the last non-zero byte is tried.
      for (let o = offset + 1; o < last; o++) {
        if (frameAt(bytes, o) !== undefined) {
          throw this.corrupt(this.path, offset, `a frame fails its checksum and a whole frame follows it at byte ${o}`);
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
