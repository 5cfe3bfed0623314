import type { MulticastDelivery } from './multicast-driver.js';

/**
 * The deliveries of a shard that this node enters by state transfer (or reconciles after a total
 * restart). While the state is on its way, this node's multicast already delivers the view's
 * messages: they are held. Once the state is here, holding everything through version `latest`,
 * the held deliveries newer than it are applied, in order; and since the source may have
 * delivered further in this view than this node had when it answered, this node's multicast can
 * still deliver messages that the state already holds. Those are skipped, not applied twice,
 * until the first newer one (deliveries come in version order, so nothing older follows it).
 * Raw-mode deliveries (no version) always pass.
 */
export class TransferGate {
  private held: MulticastDelivery[] | undefined;
  private skipThrough: bigint | undefined;
  /** Deliveries skipped because the transferred state already held them. */
  skipped = 0;

  /** `skip`: told each delivery the state already held (its caller still awaits a reply). */
  constructor(waiting: boolean, private readonly skip: (delivery: MulticastDelivery) => void = () => undefined) {
    this.held = waiting ? [] : undefined;
  }

  /** Whether the state is still awaited (deliveries are held). */
  get waiting(): boolean {
    return this.held !== undefined;
  }

  /** True if `delivery` is to be applied now; otherwise it was held (a copy) or skipped. */
  admit(delivery: MulticastDelivery): boolean {
    if (this.held !== undefined) {
      this.held.push({ ...delivery, payload: delivery.payload.slice() });
      return false;
    }
    if (this.skipThrough === undefined || delivery.version === null) return true;
    if (delivery.version <= this.skipThrough) {
      this.skipped++;
      this.skip(delivery);
      return false;
    }
    this.skipThrough = undefined;
    return true;
  }

  /** The state is here, holding every version through `latest`: the held deliveries to apply. */
  release(latest: bigint): MulticastDelivery[] {
    const held = this.held ?? [];
    this.held = undefined;
    this.skipThrough = latest;
    return held.filter((d) => this.admit(d));
  }
}
