#!/usr/bin/env node
/**
 * The `squall` command. Each subcommand parses its own flags, prints `--help`, and exits non-zero with a clear message on bad arguments (exit 2) or a failed check
 * (exit 1).
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { SquallError } from '../core/errors.js';
import { UsageError, type CliIo, type Command } from './command.js';
import { loadConfig } from '../config/load.js';
import { nodeCommand } from './node.js';
import { demoCommand } from './demo.js';
import { statusCommand } from './status.js';
import { inspectCommand } from './inspect.js';
import { keygenCommand } from './keygen.js';

export type { CliIo, Command } from './command.js';
export { UsageError } from './command.js';

const configCheck: Command = {
  summary: 'validate a node config file (with SQUALL_* and --section.key overrides) and print it',
  usage: `usage: squall config check --config <file> [--json] [--<section>.<key>=<value> ...]

Reads the TOML file, applies SQUALL_<SECTION>_<KEY> environment variables and the overrides given
here, validates everything, and prints the resulting configuration. Every problem is listed with
its dotted key. Exit status: 0 valid, 1 invalid, 2 bad arguments.`,
  run(args, io) {
    const overrides: string[] = [];
    let configPath: string | undefined;
    for (let i = 0; i < args.length; i++) {
      const arg = args[i]!;
      if (arg === '--config') configPath = args[++i];
      else if (arg.startsWith('--config=')) configPath = arg.slice('--config='.length);
      else if (arg !== '--json') overrides.push(arg); // the rest are --section.key overrides
    }
    if (!configPath) throw new UsageError('--config <file> is required');
    const config = loadConfig(configPath, { env: io.env, args: overrides });
    if (args.includes('--json')) io.out(JSON.stringify(config, null, 2));
    else {
      io.out(`${configPath}: valid`);
      for (const [section, values] of Object.entries(config)) {
        for (const [key, value] of Object.entries(values as Record<string, unknown>)) {
          io.out(`  ${section}.${key} = ${JSON.stringify(value)}`);
        }
      }
    }
    return 0;
  },
};

const commands: Record<string, Command> = {
  'config check': configCheck,
  node: nodeCommand,
  demo: demoCommand,
  status: statusCommand,
  inspect: inspectCommand,
  keygen: keygenCommand,
};

function topHelp(): string {
  const lines = Object.entries(commands).map(([name, c]) => `  squall ${name.padEnd(14)} ${c.summary}`);
  return `usage: squall <command> [options]\n\ncommands:\n${lines.join('\n')}\n\nRun "squall <command> --help" for a command's options.`;
}

/**
 * Runs the CLI with the given arguments; returns the exit code, or a promise of it for the
 * long-running commands (never calls process.exit).
 */
export function main(argv: string[], io: CliIo): number | Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    io.out(topHelp());
    return argv.length === 0 ? 2 : 0;
  }
  const name = Object.keys(commands).find((n) => n.split(' ').every((word, i) => argv[i] === word));
  if (!name) {
    io.err(`squall: unknown command "${argv.join(' ')}"\n\n${topHelp()}`);
    return 2;
  }
  const command = commands[name]!;
  const rest = argv.slice(name.split(' ').length);
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(command.usage);
    return 0;
  }
  const fail = (error: unknown): number => {
    if (error instanceof UsageError) {
      io.err(`squall ${name}: ${error.message}\n\n${command.usage}`);
      return 2;
    }
    if (error instanceof SquallError) {
      io.err(`squall ${name}: ${error.name}: ${error.message}`);
      return 1;
    }
    throw error;
  };
  try {
    const code = command.run(rest, io);
    return code instanceof Promise ? code.catch(fail) : code;
  } catch (error) {
    return fail(error);
  }
}

if (import.meta.url === pathToFileURL(realpathSync(process.argv[1] ?? '.')).href) {
  const code = await main(process.argv.slice(2), {
    out: (line) => console.log(line),
    err: (line) => console.error(line),
    env: process.env,
  });
  process.exitCode = code;
}
