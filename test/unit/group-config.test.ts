// Proves Group.start refuses what cannot run before it opens anything, each refusal naming what
// to change: an empty or malformed static member list, this node missing from it or listed at
// another port, encryption on with an unreadable key file, a layout that does not match the
// types, an undecorated type; that an unreachable member fails the start with GroupStartError
// naming it; and that restarting over old data is refused while reset = true starts clean.
import test from 'ava';
import 'reflect-metadata';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  DecoratorUsageError,
  Group,
  GroupStartError,
  Persistent,
  fixedEvenShards,
  oneSubgroup,
  ordered,
  parseConfig,
  persistent,
  replicated,
  VERSION_NONE,
} from '../../src/index.js';
import { freeUdpPorts } from '../../src/group/local.js';

@replicated({ name: 'GroupConfigTestBox' })
class Box {
  @persistent() value = new Persistent(() => 0);
  @ordered() set(n: number): number {
    this.value.value = n;
    return n;
  }
}

const dataRoot = mkdtempSync(join(tmpdir(), 'squall-group-config-'));
test.after.always(() => rmSync(dataRoot, { recursive: true, force: true }));

const layout = { GroupConfigTestBox: oneSubgroup(fixedEvenShards(1, 1)) };

function config(toml: string) {
  return parseConfig(`[transport]\nencryption = false\n[persistence]\ndata_dir = "${dataRoot}/n"\nreset = true\n${toml}`, 'test.toml');
}

async function problemKeys(promise: Promise<unknown>): Promise<string[]> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof ConfigError) return error.problems.map((p) => p.key);
    throw error;
  }
  throw new Error('expected a ConfigError');
}

test('a static member list is required and checked against node.id/host/port', async (t) => {
  t.deepEqual(await problemKeys(Group.start(config(''), { types: [Box], layout })), ['group.members']);
  t.deepEqual(
    await problemKeys(Group.start(config('[node]\nid = 3\n[group]\nmembers = ["0@127.0.0.1:7000"]'), { types: [Box], layout })),
    ['group.members'],
  );
  const wrongPort = Group.start(config('[node]\nport = 7001\n[group]\nmembers = ["0@127.0.0.1:7000"]'), { types: [Box], layout });
  t.deepEqual(await problemKeys(wrongPort), ['node.port']);
  const duplicate = Group.start(config('[group]\nmembers = ["0@127.0.0.1:7000", "0@127.0.0.1:7001"]'), { types: [Box], layout });
  t.deepEqual(await problemKeys(duplicate), ['group.members[1]']);
  const malformed = t.throws(() => config('[group]\nmembers = ["127.0.0.1:7000"]'), { instanceOf: ConfigError });
  t.deepEqual(malformed?.problems.map((p) => p.key), ['group.members']);
});

test('a missing key file, a layout that does not match the types or needs more nodes, and an undecorated type are refused', async (t) => {
  const members = '[group]\nmembers = ["0@127.0.0.1:7000"]\n';
  // Encryption is on by default; without key_file the loader refuses, with a missing file the start does.
  t.throws(() => parseConfig(members, 'test.toml'), { instanceOf: ConfigError, message: /transport\.key_file/ });
  const encrypted = parseConfig(`[transport]\nkey_file = "${dataRoot}/no-such.key"\n${members}`, 'test.toml');
  await t.throwsAsync(Group.start(encrypted, { types: [Box], layout }), { code: 'BAD_KEY', message: /no-such\.key/ });
  const keys = await problemKeys(Group.start(config(members), { types: [Box], layout: { Other: oneSubgroup(fixedEvenShards(1, 1)) } }));
  t.deepEqual(keys.sort(), ['layout.GroupConfigTestBox', 'layout.Other']);
  const short = await problemKeys(Group.start(config(members), { types: [Box], layout: { GroupConfigTestBox: oneSubgroup(fixedEvenShards(1, 3)) } }));
  t.deepEqual(short, ['group.members'], 'a layout needing 3 nodes with 1 listed');
  class Plain {}
  await t.throwsAsync(Group.start(config(members), { types: [Plain], layout }), { instanceOf: DecoratorUsageError });
});

test('an unreachable member fails the start, naming it; old data is refused unless reset', async (t) => {
  const [self, absent] = await freeUdpPorts(2);
  const unreachable = config(`[node]\nport = ${self}\n[group]\nrestart_timeout_s = 1\nmembers = ["0@127.0.0.1:${self}", "1@127.0.0.1:${absent}"]`);
  const error = await t.throwsAsync(Group.start(unreachable, { types: [Box], layout: { GroupConfigTestBox: oneSubgroup(fixedEvenShards(1, 2)) } }), { instanceOf: GroupStartError });
  t.regex(error?.message ?? '', new RegExp(`node 1 \\(127\\.0\\.0\\.1:${absent}\\) did not come up`));

  const alone = `[node]\nport = ${self}\n[group]\nmembers = ["0@127.0.0.1:${self}"]\n`;
  const group = await Group.start(config(alone), { types: [Box], layout });
  t.is((await group.subgroup(Box).ordered.set(7)).get(group.nodeId), 7);
  await group.close();
  const again = parseConfig(`[transport]\nencryption = false\n[persistence]\ndata_dir = "${dataRoot}/n"\n${alone}`, 'test.toml');
  const refused = await t.throwsAsync(Group.start(again, { types: [Box], layout }), { instanceOf: GroupStartError });
  t.regex(refused?.message ?? '', /persistence\.reset = true/);
  const fresh = await Group.start(config(alone), { types: [Box], layout });
  t.is(fresh.subgroup(Box).frontier().delivered, VERSION_NONE, 'reset: the old versions are gone');
  await fresh.close();
});

test('membership and a view source together are refused before anything starts, naming both', async (t) => {
  const members = '[group]\nmembers = ["0@127.0.0.1:7000"]\n';
  const viewSource = { current: () => undefined, onView: () => () => undefined } as unknown as NonNullable<Parameters<typeof Group.start>[1]['viewSource']>;
  const keys = await problemKeys(Group.start(config(members), { types: [Box], layout, membership: true, viewSource }));
  t.deepEqual(keys, ['membership']);
});
