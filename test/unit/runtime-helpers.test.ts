// Small runtime helpers that every driver leans on: the Fifo's compaction keeps order across
// thousands of drops; SerialPump turns a nested run into one more round of the running loop
// (never a nested drain) and stops when inactive; RequestMux drops and counts a request whose
// group id it cannot read or that no instance registered, answering it empty.
import test from 'ava';
import { SerialPump } from '../../src/membership/serial-pump.js';
import { Fifo } from '../../src/multicast/fifo.js';
import { RequestMux } from '../../src/runtime/request-mux.js';
import type { RequestHandler, RequestType, Transport } from '../../src/transport/transport.js';

test('Fifo: order and length hold across compactions (drops past 1,024 of the head)', (t) => {
  const q = new Fifo<number>();
  let next = 0;
  let first = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 300; i++) q.push(next++);
    const drop = round % 7 === 6 ? q.length : 250;
    q.drop(drop);
    first += drop;
    t.is(q.length, next - first);
    if (q.length > 0) {
      t.is(q.at(0), first);
      t.is(q.at(q.length - 1), next - 1);
    }
    t.is(q.at(q.length), undefined);
  }
  q.drop(q.length + 5); // more than it holds: empties it
  t.is(q.length, 0);
  q.push(7);
  t.is(q.at(0), 7);
});

test('SerialPump: a run from inside a run is one more round of the outer loop, not a nested one', (t) => {
  const trace: string[] = [];
  let depth = 0;
  let feeds = 2;
  let active = true;
  const pump: SerialPump = new SerialPump(() => {
    depth++;
    trace.push(`round at depth ${depth}`);
    if (feeds-- > 0) pump.run(); // the drained output fed the core again
    depth--;
  }, () => active);
  pump.run();
  t.deepEqual(trace, ['round at depth 1', 'round at depth 1', 'round at depth 1']);
  // Inactive (closed): the asked-for round is not run.
  trace.length = 0;
  feeds = 1;
  const stopping = new SerialPump(() => {
    trace.push('round');
    active = false;
    if (feeds-- > 0) stopping.run();
  }, () => active);
  stopping.run();
  t.deepEqual(trace, ['round']);
});

test('RequestMux: an unreadable group id and an unregistered group are answered empty and counted; a registered one is routed', async (t) => {
  let handler: RequestHandler | undefined;
  const transport = { handle: (_type: RequestType, h: RequestHandler) => { handler = h; } } as unknown as Transport;
  const groupOf = (request: Uint8Array): number => (request.length >= 1 ? request[0]! : -1);
  const mux = RequestMux.on(transport, 250 as RequestType, groupOf);
  const unregister = mux.register(3, (request) => Uint8Array.of(request.length));
  const context = {} as Parameters<RequestHandler>[1];
  t.deepEqual(await handler!(new Uint8Array(0), context), new Uint8Array(0));
  t.deepEqual(mux.counters, { unknownGroup: 0, malformed: 1 });
  t.deepEqual(await handler!(Uint8Array.of(9, 1), context), new Uint8Array(0));
  t.deepEqual(mux.counters, { unknownGroup: 1, malformed: 1 });
  t.deepEqual(await handler!(Uint8Array.of(3, 1, 2), context), Uint8Array.of(3));
  unregister();
  t.deepEqual(await handler!(Uint8Array.of(3), context), new Uint8Array(0), 'a closed instance is unknown again');
  t.is(mux.counters.unknownGroup, 2);
  t.is(RequestMux.on(transport, 250 as RequestType, groupOf), mux, 'one mux per transport and type');
  t.throws(() => RequestMux.on(transport, 250 as RequestType, () => 0), { message: /frame group ids differently/ });
});
