/**
 * Opens the Raft log kept at `path`: a LogFileStorage (a directory holding one append-only file,
 * the default since 2026-11-22), or an LmdbStorage if an earlier version left an LMDB log there
 * (`path` is LMDB's data file itself, as lmdb-js makes it for a path with an extension, or a
 * directory with `data.mdb` and no `raft.log`), so a node's existing log is resumed, not silently
 * replaced by an empty one.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LmdbStorage } from './lmdb-storage.js';
import { LogFileStorage } from './log-file-storage.js';
import type { RaftStorage } from './storage.js';

export function openRaftLog(options: { path: string; durable: boolean }): RaftStorage {
  const found = statSync(options.path, { throwIfNoEntry: false });
  const lmdb = found !== undefined && (found.isFile()
    || (existsSync(join(options.path, 'data.mdb')) && !existsSync(join(options.path, 'raft.log'))));
  return lmdb ? new LmdbStorage(options) : new LogFileStorage(options);
}
