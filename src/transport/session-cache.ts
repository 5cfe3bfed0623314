/** One transport session per peer address, opened on first use and forgotten when it ends. */
import type { Transport, TransportSession } from './transport.js';

export class SessionCache {
  private readonly sessions = new Map<string, Promise<TransportSession>>();

  constructor(private readonly transport: Pick<Transport, 'connect'>) {}

  /** The open (or opening) session to `address`; a failed or ended one is replaced next time. */
  get(address: string): Promise<TransportSession> {
    let session = this.sessions.get(address);
    if (session === undefined) {
      const opened = this.transport.connect(address);
      session = opened;
      this.sessions.set(address, opened);
      // Only this session's own end forgets it: a forgotten one that ends later must not evict
      // its replacement.
      const forget = (): void => {
        if (this.sessions.get(address) === opened) this.sessions.delete(address);
      };
      opened.then((s) => s.onEvent(forget), forget);
    }
    return session;
  }

  /**
   * Opens a new session to `address` on the next get(): the cached one may lead to an earlier
   * process at that address (a node restarted there), whose session only fails after the
   * transport's peer-failure timeout, losing what is sent meanwhile.
   */
  forget(address: string): void {
    this.sessions.delete(address);
  }
}
