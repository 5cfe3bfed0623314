// Proves the group API's call interfaces are typed from the class: Replicated<T>.ordered returns
// QueryResults of the method's result, p2p returns its promise, versions() takes field names, and
// the client's interfaces follow the same rules; test/unit/group-types.fail.ts has a type error on
// exactly the lines marked "expect-error".
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../../', import.meta.url));

test('group call interfaces accept right calls and reject wrong ones at compile time', (t) => {
  const config = ts.readConfigFile(`${root}tsconfig.json`, (p) => ts.sys.readFile(p));
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
  const file = `${root}test/unit/group-types.fail.ts`;
  const ambient = `${root}decorators/class-transformer-storage.d.ts`;
  const program = ts.createProgram([file, ambient], { ...parsed.options, noEmit: true });
  const diagnostics = ts.getPreEmitDiagnostics(program);
  const actual = new Map<number, string>();
  for (const d of diagnostics) {
    if (d.file?.fileName !== file || d.start === undefined) continue;
    actual.set(d.file.getLineAndCharacterOfPosition(d.start).line + 1, ts.flattenDiagnosticMessageText(d.messageText, ' '));
  }
  const source = readFileSync(file, 'utf8').split('\n');
  const expected = source.flatMap((text, i) => (/\/\/ expect-error/.test(text) ? [i + 1] : []));
  t.is(expected.length, 9);
  for (const line of expected) t.true(actual.has(line), `line ${line} must not compile: ${source[line - 1]!.trim()}`);
  for (const [line, message] of actual) t.true(expected.includes(line), `unexpected error on line ${line}: ${message}`);
  const elsewhere = diagnostics.filter((d) => d.file?.fileName !== file);
  t.deepEqual(elsewhere.map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' ')), []);
});
