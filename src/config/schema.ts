/**
 * The node configuration: one TOML file per node, with environment and command-line overrides on
 * top (see load.ts). Keys are snake_case as in the file, so an error's dotted key is exactly what
 * the user must edit. Every key has a default here and a line in docs/configuration.md (a test
 * checks that the two agree).
 */
import 'reflect-metadata';
import {
  Allow,
  ArrayMinSize,
  IsBoolean,
  IsIn,
  IsInt,
  IsOptional,
  IsString,
  Matches,
  Max,
  Min,
  MinLength,
  ValidateNested,
} from 'class-validator';
import { Type } from 'class-transformer';

/** "host:port" with an IPv4 address, a host name, or a bracketed IPv6 address. */
export const ADDRESS_PATTERN = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;
const ADDRESS_MESSAGE = 'must be "host:port", e.g. "127.0.0.1:7000" or "[::1]:7000"';

const MIB = 1024 * 1024;

export class NodeSection {
  /** This node's id: unique in the group, stable across restarts. */
  @IsInt() @Min(0) @Max(0xffff_fffe) id = 0;
  /** The interface address the transport binds (IPv4 or IPv6). */
  @IsString() @MinLength(1) host = '127.0.0.1';
  /** The UDP port of the transport; 0 picks a free one. */
  @IsInt() @Min(0) @Max(65535) port = 7000;
}

