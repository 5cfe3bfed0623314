/**
 * What a leader knows about one follower (etcd's Progress): how far its log matches, what to send
 * next, and which of three states governs sending.
 *
 *   probe      one append in flight at a time, until the follower's position is known;
 *   replicate  pipelined appends, at most `inflightMax` unacknowledged messages (the window);
 *   snapshot   the follower is behind the log's start: a snapshot is streamed in chunks.
 */
import { assert } from '../core/assert.js';

export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In probe state: an append is outstanding; no more until a response or heartbeat response. */
  probeSent = false;
  /** Set by any response from the follower; cleared each election timeout (check-quorum). */
  recentActive = false;
  /** Last indices of the appends in flight, oldest first (replicate state). */
  private inflight: number[] = [];
  /** In snapshot state: the snapshot being sent, and the next byte to send. */
  snapshotIndex = 0;
  snapshotOffset = 0;
  /** In snapshot state: a chunk is outstanding. */
  snapshotChunkSent = false;
  /** Heartbeat intervals in a row with appends in flight and no acknowledgement. */
  stalledIntervals = 0;
  /** Highest readIndex round this follower has acknowledged (by heartbeat response). */
  readCtxAcked = 0;

  constructor(next: number, readonly inflightMax: number) {
    this.next = next;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflight.length >= this.inflightMax;
      case 'snapshot':
        return true;
    }
  }

  inflightCount(): number {
    return this.inflight.length;
  }

  /** Records an append in flight whose last entry is `lastIndex`. */
  sent(lastIndex: number, entryCount: number): void {
    if (this.state === 'replicate') {
      if (entryCount > 0) {
        assert(this.inflight.length < this.inflightMax, 'inflight window overflow');
        this.inflight.push(lastIndex);
        this.next = lastIndex + 1;
      }
    } else if (this.state === 'probe') {
      this.probeSent = true;
    }
  }

  /** A successful append response up to `index`. Returns whether match advanced. */
  ack(index: number): boolean {
    let updated = false;
    this.stalledIntervals = 0;
    if (index > this.match) {
      this.match = index;
      updated = true;
      this.probeSent = false;
    }
    if (this.next < index + 1) this.next = index + 1;
    while (this.inflight.length > 0 && this.inflight[0]! <= index) this.inflight.shift();
    return updated;
  }

  becomeProbe(): void {
    // After a snapshot the follower is at least at the snapshot's index.
    const from = this.state === 'snapshot' ? Math.max(this.match, this.snapshotIndex) : this.match;
    this.reset('probe');
    this.next = from + 1;
  }

  becomeReplicate(): void {
    this.reset('replicate');
    this.next = this.match + 1;
  }

  becomeSnapshot(index: number): void {
    this.reset('snapshot');
    this.snapshotIndex = index;
  }

  private reset(state: ProgressState): void {
    this.state = state;
    this.probeSent = false;
    this.inflight = [];
    this.snapshotIndex = 0;
    this.snapshotOffset = 0;
    this.snapshotChunkSent = false;
  }
}
