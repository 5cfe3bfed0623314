// Proves the Raft wire codec (src/raft/codec.ts): every message type survives a round trip in
// one batch (binary layouts and the msgpack fallback alike), and a malformed batch (truncated,
// wrong version, unknown kind, lengths past the end, random bytes) throws instead of yielding
// messages, so the driver drops and counts it.
import test from 'ava';
import { batchGroup, decodeMessages, encodeMessages } from '../../src/raft/codec.js';
import type { Message } from '../../src/raft/types.js';
import { SeededRandom } from '../../src/core/random.js';

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);
const meta = { index: 7, term: 3, conf: { voters: [1, 2, 3], learners: [4] } };

const all: Message[] = [
  {
    type: 'append', from: 1, to: 2, term: 5, prevIndex: 2 ** 40, prevTerm: 4, commit: 9,
    entries: [
      { index: 2 ** 40 + 1, term: 5, type: 0, data: bytes(1, 2, 3) },
      { index: 2 ** 40 + 2, term: 5, type: 1, data: bytes(1, 0, 0, 0, 4) },
      { index: 2 ** 40 + 3, term: 5, type: 0, data: new Uint8Array(0) },
    ],
  },
  { type: 'append', from: 1, to: 3, term: 5, prevIndex: 0, prevTerm: 0, commit: 0, entries: [] },
  { type: 'appendResp', from: 2, to: 1, term: 5, index: 11, reject: true, hintIndex: 6, hintTerm: 2 },
  { type: 'appendResp', from: 3, to: 1, term: 5, index: 12, reject: false, hintIndex: 0, hintTerm: 0 },
  { type: 'heartbeat', from: 1, to: 2, term: 5, commit: 12, ctx: 99 },
  { type: 'heartbeatResp', from: 2, to: 1, term: 5, ctx: 99 },
  { type: 'vote', from: 2, to: 3, term: 6, lastIndex: 12, lastTerm: 5, transfer: true },
  { type: 'prevoteResp', from: 3, to: 2, term: 6, reject: false },
  { type: 'snapshot', from: 1, to: 4, term: 5, meta, offset: 64, totalBytes: 200, chunk: bytes(9, 8, 7) },
  { type: 'snapshotResp', from: 4, to: 1, term: 5, index: 7, offset: 128 },
  { type: 'timeoutNow', from: 1, to: 2, term: 5 },
  { type: 'readIndex', from: 2, to: 1, term: 0, id: 2 ** 45 },
  { type: 'readIndexResp', from: 1, to: 2, term: 5, id: 2 ** 45, index: 12, reject: false },
];

/** Plain data with byte arrays as number lists, so aliasing views compare equal. */
function plain(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value, (_k, v: unknown) =>
    v instanceof Uint8Array ? { bytes: [...v] } : (v as { type?: string; data?: number[] })?.type === 'Buffer'
      ? { bytes: (v as { data: number[] }).data } : v));
}

test('every message type survives a round trip in one batch', (t) => {
  const decoded = decodeMessages(encodeMessages(all));
  t.deepEqual(plain(decoded), plain(all));
  t.deepEqual(decodeMessages(encodeMessages([])), []);
  const entry = (decoded[0] as Extract<Message, { type: 'append' }>).entries[0]!;
  t.true(entry.data instanceof Uint8Array);
});

test('a batch names its Raft group: batchGroup reads it without decoding; other bytes give -1', (t) => {
  t.is(batchGroup(encodeMessages(all)), 0);
  t.is(batchGroup(encodeMessages(all, 7)), 7);
  t.is(batchGroup(encodeMessages([], 0xffff_fffe)), 0xffff_fffe);
  t.deepEqual(plain(decodeMessages(encodeMessages(all, 123_456))), plain(all));
  t.is(batchGroup(new Uint8Array(4)), -1);
  const other = encodeMessages(all, 5);
  other[0] = 2;
  t.is(batchGroup(other), -1);
});

test('a malformed batch throws: truncated anywhere, wrong version, unknown kind, bad lengths', (t) => {
  const good = encodeMessages(all);
  for (let cut = 0; cut < good.byteLength; cut++) {
    t.throws(() => decodeMessages(good.subarray(0, cut)), undefined, `cut at ${cut}`);
  }
  const wrongVersion = Uint8Array.from(good);
  wrongVersion[0] = 1;
  t.throws(() => decodeMessages(wrongVersion), { message: /version 1, expected 3/ });
  const unknownKind = Uint8Array.from(good);
  unknownKind[9] = 77;
  t.throws(() => decodeMessages(unknownKind), { message: /unknown raft message kind 77/ });
  // The first append's entry count (after kind + 6 float64s) set huge.
  const hugeCount = Uint8Array.from(good);
  new DataView(hugeCount.buffer).setUint32(9 + 1 + 48, 0xffff_ff00);
  t.throws(() => decodeMessages(hugeCount), { message: /claims/ });
  const extra = new Uint8Array(good.byteLength + 1);
  extra.set(good);
  t.throws(() => decodeMessages(extra));
});

test('random bytes never decode into messages silently wrong in shape', (t) => {
  const random = new SeededRandom(7);
  let rejected = 0;
  for (let i = 0; i < 2000; i++) {
    const junk = new Uint8Array(1 + random.int(120)).map(() => random.int(256));
    junk[0] = 3;
    try {
      for (const m of decodeMessages(junk)) t.is(typeof m.type, 'string');
    } catch {
      rejected++;
    }
  }
  t.true(rejected > 1900, `${rejected} of 2000 rejected`);
});

test('batches encoded back to back, across buffer-pool slabs and larger than one, all decode exactly', (t) => {
  // The encoder keeps one DataView per pool slab (poolView): a view left over from an earlier
  // slab would write this batch's numbers into another buffer.
  const batches: Array<{ bytes: Uint8Array; messages: Message[] }> = [];
  for (let i = 0; i < 300; i++) {
    const data = new Uint8Array(i % 7 === 0 ? 5000 : 80).fill(i & 0xff); // some past the pool's half
    const messages: Message[] = [
      { type: 'append', from: 1, to: 2, term: i, prevIndex: i, prevTerm: i, commit: i, entries: [{ index: i + 1, term: i, type: 0, data }] },
      { type: 'heartbeat', from: 1, to: 2, term: i, commit: i, ctx: i * 3 },
    ];
    batches.push({ bytes: encodeMessages(messages, i), messages });
  }
  for (const [i, b] of batches.entries()) {
    t.is(batchGroup(b.bytes), i);
    t.deepEqual(plain(decodeMessages(b.bytes)), plain(b.messages), `batch ${i}`);
  }
});

test('decodeMessages appends to the array it is given and returns it', (t) => {
  const kept: Message[] = [all[4]!];
  const out = decodeMessages(encodeMessages(all.slice(2, 4)), kept);
  t.is(out, kept);
  t.deepEqual(plain(out), plain([all[4], all[2], all[3]]));
  t.throws(() => decodeMessages(encodeMessages(all).subarray(0, 40), kept));
});
