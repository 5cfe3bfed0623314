// Does a background crypto thread (eeRPC) pay on this machine? Models the transport's
// small-message path over loopback UDP: a sender makes batches of 64 packets (32-byte header,
// 32-byte body), seals each (AES-128-GCM, SessionCrypto) and sends the batch as one bundled
// datagram, as the endpoint does with bundling; a receiver receives and opens every packet.
//   inline:     the sender thread seals, the receiver thread opens (what the transport does);
//   background: the sender thread only builds batches and hands them to a crypto thread that
//               seals and sends; the receiver thread hands datagrams to a crypto thread that
//               opens them (eeRPC's split).
//   plaintext:  inline without sealing or opening (the ceiling).
// Rounds alternate between the modes; each prints packets opened per second at the receiver and
// the process CPU time per packet, with the load average, then the median per mode.
// Usage: crypto_thread_bench [seconds per round = 2] [rounds = 5]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "crypto/handshake.h"
#include "crypto/keyring.h"
#include "crypto/session_crypto.h"
#include "crypto_bench_support.h"

using namespace squall::crypto;
using Clock = std::chrono::steady_clock;
using squall::crypto::bench::LoadAverage;

namespace {

constexpr size_t kHeaderBytes = 32;
constexpr size_t kBodyBytes = 32;
constexpr size_t kPacketBytes = kHeaderBytes + kBodyBytes + kTrailerBytes;
constexpr size_t kBatchPackets = 64;
constexpr size_t kBatchBytes = kPacketBytes * kBatchPackets;
constexpr size_t kQueueBatchesMax = 64;

double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// A bounded blocking queue of batches between two threads.
class BatchQueue {
 public:
  void Push(std::vector<uint8_t> batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_full_.wait(lock, [&] { return batches_.size() < kQueueBatchesMax || closed_; });
    batches_.push_back(std::move(batch));
    not_empty_.notify_one();
  }
  bool Pop(std::vector<uint8_t>* batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return !batches_.empty() || closed_; });
    if (batches_.empty()) return false;
    *batch = std::move(batches_.front());
    batches_.pop_front();
    not_full_.notify_one();
    return true;
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<std::vector<uint8_t>> batches_;
  bool closed_ = false;
};

