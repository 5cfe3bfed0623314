import { SquallError } from '../core/errors.js';

/** Why a proposal or request was refused by the Raft core. */
export type RaftRefusal = 'not-leader' | 'transferring' | 'conf-change-pending' | 'bad-conf-change' | 'overloaded';

/**
 * A proposal, membership change, leader transfer or read was refused. `leader` is the leader this
 * node knows of (0 if none), so a caller can retry there; nothing was appended.
 */
export class RaftProposalError extends SquallError {
  constructor(readonly reason: RaftRefusal, readonly leader: number, detail: string) {
    super(`raft refused the request (${reason}): ${detail}`, reason === 'not-leader' ? 'NOT_LEADER' : 'RAFT_REFUSED');
  }
}
