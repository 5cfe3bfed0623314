// The protocol core's own CPU cost per call, without the kernel or JavaScript: a client and a
// server Endpoint (with the addon's CongestionGate) in one thread, joined by an in-memory wire
// that hands each sent packet (or bundle) to the other side. 64 calls of 32 bytes stay
// outstanding, issued round robin over the sessions, as in `npm run bench -- transport`.
//
//   transport_core_bench [calls] [sessions,...] [plain]
//
// `plain` skips the encrypted runs (for profiling the core alone; their fields then print 0).
// For each session count, and with encryption off and on, prints one JSON line: thread CPU ns
// per call (CLOCK_THREAD_CPUTIME_ID, so other processes on a loaded machine do not inflate it),
// bytes per session, and packets sealed per call. The encryption lines carry the same-run
// plaintext figure and the seal+open cost of AES-GCM alone (SessionCrypto on 56-byte packets,
// the size a 32-byte call's packets have), so the difference that is the core's own shows.
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "crypto_bench_support.h"
#include "transport_bench_support.h"
#include "transport/congestion_gate.h"
#include "transport/endpoint.h"
#include "transport/udp_socket.h"  // MonotonicNowUs

namespace {
using namespace squall::transport;

using drive::ThreadCpuNs;

// Packets queue here until the loop hands them to the receiving endpoint (a copy, as the kernel
// makes one). Bundling is the UdpSocket's and stays out of this measurement.
class Wire : public PacketIo {
 public:
  void Send(const PeerAddress& /*to*/, std::span<const uint8_t> header,
            std::span<const uint8_t> payload) override {
    offsets_.push_back(bytes_.size());
    bytes_.insert(bytes_.end(), header.begin(), header.end());
    bytes_.insert(bytes_.end(), payload.begin(), payload.end());
  }
  // Hands every queued packet to `to` (which may send more into another wire meanwhile).
  size_t DeliverTo(Endpoint* to, const PeerAddress& from, uint64_t now_us) {
    rx_bytes_.swap(bytes_);
    rx_offsets_.swap(offsets_);
    bytes_.clear();
    offsets_.clear();
    const size_t n = rx_offsets_.size();
    // As the addon's receive: each recvmmsg result's packets (up to 64 datagrams) go to
    // PrefetchPackets before they are handled one by one.
    for (size_t first = 0; first < n; first += 64) {
      items_.clear();
      for (size_t i = first; i < std::min(n, first + 64); ++i) items_.push_back(Item(i));
      to->PrefetchPackets(items_);
      for (size_t i = first; i < std::min(n, first + 64); ++i) to->OnPacket(from, Item(i), now_us);
    }
    return n;
  }

