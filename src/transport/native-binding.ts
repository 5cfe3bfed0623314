/**
 * Loads the native addon built by cmake-js (build/Release/squall_native.node). Only
 * native-transport.ts uses it: protocol code above never imports the addon.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

/** A batch of events from native: one ArrayBuffer of records plus large payloads. */
export type NativeBatch = [ArrayBuffer, ArrayBuffer[]] | undefined;

/** Per-session state; the congestion fields are absent for server sessions. */
export interface NativeSessionInfo {
  dataBytesPerPacket: number;
  connected: boolean;
  /** Encrypting endpoints: the session key's epoch and key id (-1 / 0 otherwise). */
  sendEpoch?: number;
  keyId?: number;
  srttUs?: number;
  rtoUs?: number;
  rateBytesPerSecond?: number;
  lastRttUs?: number;
  minRttUs?: number;
  tLowUs?: number;
  tHighUs?: number;
}

export interface NativeEndpointHandle {
  address(): string;
  connect(address: string): number;
  /** Hands over a slab of submissions; returns the events they produced at once. */
  submit(slab: ArrayBuffer, byteLength: number, extras: Uint8Array[]): NativeBatch;
  drain(): NativeBatch;
  /** False if native no longer knows the session (it already ended). */
  disconnect(session: number): boolean;
  setHandled(type: number, handled: boolean): void;
  stats(): Record<string, number>;
  inject(faults: object): void;
  sessionInfo(session: number): NativeSessionInfo;
  /** Installs the highest-id key of keyText as primary; false if refused. */
  rotateKey(keyText: string, graceMs: number): boolean;
  close(tellPeers: boolean): NativeBatch;
  /**
   * Hands a received large message (its ArrayBuffer, or a view of it) back: detached, its
   * memory back to the receive pool. False, changing nothing, if it is not one this endpoint
   * lent (released before, another endpoint's, allocated in JS). Works after close().
   */
  release(buffer: ArrayBuffer | ArrayBufferView): boolean;
}

export interface NativeAddon {
  wireVersion: number;
  build: string;
  /** "" if text is a valid key file, else what is wrong (source, line, fix). */
  checkKeyFile(text: string, source: string): string;
  NativeEndpoint: new (
    options: object,
    onEvents: (batch: NativeBatch) => void,
  ) => NativeEndpointHandle;
}

let cached: NativeAddon | undefined;

export function loadNativeAddon(): NativeAddon {
  if (cached) return cached;
  // dist/src/transport/ -> the package root is three levels up.
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const path = join(root, 'build', 'Release', 'squall_native.node');
  if (!existsSync(path)) {
    throw new Error(
      `the native addon is missing at ${path}. Fix: run "npm run build:native" (needs cmake and g++).`,
    );
  }
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
