// Proves the on-disk Raft storages (LmdbStorage, LogFileStorage) keep their contract: a flushed
// batch reads back exactly after a reopen (log, truncation, compaction, hard state, snapshot),
// each agrees with MemoryStorage on a random sequence of Readies' writes, and a process killed
// with SIGKILL in the middle of appends loses nothing it had reported durable and leaves no torn
// batch. Then what only the log file has: a torn last frame is cut off, a damaged frame before
// others is refused, compaction rewrites the file, and durable flushes share fdatasyncs.
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SeededRandom } from '../../src/core/random.js';
import { LmdbStorage } from '../../src/raft/lmdb-storage.js';
import { LogFileStorage, RaftStorageCorruptError } from '../../src/raft/log-file-storage.js';
import { openRaftLog } from '../../src/raft/open-log.js';
import { loadInitialState, MemoryStorage, type RaftStorage } from '../../src/raft/storage.js';
import { EntryType, type Entry } from '../../src/raft/types.js';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'squall-raft-lmdb-'));
  dirs.push(dir);
  return dir;
}
test.after.always(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const entry = (index: number, term: number, text = `e${index}`): Entry => ({
  index, term, type: EntryType.Normal, data: new TextEncoder().encode(text),
});

/** The two on-disk storages, by name, and the module a child process imports each from. */
const kinds = [
  { name: 'LMDB', module: 'lmdb-storage.js', className: 'LmdbStorage',
    open: (path: string, durable = true): RaftStorage => new LmdbStorage({ path, durable }) },
  { name: 'log file', module: 'log-file-storage.js', className: 'LogFileStorage',
    open: (path: string, durable = true): RaftStorage => new LogFileStorage({ path, durable }) },
];

for (const kind of kinds) {
  test(`${kind.name}: a flushed batch survives close and reopen: log, truncation, compaction, hard state, snapshot`, async (t) => {
    const path = tempDir();
    const s = kind.open(path);
    s.append([1, 2, 3, 4, 5].map((i) => entry(i, 1)));
    s.setHardState({ term: 1, vote: 2, commit: 3 });
    await s.flush();
    s.truncateFrom(4);
    s.append([entry(4, 2, 'new4')]);
    s.saveSnapshot({ meta: { index: 2, term: 1, conf: { voters: [1, 2, 3], learners: [4] } }, data: new Uint8Array([9, 8, 7]) });
    s.compactTo(2);
    s.setHardState({ term: 2, vote: 0, commit: 4 });
    await s.flush();
    await s.close();

    const r = kind.open(path);
    const state = await loadInitialState(r);
    t.deepEqual(state.hardState, { term: 2, vote: 0, commit: 4 });
    t.deepEqual(state.snapshot!.meta, { index: 2, term: 1, conf: { voters: [1, 2, 3], learners: [4] } });
    t.deepEqual([...state.snapshot!.data], [9, 8, 7]);
    t.deepEqual(state.entries.map((e) => [e.index, e.term, new TextDecoder().decode(e.data)]), [[3, 1, 'e3'], [4, 2, 'new4']]);
    t.true(state.entries[0]!.data instanceof Uint8Array);
    await r.close();
  });

}

test('a store in format 1 (msgpack log and hard state) opens as format 2 with the same contents', async (t) => {
  const path = tempDir();
  const { open } = await import('lmdb');
  const v1 = open({ path, compression: false });
  const log = v1.openDB<{ t: number; y: number; d: Uint8Array }, number>({ name: 'log', keyEncoding: 'ordered-binary' });
  const meta = v1.openDB<unknown, string>({ name: 'meta' });
  await v1.transaction(() => {
    for (const i of [3, 4, 5]) log.put(i, { t: i === 5 ? 2 : 1, y: EntryType.Normal, d: new TextEncoder().encode(`e${i}`) });
    meta.put('hs', { term: 2, vote: 1, commit: 4 });
    meta.put('snap', { meta: { index: 2, term: 1, conf: { voters: [1, 2, 3], learners: [] } }, data: new Uint8Array([5]) });
  });
  await v1.close();

  for (let open = 0; open < 2; open++) { // the second open finds format 2 and migrates nothing
    const r = new LmdbStorage({ path });
    const state = await loadInitialState(r);
    t.deepEqual(state.hardState, { term: 2, vote: 1, commit: 4 });
    t.is(state.snapshot!.meta.index, 2);
    const expected = [[3, 1, 'e3'], [4, 1, 'e4'], [5, 2, 'e5'], ...(open === 1 ? [[6, 2, 'e6']] : [])];
    t.deepEqual(state.entries.map((e) => [e.index, e.term, new TextDecoder().decode(e.data)]), expected);
    if (open === 0) {
      r.truncateFrom(6);
      r.append([entry(6, 2)]);
      await r.flush();
    }
    await r.close();
  }
});

for (const kind of kinds) {
  test(`${kind.name}: unflushed writes are not visible after reopen`, async (t) => {
    const path = tempDir();
    const s = kind.open(path);
    s.append([entry(1, 1)]);
    await s.flush();
    s.append([entry(2, 1)]); // buffered only
    await s.close();
    const r = kind.open(path);
    t.deepEqual((await r.loadEntries(0)).map((e) => e.index), [1]);
    await r.close();
  });

  test(`${kind.name} and memory storage agree on a random sequence of appends, truncations and compactions, also after a reopen`, async (t) => {
    const rnd = new SeededRandom(11);
    const path = tempDir();
    let lmdb = kind.open(path, false);
    const mem = new MemoryStorage();
    const both = (f: (s: RaftStorage) => void): void => {
      f(lmdb);
      f(mem);
    };
    let last = 0;
    let first = 1;
    let term = 1;
    for (let round = 0; round < 60; round++) {
      const k = rnd.int(4);
      if (k === 0 && last > first) {
        const from = first + rnd.int(last - first + 1);
        term++;
        const es = Array.from({ length: 1 + rnd.int(5) }, (_, i) => entry(from + i, term));
        both((s) => { s.truncateFrom(from); s.append(es); });
        last = from + es.length - 1;
      } else if (k === 1 && last > first + 2) {
        const to = first + rnd.int(last - first - 1);
        both((s) => s.compactTo(to));
        first = to + 1;
      } else {
        const es = Array.from({ length: 1 + rnd.int(8) }, (_, i) => entry(last + 1 + i, term));
        both((s) => s.append(es));
        last += es.length;
      }
      both((s) => s.setHardState({ term, vote: 0, commit: first - 1 }));
      await Promise.all([lmdb.flush(), mem.flush()]);
    }
    const view = async (s: RaftStorage) => (await s.loadEntries(0)).map((e) => `${e.index}/${e.term}`);
    t.deepEqual(await view(lmdb), await view(mem));
    t.deepEqual(await lmdb.loadHardState(), await mem.loadHardState());
    await lmdb.close();
    lmdb = kind.open(path, false);
    t.deepEqual(await view(lmdb), await view(mem));
    t.deepEqual(await lmdb.loadHardState(), await mem.loadHardState());
    await lmdb.close();
  });

  test(`${kind.name}: SIGKILL mid-append: everything reported durable survives, and no batch is torn`, async (t) => {
    const path = tempDir();
    const moduleUrl = new URL(`../../src/raft/${kind.module}`, import.meta.url).href;
    // The child appends batches of 20 entries (one flush each, hard state commit = last index)
    // and prints the last index after each flush resolves; the parent kills it without warning.
    const child = `
      const { ${kind.className}: Storage } = await import(${JSON.stringify(moduleUrl)});
      const s = new Storage({ path: ${JSON.stringify(path)} });
      let last = 0;
      for (;;) {
        const es = [];
        for (let i = 0; i < 20; i++) es.push({ index: ++last, term: 1, type: 0, data: new Uint8Array(100).fill(last & 255) });
        s.append(es);
        s.setHardState({ term: 1, vote: 1, commit: last });
        await s.flush();
        process.stdout.write(last + '\\n');
      }`;
    const proc = spawn(process.execPath, ['--input-type=module', '-e', child], { stdio: ['ignore', 'pipe', 'inherit'] });
    let reported = 0;
    let buffered = '';
    await new Promise<void>((resolve) => {
      proc.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        for (const l of lines) reported = Math.max(reported, Number(l));
        if (reported >= 2000) proc.kill('SIGKILL');
      });
      proc.on('exit', () => resolve());
      setTimeout(() => proc.kill('SIGKILL'), 8000);
    });
    t.true(reported > 0, 'the child reported at least one durable batch');
    const r = kind.open(path);
    const state = await loadInitialState(r);
    const indices = state.entries.map((e) => e.index);
    const lastStored = indices.length ? indices[indices.length - 1]! : 0;
    t.true(lastStored >= reported, `stored ${lastStored} < reported durable ${reported}`);
    t.is(lastStored % 20, 0, 'a batch landed whole or not at all');
    t.deepEqual(indices, Array.from({ length: lastStored }, (_, i) => i + 1), 'log is contiguous');
    t.is(state.hardState.commit, lastStored, 'hard state and log are from the same batch');
    t.true(state.entries.every((e) => e.data.length === 100 && e.data[0] === (e.index & 255)));
    await r.close();
    t.log(`killed after ${reported} reported durable; ${lastStored} on disk`);
  });
}