 private:
  std::span<const uint8_t> Item(size_t i) const {
    const size_t begin = rx_offsets_[i];
    const size_t end = i + 1 < rx_offsets_.size() ? rx_offsets_[i + 1] : rx_bytes_.size();
    return std::span<const uint8_t>(rx_bytes_.data() + begin, end - begin);
  }
  std::vector<uint8_t> bytes_, rx_bytes_;
  std::vector<size_t> offsets_, rx_offsets_;
  std::vector<std::span<const uint8_t>> items_;
};

struct Result {
  double ns_per_call = 0;
  size_t bytes_per_session_client = 0, bytes_per_session_server = 0;
  double sealed_per_call = 0;
  uint64_t retransmissions = 0;
};

Result Run(uint32_t sessions, uint64_t calls, bool encrypted) {
  const PeerAddress client_address = [] {
    PeerAddress a;
    PeerAddress::Parse("127.0.0.1:1000", &a);
    return a;
  }();
  const PeerAddress server_address = [] {
    PeerAddress a;
    PeerAddress::Parse("127.0.0.1:2000", &a);
    return a;
  }();
  Wire to_server, to_client;
  Endpoint client(drive::BenchConfig(sessions, encrypted), &to_server);
  Endpoint server(drive::BenchConfig(sessions, encrypted), &to_client);
  CongestionGate gate(CongestionConfig{}, sessions + 16, MonotonicNowUs());
  client.SetSendGate(&gate);
  server.SetHandled(1, true);
  std::vector<Event> events;
  // As the addon drives an endpoint (transport_bench_support.h); the server echoes.
  auto pump = [&](uint64_t now) {
    return drive::PumpOnce(client, server, to_server, to_client, client_address, server_address,
                           now, &events, [](const Event& e) -> const Bytes& {
                             return e.bytes;
                           });
  };
  std::vector<uint32_t> numbers;
  for (uint32_t i = 0; i < sessions; ++i) {
    numbers.push_back(client.Connect(server_address, MonotonicNowUs()));
    // In batches: a server holds at most pending_handshakes_max handshakes at once.
    if (i % 500 == 499 || i + 1 == sessions) {
      while (pump(MonotonicNowUs()) > 0) {
      }
    }
  }
  events.clear();
  client.TakeEvents(&events);
  for (uint32_t n : numbers) {
    if (!client.SessionIsConnected(n)) {
      std::fprintf(stderr, "session %u did not connect\n", n);
      std::exit(1);
    }
  }
  const std::vector<uint8_t> payload(32, 1);
  uint64_t next = 0, tag = 1, completed = 0;
  std::vector<uint32_t> upcoming;
  auto issue = [&](uint64_t now) {
    client.Call(numbers[next++ % numbers.size()], 1, tag++, payload, 0, now);
  };
  auto run = [&](uint64_t target) {
    const uint64_t start = completed;
    for (int i = 0; i < 64; ++i) issue(MonotonicNowUs());
    while (completed - start < target) {
      const uint64_t now = MonotonicNowUs();
      pump(now);
      events.clear();
      client.TakeEvents(&events);
      client.BeginBatch();
      // As the addon's submit: the calls' sessions go to PrefetchSessions first.
      upcoming.clear();
      for (const Event& e : events) {
        if (e.kind == EventKind::kResponse) {
          upcoming.push_back(numbers[(next + upcoming.size()) % numbers.size()]);
        }
      }
      client.PrefetchSessions(upcoming);
      for (const Event& e : events) {
        if (e.kind != EventKind::kResponse) continue;
        ++completed;
        issue(now);
      }
      client.EndBatch();
    }
    // Let the 64 calls in flight finish so the next run starts clean.
    for (int i = 0; i < 1000 && (client.stats().requests_completed <
                                 client.stats().requests_started); ++i) {
      pump(MonotonicNowUs());
      events.clear();
      client.TakeEvents(&events);
    }
  };
  run(std::min<uint64_t>(calls, 2 * sessions + 20'000));  // every session touched once: warm
  const uint64_t sealed_before = client.security_stats().crypto.sealed_packets +
                                 server.security_stats().crypto.sealed_packets;
  const uint64_t cpu_before = ThreadCpuNs();
  run(calls);
  Result r;
  r.ns_per_call = static_cast<double>(ThreadCpuNs() - cpu_before) / static_cast<double>(calls);
  r.sealed_per_call = static_cast<double>(client.security_stats().crypto.sealed_packets +
                                          server.security_stats().crypto.sealed_packets -
                                          sealed_before) /
                      static_cast<double>(calls);
  r.bytes_per_session_client = client.BytesPerSession();
  r.bytes_per_session_server = server.BytesPerSession();
  r.retransmissions = client.stats().retransmissions;
  return r;
}

// Seal + open of one 56-byte packet (32-byte payload + the 24-byte header), AES-128-GCM.
double AeadNsPerPacket(uint64_t packets) {
  using namespace squall::crypto;
  const std::unique_ptr<drive::AeadPair> pair = drive::MakeAeadPair();
  bench::Sessions& s = pair->s;
  std::vector<uint8_t> packet(SealedBytes(kHeaderBytes, 32));
  const uint64_t before = ThreadCpuNs();
  for (uint64_t i = 0; i < packets; ++i) {
    s.client->Seal(MutableBytes(packet.data(), packet.size()), kHeaderBytes, 32);
    s.server->Open(MutableBytes(packet.data(), packet.size()), kHeaderBytes);
  }
  return static_cast<double>(ThreadCpuNs() - before) / static_cast<double>(packets);
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t calls = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 400'000;
  std::vector<uint32_t> counts;
  const std::string list = argc > 2 ? argv[2] : "1,64,20000";
  for (size_t at = 0; at < list.size();) {
    const size_t comma = list.find(',', at);
    counts.push_back(static_cast<uint32_t>(std::stoul(list.substr(at, comma - at))));
    at = comma == std::string::npos ? list.size() : comma + 1;
  }
  const bool plain_only = argc > 3 && std::string(argv[3]) == "plain";
  const double aead = plain_only ? 0 : AeadNsPerPacket(calls);
  for (uint32_t sessions : counts) {
    const Result plain = Run(sessions, calls, false);
    const Result sealed = plain_only ? Result{} : Run(sessions, calls, true);
    std::printf(
        "{\"suite\":\"transport_core\",\"case\":\"core_cpu_per_call_32B_%u_sessions\","
        "\"value\":%.0f,\"unit\":\"ns\",\"encrypted_ns\":%.0f,\"added_by_encryption_ns\":%.0f,"
        "\"seals_per_call\":%.2f,\"aead_seal_open_ns_per_packet\":%.0f,"
        "\"bytes_per_session_client\":%zu,\"bytes_per_session_server\":%zu,"
        "\"retransmissions\":%llu,\"calls\":%llu,\"load1\":%s}\n",
        sessions, plain.ns_per_call, sealed.ns_per_call, sealed.ns_per_call - plain.ns_per_call,
        sealed.sealed_per_call, aead, plain.bytes_per_session_client,
        plain.bytes_per_session_server,
        static_cast<unsigned long long>(plain.retransmissions + sealed.retransmissions),
        static_cast<unsigned long long>(calls), squall::crypto::bench::LoadAverage().c_str());
  }
  return 0;
}