int UdpSocketOn(uint16_t* port) {
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  *port = ntohs(address.sin_port);
  const int buffer_bytes = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
  timeval timeout{0, 100'000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

enum class Mode { kPlaintext, kInline, kBackground };
const char* ModeName(Mode mode) {
  return mode == Mode::kPlaintext ? "plaintext" : mode == Mode::kInline ? "inline" : "background";
}

void MakeBatch(std::vector<uint8_t>* batch, uint64_t* serial) {
  batch->resize(kBatchBytes);
  for (size_t i = 0; i < kBatchPackets; ++i) {
    uint8_t* packet = batch->data() + i * kPacketBytes;
    std::memset(packet, 0, kHeaderBytes);
    const uint64_t n = (*serial)++;
    std::memcpy(packet + 8, &n, sizeof(n));  // a header that changes, as a real one does
    std::memset(packet + kHeaderBytes, static_cast<int>(n), kBodyBytes);
  }
}

void SealBatch(SessionCrypto* session, std::vector<uint8_t>* batch) {
  for (size_t i = 0; i < kBatchPackets; ++i) {
    session->Seal(MutableBytes(batch->data() + i * kPacketBytes, kPacketBytes), kHeaderBytes,
                  kBodyBytes);
  }
}

uint64_t OpenBatch(SessionCrypto* session, std::vector<uint8_t>* batch, size_t bytes) {
  uint64_t opened = 0;
  for (size_t offset = 0; offset + kPacketBytes <= bytes; offset += kPacketBytes) {
    const OpenResult r = session->Open(MutableBytes(batch->data() + offset, kPacketBytes),
                                       kHeaderBytes);
    opened += r.status == OpenStatus::kOk ? 1 : 0;
  }
  return opened;
}

// One round of `seconds`: returns packets delivered (opened, or received in plaintext) per second.
double Round(Mode mode, double seconds, const Keyring& ring, double* cpu_us_per_packet) {
  CryptoCounters counters, client_counters, server_counters;
  bench::Sessions pair = bench::Connect(ring, AeadAlgorithm::kAes128Gcm, &counters,
                                        &client_counters, &server_counters);
  uint16_t receive_port = 0, send_port = 0;
  const int receive_fd = UdpSocketOn(&receive_port);
  const int send_fd = UdpSocketOn(&send_port);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(receive_port);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> delivered{0};
  BatchQueue to_seal, to_open;
  auto send = [&](const std::vector<uint8_t>& batch) {
    sendto(send_fd, batch.data(), batch.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
  };
  const bool background = mode == Mode::kBackground;
  const bool crypto = mode != Mode::kPlaintext;
  std::thread sender([&] {
    uint64_t serial = 0;
    std::vector<uint8_t> batch;
    while (!stop.load(std::memory_order_relaxed)) {
      MakeBatch(&batch, &serial);
      if (background) {
        to_seal.Push(std::move(batch));
        batch = {};
        continue;
      }
      if (crypto) SealBatch(pair.client.get(), &batch);
      send(batch);
    }
    to_seal.Close();
  });
  std::thread sealer([&] {
    std::vector<uint8_t> batch;
    while (background && to_seal.Pop(&batch)) {
      SealBatch(pair.client.get(), &batch);
      send(batch);
    }
  });
  std::thread receiver([&] {
    std::vector<uint8_t> batch(kBatchBytes + 64);
    while (!stop.load(std::memory_order_relaxed)) {
      const ssize_t got = recv(receive_fd, batch.data(), batch.size(), 0);
      if (got <= 0) continue;
      if (background) {
        batch.resize(static_cast<size_t>(got));
        to_open.Push(std::move(batch));
        batch = std::vector<uint8_t>(kBatchBytes + 64);
      } else if (crypto) {
        delivered += OpenBatch(pair.server.get(), &batch, static_cast<size_t>(got));
      } else {
        delivered += static_cast<uint64_t>(got) / kPacketBytes;
      }
    }
    to_open.Close();
  });
  std::thread opener([&] {
    std::vector<uint8_t> batch;
    while (background && to_open.Pop(&batch)) {
      delivered += OpenBatch(pair.server.get(), &batch, batch.size());
    }
  });
  const double cpu_start = ProcessCpuSeconds();
  const uint64_t delivered_start = delivered.load();
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const uint64_t count = delivered.load() - delivered_start;
  const double cpu = ProcessCpuSeconds() - cpu_start;
  stop = true;
  sender.join();
  sealer.join();
  receiver.join();
  opener.join();
  close(receive_fd);
  close(send_fd);
  *cpu_us_per_packet = count == 0 ? 0 : cpu * 1e6 / static_cast<double>(count);
  return static_cast<double>(count) / elapsed;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;  // NOLINT: bench arguments
  Keyring ring;
  GroupKey key;
  key.key_id = 1;
  for (size_t i = 0; i < key.secret.size(); ++i) key.secret[i] = static_cast<uint8_t>(i * 13 + 1);
  ring.Install(key);
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  std::vector<double> rates[3], cpus[3];
  for (int round = 0; round < rounds; ++round) {
    for (Mode mode : {Mode::kPlaintext, Mode::kInline, Mode::kBackground}) {
      double cpu_us = 0;
      const double rate = Round(mode, seconds, ring, &cpu_us);
      rates[static_cast<int>(mode)].push_back(rate);
      cpus[static_cast<int>(mode)].push_back(cpu_us);
      std::printf(
          "{\"bench\":\"crypto_thread\",\"mode\":\"%s\",\"round\":%d,\"packets_per_s\":%.0f,"
          "\"cpu_us_per_packet\":%.3f,\"body_bytes\":%zu,\"batch_packets\":%zu,"
          "\"vcpus\":%u,\"load1\":%s}\n",
          ModeName(mode), round, rate, cpu_us, kBodyBytes, kBatchPackets,
          std::thread::hardware_concurrency(), LoadAverage().c_str());
      std::fflush(stdout);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  for (Mode mode : {Mode::kPlaintext, Mode::kInline, Mode::kBackground}) {
    const int m = static_cast<int>(mode);
    std::printf(
        "{\"bench\":\"crypto_thread\",\"mode\":\"%s\",\"summary\":\"median of %d rounds\","
        "\"packets_per_s\":%.0f,\"cpu_us_per_packet\":%.3f,\"load1\":%s}\n",
        ModeName(mode), rounds, median(rates[m]), median(cpus[m]), LoadAverage().c_str());
  }
  return 0;
}
