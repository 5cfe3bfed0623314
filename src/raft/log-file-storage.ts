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
 *     see FrameFile.writeZeros in src/core/frame-file.ts);
 *   - durable, a flush is that write then one fdatasync on libuv's thread pool, where LMDB
 *     (lmdb-js) fsyncs twice (data, then meta) and hops through its write thread and the event
 *     loop: with 64 puts outstanding the durable flush's wall time is what bounds throughput.
 *
 * A frame (src/core/frame-file.ts: length, checksum, how far fdatasync had reached, body) per
 * flush; body: ops, each `u8 kind` then
 *   append    u32 count, then per entry: f64 index | f64 term | u8 type | u32 length | data
 *   truncate  f64 index          (drop entries ≥ index)
 *   compact   f64 index          (drop entries ≤ index)
 *   hs        f64 term | f64 vote | f64 commit
 *   snap      u32 meta length | meta (JSON) | u32 data length | data
 * (all big-endian). The frames, their torn-tail and corruption rules and the group-committed
 * fdatasync are src/core/frame-file.ts's (shared with the persistence store's write-ahead log): a
 * frame cut short or failing its checksum is a write torn by a crash, never reported durable, and
 * zeroed when opening with everything after it, unless a whole frame after it records that an
 * fdatasync had covered it: then it is damage, RaftStorageCorruptError.
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
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SquallError } from '../core/errors.js';
import { FRAME_HEADER_BYTES, FrameFile, frameBodies, type FrameFileStats } from '../core/frame-file.js';
import type { Entry, HardState, Snapshot } from './types.js';
import { MemoryStorage, QueuedStorage, type RaftStorage, type StorageOp } from './storage.js';

/** The log file holds a frame that fails its checksum although a later frame says it was synced. */
export class RaftStorageCorruptError extends SquallError {
  constructor(path: string, offset: number, detail: string) {
    super(
      `raft log ${path} is corrupt at byte ${offset}: ${detail}. A crash only tears writes no fdatasync had ` +
        'covered yet, so this is damage to the file itself: restore this node from another member (remove its data dir and ' +
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

const ENTRY_HEADER_BYTES = 21; // f64 index | f64 term | u8 type | u32 length
const enum OpKind { Append = 1, Truncate = 2, Compact = 3, HardState = 4, Snapshot = 5 }

export class LogFileStorage extends QueuedStorage implements RaftStorage {
  private readonly durable: boolean;
  /** With fsync, a flush waits on the disk: the driver overlaps a leader's writes (storage.ts). */
  readonly slowFlush: boolean;
  /** The frames, their group-committed fdatasync and the torn-tail rules (src/core/frame-file.ts). */
  private readonly file: FrameFile;
  /** The file as opened, replayed, for the start-up reads (load*); dropped at the first flush. */
  private opened: MemoryStorage | undefined;
  /** Where flush() encodes its frame (encodeFrame). */
  private readonly scratch: FrameScratch = newScratch(4096);

  constructor(options: LogFileStorageOptions) {
    super();
    this.durable = options.durable ?? true;
    this.slowFlush = this.durable;
    mkdirSync(options.path, { recursive: true });
    this.file = new FrameFile(join(options.path, 'raft.log'), this.durable, (path, offset, detail) => new RaftStorageCorruptError(path, offset, detail));
    this.opened = replayFrames(this.file.opened);
  }

  get stats(): FrameFileStats {
    return this.file.stats;
  }

  flush(): Promise<void> | undefined {
    const ops = this.takeOps();
    if (ops.length === 0) return this.durable ? this.file.whenSynced() : undefined;
    this.opened = undefined;
    this.file.write(encodeFrame(ops, this.scratch));
    if (ops.some((op) => op.kind === 'compact')) this.rewrite();
    return this.durable ? this.file.whenSynced() : undefined;
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
    return this.opened ?? replayFrames(frameBodies(readFileSync(this.file.path)).bodies);
  }

  async close(): Promise<void> {
    await this.file.close();
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
    this.file.rewrite(encodeFrame(ops));
  }
}

/** Frame bodies, replayed in order into a MemoryStorage. */
function replayFrames(bodies: readonly Uint8Array[]): MemoryStorage {
  const state = new MemoryStorage();
  for (const body of bodies) {
    for (const op of decodeFrame(body)) replayOp(state, op);
    state.flush();
  }
  return state;
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
