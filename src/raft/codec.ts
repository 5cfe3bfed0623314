/**
 * Wire encoding of Raft messages for the driver: msgpackr (src/core/codec.ts does not exist yet;
 * move there when it does). One request carries every message of one Ready for one peer, so a
 * Ready costs one transport call per peer. Decoded `Uint8Array` fields alias the request buffer,
 * which the transport hands to the receiver to own.
 */
import { Packr } from 'msgpackr';
import type { Message } from './types.js';

const packr = new Packr({ useRecords: false, int64AsType: 'number', mapsAsObjects: true });

/** Wire format version: a message batch is [version, messages]. */
const VERSION = 1;

export function encodeMessages(messages: readonly Message[]): Uint8Array {
  return packr.pack([VERSION, messages]);
}

export function decodeMessages(bytes: Uint8Array): Message[] {
  const decoded = packr.unpack(bytes) as unknown;
  if (!Array.isArray(decoded) || decoded[0] !== VERSION || !Array.isArray(decoded[1])) {
    throw new Error(`not a raft message batch (version ${Array.isArray(decoded) ? String(decoded[0]) : '?'})`);
  }
  return decoded[1] as Message[];
}
