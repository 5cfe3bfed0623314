/** One transport session per peer address, opened on first use and forgotten when it ends. */
import type { Transport, TransportSession } from './transport.js';

export class SessionCache {
  private readonly sessions = new Map<string, Promise<TransportSession>>();

  constructor(private readonly transport: Pick<Transport, 'connect'>) {}

  /** The open (or opening) session to `address`; a failed or ended one is replaced next time. */
  get(address: string): Promise<TransportSession> {
    let session = this.sessions.get(address);
    if (session === undefined) {
      session = this.transport.connect(address);
      this.sessions.set(address, session);
      session.then(
        (s) => s.onEvent(() => this.sessions.delete(address)),
        () => this.sessions.delete(address),
      );
    }
    return session;
  }
}
