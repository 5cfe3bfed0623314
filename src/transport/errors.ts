import { SquallError } from '../core/errors.js';
import type { PeerFailureSignal } from './transport.js';

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
 * The peer is gone: nothing (not even a keepalive answer) arrived from it for the endpoint's
 * peerFailureTimeoutMs (`signal` 'silence'), or its host reported its port closed, answering
 * our datagrams with ICMP "port unreachable" (`signal` 'port-unreachable': the process died, the
 * host is up). Every call pending on its sessions fails with this error. The call may or may
 * not have run on the peer.
 */
export class PeerFailedError extends SquallError {
  readonly peer: string;
  readonly peerFailureTimeoutMs: number;
  readonly signal: PeerFailureSignal;
  constructor(peer: string, peerFailureTimeoutMs: number, signal: PeerFailureSignal = 'silence') {
    super(
      (signal === 'port-unreachable'
        ? `peer ${peer} is gone: its host reports the port closed (ICMP port unreachable), so ` +
          'no process listens there any more. Fix: restart the peer process (or connect to ' +
          'another one); a call that was in flight may or may not have run.'
        : `peer ${peer} sent nothing for ${peerFailureTimeoutMs} ms and is considered failed. ` +
          'Fix: check that the peer process is alive and reachable, then connect again ' +
          '(or raise peerFailureTimeoutMs if it is only slow).'),
      'PEER_FAILED',
    );
    this.peer = peer;
    this.peerFailureTimeoutMs = peerFailureTimeoutMs;
    this.signal = signal;
  }
}
