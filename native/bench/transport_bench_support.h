#pragma once
// Shared by the in-memory transport benches (transport_core_bench, transport_bulk_bench): thread
// CPU time, and one turn of the loop that drives a client and a server Endpoint as the addon
// does.
#include <time.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "crypto_bench_support.h"
#include "transport/endpoint.h"

namespace squall::transport::drive {

inline uint64_t ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// One batch per receive wakeup (its packets and the timers), and one per submission of
// responses from JavaScript: the server takes what reached it and answers each request with
// respond(event) (the bytes to answer with); then the client takes what reached it. Returns the
// number of datagrams moved. `Wire` has DeliverTo(Endpoint*, from, now_us).
template <typename Wire, typename Respond>
size_t PumpOnce(Endpoint& client, Endpoint& server, Wire& to_server, Wire& to_client,
                const PeerAddress& client_address, const PeerAddress& server_address,
                uint64_t now, std::vector<Event>* events, Respond respond) {
  server.BeginBatch();
  size_t moved = to_server.DeliverTo(&server, client_address, now);
  server.OnTimers(now);
  server.EndBatch();
  events->clear();
  server.TakeEvents(events);
  server.BeginBatch();
  for (const Event& e : *events) {
    if (e.kind != EventKind::kRequest) continue;
    server.Respond(ServerRequest{e.session, e.slot, e.id}, CallStatus::kOk, respond(e), now);
  }
  server.EndBatch();
  client.BeginBatch();
  moved += to_client.DeliverTo(&client, server_address, now);
  client.OnTimers(now);
  client.EndBatch();
  return moved;
}

// The group key every bench endpoint and session pair uses.
inline crypto::GroupKey BenchKey() {
  crypto::GroupKey key;
  key.key_id = 1;
  key.secret.fill(0x5a);
  return key;
}

// An endpoint for `sessions` sessions, encrypting or not (no X25519: handshake cost is not what
// these benches measure).
inline EndpointConfig BenchConfig(uint32_t sessions, bool encrypted) {
  EndpointConfig c;
  c.sessions_max = sessions + 16;
  if (encrypted) {
    c.encryption.enabled = true;
    c.encryption.keys = {BenchKey()};
    c.encryption.forward_secrecy = false;
  }
  return c;
}

// A connected AES-128-GCM SessionCrypto pair under a fixed group key, for the "AES-GCM alone"
// figures beside the transport's (heap-held: the sessions point at the counters).
struct AeadPair {
  crypto::CryptoCounters counters, client_counters, server_counters;
  crypto::bench::Sessions s;
};
inline std::unique_ptr<AeadPair> MakeAeadPair() {
  crypto::Keyring ring;
  ring.InstallAll({BenchKey()});
  auto pair = std::make_unique<AeadPair>();
  pair->s = crypto::bench::Connect(ring, crypto::AeadAlgorithm::kAes128Gcm, &pair->counters,
                                   &pair->client_counters, &pair->server_counters);
  return pair;
}

}  // namespace squall::transport::drive
