// Proves every definition-time misuse of the decorators throws a DecoratorUsageError whose
// message names the class and member, says why, and ends with the fix.
import 'reflect-metadata';
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  DecoratorUsageError,
  ordered,
  p2p,
  persistent,
  registerSerializable,
  replicated,
  replicatedClassInfo,
  serializable,
} from '../../decorators/index.js';

interface Shape {
  side: number;
}
class Point {
  x = 0;
}

function usage(
  t: import('ava').ExecutionContext,
  fn: () => unknown,
  message: string | RegExp,
): void {
  const error = t.throws(fn, { instanceOf: DecoratorUsageError, message });
  t.is(error?.code, 'DECORATOR_USAGE');
  t.is(error?.name, 'DecoratorUsageError');
}

test('an interface, union or function parameter without explicit types is refused', (t) => {
  usage(
    t,
    () => {
      @replicated()
      class Geometry {
        @ordered() add(name: string, shape: Shape): void {
          (void name, shape);
        }
      }
      return Geometry;
    },
    'Geometry.add parameter 1 has no runtime type (design:paramtypes gave Object). This happens ' +
      'when the type is an interface, a union, a type alias of an object type, any or unknown. ' +
      'Fix: import the class as a value, or declare it: @ordered({ params: [String, Type] }) ' +
      '(Object accepts any serializable value).',
  );
  usage(
    t,
    () => {
      class Mixed {
        @p2p() find(key: string | number): void {
          void key;
        }
      }
      return Mixed;
    },
    /^Mixed\.find parameter 0 has no runtime type \(design:paramtypes gave Object\).*Fix: .*@p2p\(\{ params: \[Type\] \}\)/,
  );
  usage(
    t,
    () => {
      class Callbacks {
        @ordered() on(callback: () => void): void {
          void callback;
        }
      }
      return Callbacks;
    },
    /^Callbacks\.on parameter 0 has no runtime type \(design:paramtypes gave Function\)\. This happens when the type is imported with "import type" or is a function type\. Fix: import the class as a value, or declare it: @ordered\(\{ params: \[Type\] \}\)/,
  );
});

test('explicit parameter types fix reflection and are checked', (t) => {
  @replicated()
  class Explicit {
    @ordered({ params: [String, Object], returns: Point }) add(name: string, shape: Shape): Point {
      (void name, shape);
      return new Point();
    }
  }
  const method = replicatedClassInfo(Explicit).ordered.get('add')!;
  t.deepEqual(method.paramTypes, [String, Object]);
  t.is(method.returnType, Point);
  usage(
    t,
    () => {
      class Short {
        @ordered({ params: [String] }) add(name: string, shape: Shape): void {
          (void name, shape);
        }
      }
      return Short;
    },
    'Short.add has 2 parameters but @ordered({ params }) lists 1 types. Fix: list exactly one type per parameter.',
  );
  usage(
    t,
    () => {
      class NotAType {
        @ordered({ params: ['string' as never] }) add(name: string): void {
          void name;
        }
      }
      return NotAType;
    },
    /^NotAType\.add parameter 0: @ordered\(\{ params \}\) entry is string, not a constructor\. Fix: /,
  );
});

test('a parameter type that cannot be serialized is refused', (t) => {
  usage(
    t,
    () => {
      class Waits {
        @ordered() put(value: Promise<string>): void {
          void value;
        }
      }
      return Waits;
    },
    'Waits.put parameter 0 has type Promise, which cannot be serialized: a Promise is a pending ' +
      'computation, not a value. Fix: pass the value itself (await the Promise, copy the entries ' +
      'into a Map or array).',
  );
  usage(
    t,
    () => {
      class Weak {
        @p2p() get(index: WeakMap<object, string>): void {
          void index;
        }
      }
      return Weak;
    },
    /^Weak\.get parameter 0 has type WeakMap, which cannot be serialized: a WeakMap cannot be enumerated\. Fix: /,
  );
  usage(
    t,
    () => {
      class Code {
        @ordered({ params: [Function] }) run(code: unknown): void {
          void code;
        }
      }
      return Code;
    },
    /^Code\.run parameter 0 has type Function, which cannot be serialized: code does not travel between nodes\. Fix: pass data that selects the behaviour/,
  );
});

test('@ordered and @p2p on one method, or one decorator twice, is refused', (t) => {
  usage(
    t,
    () => {
      class Both {
        @ordered() @p2p() get(): number {
          return 1;
        }
      }
      return Both;
    },
    'Both.get has @ordered and @p2p; a method is either ordered (may change state, delivered in ' +
      'order everywhere) or p2p (read-only, served by one member). Fix: keep @ordered if it writes ' +
      'state, else @p2p.',
  );
  usage(
    t,
    () => {
      class Twice {
        @p2p() @p2p() get(): number {
          return 1;
        }
      }
      return Twice;
    },
    /^Twice\.get has @p2p twice;.*Fix: keep one\.$/,
  );
});

