// Proves snapshot -> restore gives a replica with identical state and digest, that equal states
// reached in different orders have equal bytes, that persistent fields go through their own
// hooks, and that a snapshot of another class or version is refused.
import 'reflect-metadata';
import test from 'ava';
import {
  decodeValue,
  encodeCanonical,
  FIELD_HOOKS,
  objectDigest,
  ordered,
  persistent,
  replicated,
  replicatedClassInfo,
  restoreObject,
  serializable,
  SerializationError,
  snapshotDigest,
  snapshotObject,
  type FieldHooks,
  type HasFieldHooks,
} from '../../decorators/index.js';

/** A FieldHooks test double that counts how its hooks are used. */
class FakeVolatile<T> implements HasFieldHooks {
  snapshots = 0;
  restores = 0;
  writes = 0;
  constructor(public value: T) {}
  readonly [FIELD_HOOKS]: FieldHooks = {
    writeCount: 0,
    snapshotCurrent: () => {
      this.snapshots++;
      return encodeCanonical(this.value);
    },
    restoreCurrent: (bytes: Uint8Array) => {
      this.restores++;
      this.value = decodeValue(bytes) as T;
    },
  };
}

@serializable()
class Account {
  constructor(
    public owner = '',
    public balance = 0n,
    public opened = new Date(0),
  ) {}
}

@replicated({ version: 2, transient: ['log'] })
class Bank {
  @persistent() accounts = new FakeVolatile(new Map<string, Account>());
  tags = new Set<string>();
  limits: Record<string, number> = {};
  audit: Uint8Array = new Uint8Array(0);
  log: string[] = [];

  @ordered() open(id: string, owner: string): void {
    this.accounts.value.set(id, new Account(owner, 0n, new Date(1700000000000)));
    this.log.push(`open ${id}`);
  }
  @ordered() tag(tag: string): void {
    this.tags.add(tag);
  }
  @ordered() limit(id: string, value: number): void {
    this.limits[id] = value;
  }
}

function build(order: 'forward' | 'backward'): Bank {
  const bank = replicatedClassInfo(Bank).create();
  const ids = order === 'forward' ? ['a', 'b', 'c'] : ['c', 'b', 'a'];
  for (const id of ids) {
    bank.open(id, `owner ${id}`);
    bank.tag(`t${id}`);
    bank.limit(id, id.charCodeAt(0));
  }
  bank.audit = new Uint8Array([1, 2, 3]);
  return bank;
}

test('equal states reached in different orders have equal snapshot bytes and digests', (t) => {
  const forward = build('forward');
  const backward = build('backward');
  t.notDeepEqual([...forward.accounts.value.keys()], [...backward.accounts.value.keys()]);
  t.deepEqual(Buffer.from(snapshotObject(forward)), Buffer.from(snapshotObject(backward)));
  t.is(objectDigest(forward), objectDigest(backward));
  t.regex(objectDigest(forward), /^[0-9a-f]{64}$/);
  backward.limit('a', 0);
  t.not(objectDigest(forward), objectDigest(backward));
});

test('snapshot -> restore gives identical state and digest; transient fields stay out', (t) => {
  const source = build('forward');
  const snapshot = snapshotObject(source);
  t.is(source.accounts.snapshots, 1, 'the persistent field was captured by its own hook');
  const target = replicatedClassInfo(Bank).create();
  target.tag('stale');
  (target as unknown as Record<string, unknown>)['leftover'] = 1;
  restoreObject(target, snapshot);
  t.is(target.accounts.restores, 1, 'the persistent field was restored by its own hook');
  t.is(snapshotDigest(snapshotObject(target)), snapshotDigest(snapshot));
  t.deepEqual(target.tags, source.tags);
  t.deepEqual(target.limits, source.limits);
  t.deepEqual(target.audit, source.audit);
  const account = target.accounts.value.get('b')!;
  t.true(account instanceof Account);
  t.is(account.owner, 'owner b');
  t.is(account.opened.getTime(), 1700000000000);
  t.false('leftover' in target, 'fields the snapshot lacks are removed');
  t.deepEqual(target.log, [], 'transient fields are neither captured nor restored');
});

test('a snapshot of another class or version, or garbage, is refused', (t) => {
  @replicated()
  class Vault {
    @ordered() noop(): void {}
  }
  const snapshot = snapshotObject(build('forward'));
  t.throws(() => restoreObject(new Vault(), snapshot), {
    instanceOf: SerializationError,
    message:
      'snapshot of Bank version 2 cannot restore Vault version 1. Fix: transfer state ' +
      'between replicas running the same class version.',
  });
  const fields = decodeValue(snapshot) as unknown[];
  fields[3] = 3;
  t.throws(() => restoreObject(build('forward'), encodeCanonical(fields)), {
    instanceOf: SerializationError,
    message: /^snapshot of Bank version 3 cannot restore Bank version 2\./,
  });
  t.throws(() => restoreObject(build('forward'), encodeCanonical({ not: 'a snapshot' })), {
    instanceOf: SerializationError,
    message: /^not a Squall object snapshot/,
  });
});

test('a Persistent/Volatile field without @persistent is reported with the fix', (t) => {
  @replicated()
  class Unmarked {
    history = new FakeVolatile(1);
    @ordered() noop(): void {}
  }
  t.throws(() => snapshotObject(new Unmarked()), {
    message:
      'Unmarked.history holds a Persistent<T> or Volatile<T> but is not @persistent, so its ' +
      'history would be lost and p2p writes to it missed. Fix: add @persistent() above the ' +
      'field history.',
  });
});

test('state a snapshot cannot carry is reported with the field and the fix', (t) => {
  const bank = build('forward');
  (bank as unknown as Record<string, unknown>)['callback'] = () => 1;
  t.throws(() => snapshotObject(bank), {
    instanceOf: SerializationError,
    message:
      /^Bank\.callback is a function, which cannot be copied to another node\. Fix: keep it out of replicated state \(ReplicatedOptions\.transient\)\.$/,
  });
});
