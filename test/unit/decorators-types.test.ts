// Proves the typed call interfaces at compile time: test/types/api-ok.ts compiles without error,
// and test/types/api.fail.ts has a type error on exactly the lines marked "expect-error".
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = fileURLToPath(new URL('../../../', import.meta.url));

test('OrderedApi/P2PApi accept right calls and reject wrong ones at compile time', (t) => {
  const configPath = `${root}tsconfig.json`;
  const config = ts.readConfigFile(configPath, (p) => ts.sys.readFile(p));
  const parsed = ts.parseJsonConfigFileContent(config.config, ts.sys, root);
  const okFile = `${root}test/types/api-ok.ts`;
  const failFile = `${root}test/types/api.fail.ts`;
  const ambient = `${root}decorators/class-transformer-storage.d.ts`;
  const program = ts.createProgram([okFile, failFile, ambient], {
    ...parsed.options,
    noEmit: true,
  });
  const diagnostics = ts.getPreEmitDiagnostics(program);
  const linesWithErrors = (file: string): Map<number, string[]> => {
    const lines = new Map<number, string[]>();
    for (const d of diagnostics) {
      if (d.file?.fileName !== file || d.start === undefined) continue;
      const line = d.file.getLineAndCharacterOfPosition(d.start).line + 1;
      lines.set(line, [
        ...(lines.get(line) ?? []),
        ts.flattenDiagnosticMessageText(d.messageText, ' '),
      ]);
    }
    return lines;
  };
  t.deepEqual([...linesWithErrors(okFile).entries()], [], 'api-ok.ts compiles');
  const source = readFileSync(failFile, 'utf8').split('\n');
  const expected = source.flatMap((text, i) => (/\/\/ expect-error/.test(text) ? [i + 1] : []));
  t.true(expected.length >= 12);
  const actual = linesWithErrors(failFile);
  for (const line of expected) {
    t.true(actual.has(line), `line ${line} must not compile: ${source[line - 1]!.trim()}`);
  }
  for (const [line, messages] of actual) {
    t.true(expected.includes(line), `unexpected error on line ${line}: ${messages.join('; ')}`);
  }
  const elsewhere = diagnostics.filter((d) => d.file?.fileName !== failFile);
  t.deepEqual(
    elsewhere.map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' ')),
    [],
  );
});
