export { MulticastCore } from './multicast-core.js';
export type {
  MulticastCoreOptions,
  MulticastCounters,
  MulticastMode,
  MulticastReady,
  SendResult,
} from './multicast-core.js';
export { computeTrim } from './ragged-edge.js';
export {
  encodePacket, decodePacket, encodeBlockInto, encodeBlockHeaderInto, encodedBlockBytes, MulticastDecodeError,
  BLOCK_HEADER_BYTES,
} from './codec.js';
export {
  multicastLimits, multicastLimitsFromConfig, multicastLimitsForProfile, DEFAULT_MULTICAST_LIMITS,
} from './config.js';
export type { MulticastLimits, MulticastConfigSection, MulticastConfigSource } from './config.js';
export { rdmcSchedule, checkSchedule, outgoingByRank, RDMC_ALGORITHMS } from './rdmc-schedule.js';
export type { RdmcAlgorithm, RdmcSchedule, RdmcTransfer } from './rdmc-schedule.js';
export { RdmcTransferState } from './rdmc-transfer.js';
export type * from './types.js';