test('static members, accessors and fields cannot be replicated methods', (t) => {
  usage(
    t,
    () => {
      class Statics {
        @ordered() static reset(): void {}
      }
      return Statics;
    },
    '@ordered on static member Statics.reset: replicated methods run on a replica\'s instance. Fix: remove "static" from reset.',
  );
  usage(
    t,
    () => {
      class Getter {
        @p2p() get size(): number {
          return 1;
        }
      }
      return Getter;
    },
    '@p2p on accessor Getter.size: getters and setters cannot be called on replicas. Fix: make size a method, e.g. getSize(...).',
  );
  class Field {
    put = (key: string): void => void key;
  }
  // TypeScript rejects @ordered on a field at compile time (the decorator requires a
  // descriptor); what a JavaScript caller would do reaches the run-time check.
  usage(
    t,
    () => ordered()(Field.prototype, 'put', undefined as unknown as PropertyDescriptor),
    '@ordered on field Field.put: only methods can be called on replicas (a field, even one ' +
      'holding an arrow function, is not on the prototype). Fix: declare it as a method: put(...) { ... }.',
  );
  usage(
    t,
    () => {
      class PersistentMethod {
        @persistent() entries(): number {
          return 1;
        }
      }
      return PersistentMethod;
    },
    '@persistent on PersistentMethod.entries, which is a method or accessor: @persistent marks a ' +
      'field that holds a Persistent<T> or Volatile<T>. Fix: declare a field: entries = new Persistent<T>(...).',
  );
  class PersistentStatic {
    static shared = 1;
  }
  // (TypeScript itself rejects this decorator on a static field; plain JS reaches the check.)
  usage(
    t,
    () => persistent()(PersistentStatic, 'shared'),
    '@persistent on static field PersistentStatic.shared: persistent state belongs to each replica. Fix: remove "static" from shared.',
  );
});

test('two methods with one wire name are refused', (t) => {
  usage(
    t,
    () => {
      @replicated()
      class Clash {
        @ordered({ name: 'write' }) put(value: number): void {
          void value;
        }
        @ordered() write(value: number): void {
          void value;
        }
      }
      return Clash;
    },
    'Clash.put and Clash.write both use the wire name "write", so a call could not say which to ' +
      "run. Fix: give one its own name: @ordered({ name: 'write' }).",
  );
});

test('a subclass cannot change a method between ordered and p2p', (t) => {
  @replicated()
  class Parent {
    @ordered() step(): void {}
  }
  usage(
    t,
    () => {
      @replicated()
      class Child extends Parent {
        @p2p() override step(): void {}
      }
      return Child;
    },
    'Child.step is @p2p in Child but @ordered in Parent: a method keeps its kind in subclasses. Fix: use @ordered on the override, or rename it.',
  );
});

test('class options are checked: names, versions and factories', (t) => {
  @replicated({ name: 'TakenName' })
  class First {
    @ordered() a(): void {}
  }
  void First;
  usage(
    t,
    () => {
      @replicated({ name: 'TakenName' })
      class Second {
        @ordered() a(): void {}
      }
      return Second;
    },
    /^@replicated: two classes use the stable name "TakenName" \(First and Second\).*Fix: give one its own name: @replicated\(\{ name: 'TakenName2' \}\)\.$/,
  );
  usage(
    t,
    () => {
      @replicated({ version: 1.5 })
      class Fractional {}
      return Fractional;
    },
    '@replicated on Fractional: version 1.5 is not a uint32. Fix: use a whole number such as @replicated({ version: 2 }).',
  );
  usage(
    t,
    () => replicated({ factory: 'nope' as never })(class Factoried {}),
    /^@replicated on Factoried: factory must be a function.*Fix: @replicated\(\{ factory: \(context\) => new Factoried\(\.\.\.\) \}\)\.$/,
  );
  usage(
    t,
    () => replicated()((() => class {})()),
    /^@replicated on an anonymous class.*Fix: name the class, or pass @replicated\(\{ name: 'MyService' \}\)\.$/,
  );
  usage(
    t,
    () => {
      @replicated({ transient: ['both'] })
      class Conflicted {
        @persistent() both: unknown;
      }
      return Conflicted;
    },
    'Conflicted.both is both @persistent and transient. Fix: drop one of them.',
  );
});

