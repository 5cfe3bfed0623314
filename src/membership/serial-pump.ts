/**
 * A loop guard for drivers that drain these cores: running the drained outputs can feed the
 * cores again synchronously (a proposal that commits at once on a leader's Raft feeds the next
 * committed entry to the view-change core). A nested drain would act on later effects (say, a
 * `deliver` for the next view) before the outer one has acted on earlier ones (that view's
 * `install`). So a nested `run()` only asks the running loop to go round once more. Found by the
 * membership simulation (nodes ended up in a view with no shards).
 */
export class SerialPump {
  private running = false;
  private again = false;

  /** `once` drains and acts once; the loop repeats while asked to and `active()` holds. */
  constructor(
    private readonly once: () => void,
    private readonly active: () => boolean,
  ) {}

  run(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        this.once();
      } while (this.again && this.active());
    } finally {
      this.running = false;
    }
  }
}
