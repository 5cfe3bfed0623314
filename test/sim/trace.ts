/**
 * A running 64-bit trace hash (two independent 32-bit FNV-1a lanes). Every event the simulator
 * executes is mixed in, so two runs of one seed that diverge anywhere end with different hashes.
 */
export class TraceHash {
  private a = 0x811c9dc5;
  private b = 0x01000193 ^ 0x5bd1e995;
  private count = 0;

  mix(text: string): void {
    let a = this.a;
    let b = this.b;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
    }
    // A separator, so that mix("ab"), mix("c") differs from mix("a"), mix("bc").
    this.a = Math.imul(a ^ 0xff, 0x01000193);
    this.b = Math.imul(b ^ 0xff, 0x5bd1e995);
    this.count++;
  }

  /** The number of records mixed in so far. */
  get records(): number {
    return this.count;
  }

  hex(): string {
    return (this.a >>> 0).toString(16).padStart(8, '0') + (this.b >>> 0).toString(16).padStart(8, '0');
  }
}