test('log file: a torn last frame is cut off at open, and the log goes on after it', async (t) => {
  const path = tempDir();
  const s = new LogFileStorage({ path, durable: false });
  s.append([entry(1, 1), entry(2, 1)]);
  s.flush();
  s.append([entry(3, 1)]);
  s.flush();
  await s.close();
  const file = join(path, 'raft.log');
  const whole = readFileSync(file);
  const lengthAt = (at: number): number => whole.readUInt32BE(at) & 0x7fff_ffff; // (the top bit flags `synced`)
  const second = 8 + lengthAt(0); // where the second frame starts
  const end = second + 8 + lengthAt(second);
  t.true(whole.subarray(end).every((b) => b === 0), 'the file ends in the zeros written ahead');
  const damaged = [
    Buffer.concat([whole.subarray(0, end - 3), Buffer.alloc(whole.byteLength - end + 3)]), // its last bytes never written
    Buffer.concat([whole.subarray(0, second), Buffer.alloc(8), whole.subarray(second + 8)]), // its header never written
    whole.subarray(0, end - 3), // the file cut short inside it
  ];
  for (const bytes of damaged) {
    writeFileSync(file, bytes);
    const r = new LogFileStorage({ path, durable: false });
    t.deepEqual((await r.loadEntries(0)).map((e) => e.index), [1, 2]);
    r.append([entry(3, 2, 'again')]);
    r.flush();
    await r.close();
    const again = new LogFileStorage({ path, durable: false });
    t.deepEqual((await again.loadEntries(0)).map((e) => `${e.index}/${e.term}`), ['1/1', '2/1', '3/2']);
    await again.close();
  }
});

