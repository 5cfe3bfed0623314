// Proves the decorators record what the runtime needs (names, kinds, wire names, parameter and
// result types, persistent fields, factories), that class hierarchies and same-named methods in
// different classes stay apart, and that the dispatcher runs sync, async and throwing methods and
// refuses wrong calls and p2p writes with typed errors.
import 'reflect-metadata';
import test from 'ava';
import { nodeId } from '../../src/core/ids.js';
import {
  buildCallProxy,
  decodeReply,
  decodeValue,
  Dispatcher,
  DispatchError,
  encodeArguments,
  encodeCanonical,
  FIELD_HOOKS,
  ordered,
  p2p,
  P2PWriteError,
  persistent,
  RemoteError,
  replicated,
  SerializationError,
  replicatedClassByName,
  replicatedClassInfo,
  type FieldHooks,
  type MethodInfo,
  type HasFieldHooks,
} from '../../decorators/index.js';

/** A stand-in for persistence/'s Persistent<T>: a value plus the FieldHooks contract. */
class FakePersistent<T> implements HasFieldHooks {
  writes = 0;
  constructor(private current: T) {}
  get value(): T {
    return this.current;
  }
  set(value: T): void {
    this.current = value;
    this.writes++;
  }
  readonly [FIELD_HOOKS]: FieldHooks = (() => {
    const self = this;
    return {
      get writeCount() {
        return self.writes;
      },
      snapshotCurrent: () => encodeCanonical(self.current),
      restoreCurrent: (bytes: Uint8Array) => self.set(decodeValue(bytes) as T),
    };
  })();
}

class Key {
  constructor(public id = '') {}
}

class AppError extends Error {
  readonly code = 'APP_FULL';
  constructor(message: string) {
    super(message);
    this.name = 'AppError';
  }
}

const gates = new Map<string, Promise<void>>();

@replicated({ version: 3 })
class Store {
  @persistent() entries = new FakePersistent(new Map<string, string>());
  @persistent({ name: 'hits-v1' }) hits = new FakePersistent(0);
  note = 'plain';

  @ordered() put(key: string, value: string): boolean {
    const next = new Map(this.entries.value);
    next.set(key, value);
    this.entries.set(next);
    return true;
  }
  @ordered({ name: 'put-key' }) putKey(key: Key, value: Buffer): string {
    return `${key.id}:${value.length}`;
  }
  @ordered() async putLater(key: string, value: string): Promise<number> {
    await Promise.resolve();
    this.put(key, value);
    return this.entries.value.size;
  }
  @ordered() fail(message: string): void {
    throw new AppError(message);
  }
  @ordered() failWithString(message: string): void {
    throw message; // eslint-disable-line no-throw-literal
  }
  @ordered() async failLater(message: string): Promise<void> {
    await Promise.resolve();
    throw new RangeError(message);
  }
  @p2p() get(key: string): string | undefined {
    return this.entries.value.get(key);
  }
  @p2p() async getLater(key: string): Promise<string | undefined> {
    await Promise.resolve();
    return this.entries.value.get(key);
  }
  @p2p() sneakyWrite(key: string): void {
    this.put(key, 'x');
  }
  @p2p() async sneakyWriteLater(): Promise<void> {
    await Promise.resolve();
    this.hits.set(this.hits.value + 1);
  }
  @p2p() async sneakyWriteFirst(): Promise<void> {
    this.hits.set(this.hits.value + 1);
    await Promise.resolve();
  }
  @p2p() async readAfter(gate: string): Promise<number> {
    await gates.get(gate);
    return this.hits.value;
  }
  @p2p() storeCallback(): void {
    (this as unknown as Record<string, unknown>)['callback'] = () => 1;
  }
  @p2p() touchNote(note: string): void {
    this.note = note;
  }
  @p2p() lookup(key: Key): Key {
    return new Key(`found ${key.id}`);
  }
  helper(): number {
    return 1;
  }
}

function call(d: Dispatcher<object>, kind: 'ordered' | 'p2p', wireName: string, args: unknown[]) {
  const info = replicatedClassInfo(d.target.constructor as never);
  const method = (kind === 'ordered' ? info.ordered : info.p2p).get(wireName) as MethodInfo;
  return d.dispatch(kind, wireName, encodeArguments(method, args));
}

