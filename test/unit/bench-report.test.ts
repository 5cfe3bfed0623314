// A bench line's ratios (bench/_report.ts): value over each baseline in the line's unit; none for
// a baseline in another unit, none over a zero baseline, and given ratios are kept as they are.
import test from 'ava';
import { report, type BenchLine } from '../../bench/_report.js';

function printed(line: BenchLine): BenchLine {
  const lines: string[] = [];
  const log = console.log;
  console.log = (text: string) => { lines.push(text); };
  try {
    report(line);
  } finally {
    console.log = log;
  }
  return JSON.parse(lines[0]!) as BenchLine;
}

test('bench report: ratios only over baselines in the line\'s unit', (t) => {
  const latency = printed({ suite: 's', case: 'p50', value: 90, unit: 'us', baselines: { rtt: 30, disk: 0 } });
  t.deepEqual(latency.ratios, { rtt: 3 });
  const rate = printed({
    suite: 's', case: 'rate', value: 20_000, unit: 'puts/s', baselines: { rtt: 30, ceiling: 40_000 },
    baselineUnits: { rtt: 'us' },
  });
  t.deepEqual(rate.ratios, { ceiling: 0.5 });
  t.deepEqual(rate.baselineUnits, { rtt: 'us' }, 'the units stay on the line for a reader');
  const given = printed({ suite: 's', case: 'x', value: 1, unit: 'us', baselines: { a: 4 }, ratios: { a: 9 } });
  t.deepEqual(given.ratios, { a: 9 });
  t.is(printed({ suite: 's', case: 'y', value: 1, unit: 'us' }).ratios, undefined);
});
