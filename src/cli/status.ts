/**
 * `squall status --config <file>`: asks every member listed in the config's `group.members` for
 * its view and frontiers (request type 65) and prints the view, the layout with each shard's
 * leader (shard rank 0) and senders, and every node's delivered / persisted frontiers.
 */
import { loadConfig } from '../config/load.js';
import { decodeMessageCopy } from '../core/codec.js';
import { staticMembersFromConfig } from '../group/view-source.js';
import { STATUS_TYPE, type NodeStatus } from '../group/wire.js';
import { decodeView, type View } from '../membership/view.js';
import { Endpoint, endpointOptionsFromConfig } from '../transport/native-transport.js';
import { UsageError, type CliIo, type Command } from './command.js';
import { integerFlag, parseArgs } from './args.js';

const formatVersion = (v: bigint): string => (v < 0n ? 'none' : `${v >> 32n}:${v & 0xffff_ffffn}`);

function describeLayout(view: View, io: CliIo): void {
  io.out(`view ${view.id}: ${view.members.map((m) => `${m.id}@${m.address}`).join(', ')}${view.isAdequate ? '' : ' (inadequate)'}`);
  for (const type of view.layout.types) {
    type.subgroups.forEach((subgroup, index) => {
      subgroup.shards.forEach((shard, shardIndex) => {
        io.out(`  ${type.typeName} subgroup ${index} shard ${shardIndex}: members [${shard.members.join(', ')}], leader ${shard.members[0] ?? '-'}, senders [${shard.senders.join(', ')}], mode ${shard.mode}`);
      });
    });
  }
}

async function runStatus(args: string[], io: CliIo): Promise<number> {
  const { flags, overrides } = parseArgs(args, ['config', 'timeout-ms']);
  const configPath = flags.get('config');
  if (!configPath) throw new UsageError('--config <file> is required');
  const timeoutMs = integerFlag(flags, 'timeout-ms', 'milliseconds', { min: 1, fallback: 2000 });
  const config = loadConfig(configPath, { env: io.env, args: overrides });
  const members = staticMembersFromConfig(config);
  const endpoint = await Endpoint.create(
    endpointOptionsFromConfig(config.transport, { host: config.node.host.includes(':') ? '::' : '127.0.0.1', port: 0 }),
  );
  let answered = 0;
  try {
    const statuses = await Promise.all(members.map(async (m) => {
      try {
        const session = await endpoint.connect(m.address);
        return decodeMessageCopy<NodeStatus>(await session.call(STATUS_TYPE, new Uint8Array(0), { timeoutMs }));
      } catch (error) {
        return `${(error as Error).message.split('. Fix')[0]}`;
      }
    }));
    const first = statuses.find((s): s is NodeStatus => typeof s !== 'string');
    if (first !== undefined) describeLayout(decodeView(first.view), io);
    io.out('frontiers (view:position):');
    statuses.forEach((status, i) => {
      const member = members[i]!;
      if (typeof status === 'string') {
        io.out(`  node ${member.id} (${member.address}): unreachable: ${status}`);
        return;
      }
      answered++;
      for (const s of status.shards) {
        io.out(`  node ${status.node} ${s.typeName}/${s.subgroupIndex}/${s.shardIndex}: delivered ${formatVersion(s.delivered)}, persisted here ${formatVersion(s.localPersisted)}, persisted on all ${formatVersion(s.persisted)}, stable up to ${new Date(s.stableMicros / 1000).toISOString()}`);
      }
    });
  } finally {
    await endpoint.close();
  }
  return answered > 0 ? 0 : 1;
}

export const statusCommand: Command = {
  summary: "print the group's view, layout (leaders, senders) and every member's frontiers",
  usage: `usage: squall status --config <file> [--timeout-ms <n>] [--<section>.<key>=<value> ...]

Asks each member in the config's group.members for its current view and its delivered and
persisted frontiers, and prints the view, every shard's members, leader (shard rank 0) and
senders, then one line per node and shard. Exit status: 0 if any member answered, 1 if none did
(each is listed with why), 2 bad arguments.`,
  run: runStatus,
};
