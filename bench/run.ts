/**
 * `npm run bench -- <suite> [--quick] [suite options]` runs bench/<suite>.ts, which prints one
 * JSON object per line:
 *   {"suite":..., "case":..., "value":..., "unit":..., "baselines":{...}, "ratios":{...}}
 * Every figure is printed beside a baseline measured in the same run on the same machine.
 */
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BenchSuite {
  run(args: string[]): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));
const suites = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3));

const [suite, ...rest] = process.argv.slice(2);
if (!suite || !suites.includes(suite)) {
  console.error(`usage: npm run bench -- <suite> [--quick] ...\nsuites: ${suites.join(', ') || '(none yet)'}`);
  process.exit(2);
}
const module = (await import(`./${suite}.js`)) as BenchSuite;
await module.run(rest);
