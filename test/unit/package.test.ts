// Proves the package root exports what an application uses, and that those exports work together:
// a class decorated through the root's decorators is registered, and a root Persistent field
// versions its value.
import test from 'ava';
import * as squall from '../../src/index.js';

test('the package root exports the public API', (t) => {
  for (const name of ['replicated', 'ordered', 'p2p', 'persistent', 'Persistent', 'Volatile', 'PersistenceStore',
    'loadConfig', 'parseConfig', 'Endpoint', 'TransportError', 'PeerFailedError', 'RemoteError',
    'DecoratorUsageError', 'ConfigError', 'PayloadTooLargeError', 'TimeoutError', 'makeVersion'] as const) {
    t.is(typeof (squall as Record<string, unknown>)[name], 'function', `${name} is exported`);
  }
});

test('a class decorated through the root is registered with its methods', (t) => {
  @squall.replicated()
  class Counter {
    @squall.persistent() total = new squall.Volatile<number>(() => 0);
    @squall.ordered() add(amount: number): number {
      this.total.value = this.total.value + amount;
      return this.total.value;
    }
    @squall.p2p() read(): number {
      return this.total.value;
    }
  }
  const info = squall.replicatedClassInfo(Counter);
  t.is(info.name, 'Counter');
  t.deepEqual([...info.ordered.keys()], ['add']);
  t.deepEqual([...info.p2p.keys()], ['read']);
  const counter = new Counter();
  t.is(counter.add(2), 2);
  t.is(counter.read(), 2);
});
