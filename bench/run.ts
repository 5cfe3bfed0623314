/**
 * `npm run bench -- <suite> [--quick] [suite options]` runs bench/<suite>.ts, which prints one
 * JSON object per line:
 *   {"suite":..., "case":..., "value":..., "unit":..., "baselines":{...}, "ratios":{...}}
 * Every figure is printed beside a baseline measured in the same run on the same machine.
 */
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { argumentProblem, OPTIONS } from './_args.js';

export interface BenchSuite {
  run(args: string[]): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));
const suites = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3));

const [suite, ...rest] = process.argv.slice(2);
const optionsOf = (name: string): string => {
  const spec = OPTIONS[name];
  if (spec === undefined) return '';
  return [...Object.keys(spec.options).map((o) => `--${o}`), ...(spec.words !== undefined ? [`[${spec.words}]`] : [])].join(' ');
};
const usage = `usage: npm run bench -- <suite> [--quick] [suite options]\nsuites and their options:\n${
  suites.map((s) => `  ${s}: ${optionsOf(s)}`).join('\n') || '  (none yet)'}`;
if (suite === '--help' || suite === '-h') {
  console.log(usage);
  process.exit(0);
}
if (!suite || !suites.includes(suite)) {
  console.error(`${suite ? `bench: no suite "${suite}"\n` : ''}${usage}`);
  process.exit(2);
}
const problem = argumentProblem(suite, rest);
if (problem !== undefined) {
  console.error(`bench: ${problem}\n${usage}`);
  process.exit(2);
}
const module = (await import(`./${suite}.js`)) as BenchSuite;
await module.run(rest);