test('the metadata storage answers every runtime query about a class', (t) => {
  const info = replicatedClassInfo(Store);
  t.is(info.name, 'Store');
  t.is(info.version, 3);
  t.is(replicatedClassByName('Store'), Store);
  t.deepEqual(
    [...info.ordered.keys()],
    ['fail', 'failLater', 'failWithString', 'put', 'put-key', 'putLater'],
  );
  t.deepEqual(
    [...info.p2p.keys()],
    [
      'get',
      'getLater',
      'lookup',
      'readAfter',
      'sneakyWrite',
      'sneakyWriteFirst',
      'sneakyWriteLater',
      'storeCallback',
      'touchNote',
    ],
  );
  const putKey = info.ordered.get('put-key')!;
  t.is(putKey.methodName, 'putKey');
  t.is(putKey.kind, 'ordered');
  t.deepEqual(putKey.paramTypes, [Key, Buffer]);
  t.is(putKey.returnType, String);
  t.is(info.ordered.get('putLater')!.returnType, Promise);
  t.is(info.ordered.get('fail')!.returnType, undefined);
  t.is(putKey.declaringClass, Store);
  t.deepEqual(
    info.persistentFields.map((f) => [f.fieldName, f.name]),
    [
      ['entries', 'entries'],
      ['hits', 'hits-v1'],
    ],
  );
  t.false(info.methods.some((m) => m.methodName === 'helper'));
  t.true(info.create() instanceof Store);
  t.true(Object.isFrozen(info));
});

test('common parameter types reflect to checkable runtime types', (t) => {
  enum Color {
    Red,
  }
  @replicated()
  class Typed {
    @ordered() all(
      a: bigint,
      b: string,
      c: number[],
      d: Map<string, number>,
      e: Set<string>,
      f: Date,
      g: Uint8Array,
      h: Float64Array,
      i: boolean,
      j: Color,
      k?: string,
    ): void {
      void [a, b, c, d, e, f, g, h, i, j, k];
    }
  }
  const method = replicatedClassInfo(Typed).ordered.get('all')!;
  t.deepEqual(method.paramTypes, [
    BigInt,
    String,
    Array,
    Map,
    Set,
    Date,
    Uint8Array,
    Float64Array,
    Boolean,
    Number,
    String,
  ]);
  const d = new Dispatcher(new Typed());
  const args = [
    1n,
    'b',
    [1],
    new Map([['a', 1]]),
    new Set(['s']),
    new Date(0),
    new Uint8Array(1),
    new Float64Array(1),
    true,
    Color.Red,
  ];
  t.is(
    decodeReply(d.dispatch('ordered', 'all', encodeArguments(method, args)) as Uint8Array),
    undefined,
  );
});

test('a factory builds replicas with the runtime context', (t) => {
  @replicated({ factory: (context) => new Built(String(context)) })
  class Built {
    constructor(readonly origin: string) {}
    @ordered() set(origin: string): void {
      void origin;
    }
  }
  t.is(replicatedClassInfo(Built).create('ctx').origin, 'ctx');
});

test('a subclass inherits its base class methods and adds its own; the base is unchanged', (t) => {
  @replicated()
  class Base {
    @ordered() write(value: number): number {
      return value;
    }
    @p2p() read(): number {
      return 1;
    }
  }
  @replicated()
  class Derived extends Base {
    @ordered() erase(): void {}
    @p2p() override read(): number {
      return 2;
    }
  }
  t.deepEqual([...replicatedClassInfo(Base).ordered.keys()], ['write']);
  t.deepEqual([...replicatedClassInfo(Derived).ordered.keys()], ['erase', 'write']);
  t.is(replicatedClassInfo(Derived).p2p.get('read')!.declaringClass, Derived);
  t.is(replicatedClassInfo(Derived).ordered.get('write')!.declaringClass, Base);
  class Undecorated extends Derived {}
  t.throws(() => replicatedClassInfo(Undecorated), {
    message:
      /^Undecorated is not a replicated class.*Fix: add @replicated\(\) above "class Undecorated"\.$/,
  });
});

test('two classes with methods of the same name keep separate registries', async (t) => {
  @replicated()
  class Left {
    @ordered() act(n: number): string {
      return `left ${n}`;
    }
  }
  @replicated()
  class Right {
    @p2p() act(s: string): string {
      return `right ${s}`;
    }
  }
  t.is(replicatedClassInfo(Left).ordered.get('act')!.paramTypes[0], Number);
  t.is(replicatedClassInfo(Right).p2p.get('act')!.paramTypes[0], String);
  t.is(decodeReply(await call(new Dispatcher(new Left()), 'ordered', 'act', [1])), 'left 1');
  t.is(decodeReply(await call(new Dispatcher(new Right()), 'p2p', 'act', ['a'])), 'right a');
});

