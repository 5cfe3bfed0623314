#pragma once
// Shared by the crypto microbenchmarks: the load average for each JSON line, and a pair of
// SessionCrypto objects keyed by a real in-memory handshake.
#include <fstream>
#include <memory>
#include <string>

#include "crypto/handshake.h"
#include "crypto/keyring.h"
#include "crypto/session_crypto.h"

namespace squall::crypto::bench {

inline std::string LoadAverage() {
  std::ifstream file("/proc/loadavg");
  std::string one;
  file >> one;
  return one.empty() ? "null" : one;
}

struct Sessions {
  std::unique_ptr<SessionCrypto> client;
  std::unique_ptr<SessionCrypto> server;
};

// Runs ClientHello -> ServerHello -> Confirm and keys both ends. The handshake counts in
// `counters`; each session counts in its own (sessions used from two threads must not share).
inline Sessions Connect(const Keyring& ring, AeadAlgorithm algorithm, CryptoCounters* counters,
                        CryptoCounters* client_counters, CryptoCounters* server_counters) {
  HandshakeConfig config;
  config.algorithm = algorithm;
  ClientHandshake client(config, counters);
  ServerHandshake server(config, counters);
  HandshakeStep hello = client.Start(ring, ClientHelloParams{});
  HandshakeStep server_hello = server.OnClientHello(hello.reply, ring, 1, 0, 0);
  HandshakeStep confirm = client.OnMessage(server_hello.reply);
  HandshakeStep done = server.OnMessage(confirm.reply);
  Sessions sessions;
  if (!confirm.keys || !done.keys) return sessions;
  sessions.client = SessionCrypto::Create(Role::kClient, std::move(*confirm.keys), client_counters);
  sessions.server = SessionCrypto::Create(Role::kServer, std::move(*done.keys), server_counters);
  return sessions;
}

}  // namespace squall::crypto::bench
