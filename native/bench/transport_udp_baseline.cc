// The kernel's ceiling for the transport benchmark: a minimal UDP echo with no protocol at all,
// client and server on two threads of one process over loopback, blocking sockets (no busy
// polling, like the transport). Prints one JSON object:
//   ping-pong: one 32-byte message outstanding -> round-trip p50/p99 in µs;
//   pipelined: `window` 32-byte messages outstanding, batched with sendmmsg/recvmmsg -> msgs/s.
// Usage: transport_udp_baseline [seconds per case, default 2] [window, default 64]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {
constexpr size_t kMessageBytes = 32;
constexpr int kBatchMax = 64;

using Clock = std::chrono::steady_clock;

int OpenBound(sockaddr_in* address) {
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  std::memset(address, 0, sizeof(*address));
  address->sin_family = AF_INET;
  address->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(address), sizeof(*address));
  socklen_t length = sizeof(*address);
  getsockname(fd, reinterpret_cast<sockaddr*>(address), &length);
  timeval timeout{0, 200'000};  // lets the server thread notice the end of the run
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

// Echoes every datagram back to its sender, a batch at a time.
void Serve(int fd, const std::atomic<bool>* stop) {
  std::vector<char> buffers(kBatchMax * 2048);
  mmsghdr messages[kBatchMax];
  iovec vectors[kBatchMax];
  sockaddr_in from[kBatchMax];
  while (!stop->load()) {
    for (int i = 0; i < kBatchMax; ++i) {
      vectors[i] = {buffers.data() + i * 2048, 2048};
      std::memset(&messages[i], 0, sizeof(mmsghdr));
      messages[i].msg_hdr.msg_name = &from[i];
      messages[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
      messages[i].msg_hdr.msg_iov = &vectors[i];
      messages[i].msg_hdr.msg_iovlen = 1;
    }
    const int got = recvmmsg(fd, messages, kBatchMax, MSG_WAITFORONE, nullptr);
    if (got <= 0) continue;
    for (int i = 0; i < got; ++i) vectors[i].iov_len = messages[i].msg_len;
    sendmmsg(fd, messages, static_cast<unsigned>(got), 0);
  }
}

double PercentileUs(std::vector<double>& samples, double q) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  return samples[std::min(samples.size() - 1, static_cast<size_t>(q * samples.size()))];
}
}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 2.0;
  const int window = argc > 2 ? std::atoi(argv[2]) : 64;
  sockaddr_in server_address, client_address;
  const int server_fd = OpenBound(&server_address);
  const int client_fd = OpenBound(&client_address);
  connect(client_fd, reinterpret_cast<sockaddr*>(&server_address), sizeof(server_address));
  std::atomic<bool> stop{false};
  std::thread server(Serve, server_fd, &stop);
  char message[kMessageBytes] = {1};
  char reply[2048];

  // Ping-pong latency.
  std::vector<double> samples;
  auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    const auto start = Clock::now();
    send(client_fd, message, kMessageBytes, 0);
    if (recv(client_fd, reply, sizeof(reply), 0) <= 0) continue;
    samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
  }
  const double p50 = PercentileUs(samples, 0.5);
  const double p99 = PercentileUs(samples, 0.99);

  // Pipelined echo: keep `window` messages outstanding, answer each batch of replies with as
  // many new messages.
  for (int i = 0; i < window; ++i) send(client_fd, message, kMessageBytes, 0);
  uint64_t replies = 0;
  std::vector<char> buffers(kBatchMax * 2048);
  mmsghdr messages[kBatchMax];
  iovec vectors[kBatchMax];
  const auto started = Clock::now();
  end = started + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    for (int i = 0; i < kBatchMax; ++i) {
      vectors[i] = {buffers.data() + i * 2048, 2048};
      std::memset(&messages[i], 0, sizeof(mmsghdr));
      messages[i].msg_hdr.msg_iov = &vectors[i];
      messages[i].msg_hdr.msg_iovlen = 1;
    }
    const int got = recvmmsg(client_fd, messages, kBatchMax, MSG_WAITFORONE, nullptr);
    if (got <= 0) {
      for (int i = 0; i < window; ++i) send(client_fd, message, kMessageBytes, 0);  // lost: refill
      continue;
    }
    replies += static_cast<uint64_t>(got);
    for (int i = 0; i < got; ++i) vectors[i] = {message, kMessageBytes};
    sendmmsg(client_fd, messages, static_cast<unsigned>(got), 0);
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
  stop.store(true);
  server.join();
  close(server_fd);
  close(client_fd);
  std::printf(
      "{\"pingpong_p50_us\":%.1f,\"pingpong_p99_us\":%.1f,\"pingpong_samples\":%zu,"
      "\"pipelined_per_s\":%.0f,\"window\":%d}\n",
      p50, p99, samples.size(), static_cast<double>(replies) / elapsed, window);
  return 0;
}