test('dispatch runs sync and async methods and returns their results', async (t) => {
  const d = new Dispatcher(new Store());
  const sync = call(d, 'ordered', 'put', ['a', '1']);
  t.true(sync instanceof Uint8Array, 'a sync method replies synchronously');
  t.true(decodeReply(sync as Uint8Array));
  const later = call(d, 'ordered', 'putLater', ['b', '2']);
  t.true(later instanceof Promise);
  t.is(decodeReply(await later), 2);
  t.is(decodeReply(await call(d, 'p2p', 'get', ['a'])), '1');
  t.is(decodeReply(await call(d, 'p2p', 'getLater', ['b'])), '2');
  t.is(decodeReply(await call(d, 'p2p', 'get', ['missing'])), undefined);
  t.is(decodeReply(await call(d, 'ordered', 'put-key', [new Key('k'), Buffer.alloc(64)])), 'k:64');
  const found = decodeReply<Key>(await call(d, 'p2p', 'lookup', [new Key('q')]));
  t.true(found instanceof Key);
  t.is(found.id, 'found q');
});

test('a thrown error comes back as a RemoteError with name, message, code and node', async (t) => {
  const d = new Dispatcher(new Store());
  const error = t.throws(
    () => decodeReply(call(d, 'ordered', 'fail', ['full']) as Uint8Array, nodeId(7)),
    {
      instanceOf: RemoteError,
    },
  );
  t.is(error.remoteName, 'AppError');
  t.is(error.remoteMessage, 'full');
  t.is(error.remoteCode, 'APP_FULL');
  t.is(error.nodeId, nodeId(7));
  t.is(error.code, 'REMOTE');
  t.is(error.message, 'AppError thrown on node 7: full');
  const bare = t.throws(
    () => decodeReply(call(d, 'ordered', 'failWithString', ['oops']) as Uint8Array),
    {
      instanceOf: RemoteError,
    },
  );
  t.is(bare.remoteName, 'Error');
  t.is(bare.remoteMessage, 'oops');
  t.is(bare.remoteCode, undefined);
  t.is(bare.nodeId, undefined);
  t.is(bare.message, 'Error thrown on a replica: oops');
  const asyncError = await (async () => {
    try {
      decodeReply(await call(d, 'ordered', 'failLater', ['too far']), nodeId(2));
    } catch (e) {
      return e as RemoteError;
    }
    return undefined;
  })();
  t.true(asyncError instanceof RemoteError);
  t.is(asyncError!.remoteName, 'RangeError');
  t.is(asyncError!.remoteMessage, 'too far');
  t.is(asyncError!.nodeId, nodeId(2));
});

test('the dispatcher refuses unknown methods, the wrong kind and badly typed arguments', (t) => {
  const d = new Dispatcher(new Store());
  const encoded = encodeArguments(replicatedClassInfo(Store).ordered.get('put')!, ['a', 'b']);
  t.throws(() => decodeReply(d.dispatch('p2p', 'put', encoded) as Uint8Array), {
    instanceOf: DispatchError,
    message:
      'Store.put is @ordered but was called as p2p. Fix: call it through the ordered interface.',
  });
  t.throws(() => decodeReply(d.dispatch('ordered', 'helper', encoded) as Uint8Array), {
    instanceOf: DispatchError,
    message: /^Store has no @ordered method with wire name "helper"\. Fix: .*decorated @ordered\.$/,
  });
  const wrongTypes = encodeArguments(replicatedClassInfo(Store).ordered.get('put')!, ['a', 5]);
  const refused = t.throws(
    () => decodeReply(d.dispatch('ordered', 'put', wrongTypes) as Uint8Array),
    {
      instanceOf: DispatchError,
      message: /^Store\.put parameter 1 must be String, got number\. Fix: pass a String/,
    },
  );
  t.is(refused.wireName, 'put');
  t.throws(
    () =>
      decodeReply(
        d.dispatch(
          'ordered',
          'put-key',
          encodeArguments(replicatedClassInfo(Store).ordered.get('put-key')!, [
            { id: 'plain object' },
            Buffer.alloc(1),
          ]),
        ) as Uint8Array,
      ),
    {
      message: /parameter 0 must be Key, got Object/,
    },
  );
  t.throws(() => encodeArguments(replicatedClassInfo(Store).ordered.get('put')!, ['a', 'b', 'c']), {
    instanceOf: DispatchError,
    message: 'Store.put takes 2 arguments, got 3. Fix: pass at most 2.',
  });
});

