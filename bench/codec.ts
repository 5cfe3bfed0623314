/**
 * `npm run bench -- codec [--quick]`: encode+decode round trips per second of a replicated call
 * through decorators/ (encodeArguments -> Dispatcher.dispatch -> decodeReply: arguments decoded
 * and checked, method invoked, result encoded and decoded), beside raw msgpackr doing the same
 * round trip (pack args, unpack, invoke, pack reply, unpack) in the same run. Cases: a 16-byte
 * string key with a 64-byte Buffer value, a class instance with nested classes, a 1 MiB Buffer.
 * Each case warms every path up, then alternates rounds (call path, msgpackr, ...) and reports
 * the median round, with the 1-minute load average beside it (the machine is shared).
 */
import 'reflect-metadata';
import { loadavg } from 'node:os';
import { Packr } from 'msgpackr';
import { instanceToPlain, plainToInstance, Type } from 'class-transformer';
import { report } from './_report.js';
import {
  decodeReply,
  Dispatcher,
  encodeArguments,
  ordered,
  replicated,
  replicatedClassInfo,
  type MethodInfo,
} from '../decorators/index.js';

class BenchAddress {
  street = 'Main Street 1';
  zip = 12345;
}
class BenchLine {
  sku = 'sku-0001';
  count = 3;
  price = 9.99;
}
class BenchOrder {
  id = 'order-000000001';
  placedAt = new Date(1700000000000);
  @Type(() => BenchAddress) address = new BenchAddress();
  @Type(() => BenchLine) lines = [new BenchLine(), new BenchLine(), new BenchLine()];
  note = 'leave at the door';
}

@replicated()
class BenchService {
  @ordered() put(key: string, value: Buffer): boolean {
    return key.length + value.length > 0;
  }
  @ordered() place(order: BenchOrder): number {
    return order.lines.length;
  }
  @ordered() upload(blob: Buffer): number {
    return blob.length;
  }
}

type Case = { name: string; args: unknown[]; method: MethodInfo };

function measure(seconds: number, body: () => void): number {
  const deadline = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  let count = 0;
  let now = process.hrtime.bigint();
  const start = now;
  while (now < deadline) {
    for (let i = 0; i < 64; i++) body();
    count += 64;
    now = process.hrtime.bigint();
  }
  return count / (Number(now - start) / 1e9);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

export async function run(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const rounds = quick ? 3 : 5;
  const secondsPerRound = quick ? 0.1 : 0.4;
  const info = replicatedClassInfo(BenchService);
  const dispatcher = new Dispatcher(new BenchService());
  const service = new BenchService();
  const raw = new Packr({ useRecords: false });
  const cases: Case[] = [
    {
      name: 'small-call-16B-key-64B-value',
      args: ['k'.repeat(16), Buffer.alloc(64, 7)],
      method: info.ordered.get('put')!,
    },
    { name: 'nested-class-instance', args: [new BenchOrder()], method: info.ordered.get('place')! },
    { name: 'buffer-1MiB', args: [Buffer.alloc(1 << 20, 1)], method: info.ordered.get('upload')! },
  ];
  for (const c of cases) {
    const wire = c.method.wireName;
    const fn = (service as unknown as Record<string, (...a: unknown[]) => unknown>)[
      c.method.methodName
    ]!;
    const callPath = (): void => {
      const reply = dispatcher.dispatch('ordered', wire, encodeArguments(c.method, c.args));
      decodeReply(reply as Uint8Array);
    };
    const rawPath = (): void => {
      const decoded = raw.unpack(raw.pack(c.args)) as unknown[];
      raw.unpack(raw.pack([0, fn.apply(service, decoded)]));
    };
    const transformerPath = (): void => {
      const plain = raw.unpack(raw.pack(c.args.map((a) => instanceToPlain(a)))) as unknown[];
      const decoded = [plainToInstance(BenchOrder, plain[0])];
      raw.unpack(raw.pack([0, fn.apply(service, decoded)]));
    };
    const nested = c.name === 'nested-class-instance';
    // Warm up every path first so the optimiser has settled before any measured round.
    measure(quick ? 0.1 : 0.3, callPath);
    measure(quick ? 0.1 : 0.3, rawPath);
    if (nested) measure(quick ? 0.1 : 0.3, transformerPath);
    const samples = { call: [] as number[], raw: [] as number[], transformer: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      samples.call.push(measure(secondsPerRound, callPath));
      samples.raw.push(measure(secondsPerRound, rawPath));
      if (nested) samples.transformer.push(measure(secondsPerRound, transformerPath));
    }
    const baselines: Record<string, number> = { msgpackr: Math.round(median(samples.raw)) };
    if (nested) baselines['classTransformerPlusMsgpackr'] = Math.round(median(samples.transformer));
    report({
      suite: 'codec',
      case: c.name,
      value: Math.round(median(samples.call)),
      unit: 'round_trips/s',
      baselines,
      rounds,
      secondsPerRound,
      loadavg1: Number(loadavg()[0]!.toFixed(2)),
      note: nested
        ? 'msgpackr baseline loses the classes; class-transformer one keeps them'
        : undefined,
    });
  }
}
