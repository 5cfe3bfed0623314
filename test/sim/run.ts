/**
 * `npm run sim -- <protocol> --seeds N [--steps M] [--first F] [--flag name[=value]] [--verbose]`
 *
 * Loads dist/test/sim/<protocol>-sim.js, runs seeds F..F+N-1 (or only $SIM_SEED if set), prints
 * each failure with its replay line, and ends with `sim: N seeds passed, N failed`. Exit status 1
 * if any seed failed.
 */
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { SimProtocol } from './protocol.js';
import { seedsToRun } from './simulation.js';

const here = dirname(fileURLToPath(import.meta.url));
const protocols = readdirSync(here)
  .filter((f) => f.endsWith('-sim.js'))
  .map((f) => f.slice(0, -'-sim.js'.length));

const usage =
  'usage: npm run sim -- <protocol> [--seeds N] [--steps M] [--first F] [--flag name[=value]]... [--verbose]\n' +
  `protocols: ${protocols.join(', ')}\n` +
  'A failing seed prints its replay line (SIM_SEED=<n>); the run ends with "sim: N seeds passed, N failed".';
let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      seeds: { type: 'string', default: '100' },
      steps: { type: 'string' },
      first: { type: 'string', default: '1' },
      flag: { type: 'string', multiple: true },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (error) {
  console.error(`sim: ${(error as Error).message}\n${usage}`);
  process.exit(2);
}
const { values, positionals } = parsed;
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const name = positionals[0];
if (!name || !protocols.includes(name)) {
  console.error(`sim: ${name === undefined ? 'no protocol given' : `unknown protocol "${name}"`}\n${usage}`);
  process.exit(2);
}
for (const [key, text] of [['seeds', values.seeds], ['first', values.first], ['steps', values.steps]] as const) {
  if (text !== undefined && !(Number.isInteger(Number(text)) && Number(text) >= (key === 'first' ? 0 : 1))) {
    console.error(`sim: --${key} takes a whole number${key === 'first' ? '' : ' of at least 1'}, not "${text}"\n${usage}`);
    process.exit(2);
  }
}
const protocol = (await import(`./${name}-sim.js`)) as SimProtocol;
const flags: Record<string, string | boolean> = {};
for (const f of values.flag ?? []) {
  const eq = f.indexOf('=');
  if (eq < 0) flags[f] = true;
  else flags[f.slice(0, eq)] = f.slice(eq + 1);
}
const seeds = seedsToRun(Number(values.seeds), Number(values.first));
let passed = 0;
let failed = 0;
const started = performance.now();
for (const seed of seeds) {
  try {
    const result = protocol.runSeed(seed, {
      ...(values.steps !== undefined ? { steps: Number(values.steps) } : {}),
      flags,
    });
    passed++;
    if (values.verbose || seeds.length === 1) {
      console.log(`seed ${seed} ok: ${result.steps} steps, ${result.simulatedMs} ms simulated, ` +
        `trace ${result.traceHash}; ${result.summary}`);
    }
  } catch (error) {
    failed++;
    console.log(error instanceof Error ? error.message : String(error));
  }
}
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(`sim: ${name}, ${seeds.length} seeds in ${seconds} s`);
console.log(`sim: ${passed} seeds passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