test('a p2p method that writes a persistent field fails, sync or after an await', async (t) => {
  const store = new Store();
  const d = new Dispatcher(store);
  const error = t.throws(() => decodeReply(call(d, 'p2p', 'sneakyWrite', ['k']) as Uint8Array), {
    instanceOf: P2PWriteError,
  });
  t.deepEqual(error.fields, ['entries']);
  t.is(
    error.message,
    'Store.sneakyWrite is @p2p (read-only) but wrote entries while it ran. A p2p call is served ' +
      'by one replica, so a write there makes the replicas diverge. Fix: make sneakyWrite ' +
      '@ordered, or move the write out of it.',
  );
  const later = call(d, 'p2p', 'sneakyWriteLater', []);
  t.true(later instanceof Promise);
  await t.throwsAsync(async () => decodeReply(await later), {
    instanceOf: P2PWriteError,
    message: /^Store\.sneakyWriteLater is @p2p \(read-only\) but wrote hits while/,
  });
  await t.throwsAsync(async () => decodeReply(await call(d, 'p2p', 'sneakyWriteFirst', [])), {
    instanceOf: P2PWriteError,
    message: /^Store\.sneakyWriteFirst is @p2p \(read-only\) but wrote hits while/,
  });
  // Reads do not trip it, and reassigning a persistent field counts as a write.
  t.is(decodeReply(await call(d, 'p2p', 'getLater', ['k'])), 'x');
  @replicated()
  class Swapper {
    @persistent() value = new FakePersistent(1);
    @p2p() swap(): void {
      this.value = new FakePersistent(1);
    }
  }
  t.throws(
    () =>
      decodeReply(
        new Dispatcher(new Swapper()).dispatch(
          'p2p',
          'swap',
          encodeArguments(replicatedClassInfo(Swapper).p2p.get('swap')!, []),
        ) as Uint8Array,
      ),
    { instanceOf: P2PWriteError },
  );
});

test('an ordered call running while an async p2p read awaits is not blamed on the read', async (t) => {
  const d = new Dispatcher(new Store());
  let open!: () => void;
  gates.set('g1', new Promise<void>((resolve) => (open = resolve)));
  const read = call(d, 'p2p', 'readAfter', ['g1']);
  t.true(decodeReply(call(d, 'ordered', 'put', ['k', 'v']) as Uint8Array));
  open();
  t.is(decodeReply(await read), 0);
  // With no ordered call in between, the same read is checked and passes.
  gates.set('g2', Promise.resolve());
  t.is(decodeReply(await call(d, 'p2p', 'readAfter', ['g2'])), 0);
});

test('plain-field writes in p2p calls are caught and rolled back in strict mode only', (t) => {
  const relaxed = new Store();
  t.is(
    decodeReply(call(new Dispatcher(relaxed), 'p2p', 'touchNote', ['changed']) as Uint8Array),
    undefined,
  );
  t.is(relaxed.note, 'changed');
  const strict = new Store();
  const d = new Dispatcher(strict, { p2pWriteCheck: 'strict' });
  const error = t.throws(
    () => decodeReply(call(d, 'p2p', 'touchNote', ['changed']) as Uint8Array),
    {
      instanceOf: P2PWriteError,
    },
  );
  t.deepEqual(error.fields, ['note']);
  t.is(strict.note, 'plain', 'strict mode restored the state seen before the call');
  // A check that cannot even encode the new state still ends as a reply, never a throw.
  const reply = call(d, 'p2p', 'storeCallback', []) as Uint8Array;
  t.throws(() => decodeReply(reply), {
    instanceOf: SerializationError,
    message: /^Store\.callback is a function/,
  });
  t.false('callback' in strict, 'and the state from before the call is back');
  t.is(decodeReply(call(d, 'p2p', 'get', ['nothing']) as Uint8Array), undefined);
});

test('a persistent field without hooks is reported with the fix', (t) => {
  @replicated()
  class Forgot {
    @persistent() value: unknown = new Map();
    @p2p() read(): number {
      return 1;
    }
  }
  t.throws(
    () =>
      decodeReply(
        new Dispatcher(new Forgot()).dispatch(
          'p2p',
          'read',
          encodeArguments(replicatedClassInfo(Forgot).p2p.get('read')!, []),
        ) as Uint8Array,
      ),
    {
      message:
        /^Forgot\.value is @persistent but holds a Map, which has no field hooks\. Fix: initialise it with a Persistent<T> or Volatile<T> in the constructor\.$/,
    },
  );
});

test('a call proxy encodes arguments and hands them to the transport', async (t) => {
  const replica = new Dispatcher(new Store());
  const info = replicatedClassInfo(Store);
  const sent: string[] = [];
  const api = buildCallProxy(info, 'ordered', async (method, bytes) => {
    sent.push(method.wireName);
    return decodeReply(await replica.dispatch('ordered', method.wireName, bytes));
  });
  t.deepEqual(Object.keys(api).sort(), [
    'fail',
    'failLater',
    'failWithString',
    'put',
    'putKey',
    'putLater',
  ]);
  t.true(await api['put']!('a', 'b'));
  t.is(await api['putKey']!(new Key('z'), Buffer.alloc(3)), 'z:3');
  t.deepEqual(sent, ['put', 'put-key']);
});
