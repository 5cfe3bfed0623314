// Proves the dependency rules of STYLE.md hold in the source tree: pure protocol cores touch no
// clock, timer, randomness, I/O or promises, and import only src/core and their own layer;
// decorators/ and persistence/ never reach into the runtime or transport; only the native
// transport wrapper loads the addon. A violation names the file, the line and the rule.
import test from 'ava';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  let entries: string[];
  try {
    entries = readdirSync(join(root, dir));
  } catch {
    return out;
  }
  for (const name of entries) {
    const path = join(dir, name);
    if (statSync(join(root, path)).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path.split(sep).join('/'));
  }
  return out;
}

/** Source text with comments and string contents blanked, so rules see only code. */
function codeOnly(text: string): string {
  return text
    .replace(/\/\*[\s\S]*?\*\//g, (m) => m.replace(/[^\n]/g, ' '))
    .replace(/\/\/[^\n]*/g, '')
    .replace(/(['"`])(?:\\.|(?!\1)[^\\\n])*\1/g, (m) => m[0] + ' '.repeat(m.length - 2) + m[0]);
}

function importsOf(text: string): { spec: string; line: number }[] {
  const out: { spec: string; line: number }[] = [];
  const pattern = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;
  for (const m of text.matchAll(pattern)) {
    const spec = m[1] ?? m[2]!;
    out.push({ spec, line: text.slice(0, m.index).split('\n').length + 1 });
  }
  return out;
}

/** The repository-relative path an import resolves to, or the bare package name. */
function target(file: string, spec: string): string {
  if (!spec.startsWith('.')) return spec;
  return relative(root, resolve(root, dirname(file), spec)).split(sep).join('/');
}

const isPure = (f: string): boolean =>
  (f.endsWith('-core.ts') && f.startsWith('src/')) ||
  ((f.startsWith('src/multicast/') || f.startsWith('src/membership/')) && !f.endsWith('-driver.ts'));

const forbiddenInPure: [RegExp, string][] = [
  [/\bDate\b/, 'reads the wall clock (time reaches a pure core as ticks)'],
  [/\bperformance\s*\./, 'reads a clock (time reaches a pure core as ticks)'],
  [/\bMath\.random\b/, 'uses unseeded randomness (inject a Random)'],
  [/\b(setTimeout|setInterval|setImmediate|queueMicrotask)\b/, 'sets a timer (return a timer effect instead)'],
  [/\bprocess\s*\./, 'touches the process'],
  [/\b(async|await)\b|\bPromise\b/, 'is asynchronous (pure cores are synchronous)'],
];

const allFiles = ['src', 'decorators', 'persistence'].flatMap(sourceFiles);

test('pure protocol cores use no clock, timer, randomness, process or promise', (t) => {
  const problems: string[] = [];
  for (const file of allFiles.filter(isPure)) {
    const lines = codeOnly(readFileSync(join(root, file), 'utf8')).split('\n');
    lines.forEach((line, index) => {
      for (const [pattern, why] of forbiddenInPure) {
        if (pattern.test(line)) problems.push(`${file}:${index + 1} ${why}: ${line.trim()}`);
      }
    });
  }
  t.deepEqual(problems, []);
});

test('pure cores import only src/core, their own layer, and the msgpackr codec', (t) => {
  const problems: string[] = [];
  for (const file of allFiles.filter(isPure)) {
    const layer = file.split('/').slice(0, 2).join('/');
    for (const { spec, line } of importsOf(readFileSync(join(root, file), 'utf8'))) {
      const to = target(file, spec);
      const ok = to.startsWith('src/core/') || to.startsWith(layer + '/') || to === 'msgpackr';
      if (!ok) problems.push(`${file}:${line} imports ${spec}`);
    }
  }
  t.deepEqual(problems, []);
});

test('src/core, decorators/ and persistence/ do not reach into runtime, group or transport', (t) => {
  const upper = ['src/runtime/', 'src/group/', 'src/transport/', 'src/raft/', 'src/multicast/', 'src/membership/', 'src/cli/', 'src/config/'];
  const problems: string[] = [];
  for (const file of allFiles.filter((f) => /^(src\/core|decorators|persistence)\//.test(f))) {
    for (const { spec, line } of importsOf(readFileSync(join(root, file), 'utf8'))) {
      const to = target(file, spec);
      if (upper.some((u) => to.startsWith(u))) problems.push(`${file}:${line} imports ${spec}`);
      if (file.startsWith('src/core/') && spec.startsWith('.') && !to.startsWith('src/core/')) {
        problems.push(`${file}:${line} (src/core imports only src/core) imports ${spec}`);
      }
    }
  }
  t.deepEqual(problems, []);
});

test('only the native transport wrapper loads the addon', (t) => {
  const addonPath = /['"`][^'"`]*(squall_native|build\/Release)[^'"`]*['"`]/;
  const problems = allFiles
    .filter((f) => !f.startsWith('src/transport/native'))
    .filter((f) => addonPath.test(readFileSync(join(root, f), 'utf8')));
  t.deepEqual(problems, []);
});

test('the checker itself catches a violation', (t) => {
  // Guards against a rule that silently matches nothing.
  const sample = codeOnly('const now = Date.now(); // Date in a comment is fine\nconst s = "Math.random";');
  t.true(forbiddenInPure[0]![0].test(sample.split('\n')[0]!));
  t.false(/Math\.random/.test(sample.split('\n')[1]!));
  t.deepEqual(importsOf("import { x } from '../runtime/a.js';").map((i) => i.spec), ['../runtime/a.js']);
  t.true(isPure('src/raft/raft-core.ts'));
  t.false(isPure('src/multicast/multicast-driver.ts'));
});