test('missing reflect-metadata or decorator metadata is detected', (t) => {
  class Manual {
    put(key: string): void {
      void key;
    }
  }
  const descriptor = Object.getOwnPropertyDescriptor(Manual.prototype, 'put')!;
  // Compiled without emitDecoratorMetadata (or by esbuild/tsx): no design:paramtypes.
  usage(
    t,
    () => ordered()(Manual.prototype, 'put', descriptor),
    'Manual.put has parameters but no design:paramtypes metadata: the code was compiled without ' +
      'emitDecoratorMetadata, or by a tool that drops it (esbuild, tsx). Fix: compile with tsc and ' +
      '"emitDecoratorMetadata": true, or declare the types: @ordered({ params: [...] }).',
  );
  const reflect = Reflect as unknown as Record<string, unknown>;
  const saved = reflect['getMetadata'];
  delete reflect['getMetadata'];
  try {
    usage(
      t,
      () => p2p()(Manual.prototype, 'put', descriptor),
      "reflect-metadata is not loaded: Reflect.getMetadata is missing, so parameter types and Squall's " +
        "records cannot be stored. Fix: import 'reflect-metadata' once at the start of your program, " +
        'before any decorated class is defined.',
    );
  } finally {
    reflect['getMetadata'] = saved;
  }
});

test('[[Define]] class fields (useDefineForClassFields) are detected', (t) => {
  // What tsc emits with useDefineForClassFields on: a native class field, or defineProperty.
  const sources = [
    'return class DefinedField { entries = 1; put(v) { this.entries = v; } }',
    'return class DefinedProperty { constructor() { Object.defineProperty(this, "entries", { value: 1 }); } }',
  ];
  for (const source of sources) {
    const ctor = new Function(source)() as new () => object;
    persistent()(ctor.prototype as object, 'entries');
    usage(
      t,
      () => replicated()(ctor),
      new RegExp(
        `^${ctor.name}\\.entries is compiled as a \\[\\[Define\\]\\] class field.*` +
          'Fix: set "useDefineForClassFields": false in tsconfig.json \\(NOTES.md\\)\\.$',
      ),
    );
  }
  // Assignment semantics in the constructor is what Squall expects.
  const assigned = new Function(
    'return class Assigned { constructor() { this.entries = 1; } }',
  )() as new () => object;
  persistent()(assigned.prototype as object, 'entries');
  t.notThrows(() => replicated()(assigned));
});

test('@ordered in a class without @replicated fails when its module finishes loading', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'squall-decorators-'));
  const index = pathToFileURL(
    fileURLToPath(new URL('../../decorators/index.js', import.meta.url)),
  ).href;
  const file = join(dir, 'lonely.mjs');
  writeFileSync(
    file,
    [
      `import { ordered } from '${index}';`,
      `class Lonely { put(key) {} }`,
      `Reflect.defineMetadata('design:paramtypes', [String], Lonely.prototype, 'put');`,
      `ordered()(Lonely.prototype, 'put', Object.getOwnPropertyDescriptor(Lonely.prototype, 'put'));`,
      `console.log('defined');`,
    ].join('\n'),
  );
  const child = spawnSync(process.execPath, [file], {
    encoding: 'utf8',
    cwd: fileURLToPath(new URL('../../../', import.meta.url)),
  });
  t.not(child.status, 0);
  t.regex(
    child.stderr,
    /DecoratorUsageError: Lonely has @ordered members but no @replicated decorator, so no replica will ever run them\. Fix: add @replicated\(\) above "class Lonely"\./,
  );
});

test('a serializable registration that cannot work is refused: a second name, a type no codec carries, a built-in, an anonymous class, a name taken', (t) => {
  class Renamed {
    a = 1;
  }
  registerSerializable(Renamed, { name: 'MisuseRenamedA' });
  registerSerializable(Renamed, { name: 'MisuseRenamedA' }); // the same again: idempotent
  usage(t, () => registerSerializable(Renamed, { name: 'MisuseRenamedB' }),
    'Renamed is already serializable as "MisuseRenamedA", not "MisuseRenamedB". Fix: register it once, before it is used as a parameter type.');
  usage(t, () => registerSerializable(WeakMap as never), 'WeakMap cannot be serialized: a WeakMap cannot be enumerated. Fix: remove the registration.');
  usage(t, () => registerSerializable(Map as never), 'Map is a built-in type; the codec handles it without registration. Fix: remove the registration.');
  usage(t, () => registerSerializable((() => class {})() as never), /an anonymous class cannot be serialized: it has no name to send\. Fix: name the class/);
  usage(t, () => {
    @serializable({ name: 'MisuseTaken' })
    class First {
      a = 1;
    }
    @serializable({ name: 'MisuseTaken' })
    class Second {
      b = 2;
    }
    return [First, Second];
  }, /two serializable classes are named "MisuseTaken" \(First and Second\).*Fix: give one a stable name/);
});
