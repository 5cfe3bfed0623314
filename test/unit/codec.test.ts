// Proves the codecs keep their contracts: the user-boundary codec round-trips every listed type
// with class instances intact at any depth, honours class-transformer decorators where a class
// uses them, encodes canonically for snapshots, and the internal protocol codec round-trips
// messages and aliases its input as documented.
import 'reflect-metadata';
import test from 'ava';
import { Exclude, Transform, Type } from 'class-transformer';
import {
  decodeValue,
  encodeCanonical,
  encodeValue,
  registerSerializable,
  serializable,
  SerializationError,
} from '../../decorators/index.js';
import { decodeMessage, decodeMessageCopy, encodeMessage } from '../../src/core/codec.js';

const roundTrip = <T>(value: T): T => decodeValue(encodeValue(value)) as T;

@serializable()
class Address {
  constructor(
    public street = '',
    public zip = 0,
  ) {}
  label(): string {
    return `${this.street} ${this.zip}`;
  }
}

class Line {
  constructor(
    public sku = '',
    public count = 0n,
  ) {}
  total(): bigint {
    return this.count * 2n;
  }
}

@serializable()
class Customer {
  name = '';
  @Type(() => Address) address = new Address();
  since = new Date(0);
}

@serializable()
class Order {
  @Type(() => Customer) customer = new Customer();
  @Type(() => Line) lines: Line[] = [];
  tags = new Set<string>();
  byWarehouse = new Map<string, Address>();
  payload = Buffer.alloc(0);
  raw = new Uint8Array(0);
  weights = new Float64Array(0);
}

function sampleOrder(): Order {
  const order = new Order();
  order.customer.name = 'Ada';
  order.customer.address = new Address('Main St', 12345);
  order.customer.since = new Date('2026-11-21T10:00:00.123Z');
  order.lines = [new Line('a', 3n), new Line('b', 2n ** 70n)];
  order.tags = new Set(['x', 'y']);
  order.byWarehouse = new Map([['w1', new Address('Dock', 1)]]);
  order.payload = Buffer.from('payload');
  order.raw = new Uint8Array([1, 2, 3]);
  order.weights = new Float64Array([0.5, -1.25]);
  return order;
}

test('a nested class instance round-trips with every class and built-in type intact', (t) => {
  const back = roundTrip(sampleOrder());
  t.true(back instanceof Order);
  t.true(back.customer instanceof Customer);
  t.true(back.customer.address instanceof Address);
  t.is(back.customer.address.label(), 'Main St 12345');
  t.true(back.customer.since instanceof Date);
  t.is(back.customer.since.toISOString(), '2026-11-21T10:00:00.123Z');
  // Line was only named by @Type: registration found it through class-transformer's metadata.
  t.true(back.lines[1] instanceof Line);
  t.is(back.lines[1]!.total(), 2n ** 71n);
  t.true(back.tags instanceof Set);
  t.deepEqual([...back.tags], ['x', 'y']);
  t.true(back.byWarehouse instanceof Map);
  t.true(back.byWarehouse.get('w1') instanceof Address);
  t.true(Buffer.isBuffer(back.payload));
  t.is(back.payload.toString(), 'payload');
  t.is(back.raw.constructor, Uint8Array);
  t.deepEqual([...back.raw], [1, 2, 3]);
  t.true(back.weights instanceof Float64Array);
  t.deepEqual([...back.weights], [0.5, -1.25]);
  t.deepEqual(back, sampleOrder());
});

test('top-level built-ins round-trip with their types', (t) => {
  const values: unknown[] = [
    'text',
    42,
    -1.5,
    2 ** 40,
    -(2 ** 40),
    true,
    null,
    undefined,
    5n,
    -(2n ** 63n),
    2n ** 64n - 1n,
    2n ** 100n,
    -(2n ** 100n),
    new Date(1700000000000),
    new Map<unknown, unknown>([
      [1, 'a'],
      ['b', new Set([1n])],
    ]),
    new Set(['a', 1]),
    Buffer.from([9, 8]),
    new Uint8Array([7]),
    new Int8Array([-1]),
    new Uint8ClampedArray([255]),
    new Int16Array([-300]),
    new Uint16Array([60000]),
    new Int32Array([-70000]),
    new Uint32Array([4000000000]),
    new Float32Array([1.5]),
    new Float64Array([Math.PI]),
    new BigInt64Array([-5n]),
    new BigUint64Array([2n ** 64n - 1n]),
    { plain: { nested: [1, 'two', { three: 3n }] } },
    [new Address('x', 1), [new Map()]],
  ];
  for (const value of values) {
    const back = roundTrip(value);
    t.deepEqual(back, value);
    if (value !== null && typeof value === 'object')
      t.is((back as object).constructor, value.constructor);
    else t.is(typeof back, typeof value);
  }
  // A plain object stays a plain object, a Map stays a Map.
  t.is(Object.getPrototypeOf(roundTrip({ a: 1 })), Object.prototype);
  t.true(roundTrip(new Map([['a', 1]])) instanceof Map);
});

test('decoded buffers are copies: the input may be reused', (t) => {
  const bytes = encodeValue([Buffer.from('abcd')]);
  const [buffer] = decodeValue(bytes) as [Buffer];
  (bytes as Uint8Array).fill(0);
  t.is(buffer.toString(), 'abcd');
});

