// The group layer's hand-framed envelopes (src/group/wire.ts): an ordered call inside a multicast
// payload and a batch of ordered-call replies. Round trips, the msgpack calls written before the
// framing (a raft shard's log may hold them), and malformed input refused whole.
import test from 'ava';
import { encodeMessage } from '../../src/core/codec.js';
import { decodeOrderedCall, encodeOrderedCall, encodeOrderedReplies, forEachOrderedReply } from '../../src/group/wire.js';

const args = Uint8Array.from([0x92, 0xa1, 0x6b, 0xa1, 0x76]); // msgpack ['k', 'v']

test('an ordered call round-trips: call id, wire name, args; a relayed one also its idempotency key', (t) => {
  const big = 2 ** 40 + 7; // a call id past 32 bits
  const plain = decodeOrderedCall(encodeOrderedCall(big, 'put', args));
  t.deepEqual({ ...plain, args: [...plain.args] }, { callId: big, wireName: 'put', args: [...args] });
  const relayed = decodeOrderedCall(encodeOrderedCall(3, 'pütMany', args, ['client-ü-1', 2 ** 33]));
  t.deepEqual({ ...relayed, args: [...relayed.args] }, { callId: 3, wireName: 'pütMany', args: [...args], clientId: 'client-ü-1', requestId: 2 ** 33 });
  const empty = decodeOrderedCall(encodeOrderedCall(4, 'size', new Uint8Array(0)));
  t.is(empty.args.byteLength, 0);
  // Ids are integers from 0 to 2^53 - 1; anything else is refused, not sent as another id.
  for (const bad of [-1, 1.5, 2 ** 53, Number.NaN]) t.throws(() => encodeOrderedCall(1, 'put', args, ['c', bad]), { instanceOf: RangeError });
});

test('payloads written one after another stay as written (shared buffers are never written twice)', (t) => {
  const argsOf = (i: number) => new Uint8Array(40).fill(i & 0xff);
  const sent = Array.from({ length: 6000 }, (_, i) => encodeOrderedCall(i, 'put', argsOf(i))); // ~330 KB: several buffers
  let wrong = 0;
  sent.forEach((payload, i) => {
    const call = decodeOrderedCall(payload);
    if (call.callId !== i || Buffer.compare(call.args, argsOf(i)) !== 0) wrong++;
  });
  t.is(wrong, 0);
});

test('an ordered call written as msgpack (before the framing) still decodes', (t) => {
  const plain = decodeOrderedCall(encodeMessage([9, 'put', args]));
  t.deepEqual({ ...plain, args: [...plain.args] }, { callId: 9, wireName: 'put', args: [...args] });
  const relayed = decodeOrderedCall(encodeMessage([9, 'put', args, 'c', 5]));
  t.is(relayed.clientId, 'c');
  t.is(relayed.requestId, 5);
});

test('a malformed ordered call throws (the replica counts and drops it)', (t) => {
  const good = encodeOrderedCall(1, 'put', args, ['client', 1]);
  for (const cut of [0, 1, 5, 10, 12, 15]) t.throws(() => decodeOrderedCall(good.subarray(0, cut)), undefined, `cut at ${cut}`);
  const badName = encodeOrderedCall(1, 'put', args);
  badName[11] = 0xff; // not UTF-8
  t.throws(() => decodeOrderedCall(badName));
  t.throws(() => decodeOrderedCall(encodeMessage(['x', 'put', args])));
  t.throws(() => decodeOrderedCall(Uint8Array.from([7, 1, 2])));
});

test('a batch of replies round-trips in order; a malformed batch throws before any reply is handed out', (t) => {
  const replies: [number, number, Uint8Array][] = [[1, 2, Uint8Array.from([1, 2, 3])], [2 ** 40, 3, new Uint8Array(0)], [7, 2, Uint8Array.from([9])]];
  const frame = encodeOrderedReplies(replies);
  const seen: [number, number, number[]][] = [];
  forEachOrderedReply(frame, (callId, from, reply) => seen.push([callId, from, [...reply]]));
  t.deepEqual(seen, replies.map(([c, f, r]) => [c, f, [...r]]));
  for (const cut of [0, 5, frame.byteLength - 1]) {
    let handed = 0;
    t.throws(() => forEachOrderedReply(frame.subarray(0, cut), () => handed++), undefined, `cut at ${cut}`);
    t.is(handed, 0);
  }
  t.throws(() => forEachOrderedReply(encodeMessage([[1, 2, Uint8Array.from([1])]]), () => undefined));
});
