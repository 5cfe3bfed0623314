/**
 * One member's part in one RDMC transfer: which blocks it holds, which of its scheduled sends
 * are due, when the message is complete. Pure and synchronous; the multicast core owns one per
 * large message in flight and turns `takeDueSends()` into block packets.
 *
 * Sends run in schedule order and a send waits until its block is present (see the contract in
 * rdmc-schedule.ts: that order can never deadlock). Blocks may arrive in any order and twice.
 *
 * Reassembly: a one-block message is the received block itself (no copy). A longer one is
 * copied block by block, as each arrives, into one buffer of the message's size allocated at
 * the first block; relays forward views of that buffer, and the packet buffers are let go at
 * once. (It used to keep every block's packet until the last one and then copy them all into
 * a fresh buffer: the same one copy, but a 16 MiB message held 32 MiB, and the packets of
 * every transfer in flight stayed alive until their last block.) The message buffer comes from
 * `allocate` (default: a fresh one); the multicast driver passes buffers of messages its
 * application is done with (MulticastDriverOptions.releaseReceived), so a 16 MiB message no
 * longer costs 16 MiB of freshly faulted pages.
 */
import { assert } from '../core/assert.js';
import type { RdmcTransfer } from './rdmc-schedule.js';

/** Where a message of several blocks is assembled: `bytes` long, its content unspecified. */
export type MessageAllocator = (bytes: number) => Uint8Array;

/** A fresh buffer (not zero-filled: every byte is written by some block before it is read). */
export const freshMessageBuffer: MessageAllocator = (bytes) =>
  new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes);

export class RdmcTransferState {
  readonly totalBytes: number;
  readonly blockBytes: number;
  readonly blockCount: number;
  private readonly outgoing: readonly RdmcTransfer[];
  private nextSendIndex = 0;
  private readonly present: Uint8Array;
  private presentCount = 0;
  /**
   * At the origin: the whole message. At a receiver: null until the first block arrives, then
   * the message being assembled (a one-block message: that block).
   */
  private buffer: Uint8Array | null;
  private readonly allocate: MessageAllocator;

  /**
   * `outgoing`: this member's transfers in step order (from `outgoingByRank`). `payload` is
   * given at the origin only; the state then holds every block and keeps the caller's buffer
   * (the caller must not change it afterwards). `allocate` gives a receiver's message buffer
   * (several blocks only; it must be exactly `totalBytes` long and nobody else's any more).
   */
  constructor(
    totalBytes: number,
    blockBytes: number,
    outgoing: readonly RdmcTransfer[],
    payload?: Uint8Array,
    allocate: MessageAllocator = freshMessageBuffer,
  ) {
    assert(totalBytes >= 1 && blockBytes >= 1, 'RDMC transfer needs bytes and a block size');
    this.totalBytes = totalBytes;
    this.blockBytes = blockBytes;
    this.blockCount = Math.ceil(totalBytes / blockBytes);
    this.outgoing = outgoing;
    this.present = new Uint8Array(this.blockCount);
    this.allocate = allocate;
    if (payload !== undefined) {
      assert(payload.length === totalBytes, 'origin payload length matches totalBytes');
      this.buffer = payload;
      this.present.fill(1);
      this.presentCount = this.blockCount;
    } else {
      this.buffer = null;
    }
  }

  /** The byte length block `block` must have. */
  blockLength(block: number): number {
    return Math.min(this.blockBytes, this.totalBytes - block * this.blockBytes);
  }

  /**
   * Stores a block: a one-block message keeps `bytes` itself (the caller hands over ownership),
   * a longer one copies it into the message buffer (the caller may drop `bytes`). Returns false
   * (and changes nothing) for a duplicate; throws AssertionError for a block that does not fit
   * this transfer (callers validate packets first).
   */
  receiveBlock(block: number, bytes: Uint8Array): boolean {
    assert(block >= 0 && block < this.blockCount, `block ${block} out of range`);
    assert(bytes.length === this.blockLength(block), `block ${block} has the wrong length`);
    if (this.present[block]) return false;
    if (this.blockCount === 1) {
      this.buffer = bytes;
    } else {
      // Every byte is written by some block before message() can return it.
      if (this.buffer === null) {
        const buffer = this.allocate(this.totalBytes);
        assert(buffer.byteLength === this.totalBytes, 'an allocated RDMC message buffer has the message\'s length');
        this.buffer = buffer;
      }
      this.buffer.set(bytes, block * this.blockBytes);
    }
    this.present[block] = 1;
    this.presentCount++;
    return true;
  }

  hasBlock(block: number): boolean {
    return this.present[block] === 1;
  }

  /** A view of a present block (valid for as long as the buffer lives; never rewritten). */
  blockView(block: number): Uint8Array {
    assert(this.hasBlock(block), `block ${block} is not present`);
    const start = block * this.blockBytes;
    return this.buffer!.subarray(start, start + this.blockLength(block));
  }

  /** The scheduled sends whose blocks are now present, in schedule order; each is returned once. */
  takeDueSends(): RdmcTransfer[] {
    const due: RdmcTransfer[] = [];
    while (this.nextSendIndex < this.outgoing.length) {
      const transfer = this.outgoing[this.nextSendIndex]!;
      if (!this.present[transfer.block]) break;
      due.push(transfer);
      this.nextSendIndex++;
    }
    return due;
  }

  /** What this transfer is waiting for, for diagnostics (a stuck transfer's report). */
  progress(): { readonly blocksPresent: number; readonly blockCount: number; readonly sendsTaken: number; readonly sendsTotal: number; readonly nextSend: RdmcTransfer | null } {
    return {
      blocksPresent: this.presentCount,
      blockCount: this.blockCount,
      sendsTaken: this.nextSendIndex,
      sendsTotal: this.outgoing.length,
      nextSend: this.outgoing[this.nextSendIndex] ?? null,
    };
  }

  get complete(): boolean {
    return this.presentCount === this.blockCount;
  }

  /** Complete and every scheduled send taken: the state can be dropped. */
  get finished(): boolean {
    return this.complete && this.nextSendIndex === this.outgoing.length;
  }

  /** The reassembled message (the same buffer every call; see "Reassembly" above). */
  message(): Uint8Array {
    assert(this.complete, 'RDMC message is not complete');
    return this.buffer!;
  }
}
