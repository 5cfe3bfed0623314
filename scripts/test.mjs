#!/usr/bin/env node
// Runs every test Squall has and ends with one plain line that covers all of them:
//   "tests: N passed, N failed, N skipped"
// 1. the C++ tests (build/bin/squall_native_tests), which print "ok"/"not ok" lines;
// 2. the ava suite (compiled to dist/) in TAP mode; we count "ok"/"not ok" ourselves because
//    TAP's "# fail" total also counts todo tests.
// Exit status is non-zero if either part failed. Extra arguments go to ava (e.g. a file glob).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';


function run(command, args, onLine) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let pending = '';
    child.stdout.on('data', (chunk) => {
      pending += chunk.toString();
      let newline;
      while ((newline = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        process.stdout.write(line + '\n');
        onLine(line);
      }
    });
    child.on('close', (code, signal) => {
      if (pending) {
        process.stdout.write(pending + '\n');
        onLine(pending);
      }
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

const totals = { passed: 0, failed: 0, skipped: 0 };
let status = 0;
const avaArgs = process.argv.slice(2);

if (avaArgs.length === 0) {
  const nativeTests = 'build/bin/squall_native_tests';
  if (!existsSync(nativeTests)) {
    console.error(`${nativeTests} is missing: run "npm run build:native" first`);
    process.exit(1);
  }
  const code = await run(nativeTests, [], (line) => {
    if (/^ok /.test(line)) totals.passed++;
    else if (/^not ok /.test(line)) totals.failed++;
  });
  if (code !== 0) status = 1;
}

const avaBin = new URL('../node_modules/ava/entrypoints/cli.mjs', import.meta.url).pathname;
const code = await run(process.execPath, [avaBin, '--tap', ...avaArgs], (line) => {
  if (/^not ok \d+/.test(line)) {
    if (/# TODO/.test(line)) totals.skipped++;
    else totals.failed++;
  } else if (/^ok \d+/.test(line)) {
    if (/# (SKIP|TODO)/.test(line)) totals.skipped++;
    else totals.passed++;
  }
});
if (code !== 0) status = 1;
if (status !== 0 && totals.failed === 0) totals.failed = 1; // a crash that printed no "not ok"

console.log(`tests: ${totals.passed} passed, ${totals.failed} failed, ${totals.skipped} skipped`);
process.exit(status);
