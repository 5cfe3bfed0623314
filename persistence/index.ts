/** Public exports of persistence/. */
export { Persistent, Volatile } from './persistent.js';
export type { PersistentOptions, TimeQuery, VersionInfo } from './persistent.js';
export { PersistentRegistry, CHUNK_BYTES_DEFAULT } from './registry.js';
export type { TrimPoint, RegistryBackend } from './registry.js';
export { PersistenceStore, memoryRegistry, STORE_FILE } from './store.js';
export type { PersistenceConfig, SyncMode } from './store.js';
export { PersistentMap } from './persistent-map.js';
export { bytesCodec, msgpackCodec } from './codec.js';
export type { ValueCodec, DeltaCodec } from './codec.js';
export * from './errors.js';
