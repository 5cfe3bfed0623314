import { SquallError } from '../core/errors.js';

/**
 * A transport operation failed for a reason other than a deadline or a dead peer: the session
 * was closed, the server has no handler for the request type, the handler threw, a connect was
 * refused, or the endpoint is closed. `code` says which; the message ends with the fix.
 */
export class TransportError extends SquallError {
  constructor(message: string, code: string, options?: { cause?: unknown }) {
    super(message, code, options);
  }
}

/**
 * The peer stopped answering: nothing (not even a keepalive answer) arrived from it for the
 * endpoint's peerFailureTimeoutMs. Every call pending on its sessions fails with this error.
 * The call may or may not have run on the peer.
 */
export class PeerFailedError extends SquallError {
  readonly peer: string;
  readonly peerFailureTimeoutMs: number;
  constructor(peer: string, peerFailureTimeoutMs: number) {
    super(
      `peer ${peer} sent nothing for ${peerFailureTimeoutMs} ms and is considered failed. ` +
        'Fix: check that the peer process is alive and reachable, then connect again ' +
        '(or raise peerFailureTimeoutMs if it is only slow).',
      'PEER_FAILED',
    );
    this.peer = peer;
    this.peerFailureTimeoutMs = peerFailureTimeoutMs;
  }
}
