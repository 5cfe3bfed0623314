import test from 'ava';
import type { MulticastDelivery } from '../../src/runtime/multicast-driver.js';
import { TransferGate } from '../../src/runtime/transfer-gate.js';

const at = (position: number, view = 1): MulticastDelivery => ({
  sender: 1 as never, senderIndex: position, position, version: (BigInt(view) << 32n) | BigInt(position),
  timestamp: { micros: position, logical: 0 }, payload: new Uint8Array([position]),
} as unknown as MulticastDelivery);

const positions = (ds: readonly MulticastDelivery[]): number[] => ds.map((d) => Number(d.version! & 0xffffffffn));

test('while the state is on its way deliveries are held as copies; the state releases the newer ones', (t) => {
  const gate = new TransferGate(true);
  const first = at(0);
  t.false(gate.admit(first));
  first.payload[0] = 99; // the multicast reuses its buffers: the gate kept a copy
  t.false(gate.admit(at(1)));
  t.false(gate.admit(at(2)));
  const released = gate.release((1n << 32n) | 0n);
  t.deepEqual(positions(released), [1, 2]);
  t.false(gate.waiting);
});

test('deliveries the transferred state already holds are skipped after the release, until a newer one', (t) => {
  // The source answered after delivering (view 1, position 3); this node had delivered only up
  // to position 1 (held), so its multicast still delivers positions 2 and 3: the state holds them.
  const told: MulticastDelivery[] = [];
  const gate = new TransferGate(true, (d) => told.push(d));
  gate.admit(at(0));
  gate.admit(at(1));
  t.deepEqual(gate.release((1n << 32n) | 3n), []);
  t.false(gate.admit(at(2)));
  t.false(gate.admit(at(3)));
  t.true(gate.admit(at(4)));
  t.true(gate.admit(at(5)));
  t.is(gate.skipped, 4);
  t.deepEqual(positions(told), [0, 1, 2, 3], 'each skipped delivery is told (its caller awaits a reply)');
});

test('a gate that never waited admits everything; raw deliveries (no version) always pass', (t) => {
  const gate = new TransferGate(false);
  t.false(gate.waiting);
  t.true(gate.admit(at(0)));
  const waiting = new TransferGate(true);
  waiting.release(10n);
  t.true(waiting.admit({ ...at(1), version: null } as MulticastDelivery));
});
