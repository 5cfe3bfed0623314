/**
 * Branded identifiers, so the compiler catches swapped arguments (a NodeId where a ShardIndex was
 * meant). Construct them only through the functions below, which check the range.
 */
import { assert } from './assert.js';

declare const brand: unique symbol;
export type Brand<T, B extends string> = T & { readonly [brand]: B };

export type NodeId = Brand<number, 'NodeId'>;
export type SubgroupId = Brand<number, 'SubgroupId'>;
export type ShardIndex = Brand<number, 'ShardIndex'>;
export type ViewId = Brand<number, 'ViewId'>;
/** A 64-bit version: view id in the high 32 bits, position in the view in the low 32 bits. */
export type Version = Brand<bigint, 'Version'>;

const UINT32_MAX = 0xffff_ffff;

function checkUint32(value: number, what: string): void {
  assert(Number.isInteger(value) && value >= 0 && value <= UINT32_MAX, `${what} must be a uint32, got ${value}`);
}

export function nodeId(value: number): NodeId {
  checkUint32(value, 'NodeId');
  return value as NodeId;
}
export function subgroupId(value: number): SubgroupId {
  checkUint32(value, 'SubgroupId');
  return value as SubgroupId;
}
export function shardIndex(value: number): ShardIndex {
  checkUint32(value, 'ShardIndex');
  return value as ShardIndex;
}
export function viewId(value: number): ViewId {
  checkUint32(value, 'ViewId');
  return value as ViewId;
}

/** The version of the message at `position` (0-based, per view) delivered in view `view`. */
export function makeVersion(view: ViewId, position: number): Version {
  checkUint32(position, 'version position');
  return ((BigInt(view) << 32n) | BigInt(position)) as Version;
}
export function versionViewId(version: Version): ViewId {
  return Number(version >> 32n) as ViewId;
}
export function versionPosition(version: Version): number {
  return Number(version & 0xffff_ffffn);
}
/** Versions below every real one (used as "nothing yet"). */
export const VERSION_NONE = -1n as Version;