@serializable()
class Secretive {
  visible = 'v';
  @Exclude() secret = 's';
  @Transform(({ value }) => (typeof value === 'number' ? value * 10 : value), { toPlainOnly: true })
  scaled = 1;
}

test('a class using class-transformer decorators goes through instanceToPlain/plainToInstance', (t) => {
  const back = roundTrip(new Secretive());
  t.true(back instanceof Secretive);
  t.is(back.visible, 'v');
  t.is(back.scaled, 10);
  // @Exclude kept it off the wire; plainToInstance ran the constructor, which sets the default.
  t.is(back.secret, 's');
  const onWire = decodeValue(encodeValue(new Secretive())) as Secretive;
  t.is(onWire.scaled, 10);
});

test('an unknown class name or an unregistered subclass is refused with the fix', (t) => {
  class Unregistered extends Address {}
  t.throws(() => encodeValue(new Unregistered()), {
    instanceOf: SerializationError,
    message:
      /Unregistered: it extends a serializable class.*Fix: add @serializable\(\) above "class Unregistered"\.$/,
  });
  // Bytes naming a class this process never registered (another node's class).
  @serializable({ name: 'Elsewhere' })
  class Elsewhere {
    x = 1;
  }
  const bytes = Buffer.from(encodeValue(new Elsewhere()));
  const renamed = Buffer.from(bytes.toString('latin1').replace('Elsewhere', 'Nowhere!!'), 'latin1');
  t.throws(() => decodeValue(renamed), {
    instanceOf: SerializationError,
    message: /class "Nowhere!!", which is not registered on this node\. Fix: .*every node\.$/,
  });
  const truncated = encodeValue({ text: 'a string long enough to cut' }).subarray(0, 12);
  t.throws(() => decodeValue(truncated), {
    instanceOf: SerializationError,
    message: /^cannot decode 12 bytes/,
  });
});

test('two classes registered under one name are refused', (t) => {
  class Twin {}
  registerSerializable(Twin, { name: 'TwinName' });
  registerSerializable(Twin, { name: 'TwinName' }); // idempotent
  class OtherTwin {}
  t.throws(() => registerSerializable(OtherTwin, { name: 'TwinName' }), {
    message: /two serializable classes are named "TwinName".*Fix: give one a stable name/,
  });
});

test('canonical encoding ignores insertion order of keys, Map entries and Set members', (t) => {
  const a = {
    m: new Map<unknown, unknown>([
      ['x', 1],
      [2, 'y'],
      [3n, { q: 1, p: 2 }],
    ]),
    s: new Set([3, 1, 2]),
    z: 1,
    a: new Address('s', 1),
  };
  const b = {
    a: new Address('s', 1),
    z: 1,
    s: new Set([2, 3, 1]),
    m: new Map<unknown, unknown>([
      [3n, { p: 2, q: 1 }],
      [2, 'y'],
      ['x', 1],
    ]),
  };
  const address = new Address();
  address.zip = 1;
  address.street = 's'; // fields assigned in the other order
  b.a = address;
  t.deepEqual(Buffer.from(encodeCanonical(a)), Buffer.from(encodeCanonical(b)));
  t.notDeepEqual(Buffer.from(encodeValue(a)), Buffer.from(encodeValue(b)));
  const back = decodeValue(encodeCanonical(a)) as typeof a;
  t.true(back.a instanceof Address);
  t.deepEqual(back.m.get(3n), { p: 2, q: 1 });
  t.not(Buffer.from(encodeCanonical({ x: 1 })).compare(Buffer.from(encodeCanonical({ x: 2 }))), 0);
});

test('canonical encoding refuses what another node could not rebuild', (t) => {
  class NotRegistered {}
  t.throws(() => encodeCanonical({ f: new NotRegistered() }), {
    message:
      /\$\.f holds an instance of NotRegistered.*Fix: add @serializable\(\) above "class NotRegistered"\.$/,
  });
  t.throws(() => encodeCanonical({ f: () => 1 }), { message: /\$\.f is a function.*Fix: / });
  const cycle: Record<string, unknown> = {};
  cycle['self'] = cycle;
  t.throws(() => encodeCanonical(cycle), { message: /\$\.self refers back.*Fix: break the cycle/ });
});

test('the protocol codec round-trips messages and aliases binary fields of its input', (t) => {
  const message = {
    type: 'append',
    term: 3,
    version: 2n ** 40n + 7n,
    entries: [Buffer.from('e1')],
    from: 0,
  };
  const bytes = encodeMessage(message);
  const back = decodeMessage<typeof message>(bytes);
  t.deepEqual(back, message);
  t.is(typeof back.version, 'bigint');
  // The decoded Buffer is a view into `bytes`: overwriting the input changes it.
  const entry = back.entries[0]!;
  t.is(entry.buffer as ArrayBufferLike, bytes.buffer as ArrayBufferLike);
  (bytes as Uint8Array)[entry.byteOffset - bytes.byteOffset] = 0x61;
  t.is(entry.toString(), 'a1');
  const copy = decodeMessageCopy<typeof message>(encodeMessage(message));
  t.is(copy.entries[0]!.toString(), 'e1');
});
