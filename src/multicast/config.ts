/**
 * The multicast limits, from the shard's profile (Derecho's SUBGROUP/<profile> keys). Field names
 * are camelCase with units last; each names its config key so errors point at what to change.
 */
import { ConfigError } from '../core/errors.js';
import { RDMC_ALGORITHMS, type RdmcAlgorithm } from './rdmc-schedule.js';

export interface MulticastLimits {
  /** `max_payload_size`: the largest payload send() accepts; above it, PayloadTooLargeError. */
  readonly payloadBytesMax: number;
  /** `max_smc_payload_size`: payloads up to this go by SMC (batched packets); above, by RDMC. */
  readonly smcPayloadBytesMax: number;
  /** `block_size`: RDMC block size. */
  readonly blockBytes: number;
  /** `window_size`: a sender's real messages in flight (sent, not yet delivered everywhere). */
  readonly windowSize: number;
  /** `rdmc_send_algorithm`: the relay schedule for RDMC messages. */
  readonly rdmcAlgorithm: RdmcAlgorithm;
  /**
   * `smc_packet_size`: the byte budget of one SMC packet (messages + nulls + the receive report).
   * Must leave room for one message of `max_smc_payload_size` plus headers.
   */
  readonly packetBytesMax: number;
  /**
   * `send_queue_size`: messages accepted by send() but held back by a full window. When the
   * queue is full too, send() says so and the caller waits for `sendCapacity` in ready().
   */
  readonly sendQueueCountMax: number;
}

/**
 * The defaults of src/config's [multicast] section (so a core built without a config behaves
 * like one built from the default config), plus the packet budget and send queue, which are
 * this layer's own.
 */
export const DEFAULT_MULTICAST_LIMITS: MulticastLimits = {
  payloadBytesMax: 8 * 1024 * 1024,
  smcPayloadBytesMax: 10 * 1024,
  blockBytes: 1024 * 1024,
  windowSize: 1024,
  rdmcAlgorithm: 'binomial',
  packetBytesMax: 64 * 1024,
  sendQueueCountMax: 1024,
};

/**
 * The config keys as src/config spells them ([multicast] or a [profile.<name>] section); unset
 * keys take the defaults. Structural, so this pure layer does not import the config loader.
 */
export interface MulticastConfigSection {
  readonly max_payload_size?: number | undefined;
  readonly max_smc_payload_size?: number | undefined;
  readonly block_size?: number | undefined;
  readonly window_size?: number | undefined;
  readonly rdmc_send_algorithm?: string | undefined;
  readonly smc_packet_size?: number | undefined;
  readonly send_queue_size?: number | undefined;
}

/** multicastLimits() from config keys; ConfigError names `<prefix>.<key>` for each problem. */
export function multicastLimitsFromConfig(
  section: MulticastConfigSection,
  prefix = 'multicast',
): MulticastLimits {
  const overrides: { -readonly [K in keyof MulticastLimits]?: MulticastLimits[K] } = {};
  if (section.max_payload_size !== undefined) overrides.payloadBytesMax = section.max_payload_size;
  if (section.max_smc_payload_size !== undefined) {
    overrides.smcPayloadBytesMax = section.max_smc_payload_size;
  }
  if (section.block_size !== undefined) overrides.blockBytes = section.block_size;
  if (section.window_size !== undefined) overrides.windowSize = section.window_size;
  if (section.rdmc_send_algorithm !== undefined) {
    overrides.rdmcAlgorithm = section.rdmc_send_algorithm as RdmcAlgorithm;
  }
  if (section.smc_packet_size !== undefined) overrides.packetBytesMax = section.smc_packet_size;
  if (section.send_queue_size !== undefined) overrides.sendQueueCountMax = section.send_queue_size;
  return multicastLimits(overrides, prefix);
}

/** Bytes a packet spends besides payloads (headers, report), for `senderCount` senders. */
export function packetOverheadBytes(senderCount: number): number {
  return 64 + 10 * senderCount;
}
/** Bytes one SMC message spends besides its payload inside a packet. */
export const SMC_ENTRY_OVERHEAD_BYTES = 32;
/** Bytes one null run spends inside a packet. */
export const NULL_RUN_BYTES = 16;

/**
 * Fills defaults and validates. Throws ConfigError naming every bad key (under `prefix`), e.g.
 * `subgroup.default.window_size: must be an integer >= 1, got 0`.
 */
export function multicastLimits(
  overrides: Partial<MulticastLimits> = {},
  prefix = 'multicast',
): MulticastLimits {
  const limits: MulticastLimits = { ...DEFAULT_MULTICAST_LIMITS, ...overrides };
  const problems: { key: string; message: string }[] = [];
  const positiveInt = (value: number, key: string): void => {
    if (!Number.isSafeInteger(value) || value < 1) {
      problems.push({ key: `${prefix}.${key}`, message: `must be an integer >= 1, got ${value}` });
    }
  };
  positiveInt(limits.payloadBytesMax, 'max_payload_size');
  positiveInt(limits.smcPayloadBytesMax, 'max_smc_payload_size');
  positiveInt(limits.blockBytes, 'block_size');
  positiveInt(limits.windowSize, 'window_size');
  positiveInt(limits.packetBytesMax, 'smc_packet_size');
  positiveInt(limits.sendQueueCountMax, 'send_queue_size');
  if (!RDMC_ALGORITHMS.includes(limits.rdmcAlgorithm)) {
    problems.push({
      key: `${prefix}.rdmc_send_algorithm`,
      message: `must be one of ${RDMC_ALGORITHMS.join(', ')}, got ${String(limits.rdmcAlgorithm)}`,
    });
  }
  // Positions and versions are uint32 within a view; payloads are kept whole in memory.
  if (limits.payloadBytesMax > 2 ** 31) {
    problems.push({ key: `${prefix}.max_payload_size`, message: 'must be at most 2 GiB' });
  }
  const packetProblem = smcPacketProblem(limits, 1);
  if (packetProblem !== null) {
    problems.push({ key: `${prefix}.smc_packet_size`, message: packetProblem });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return limits;
}

/**
 * Null if one SMC message of `max_smc_payload_size` fits a packet together with the report of
 * a shard of `senderCount` senders; else what is wrong (the core re-checks with its real count).
 */
export function smcPacketProblem(limits: MulticastLimits, senderCount: number): string | null {
  const needed =
    Math.min(limits.smcPayloadBytesMax, limits.payloadBytesMax) +
    packetOverheadBytes(senderCount) +
    SMC_ENTRY_OVERHEAD_BYTES;
  if (limits.packetBytesMax >= needed) return null;
  return (
    `${limits.packetBytesMax} bytes cannot hold one SMC message of max_smc_payload_size ` +
    `(${limits.smcPayloadBytesMax}) plus headers for ${senderCount} sender(s); raise it to at ` +
    `least ${needed} or lower max_smc_payload_size`
  );
}
