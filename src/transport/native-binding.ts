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
  sessionInfo(session: number): { dataBytesPerPacket: number; connected: boolean };
  close(tellPeers: boolean): NativeBatch;
}

export interface NativeAddon {
  wireVersion: number;
  build: string;
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