test('log file: a damaged frame with frames after it that were written once it was synced is refused with RaftStorageCorruptError', async (t) => {
  const path = tempDir();
  const s = new LogFileStorage({ path });
  for (let i = 1; i <= 3; i++) {
    s.append([entry(i, 1)]);
    await s.flush(); // synced: the next frame records that the fdatasync covered this one
  }
  await s.close();
  const file = join(path, 'raft.log');
  const whole = readFileSync(file);
  for (const at of [20, 1]) { // inside the first frame's body; its length field
    const bytes = Buffer.from(whole);
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(file, bytes);
    const error = t.throws(() => new LogFileStorage({ path }), { instanceOf: RaftStorageCorruptError });
    t.regex(error!.message, /at byte 0:.*written after an fdatasync covered it/s);
  }
});

test('log file: a frame not yet synced that lost a page in a machine crash while later frames reached the disk is cut off with them', async (t) => {
  // The kernel writes dirty pages back in any order: before an fdatasync completes, a later
  // frame's page may reach the disk while an earlier frame's second page does not. None of them
  // was reported durable, so opening drops them all instead of calling the file damaged.
  const path = tempDir();
  const s = new LogFileStorage({ path });
  s.append([entry(1, 1)]);
  await s.flush(); // durable
  s.append([entry(2, 1, 'x'.repeat(5000))]); // spans a page boundary
  const pending = s.flush();
  s.append([entry(3, 1)]);
  const last = s.flush(); // written before the fdatasync for entry 2 completed: it says so
  await Promise.all([pending, last]);
  await s.close();
  const file = join(path, 'raft.log');
  const whole = readFileSync(file);
  const lengthAt = (at: number): number => whole.readUInt32BE(at) & 0x7fff_ffff;
  const second = 8 + lengthAt(0);
  const third = second + 8 + lengthAt(second);
  t.true(lengthAt(third) > 0, 'three frames');
  const lost = Buffer.from(whole);
  lost.fill(0, 4096, third); // the second frame's page after the first never written back
  writeFileSync(file, lost);
  const r = new LogFileStorage({ path });
  t.deepEqual((await r.loadEntries(0)).map((e) => e.index), [1], 'the frames from the torn one on are dropped');
  t.is(r.stats.tornTails, 1);
  r.append([entry(2, 2, 'again')]);
  await r.flush();
  await r.close();
  const again = new LogFileStorage({ path });
  t.deepEqual((await again.loadEntries(0)).map((e) => `${e.index}/${e.term}`), ['1/1', '2/2']);
  await again.close();
});

test('log file: a flush that compacts rewrites the file to the snapshot and the entries after it', async (t) => {
  const path = tempDir();
  const s = new LogFileStorage({ path });
  for (let i = 1; i <= 200; i++) {
    s.append([entry(i, 1, 'x'.repeat(200))]);
    await s.flush();
  }
  const file = join(path, 'raft.log');
  const before = statSync(file).size;
  s.saveSnapshot({ meta: { index: 190, term: 1, conf: { voters: [1, 2, 3], learners: [] } }, data: new Uint8Array([1, 2]) });
  s.compactTo(190);
  s.setHardState({ term: 1, vote: 1, commit: 195 });
  await s.flush();
  t.true(statSync(file).size < before / 10, `${statSync(file).size} bytes after the rewrite, ${before} before`);
  t.is(s.stats.rewrites, 1);
  s.append([entry(201, 1)]); // written after the rewrite, to the new file
  await s.flush();
  await s.close();
  const r = new LogFileStorage({ path });
  const state = await loadInitialState(r);
  t.is(state.snapshot!.meta.index, 190);
  t.deepEqual(state.entries.map((e) => e.index), [191, 192, 193, 194, 195, 196, 197, 198, 199, 200, 201]);
  t.deepEqual(state.hardState, { term: 1, vote: 1, commit: 195 });
  await r.close();
});

