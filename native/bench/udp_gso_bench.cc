// Does UDP segmentation offload (UDP_SEGMENT, Linux GSO) carry large messages faster than the
// transport's sendmmsg batches? One sender thread streams `megabytes` MB to a receiver thread
// (recvmmsg, 64 at a time) over loopback, four ways, and prints one JSON object (MB/s):
//   mmsg_1472:  1,472-byte datagrams (the off-loopback packet size) in sendmmsg batches of 64;
//   gso_1472:   the same datagrams as 64 KB buffers sent with UDP_SEGMENT = 1,472 (one sendmsg
//               per 44 datagrams; the kernel cuts them);
//   mmsg_65000: 65,000-byte datagrams (the loopback packet size) in sendmmsg batches;
//   (GSO cannot help the last case: a UDP GSO buffer is at most 64 KB, one such datagram.)
// Datagrams the receiver's buffer dropped are not counted; the sender paces nothing, so the
// figure is the receiver's throughput. Usage: udp_gso_bench [megabytes, default 512]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;
constexpr int kBatch = 64;

int OpenBound(sockaddr_in* address, int buffer_bytes) {
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof(buffer_bytes));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer_bytes, sizeof(buffer_bytes));
  std::memset(address, 0, sizeof(*address));
  address->sin_family = AF_INET;
  address->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(address), sizeof(*address));
  socklen_t length = sizeof(*address);
  getsockname(fd, reinterpret_cast<sockaddr*>(address), &length);
  timeval timeout{0, 200'000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

// Receives until `total` bytes arrived or 200 ms pass with nothing; returns bytes received.
size_t Receive(int fd, size_t total) {
  std::vector<char> buffers(kBatch * 65536);
  mmsghdr messages[kBatch];
  iovec vectors[kBatch];
  size_t got_bytes = 0;
  while (got_bytes < total) {
    for (int i = 0; i < kBatch; ++i) {
      vectors[i] = {buffers.data() + i * 65536, 65536};
      std::memset(&messages[i], 0, sizeof(mmsghdr));
      messages[i].msg_hdr.msg_iov = &vectors[i];
      messages[i].msg_hdr.msg_iovlen = 1;
    }
    const int got = recvmmsg(fd, messages, kBatch, MSG_WAITFORONE, nullptr);
    if (got <= 0) break;
    for (int i = 0; i < got; ++i) got_bytes += messages[i].msg_len;
  }
  return got_bytes;
}

double Run(size_t total, size_t datagram, bool gso) {
  sockaddr_in rx_address, tx_address;
  const int rx = OpenBound(&rx_address, 64 << 20);
  const int tx = OpenBound(&tx_address, 64 << 20);
  std::vector<char> data(65536, 7);
  size_t received = 0;
  const auto start = Clock::now();
  std::thread receiver([&] { received = Receive(rx, total); });
  size_t sent = 0;
  if (gso) {
    const int segment = static_cast<int>(datagram);
    setsockopt(tx, IPPROTO_UDP, UDP_SEGMENT, &segment, sizeof(segment));
    const size_t per_call = (65507 / datagram) * datagram;
    while (sent < total) {
      const ssize_t n = sendto(tx, data.data(), per_call, 0,
                               reinterpret_cast<sockaddr*>(&rx_address), sizeof(rx_address));
      if (n > 0) sent += static_cast<size_t>(n);
    }
  } else {
    mmsghdr messages[kBatch];
    iovec vectors[kBatch];
    while (sent < total) {
      for (int i = 0; i < kBatch; ++i) {
        vectors[i] = {data.data(), datagram};
        std::memset(&messages[i], 0, sizeof(mmsghdr));
        messages[i].msg_hdr.msg_name = &rx_address;
        messages[i].msg_hdr.msg_namelen = sizeof(rx_address);
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
      }
      const int n = sendmmsg(tx, messages, kBatch, 0);
      if (n > 0) sent += static_cast<size_t>(n) * datagram;
    }
  }
  receiver.join();
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count() - (received < total ? 0.2 : 0);
  close(rx);
  close(tx);
  return static_cast<double>(received) / seconds / 1e6;
}
}  // namespace

int main(int argc, char** argv) {
  const size_t megabytes = argc > 1 ? static_cast<size_t>(std::atoi(argv[1])) : 512;
  const size_t total = megabytes * 1'000'000;
  const double mmsg_small = Run(total, 1472, false);
  const double gso_small = Run(total, 1472, true);
  const double mmsg_large = Run(total, 65000, false);
  std::printf("{\"mmsg_1472_MBps\":%.1f,\"gso_1472_MBps\":%.1f,\"mmsg_65000_MBps\":%.1f}\n",
              mmsg_small, gso_small, mmsg_large);
  return 0;
}
