#pragma once
// The real packet I/O: one non-blocking UDP socket (IPv4, or dual-stack IPv6), sends batched
// with sendmmsg and receives batched with recvmmsg. It never blocks: the driver (the addon's
// libuv poll, or a test's poll() loop) waits for readability.
#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "address.h"
#include "endpoint.h"

namespace squall::transport {

struct UdpStats {
  uint64_t send_errors = 0;     // datagrams the kernel refused (buffer full, unreachable)
  uint64_t truncated_rx = 0;    // datagrams larger than our receive buffers
  uint64_t send_calls = 0;      // sendmmsg system calls
  uint64_t receive_calls = 0;   // recvmmsg system calls
  uint64_t datagrams_sent = 0;
  uint64_t bundled_packets = 0; // packets that shared a datagram with others
  uint64_t bad_bundles = 0;     // bundles whose framing did not add up (rest dropped)
  // Datagrams the kernel dropped because our receive buffer was full (SO_RXQ_OVFL: the count
  // as of the latest datagram received, so drops show once the next datagram arrives).
  uint64_t kernel_drops = 0;
  uint64_t receive_buffer_bytes = 0;  // as granted by the kernel (getsockopt)
  uint64_t send_buffer_bytes = 0;
};

// Socket buffer sizes. The receive buffer is what absorbs a burst while the loop is busy: the
// only place a datagram is lost on one machine. Size it for the fan-in you expect: senders x
// creditsPerSession x packet size is the most that can arrive unanswered (congestion control
// keeps the queue well below it). Set as root with SO_RCVBUFFORCE, else capped by
// net.core.rmem_max.
struct SocketBuffers {
  int receive_bytes = 128 << 20;
  int send_bytes = 8 << 20;
};

class UdpSocket final : public PacketIo {
 public:
  // `host` is a numeric address: "0.0.0.0"/"127.0.0.1" (IPv4), "::" (dual-stack) or any IPv6.
  // Returns nullptr and sets `error` if the socket cannot be opened or bound.
  static std::unique_ptr<UdpSocket> Open(const std::string& host, uint16_t port,
                                         uint32_t packet_bytes_max, std::string* error,
                                         const SocketBuffers& buffers = {});
  ~UdpSocket() override;

  int fd() const { return fd_; }
  const PeerAddress& local() const { return local_; }
  // Converts a peer address to the form this socket sends to and receives from (IPv4 peers of
  // a dual-stack socket become ::ffff:a.b.c.d). False if this socket cannot reach it.
  bool Normalize(const PeerAddress& peer, PeerAddress* out) const;

  void Send(const PeerAddress& to, std::span<const uint8_t> header,
            std::span<const uint8_t> payload) override;
  void Flush();
  // Receives up to `max_packets` datagrams, calling `on_packet` for each. Returns how many were
  // received (0: nothing pending).
  size_t Receive(const std::function<void(const PeerAddress&, std::span<const uint8_t>)>&
                     on_packet,
                 size_t max_packets);
  const UdpStats& stats() const { return stats_; }

 private:
  UdpSocket() = default;
  int fd_ = -1;
  PeerAddress local_;
  uint32_t rx_buffer_bytes_ = 0;
  size_t rx_count_ = 0;
  std::vector<uint8_t> rx_buffers_;
  std::vector<PeerAddress> rx_from_;
  std::vector<uint8_t> rx_control_;  // one SO_RXQ_OVFL control message per receive buffer
  std::vector<uint8_t> tx_buffer_;
  struct TxPacket {
    PeerAddress to;
    size_t offset;
    size_t bytes;
    uint32_t bundled = 0;  // packets in this bundle datagram; 0: a plain packet
  };
  bool TryBundle(const PeerAddress& to, std::span<const uint8_t> header,
                 std::span<const uint8_t> payload);
  std::vector<TxPacket> tx_packets_;
  size_t tx_used_ = 0;
  UdpStats stats_;
};

inline uint64_t MonotonicNowUs();

}  // namespace squall::transport

#include <time.h>
inline uint64_t squall::transport::MonotonicNowUs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}
