// What encryption costs per byte of bulk data in the protocol core, without the kernel or
// JavaScript: a client and a server Endpoint in one thread, joined by an in-memory wire shaped
// like UdpSocket (sends are copied into a send batch, or written there through
// PacketIo::Reserve; delivery copies each datagram into a receive buffer, as the kernel does),
// moving 8 MiB requests (8-byte responses) one call at a time, as `npm run bench -- transport`
// does for its 8 MiB bandwidth case.
//
//   transport_bulk_bench [calls per round] [rounds]
//
// Prints one JSON line per mode with thread CPU ns per request byte (CLOCK_THREAD_CPUTIME_ID,
// so other processes on a loaded machine do not inflate it; the best and the median round),
// modes alternating round by round: plaintext, encrypted, and encrypted with the wire's
// Reserve turned off (sealing then goes through a staging buffer and Send's copy). Beside them,
// in the same run, the floor: SessionCrypto seal and open of a 65,000-byte packet alone, and a
// memcpy of it (sealing out of place replaces one copy on each side). Message buffers come from
// the heap without page faults (mallopt in main), so the figures are the transport's own.
#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "crypto_bench_support.h"
#include "transport_bench_support.h"
#include "transport/endpoint.h"

namespace {
using namespace squall::transport;

using drive::ThreadCpuNs;

double Load1() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

// One send batch, as UdpSocket keeps it: Send copies header and payload in; Reserve hands out
// room in it. Delivery copies each datagram into a receive buffer (the kernel's copy) and hands
// it to the receiving endpoint.
class SocketLikeWire : public PacketIo {
 public:
  explicit SocketLikeWire(bool reserve) : reserve_(reserve) {}
  void Send(const PeerAddress& /*to*/, std::span<const uint8_t> header,
            std::span<const uint8_t> payload) override {
    uint8_t* out = Append(header.size() + payload.size());
    std::memcpy(out, header.data(), header.size());
    if (!payload.empty()) std::memcpy(out + header.size(), payload.data(), payload.size());
  }
  uint8_t* Reserve(const PeerAddress& /*to*/, size_t bytes) override {
    return reserve_ ? Append(bytes) : nullptr;
  }
  void Unreserve() override {
    used_ = datagrams_.back().first;
    datagrams_.pop_back();
  }
  size_t DeliverTo(Endpoint* to, const PeerAddress& from, uint64_t now_us) {
    tx_.swap(in_flight_);
    datagrams_.swap(in_flight_datagrams_);
    datagrams_.clear();
    used_ = 0;
    for (const auto& [offset, bytes] : in_flight_datagrams_) {
      std::memcpy(rx_.data(), in_flight_.data() + offset, bytes);
      to->OnPacket(from, std::span<const uint8_t>(rx_.data(), bytes), now_us);
    }
    return in_flight_datagrams_.size();
  }