export class GroupSection {
  /** Addresses of members (or the configured leader) a starting node contacts. */
  @IsString({ each: true }) @Matches(ADDRESS_PATTERN, { each: true, message: `each seed ${ADDRESS_MESSAGE}` })
  @ArrayMinSize(1)
  seeds: string[] = ['127.0.0.1:7000'];
  /** How many members replicate the membership log (the first N members; odd is best). */
  @IsInt() @Min(1) @Max(9) voters = 3;
  /**
   * Every member of a group started from a static member list, as "<id>@<host>:<port>" in rank
   * order (src/group StaticViewSource). Empty: membership is dynamic (joins through seeds).
   */
  @IsString({ each: true }) @Matches(/^\d+@(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, { each: true, message: 'each member must be "<id>@<host>:<port>", e.g. "1@127.0.0.1:7001"' })
  members: string[] = [];
  /** Seconds a restarting group waits for a majority of every shard before giving up. */
  @IsInt() @Min(1) restart_timeout_s = 60;
  /**
   * Milliseconds a total restart waits, once a majority of the last view and of every shard is
   * back, for the members still missing (they then rejoin as new members).
   */
  @IsInt() @Min(0) @Max(600_000) restart_grace_ms = 1000;
  /**
   * Milliseconds an ordered call to an inadequately provisioned subgroup waits for enough nodes
   * to join before it fails with SubgroupInadequateError (it is sent once the subgroup is whole).
   */
  @IsInt() @Min(0) inadequate_wait_ms = 30_000;
  /**
   * `squall node --membership`: once the group removed this node (taken for failed, e.g. on the
   * minority side of a partition that healed), join again as a new member over its data dir;
   * false: exit with status 3.
   */
  @IsBoolean() rejoin_after_removal = true;
}

export class TransportSection {
  /** Largest message (request or response) the transport carries, in bytes. */
  @IsInt() @Min(1024) @Max(1024 * MIB) max_message_size = 8 * MIB;
  /** Encrypt and authenticate every packet (AES-GCM). Off only for benchmarks or trusted links. */
  @IsBoolean() encryption = true;
  /** The group key file (required when encryption is on). Relative to the config file. */
  @IsOptional() @IsString() key_file?: string;
  /** Ephemeral X25519 in each session handshake (forward secrecy); ~0.1 ms CPU per handshake. */
  @IsBoolean() forward_secrecy = true;
  /** Milliseconds without any answer from a peer before its sessions are declared failed. */
  @IsInt() @Min(10) peer_failure_timeout_ms = 2000;
  /**
   * ICMP port-unreachable reports (the peer's port closed: its process ended) that fail an
   * established session before the timeout, with nothing heard from the peer in between; 0
   * only counts them.
   */
  @IsInt() @Min(0) @Max(100) port_unreachable_reports = 2;
  /** Default deadline for one RPC, in milliseconds. */
  @IsInt() @Min(1) request_timeout_ms = 10_000;
  /** Retransmission timeout before a session's first RTT sample, in milliseconds (then adaptive). */
  @IsInt() @Min(1) retransmit_timeout_ms = 10;
  /** Floor of the adaptive retransmission timeout, in milliseconds. */
  @IsInt() @Min(1) retransmit_timeout_min_ms = 5;
  /** Timely rate control per client session (off: every packet leaves at once). */
  @IsBoolean() congestion_control = true;
  /** A session's maximum and starting rate in bytes/s; uncongested sessions bypass pacing. */
  @IsInt() @Min(1_000_000) cc_rate_max_bytes_per_s = 5_000_000_000;
  /** Timely's low RTT threshold in µs; 0 derives it per session (4 x max(path RTT, window drain time)). */
  @IsInt() @Min(0) cc_t_low_us = 0;
  /** Timely's high RTT threshold in µs; 0 derives it per session (10 x t_low). */
  @IsInt() @Min(0) cc_t_high_us = 0;
  /** Kernel receive buffer of the transport socket in bytes (absorbs incast bursts). */
  @IsInt() @Min(65536) socket_receive_buffer_bytes = 128 * MIB;
  /** Kernel send buffer of the transport socket in bytes. */
  @IsInt() @Min(65536) socket_send_buffer_bytes = 8 * MIB;
  /** Sessions (client and server together) one endpoint holds at most. */
  @IsInt() @Min(1) @Max(1 << 20) sessions_max = 4096;
}

export class MulticastSection {
  /** Largest ordered-call payload, in bytes; larger calls fail with PayloadTooLargeError. */
  @IsInt() @Min(1) max_payload_size = 8 * MIB;
  /** Payloads up to this size go through SMC (batched); larger ones through RDMC (blocks). */
  @IsInt() @Min(1) max_smc_payload_size = 10 * 1024;
  /** RDMC block size in bytes. */
  @IsInt() @Min(1024) block_size = 1 * MIB;
  /** Messages a sender may have in flight before it waits for stability. */
  @IsInt() @Min(1) @Max(1 << 20) window_size = 1024;
  /** RDMC relay schedule. */
  @IsIn(['binomial', 'chain', 'sequential', 'tree']) rdmc_send_algorithm = 'binomial';
  /** Byte budget of one SMC packet (coalesced small messages, nulls and the receive report). */
  @IsInt() @Min(1024) @Max(1024 * MIB) smc_packet_size = 64 * 1024;
  /** Messages send() accepts beyond a full window; past that, senders wait for capacity. */
  @IsInt() @Min(1) @Max(1 << 20) send_queue_size = 1024;
  /** Milliseconds per block a member holding a large message waits before repairing a stuck peer. */
  @IsInt() @Min(1) rdmc_repair_ms = 250;
}

export class P2pSection {
  @IsInt() @Min(1) max_p2p_request_payload_size = 1 * MIB;
  @IsInt() @Min(1) max_p2p_reply_payload_size = 8 * MIB;
}

export class TimeoutsSection {
  /** Milliseconds between failure-detector heartbeats. */
  @IsInt() @Min(1) heartbeat_ms = 50;
  /** Milliseconds without a heartbeat before a member is suspected and removed. */
  @IsInt() @Min(1) failure_timeout_ms = 1000;
  /** Default deadline of an ordered call, in milliseconds (it waits through view changes). */
  @IsInt() @Min(1) ordered_call_timeout_ms = 30_000;
}

/** Raft-ordered shards (layout `mode: 'raft'`, src/group/raft-shard.ts). */
export class RaftSection {
  /** Compact a raft shard's log (snapshot the replica) after this many applied entries. */
  @IsInt() @Min(1) compact_every = 20_000;
}

export class PersistenceSection {
  /** Where this node keeps its LMDB environment. */
  @IsString() @MinLength(1) data_dir = './.squall-data/node0';
  /** Wipe the data directory at start (tests and demos only). */
  @IsBoolean() reset = false;
  /** LMDB map size in MiB (the most the data can grow to). */
  @IsInt() @Min(1) map_size_mib = 4096;
  /** 'durable' fsyncs each group commit; 'nosync' leaves it to the OS (faster, loses on power cut). */
  @IsIn(['durable', 'nosync']) sync = 'durable';
  /**
   * With sync = 'durable': acknowledge a turn's writes once one fdatasync of an append-only log
   * covers them, and hand them to LMDB in batches off that path (persistence/README.md).
   */
  @IsBoolean() write_ahead_log = false;
}

export class LoggingSection {
  @IsIn(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) level = 'info';
}

export class MetricsSection {
  /** Port of the Prometheus metrics endpoint; 0 turns it off. */
  @IsInt() @Min(0) @Max(65535) port = 0;
}

/**
 * A per-subgroup profile (Derecho's [SUBGROUP/<profile>]): multicast limits that a layout policy
 * names for a subgroup. Unset keys inherit from [multicast].
 */
export class ProfileSection {
  @IsOptional() @IsInt() @Min(1) max_payload_size?: number;
  @IsOptional() @IsInt() @Min(1) max_smc_payload_size?: number;
  @IsOptional() @IsInt() @Min(1024) block_size?: number;
  @IsOptional() @IsInt() @Min(1) @Max(1 << 20) window_size?: number;
  @IsOptional() @IsIn(['binomial', 'chain', 'sequential', 'tree']) rdmc_send_algorithm?: string;
  @IsOptional() @IsInt() @Min(1024) @Max(1024 * MIB) smc_packet_size?: number;
  @IsOptional() @IsInt() @Min(1) @Max(1 << 20) send_queue_size?: number;
  @IsOptional() @IsInt() @Min(1) rdmc_repair_ms?: number;
}

export class SquallConfig {
  @ValidateNested() @Type(() => NodeSection) node = new NodeSection();
  @ValidateNested() @Type(() => GroupSection) group = new GroupSection();
  @ValidateNested() @Type(() => TransportSection) transport = new TransportSection();
  @ValidateNested() @Type(() => MulticastSection) multicast = new MulticastSection();
  @ValidateNested() @Type(() => P2pSection) p2p = new P2pSection();
  @ValidateNested() @Type(() => TimeoutsSection) timeouts = new TimeoutsSection();
  @ValidateNested() @Type(() => RaftSection) raft = new RaftSection();
  @ValidateNested() @Type(() => PersistenceSection) persistence = new PersistenceSection();
  @ValidateNested() @Type(() => LoggingSection) logging = new LoggingSection();
  @ValidateNested() @Type(() => MetricsSection) metrics = new MetricsSection();
  /** Profiles by name; validated by load.ts (class-transformer cannot type a record's values). */
  @Allow() subgroup: Record<string, ProfileSection> = {};
}

/** The sections in file order, with their classes (used for overrides, docs and unknown keys). */
export const SECTIONS = {
  node: NodeSection,
  group: GroupSection,
  transport: TransportSection,
  multicast: MulticastSection,
  p2p: P2pSection,
  timeouts: TimeoutsSection,
  raft: RaftSection,
  persistence: PersistenceSection,
  logging: LoggingSection,
  metrics: MetricsSection,
} as const;
export type SectionName = keyof typeof SECTIONS;
