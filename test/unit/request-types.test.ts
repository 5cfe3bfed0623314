// The request-type table: every type Squall's layers register is distinct, inside 0..255 and at
// or above the first type reserved for Squall (types below are free for tests and applications),
// and each layer's exported constant is the table's entry.
import test from 'ava';
import { REQUEST_TYPES, SQUALL_REQUEST_TYPES_FIRST } from '../../src/transport/request-types.js';
import { RAFT_REQUEST_TYPE } from '../../src/runtime/raft-driver.js';
import { MEMBERSHIP_REQUEST_TYPE } from '../../src/runtime/membership-driver.js';
import { SHARD_FORWARD_TYPE } from '../../src/runtime/raft-shard-driver.js';
import { SHARD_REPORT_TYPE } from '../../src/runtime/raft-ordering-engine.js';
import { MULTICAST_REQUEST_TYPE_DEFAULT } from '../../src/runtime/multicast-driver.js';
import { ORDERED_REPLY_TYPE, P2P_REQUEST_TYPE, READY_TYPE, RELAY_TYPE, STATUS_TYPE, VIEW_TYPE } from '../../src/group/wire.js';

test('request types: one number per layer, all distinct, inside the reserved range', (t) => {
  const entries = Object.entries(REQUEST_TYPES);
  const numbers = entries.map(([, n]) => n);
  t.is(new Set(numbers).size, numbers.length, `distinct: ${entries.map(([k, n]) => `${k}=${n}`).join(', ')}`);
  for (const [name, n] of entries) {
    t.true(Number.isInteger(n) && n >= SQUALL_REQUEST_TYPES_FIRST && n <= 255, `${name} = ${n}`);
  }
  t.true(Object.isFrozen(REQUEST_TYPES));
});

test('request types: each layer registers the table entry', (t) => {
  t.deepEqual(
    [RAFT_REQUEST_TYPE, MEMBERSHIP_REQUEST_TYPE, SHARD_FORWARD_TYPE, SHARD_REPORT_TYPE, MULTICAST_REQUEST_TYPE_DEFAULT,
      P2P_REQUEST_TYPE, ORDERED_REPLY_TYPE, READY_TYPE, VIEW_TYPE, RELAY_TYPE, STATUS_TYPE],
    [REQUEST_TYPES.raft, REQUEST_TYPES.membership, REQUEST_TYPES.shardForward, REQUEST_TYPES.shardReport,
      REQUEST_TYPES.multicast, REQUEST_TYPES.p2p, REQUEST_TYPES.orderedReply, REQUEST_TYPES.ready, REQUEST_TYPES.view,
      REQUEST_TYPES.relay, REQUEST_TYPES.status],
  );
});