 private:
  uint8_t* Append(size_t bytes) {
    if (tx_.size() < used_ + bytes) tx_.resize(std::max(used_ + bytes, tx_.size() * 2));
    datagrams_.emplace_back(used_, bytes);
    uint8_t* out = tx_.data() + used_;
    used_ += (bytes + 7) & ~size_t{7};
    return out;
  }
  bool reserve_;
  std::vector<uint8_t> tx_ = std::vector<uint8_t>(4 << 20), in_flight_ = std::vector<uint8_t>(4 << 20);
  std::vector<uint8_t> rx_ = std::vector<uint8_t>(kDatagramBytesMax + 64);
  std::vector<std::pair<size_t, size_t>> datagrams_, in_flight_datagrams_;
  size_t used_ = 0;
};

enum class Mode { kPlaintext, kEncrypted, kEncryptedNoReserve };
const char* Name(Mode mode) {
  switch (mode) {
    case Mode::kPlaintext: return "plaintext";
    case Mode::kEncrypted: return "encrypted";
    case Mode::kEncryptedNoReserve: return "encrypted_without_reserve";
  }
  return "?";
}

constexpr size_t kRequestBytes = 8u << 20;

// Thread CPU ns per request byte over `calls` 8 MiB calls (after one warm-up call).
double Round(Mode mode, uint64_t calls) {
  PeerAddress client_address, server_address;
  PeerAddress::Parse("127.0.0.1:1000", &client_address);
  PeerAddress::Parse("127.0.0.1:2000", &server_address);
  const bool encrypted = mode != Mode::kPlaintext;
  SocketLikeWire to_server(mode != Mode::kEncryptedNoReserve);
  SocketLikeWire to_client(mode != Mode::kEncryptedNoReserve);
  Endpoint client(drive::BenchConfig(1, encrypted), &to_server);
  Endpoint server(drive::BenchConfig(1, encrypted), &to_client);
  server.SetHandled(2, true);
  std::vector<Event> events;
  const std::vector<uint8_t> response(8, 1);
  uint64_t completed = 0;
  auto pump = [&](uint64_t now) {
    const size_t moved = drive::PumpOnce(
        client, server, to_server, to_client, client_address, server_address, now, &events,
        [&](const Event& e) -> const std::vector<uint8_t>& {
          if (e.bytes.size() != kRequestBytes) {
            std::fprintf(stderr, "request arrived with %zu bytes\n", e.bytes.size());
            std::exit(1);
          }
          return response;
        });
    events.clear();
    client.TakeEvents(&events);
    for (const Event& e : events) completed += e.kind == EventKind::kResponse ? 1 : 0;
    return moved;
  };
  const uint32_t session = client.Connect(server_address, 0);
  while (pump(0) > 0) {
  }
  if (!client.SessionIsConnected(session)) {
    std::fprintf(stderr, "session did not connect\n");
    std::exit(1);
  }
  const std::vector<uint8_t> request(kRequestBytes, 7);
  uint64_t tag = 1;
  auto one_call = [&]() {
    const uint64_t before = completed;
    client.Call(session, 2, tag++, request, 0, 0);
    while (completed == before) pump(0);  // time stands still: no timer fires, no loss
  };
  one_call();
  const uint64_t start = ThreadCpuNs();
  for (uint64_t i = 0; i < calls; ++i) one_call();
  const uint64_t used = ThreadCpuNs() - start;
  if (client.stats().retransmissions != 0) {
    std::fprintf(stderr, "unexpected retransmissions\n");
    std::exit(1);
  }
  return static_cast<double>(used) / static_cast<double>(calls * kRequestBytes);
}

// The floor on this CPU: AES-128-GCM seal and open of one 65,000-byte packet (SessionCrypto,
// one EVP update each), and a memcpy of the same bytes. Best of `rounds` batches.
struct Floor {
  double seal_ns_per_byte = 1e9, open_ns_per_byte = 1e9, memcpy_ns_per_byte = 1e9;
};
Floor MeasureFloor(int rounds) {
  using namespace squall::crypto;
  const std::unique_ptr<drive::AeadPair> pair = drive::MakeAeadPair();
  bench::Sessions& s = pair->s;
  constexpr size_t kBody = 65000 - kHeaderBytes - kTrailerBytes;
  constexpr int kPackets = 200;
  std::vector<std::vector<uint8_t>> packets(kPackets,
                                            std::vector<uint8_t>(SealedBytes(kHeaderBytes, kBody), 3));
  std::vector<uint8_t> copy(kBody);
  Floor f;
  for (int r = 0; r < rounds; ++r) {
    uint64_t t = ThreadCpuNs();
    for (auto& p : packets) s.client->Seal(p, kHeaderBytes, kBody);
    f.seal_ns_per_byte = std::min(f.seal_ns_per_byte,
                                  static_cast<double>(ThreadCpuNs() - t) / (kPackets * kBody));
    t = ThreadCpuNs();
    for (auto& p : packets) {
      if (s.server->Open(p, kHeaderBytes).status != OpenStatus::kOk) std::exit(1);
    }
    f.open_ns_per_byte = std::min(f.open_ns_per_byte,
                                  static_cast<double>(ThreadCpuNs() - t) / (kPackets * kBody));
    t = ThreadCpuNs();
    for (auto& p : packets) {
      std::memcpy(copy.data(), p.data() + kHeaderBytes, kBody);
      asm volatile("" : : "r"(copy.data()) : "memory");
    }
    f.memcpy_ns_per_byte = std::min(f.memcpy_ns_per_byte,
                                    static_cast<double>(ThreadCpuNs() - t) / (kPackets * kBody));
  }
  return f;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  // 8 MiB message buffers from the heap, never handed back: otherwise glibc's dynamic mmap
  // threshold decides, by the allocation history, whether every call page-faults its buffers
  // anew (measured: 4x the CPU per byte, and runs that differ 4x between builds).
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  const uint64_t calls = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 8;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  const Mode modes[] = {Mode::kPlaintext, Mode::kEncrypted, Mode::kEncryptedNoReserve};
  std::vector<double> results[3];
  for (int r = 0; r < rounds; ++r) {
    for (int m = 0; m < 3; ++m) results[m].push_back(Round(modes[m], calls));
  }
  const Floor floor = MeasureFloor(rounds);
  const double plain_best = *std::min_element(results[0].begin(), results[0].end());
  const double plain_median = Median(results[0]);
  for (int m = 0; m < 3; ++m) {
    const double best = *std::min_element(results[m].begin(), results[m].end());
    const double median = Median(results[m]);
    std::printf(
        "{\"suite\":\"transport\",\"case\":\"core_cpu_per_byte_8MiB_%s\",\"value\":%.4f,"
        "\"unit\":\"ns/B\",\"median\":%.4f,\"baselines\":{\"plaintext_same_run\":%.4f,"
        "\"plaintext_same_run_median\":%.4f},\"added_ns_per_byte\":%.4f,"
        "\"bandwidth_cost_percent_if_cpu_bound\":%.1f,\"rounds\":%d,\"calls_per_round\":%llu,"
        "\"load1\":%.2f}\n",
        Name(modes[m]), best, median, plain_best, plain_median, best - plain_best,
        100.0 * (1.0 - plain_best / best), rounds, static_cast<unsigned long long>(calls), Load1());
  }
  std::printf(
      "{\"suite\":\"transport\",\"case\":\"aes_128_gcm_floor_65000B\",\"value\":%.4f,"
      "\"unit\":\"ns/B\",\"seal_ns_per_byte\":%.4f,\"open_ns_per_byte\":%.4f,"
      "\"memcpy_ns_per_byte\":%.4f,\"floor_added_ns_per_byte_if_each_replaces_a_copy\":%.4f,"
      "\"load1\":%.2f}\n",
      floor.seal_ns_per_byte + floor.open_ns_per_byte, floor.seal_ns_per_byte,
      floor.open_ns_per_byte, floor.memcpy_ns_per_byte,
      floor.seal_ns_per_byte + floor.open_ns_per_byte - 2 * floor.memcpy_ns_per_byte, Load1());
  return 0;
}
