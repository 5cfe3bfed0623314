/**
 * One benchmark result line; `ratios` is value divided by each baseline of the same unit. A
 * baseline is in the line's unit unless `baselineUnits` names another (a throughput line beside a
 * round trip in us): no ratio is printed for it.
 */
export interface BenchLine {
  suite: string;
  case: string;
  value: number;
  unit: string;
  baselines?: Record<string, number>;
  baselineUnits?: Record<string, string>;
  ratios?: Record<string, number>;
  [extra: string]: unknown;
}

/** Prints one JSON line, computing ratios from the baselines if they were not given. */
export function report(line: BenchLine): void {
  const out: BenchLine = { ...line };
  if (out.baselines && !out.ratios) {
    out.ratios = {};
    for (const [name, base] of Object.entries(out.baselines)) {
      const unit = out.baselineUnits?.[name] ?? out.unit;
      if (base > 0 && unit === out.unit) out.ratios[name] = Number((out.value / base).toFixed(3));
    }
  }
  console.log(JSON.stringify(out));
}

/** `baselineUnits` for baselines that are all round trips or disk syncs in µs (beside a rate). */
export function allUs(baselines: Record<string, number>): Record<string, string> {
  return Object.fromEntries(Object.keys(baselines).map((name) => [name, 'us']));
}
