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
  // The socket's error queue (IP_RECVERR, see DrainErrors): ICMP/ICMPv6 "port unreachable"
  // reports for datagrams we sent, every other queued error (host or network unreachable,
  // fragmentation needed, local errors), and receive calls that returned such an error pending
  // on the socket instead of data (retried after draining the queue).
  uint64_t port_unreachable = 0;
  uint64_t error_queue_other = 0;
  uint64_t receive_errors = 0;
  uint64_t truncated_rx = 0;    // datagrams larger than our receive buffers
  uint64_t send_calls = 0;      // sendmmsg system calls
  uint64_t receive_calls = 0;   // recvmmsg system calls
  // Receiving in place (SetPlacement): datagrams of a guessed message received where the guess
  // put their body (handed over there, no copy), and guessed places that got another datagram
  // (its body moved back into the receive buffer: one copy of what landed there).
  uint64_t datagrams_placed = 0;
  uint64_t placement_misses = 0;
  uint64_t placement_backoffs = 0;  // times too many misses turned guessing off for a while
  uint64_t placement_probes = 0;    // one-datagram receives after guesses (that got one)
  uint64_t datagrams_sent = 0;
  uint64_t datagrams_pinned = 0;  // sent from the caller's bytes (SendPinned), not copied
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

// One ICMP "port unreachable" the kernel reported for a datagram this socket sent: `to` is the
// datagram's destination, `quoted` the start of its UDP payload as the ICMP message quoted it
// (Linux quotes up to 576 bytes of the original IP packet for ICMPv4, 1,280 for ICMPv6; a
// router may quote only 8 bytes of it, leaving nothing of ours). Valid during the call only.
using UnreachableHandler =
    std::function<void(const PeerAddress& to, std::span<const uint8_t> quoted)>;

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
  // A large payload is not copied: the datagram is sent from it (a second iovec) at Flush.
  void SendPinned(const PeerAddress& to, std::span<const uint8_t> header,
                  std::span<const uint8_t> payload) override;
  // A datagram's room in the send batch (never bundled: sealing writes datagrams > 1 KiB here).
  uint8_t* Reserve(const PeerAddress& to, size_t bytes) override;
  void Unreserve() override;
  void Flush();
  // Receives up to `max_packets` datagrams, calling `on_packet` for each. Returns how many were
  // received (0: nothing pending). An error the kernel holds for the socket (an ICMP report,
  // below) does not end the receive: the receive is retried, and the error queue drained after
  // the datagrams (so packets that arrived before the reports are handled before them).
  size_t Receive(const std::function<void(const PeerAddress&, std::span<const uint8_t>)>&
                     on_packet,
                 size_t max_packets);
  // ICMP errors. The socket is opened with IP_RECVERR (and IPV6_RECVERR): the kernel queues the
  // ICMP errors caused by our datagrams on the socket's error queue, which an unconnected UDP
  // socket otherwise ignores. A killed process on a live host leaves its port closed, and the
  // host answers every datagram to it with "port unreachable": the transport's fast sign that
  // a peer is gone (Endpoint::OnUnreachable decides what it means for the sessions). With the
  // queue non-empty the socket polls as EPOLLERR, and SO_SELECT_ERR_QUEUE adds EPOLLPRI, so a
  // libuv poll must watch UV_PRIORITIZED too (libuv stops a poll handle that reports EPOLLERR
  // without EPOLLPRI, with UV_EBADF). Each pending error also makes the next recvmmsg fail once
  // (ECONNREFUSED, even with data queued); Receive handles that.
  void SetUnreachableHandler(UnreachableHandler handler) { on_unreachable_ = std::move(handler); }
  // Receiving in place. Before each recvmmsg, `plan` may fill guesses (ReceivePlacement,
  // endpoint.h) for its first datagrams, in order; the i-th datagram is then received with its
  // header in this socket's buffer and its body at the i-th guess's place (what does not fit
  // there, in this socket's buffer right after). A datagram of the guessed message
  // (SameMessage) whose body fit goes to `placed` (header and body apart) instead of on_packet;
  // any other is first made whole again in this socket's buffer (its landed bytes moved back)
  // and goes to on_packet as usual, before any datagram of the batch is handled (a handler may
  // end the message whose buffer the guesses pointed into). A batch with guesses ends where they
  // do; soon after one, a batch without takes one datagram alone (it may be the packet 0 that
  // the next guesses need); guesses that keep missing are not asked for a while (udp_socket.cc
  // has the numbers). Without it (the default) nothing changes. The endpoint side:
  // Endpoint::PlanReceive / OnPlacedPacket; src/transport/README.md, "Received in place".
  using Planner = std::function<size_t(std::span<ReceivePlacement>)>;
  using PlacedHandler = std::function<void(const PeerAddress&, std::span<const uint8_t> header,
                                           std::span<const uint8_t> body)>;
  void SetPlacement(Planner plan, PlacedHandler placed) {
    plan_ = std::move(plan);
    placed_ = std::move(placed);
  }
  // Called by Receive with the packets of each recvmmsg result (bundles opened, in order) before
  // any of them goes to on_packet: the driver passes them to Endpoint::PrefetchPackets.
  using BatchHook = std::function<void(std::span<const std::span<const uint8_t>>)>;
  void SetBatchHook(BatchHook hook) { on_batch_ = std::move(hook); }
  // Reads up to `max_errors` queued errors, calling the unreachable handler for each port
  // unreachable report and counting the rest. Returns how many were read (0: queue empty).
  size_t DrainErrors(size_t max_errors = 256);
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
    std::span<const uint8_t> pinned;  // SendPinned: sent after the `bytes` at `offset`
  };
  bool TryBundle(const PeerAddress& to, std::span<const uint8_t> header,
                 std::span<const uint8_t> payload);
  std::vector<TxPacket> tx_packets_;
  size_t tx_used_ = 0;
  size_t tx_used_before_reserve_ = 0;
  UnreachableHandler on_unreachable_;
  BatchHook on_batch_;
  // One recvmmsg result's packets (bundles opened), and the datagram each came from; a placed
  // datagram's item is its header, and its body is in rx_item_body_ (empty for the others).
  std::vector<std::span<const uint8_t>> rx_items_;
  std::vector<uint32_t> rx_item_from_;
  std::vector<std::span<const uint8_t>> rx_item_body_;
  Planner plan_;
  PlacedHandler placed_;
  std::vector<ReceivePlacement> placements_;
  // Receive batches without guesses since the latest with one (capped).
  uint32_t batches_since_guess_ = UINT32_MAX;
  // Guessed datagrams and misses among them in the current window, and the batches left to
  // receive without guesses after a window with too many misses.
  size_t window_guesses_ = 0;
  size_t window_misses_ = 0;
  uint32_t placement_backoff_ = 0;
  std::vector<uint8_t> error_buffer_;  // one error queue message: the quoted datagram
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