test('log file: the zeros ahead are written a page at a time, page-aligned, also from a rewritten end mid-page', async (t) => {
  // One 1 MiB write of zeros made 1 MiB page-cache folios, and each small frame written into
  // them cost about twice as much (LogFileStorage.writeZeros).
  const path = tempDir();
  const s = new LogFileStorage({ path, durable: false });
  const file = join(path, 'raft.log');
  s.append([entry(1, 1)]);
  s.flush();
  t.is(statSync(file).size, 1 << 20);
  t.is(s.stats.zeroWrites, 256, 'a fresh file: 256 page writes');
  s.saveSnapshot({ meta: { index: 1, term: 1, conf: { voters: [1], learners: [] } }, data: new Uint8Array(5) });
  s.compactTo(1);
  s.flush(); // the rewrite: the file ends with its one frame, mid-page
  const end = statSync(file).size;
  t.not(end % 4096, 0);
  s.append([entry(2, 1)]);
  s.flush();
  t.is(statSync(file).size, end + (1 << 20));
  t.is(s.stats.zeroWrites, 256 + 257, 'from mid-page: the rest of that page, 255 pages, then the start of one more');
  const bytes = readFileSync(file);
  t.true(bytes.subarray(end + 100).every((b) => b === 0), 'zeros after the last frame');
  await s.close();
  const r = new LogFileStorage({ path, durable: false });
  t.deepEqual((await loadInitialState(r)).entries.map((e) => e.index), [2]);
  await r.close();
});

test('log file: frames larger than the reused encoding buffer, then small ones, read back exactly', async (t) => {
  // flush() encodes into one buffer it keeps (4 KiB at first) and grows it for a larger frame.
  const path = tempDir();
  const s = new LogFileStorage({ path, durable: false });
  const sizes = [10, 5000, 20, 70_000, 3];
  sizes.forEach((n, i) => {
    s.append([entry(i + 1, 1, String.fromCharCode(97 + i).repeat(n))]);
    s.flush();
  });
  await s.close();
  const r = new LogFileStorage({ path, durable: false });
  const entries = (await loadInitialState(r)).entries;
  t.deepEqual(entries.map((e) => new TextDecoder().decode(e.data)), sizes.map((n, i) => String.fromCharCode(97 + i).repeat(n)));
  await r.close();
});

test('log file: durable flushes in flight together share fdatasyncs and resolve in order', async (t) => {
  const s = new LogFileStorage({ path: tempDir() });
  const order: number[] = [];
  const flushes: Array<Promise<void>> = [];
  for (let i = 1; i <= 50; i++) {
    s.append([entry(i, 1)]);
    flushes.push(s.flush()!.then(() => void order.push(i)));
  }
  flushes.push(s.flush()!.then(() => void order.push(51))); // nothing new: after the others
  await Promise.all(flushes);
  t.deepEqual(order, Array.from({ length: 51 }, (_, i) => i + 1));
  t.true(s.stats.fdatasyncs < 50, `${s.stats.fdatasyncs} fdatasyncs for 50 flushes`);
  t.true(s.stats.fdatasyncs >= 1);
  await s.close();
});

test('openRaftLog resumes an LMDB log an earlier version left (a data file, or a directory), else opens a log file', async (t) => {
  const base = tempDir();
  for (const path of [join(base, 'raft-1-0.mdb'), join(base, 'dir')]) { // lmdb-js: a path with an extension is the data file
    const old = new LmdbStorage({ path });
    old.append([entry(1, 1), entry(2, 1)]);
    await old.flush();
    await old.close();
    const r = openRaftLog({ path, durable: false });
    t.true(r instanceof LmdbStorage, path);
    t.deepEqual((await r.loadEntries(0)).map((e) => e.index), [1, 2]);
    await r.close();
  }
  const fresh = openRaftLog({ path: join(base, 'raft-2-0.mdb'), durable: false });
  t.true(fresh instanceof LogFileStorage);
  fresh.append([entry(1, 1)]);
  fresh.flush();
  await fresh.close();
  const again = openRaftLog({ path: join(base, 'raft-2-0.mdb'), durable: false });
  t.true(again instanceof LogFileStorage, 'a log file stays a log file');
  t.deepEqual((await again.loadEntries(0)).map((e) => e.index), [1]);
  await again.close();
});
