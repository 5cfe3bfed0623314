/**
 * `squall node`: starts one node of a group from its config file, hosting the replicated types
 * an app module exports, and runs until SIGINT/SIGTERM (or until its parent's IPC channel closes,
 * when a parent started it with one), then leaves cleanly.
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadConfig } from '../config/load.js';
import { Group, type GroupOptions } from '../group/group.js';
import { UsageError, type CliIo, type Command } from './command.js';
import { parseArgs } from './args.js';

/** What an app module must export for `squall node --app`. */
export interface AppModule {
  readonly types: GroupOptions['types'];
  readonly layout: GroupOptions['layout'];
}

/** Imports an app module and checks that it exports `types` and `layout`. */
export async function loadApp(path: string): Promise<AppModule> {
  let module: Partial<AppModule>;
  try {
    module = (await import(pathToFileURL(resolve(path)).href)) as Partial<AppModule>;
  } catch (error) {
    throw new UsageError(`cannot load the app module ${path}: ${(error as Error).message}. Fix: pass the compiled .js file, e.g. --app dist/examples/kv-store/app.js`);
  }
  if (!Array.isArray(module.types) || module.layout === undefined) {
    throw new UsageError(`${path} must export "types" (an array of @replicated classes) and "layout" (a policy per type name). Fix: see examples/kv-store/app.ts`);
  }
  return module as AppModule;
}

/** Describes this node's place in the group, one line per shard. */
export function describeNode(group: Group): string[] {
  const view = group.view;
  const lines = [
    `node ${group.nodeId} up at ${group.transport.address}: view ${view.id}, rank ${group.rank} of ${view.members.length} (${view.members.map((m) => `${m.id}@${m.address}`).join(', ')})`,
  ];
  for (const s of group.shards) {
    const shard = view.subgroup(s.typeName, s.subgroupIndex)!.shards[s.shardIndex]!;
    lines.push(`  ${s.typeName} subgroup ${s.subgroupIndex} shard ${s.shardIndex}: members [${shard.members.join(', ')}], shard rank ${s.shardRank}${s.isSender ? ', sender' : ''}, mode ${s.mode}`);
  }
  return lines;
}

/** How long a removed node waits before it joins again. */
const REJOIN_PAUSE_MS = 1000;

async function runNode(args: string[], io: CliIo): Promise<number> {
  const { flags, switches, overrides } = parseArgs(args, ['config', 'app'], ['membership']);
  const configPath = flags.get('config');
  const appPath = flags.get('app');
  if (!configPath) throw new UsageError('--config <file> is required');
  if (!appPath) throw new UsageError('--app <module.js> is required');
  let config = loadConfig(configPath, { env: io.env, args: overrides });
  const app = await loadApp(appPath);
  const membership = switches.has('membership');
  for (;;) {
    const group = await Group.start(config, { types: app.types, layout: app.layout, ...(membership ? { membership: true } : {}) });
    for (const line of describeNode(group)) io.out(line);
    const removed = await new Promise<Error | undefined>((done) => {
      const stop = (): void => done(undefined);
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      if (process.send !== undefined) process.once('disconnect', stop);
      // Removed by the group (taken for failed, or stopped after an internal error): it serves
      // nothing more, so the process says why, then joins again or ends, rather than idling as
      // if it were a member.
      group.on('removed', (error) => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        process.off('disconnect', stop);
        done(error);
      });
    });
    await group.close();
    if (removed === undefined) {
      io.out(`node ${group.nodeId} left the group`);
      return 0;
    }
    io.err(removed.message);
    if (!membership || !config.group.rejoin_after_removal) return 3;
    // A new member over the same data dir (never wiped now): the group sends only what it lacks.
    io.err(`node ${group.nodeId}: joining the group again as a new member (group.rejoin_after_removal = false exits instead)`);
    config = { ...config, persistence: { ...config.persistence, reset: false } };
    // A pause first, so that a cause that recurs at once (an internal error) does not spin.
    await new Promise((resolve) => setTimeout(resolve, REJOIN_PAUSE_MS));
  }
}

export const nodeCommand: Command = {
  summary: 'start a node from its config file, hosting the types an app module exports',
  usage: `usage: squall node --config <file> --app <module.js> [--membership] [--<section>.<key>=<value> ...]

--membership runs the node on the membership service (failures removed by view changes, joins
with state transfer; node ids from 1); without it the group is the static list group.members.

Starts this node's part of the group described by the config (every member listed in
group.members starts the same way) and hosts the @replicated types that the app module exports as
"types", laid out by its "layout" export (see examples/kv-store/app.ts). Runs until SIGINT or
SIGTERM, then leaves cleanly. With --membership, a node the group removed (taken for failed, e.g.
stopped or cut off past the failure timeout) says why on stderr and joins again as a new member
over its data dir, unless group.rejoin_after_removal = false. Exit status: 0 after a clean stop,
1 if the node cannot start (the message names the config key or the unreachable member), 2 bad
arguments, 3 once the group removed this node and it does not rejoin (the message says why).`,
  run: runNode,
};
