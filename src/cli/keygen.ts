/** `squall keygen`: writes a fresh group key file (what transport.key_file names). */
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { keyFileLine } from '../transport/native-transport.js';
import { UsageError, type Command } from './command.js';
import { parseArgs } from './args.js';

export const keygenCommand: Command = {
  summary: 'write a new group key file (AES-GCM group secret) for transport.key_file',
  usage: `usage: squall keygen --out <file> [--key-id <n>] [--force]

Writes one line "squall-key v1 <key-id> <64 hex digits>" with a fresh 32-byte secret from the OS,
readable by its owner only (mode 0600). Give the same file to every node of the group (its
transport.key_file). For a rotation, write a new key with a higher --key-id and append it to the
nodes' key files. Refuses to overwrite an existing file unless --force.`,
  run(args, io) {
    const { flags, switches, overrides } = parseArgs(args, ['out', 'key-id'], ['force']);
    if (overrides.length > 0) throw new UsageError(`unknown argument ${overrides[0]}`);
    const out = flags.get('out');
    if (!out) throw new UsageError('--out <file> is required');
    const keyIdText = flags.get('key-id') ?? '1';
    const keyId = Number(keyIdText);
    if (!Number.isInteger(keyId) || keyId < 1 || keyId > 0xffff_ffff) {
      throw new UsageError(`--key-id must be an integer from 1 to 4294967295, got ${keyIdText}`);
    }
    if (existsSync(out) && !switches.has('force')) {
      throw new UsageError(`${out} exists; refusing to overwrite a group key (pass --force to replace it)`);
    }
    writeFileSync(out, keyFileLine(keyId, randomBytes(32)), { mode: 0o600 });
    io.out(`wrote group key ${keyId} to ${out}`);
    return 0;
  },
};
