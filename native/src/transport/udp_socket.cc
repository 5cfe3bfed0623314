#include "udp_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>

namespace squall::transport {
// Bundle item lengths are copied with memcpy in host order; the wire is little-endian.
static_assert(std::endian::native == std::endian::little, "bundle framing assumes little-endian");
namespace {
constexpr size_t kTxBatchPacketsMax = 64;
constexpr size_t kTxBatchBytes = 1u << 20;
constexpr size_t kRxBatchBytes = 2u << 20;
constexpr size_t kControlBytes = CMSG_SPACE(sizeof(uint32_t));
// Room for the datagram an ICMPv6 error quotes (at most 1,280 bytes of IPv6 packet in all).
constexpr size_t kErrorQuoteBytes = 1280;
// Receives in a row that may fail with a pending socket error before Receive gives up (each
// failure consumes the error and drains the queue, so one retry is normally enough).
constexpr int kReceiveErrorRetries = 4;
// Receiving in place: after a batch with guesses, batches without one start with one datagram
// alone until this many such batches in a row received one (udp_socket.h; a receive that found
// the socket empty does not count).
constexpr uint32_t kGuessQuietBatches = 16;
// Receiving in place: if more than 1 in kPlacementMissShare of kPlacementWindow guessed datagrams
// missed, the next kPlacementBackoffBatches receive batches guess nothing (udp_socket.h).
constexpr size_t kPlacementWindow = 64;
constexpr size_t kPlacementMissShare = 4;
constexpr uint32_t kPlacementBackoffBatches = 256;

bool IsPortUnreachable(const sock_extended_err& e) {
  return (e.ee_origin == SO_EE_ORIGIN_ICMP && e.ee_type == ICMP_DEST_UNREACH &&
          e.ee_code == ICMP_PORT_UNREACH) ||
         (e.ee_origin == SO_EE_ORIGIN_ICMP6 && e.ee_type == ICMP6_DST_UNREACH &&
          e.ee_code == ICMP6_DST_UNREACH_NOPORT);
}

void SetBuffer(int fd, int option, int force_option, int bytes) {
  // SO_*BUFFORCE passes net.core.*mem_max when we are privileged; otherwise take what we get.
  if (setsockopt(fd, SOL_SOCKET, force_option, &bytes, sizeof(bytes)) != 0) {
    setsockopt(fd, SOL_SOCKET, option, &bytes, sizeof(bytes));
  }
}
}  // namespace

std::unique_ptr<UdpSocket> UdpSocket::Open(const std::string& host, uint16_t port,
                                           uint32_t packet_bytes_max, std::string* error,
                                           const SocketBuffers& buffers) {
  PeerAddress bind_address;
  if (!PeerAddress::FromHostPort(host, port, &bind_address)) {
    *error = "host \"" + host + "\" is not a numeric IPv4 or IPv6 address";
    return nullptr;
  }
  std::unique_ptr<UdpSocket> s(new UdpSocket());
  s->fd_ = socket(bind_address.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd_ < 0) {
    *error = std::string("socket() failed: ") + std::strerror(errno);
    return nullptr;
  }
  if (bind_address.family() == AF_INET6) {
    int v6only = 0;  // accept IPv4 peers too, as ::ffff:a.b.c.d
    setsockopt(s->fd_, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
  }
  SetBuffer(s->fd_, SO_RCVBUF, SO_RCVBUFFORCE, buffers.receive_bytes);
  SetBuffer(s->fd_, SO_SNDBUF, SO_SNDBUFFORCE, buffers.send_bytes);
  int granted = 0;
  socklen_t granted_length = sizeof(granted);
  if (getsockopt(s->fd_, SOL_SOCKET, SO_RCVBUF, &granted, &granted_length) == 0) {
    s->stats_.receive_buffer_bytes = static_cast<uint64_t>(granted);
  }
  granted_length = sizeof(granted);
  if (getsockopt(s->fd_, SOL_SOCKET, SO_SNDBUF, &granted, &granted_length) == 0) {
    s->stats_.send_buffer_bytes = static_cast<uint64_t>(granted);
  }
  int on = 1;  // ask for the socket's drop counter with each datagram
  setsockopt(s->fd_, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof(on));
  // ICMP errors about our datagrams go to the error queue (DrainErrors). A dual-stack socket
  // needs IP_RECVERR as well: errors about its IPv4 peers arrive as ICMPv4. SO_SELECT_ERR_QUEUE
  // makes a pending error poll as EPOLLPRI besides EPOLLERR (see the header: libuv).
  setsockopt(s->fd_, SOL_IP, IP_RECVERR, &on, sizeof(on));
  if (bind_address.family() == AF_INET6) {
    setsockopt(s->fd_, SOL_IPV6, IPV6_RECVERR, &on, sizeof(on));
  }
  setsockopt(s->fd_, SOL_SOCKET, SO_SELECT_ERR_QUEUE, &on, sizeof(on));
  if (bind(s->fd_, reinterpret_cast<const sockaddr*>(&bind_address.storage),
           bind_address.length) != 0) {
    *error = "bind(" + bind_address.ToString() + ") failed: " + std::strerror(errno);
    return nullptr;
  }
  s->local_.length = sizeof(s->local_.storage);
  getsockname(s->fd_, reinterpret_cast<sockaddr*>(&s->local_.storage), &s->local_.length);
  // Room for any UDP datagram (bundles from a peer may exceed our own packet size); the core
  // checks each packet against the session's packet size.
  (void)packet_bytes_max;
  s->rx_buffer_bytes_ = kDatagramBytesMax + 1;
  s->rx_count_ = std::clamp<size_t>(kRxBatchBytes / s->rx_buffer_bytes_, 8, 64);
  s->rx_buffers_.resize(s->rx_count_ * s->rx_buffer_bytes_);
  s->rx_from_.resize(s->rx_count_);
  s->rx_control_.resize(s->rx_count_ * kControlBytes);
  s->tx_buffer_.resize(kTxBatchBytes);
  s->tx_packets_.reserve(kTxBatchPacketsMax);
  s->error_buffer_.resize(kErrorQuoteBytes);
  return s;
}

UdpSocket::~UdpSocket() {
  if (fd_ >= 0) close(fd_);
}

bool UdpSocket::Normalize(const PeerAddress& peer, PeerAddress* out) const {
  if (local_.family() == peer.family()) {
    *out = peer;
    return true;
  }
  if (local_.family() == AF_INET6 && peer.family() == AF_INET) {
    *out = peer.ToV4Mapped();
    return true;
  }
  return false;  // an IPv4 socket cannot send to an IPv6 peer
}

bool UdpSocket::TryBundle(const PeerAddress& to, std::span<const uint8_t> header,
                          std::span<const uint8_t> payload) {
  const size_t bytes = header.size() + payload.size();
  if (tx_packets_.empty() || bytes > kBundleItemBytesMax) return false;
  TxPacket& last = tx_packets_.back();
  if (!(last.to == to)) return false;
  if (last.bundled == 0 && last.bytes > kBundleItemBytesMax) return false;
  if (!last.pinned.empty()) return false;  // its bytes are not in the batch buffer
  const size_t limit = to.IsLoopback() ? kBundleBytesMaxLoopback : kBundleBytesMaxPath;
  const size_t grow = (last.bundled == 0 ? kHeaderBytes + 2 : 0) + 2 + bytes;
  if (last.bytes + grow > limit || last.offset + last.bytes + grow > tx_buffer_.size()) {
    return false;
  }
  uint8_t* base = tx_buffer_.data() + last.offset;
  if (last.bundled == 0) {
    // Turn the lone packet into the first item of a bundle.
    std::memmove(base + kHeaderBytes + 2, base, last.bytes);
    Header h;
    h.type = PacketType::kRequest;  // placeholder; the type byte is overwritten below
    Encode(h, base);
    base[3] = kBundleType;
    const uint16_t first = static_cast<uint16_t>(last.bytes);
    std::memcpy(base + kHeaderBytes, &first, 2);
    last.bytes += kHeaderBytes + 2;
    last.bundled = 1;
  }
  uint8_t* out = base + last.bytes;
  const uint16_t item = static_cast<uint16_t>(bytes);
  std::memcpy(out, &item, 2);
  std::memcpy(out + 2, header.data(), header.size());
  if (!payload.empty()) std::memcpy(out + 2 + header.size(), payload.data(), payload.size());
  last.bytes += 2 + bytes;
  ++last.bundled;
  const uint32_t count = last.bundled;
  std::memcpy(base + 12, &count, 4);  // message bytes field = packets in the bundle
  tx_used_ = last.offset + ((last.bytes + 7) & ~size_t{7});
  return true;
}

void UdpSocket::Send(const PeerAddress& to, std::span<const uint8_t> header,
                     std::span<const uint8_t> payload) {
  if (TryBundle(to, header, payload)) return;
  const size_t bytes = header.size() + payload.size();
  if (tx_packets_.size() == kTxBatchPacketsMax || tx_used_ + bytes > tx_buffer_.size()) Flush();
  // Copied, so the caller may free or reuse the message right away (a response can complete
  // and free its request while a retransmitted packet of it is still queued here).
  std::memcpy(tx_buffer_.data() + tx_used_, header.data(), header.size());
  if (!payload.empty()) {
    std::memcpy(tx_buffer_.data() + tx_used_ + header.size(), payload.data(), payload.size());
  }
  tx_packets_.push_back(TxPacket{to, tx_used_, bytes, 0, {}});
  tx_used_ += (bytes + 7) & ~size_t{7};
}

void UdpSocket::SendPinned(const PeerAddress& to, std::span<const uint8_t> header,
                           std::span<const uint8_t> payload) {
  if (payload.size() <= kBundleItemBytesMax) return Send(to, header, payload);
  if (tx_packets_.size() == kTxBatchPacketsMax || tx_used_ + header.size() > tx_buffer_.size()) {
    Flush();
  }
  std::memcpy(tx_buffer_.data() + tx_used_, header.data(), header.size());
  tx_packets_.push_back(TxPacket{to, tx_used_, header.size(), 0, payload});
  tx_used_ += (header.size() + 7) & ~size_t{7};
}

uint8_t* UdpSocket::Reserve(const PeerAddress& to, size_t bytes) {
  if (bytes > tx_buffer_.size()) return nullptr;
  if (tx_packets_.size() == kTxBatchPacketsMax || tx_used_ + bytes > tx_buffer_.size()) Flush();
  tx_used_before_reserve_ = tx_used_;
  tx_packets_.push_back(TxPacket{to, tx_used_, bytes, 0, {}});
  tx_used_ += (bytes + 7) & ~size_t{7};
  return tx_buffer_.data() + tx_packets_.back().offset;
}

void UdpSocket::Unreserve() {
  if (tx_packets_.empty()) return;
  tx_packets_.pop_back();
  tx_used_ = tx_used_before_reserve_;
}

void UdpSocket::Flush() {
  if (tx_packets_.empty()) return;
  mmsghdr messages[kTxBatchPacketsMax];
  iovec vectors[2 * kTxBatchPacketsMax];  // a pinned datagram: header, then the caller's bytes
  const size_t n = tx_packets_.size();
  for (size_t i = 0; i < n; ++i) {
    TxPacket& p = tx_packets_[i];
    iovec* v = &vectors[2 * i];
    v[0].iov_base = tx_buffer_.data() + p.offset;
    v[0].iov_len = p.bytes;
    v[1].iov_base = const_cast<uint8_t*>(p.pinned.data());
    v[1].iov_len = p.pinned.size();
    std::memset(&messages[i], 0, sizeof(mmsghdr));
    messages[i].msg_hdr.msg_name = &p.to.storage;
    messages[i].msg_hdr.msg_namelen = p.to.length;
    messages[i].msg_hdr.msg_iov = v;
    messages[i].msg_hdr.msg_iovlen = p.pinned.empty() ? 1 : 2;
    if (!p.pinned.empty()) ++stats_.datagrams_pinned;
  }
  for (size_t i = 0; i < n; ++i) {
    if (tx_packets_[i].bundled > 0) stats_.bundled_packets += tx_packets_[i].bundled;
  }
  stats_.datagrams_sent += n;
  size_t done = 0;
  while (done < n) {
    ++stats_.send_calls;
    const int sent = sendmmsg(fd_, messages + done, static_cast<unsigned>(n - done), 0);
    if (sent < 0) {
      if (errno == EINTR) continue;
      // The datagram at `done` failed (full buffer, unreachable peer): it counts as lost and
      // the protocol's retransmission recovers it.
      ++stats_.send_errors;
      ++done;
      continue;
    }
    done += static_cast<size_t>(sent);
  }
  tx_packets_.clear();
  tx_used_ = 0;
}

size_t UdpSocket::Receive(
    const std::function<void(const PeerAddress&, std::span<const uint8_t>)>& on_packet,
    size_t max_packets) {
  size_t total = 0;
  mmsghdr messages[64];
  iovec vectors[64 * 3];
  int error_retries = 0;
  bool errors_seen = false;
  while (total < max_packets) {
    size_t want = std::min(rx_count_, max_packets - total);
    // Receiving in place (udp_socket.h, SetPlacement): guessed datagrams are received as
    // [header -> our buffer][body -> the guess's place][rest -> our buffer after the body's room].
    size_t planned = 0;
    bool probe = false;
    if (plan_ && placement_backoff_ > 0) {
      --placement_backoff_;
    } else if (plan_) {
      placements_.resize(want);
      planned = plan_(std::span<ReceivePlacement>(placements_.data(), want));
      // A guess must leave its datagram room in our buffer when it is moved back (a miss).
      while (planned > 0 && placements_[planned - 1].body_bytes + kHeaderBytes >= rx_buffer_bytes_) {
        --planned;
      }
      // The batch ends where the guesses do; with none shortly after guesses were made, one
      // datagram comes alone: it may start the next large message, and the guesses for its
      // other packets can only be made once it has been handled (received in one batch with
      // it, ~95 % of them were still copied on the 1 MiB multicast benchmark). Never guessing
      // (small messages, large responses, encryption) leaves the batches as they were.
      if (planned > 0) {
        want = planned;
        batches_since_guess_ = 0;
      } else if (batches_since_guess_ < kGuessQuietBatches) {
        want = 1;
        probe = true;
        ++batches_since_guess_;
      }
    }
    for (size_t i = 0; i < want; ++i) {
      uint8_t* const slot = rx_buffers_.data() + i * rx_buffer_bytes_;
      iovec* const v = &vectors[3 * i];
      std::memset(&messages[i], 0, sizeof(mmsghdr));
      if (i < planned) {
        const ReceivePlacement& p = placements_[i];
        v[0] = {slot, kHeaderBytes};
        v[1] = {p.body, p.body_bytes};
        v[2] = {slot + kHeaderBytes + p.body_bytes, rx_buffer_bytes_ - kHeaderBytes - p.body_bytes};
        messages[i].msg_hdr.msg_iovlen = 3;
      } else {
        v[0] = {slot, rx_buffer_bytes_};
        messages[i].msg_hdr.msg_iovlen = 1;
      }
      messages[i].msg_hdr.msg_name = &rx_from_[i].storage;
      messages[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
      messages[i].msg_hdr.msg_iov = v;
      messages[i].msg_hdr.msg_control = rx_control_.data() + i * kControlBytes;
      messages[i].msg_hdr.msg_controllen = kControlBytes;
    }
    ++stats_.receive_calls;
    const int got = recvmmsg(fd_, messages, static_cast<unsigned>(want), MSG_DONTWAIT, nullptr);
    // A probe that got nothing (an empty socket ends every readable turn, or an error) must not
    // use up the probes meant for the datagrams that come next: each turn's empty receive did,
    // and after ~16 turns between two large messages the next one's packet 0 came in a full
    // batch with its followers, all of them copied.
    if (probe && got <= 0) --batches_since_guess_;
    if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
        error_retries < kReceiveErrorRetries) {
      // With IP_RECVERR every ICMP error also sets the socket's pending error, and the next
      // receive returns it (ECONNREFUSED for a port unreachable) instead of the datagrams
      // queued behind it, consuming it. Receive again: data waiting must not wait for the next
      // wakeup (the timers run right after this). The reports themselves are read after the
      // data, so a packet that arrived before them (a peer's goodbye) is handled first; if
      // errors keep coming (each new one sets the pending error again), read them now, which
      // clears it.
      ++error_retries;
      ++stats_.receive_errors;
      if (errno != EINTR) errors_seen = true;
      if (errors_seen && error_retries >= 2) DrainErrors();
      continue;
    }
    if (got <= 0) break;
    if (probe) ++stats_.placement_probes;
    rx_items_.clear();
    rx_item_from_.clear();
    rx_item_body_.clear();
    // Guesses that keep missing (packets of several messages interleaved finely) cost a copy
    // each (moved back) on top of the one they were to save: then guess nothing for a while.
    window_guesses_ += std::min(planned, static_cast<size_t>(got));
    if (window_guesses_ >= kPlacementWindow) {
      if (window_misses_ * kPlacementMissShare > window_guesses_) {
        placement_backoff_ = kPlacementBackoffBatches;
        ++stats_.placement_backoffs;
      }
      window_guesses_ = 0;
      window_misses_ = 0;
    }
    for (int i = 0; i < got; ++i) {
      rx_from_[static_cast<size_t>(i)].length = messages[i].msg_hdr.msg_namelen;
      for (cmsghdr* c = CMSG_FIRSTHDR(&messages[i].msg_hdr); c != nullptr;
           c = CMSG_NXTHDR(&messages[i].msg_hdr, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
          uint32_t dropped;
          std::memcpy(&dropped, CMSG_DATA(c), sizeof(dropped));
          stats_.kernel_drops = std::max<uint64_t>(stats_.kernel_drops, dropped);
        }
      }
      if ((messages[i].msg_hdr.msg_flags & MSG_TRUNC) != 0 ||
          messages[i].msg_len >= rx_buffer_bytes_) {
        ++stats_.truncated_rx;
        continue;
      }
      uint8_t* const data = rx_buffers_.data() + static_cast<size_t>(i) * rx_buffer_bytes_;
      const size_t length = messages[i].msg_len;
      if (static_cast<size_t>(i) < planned) {
        const ReceivePlacement& p = placements_[static_cast<size_t>(i)];
        if (length >= kHeaderBytes && length - kHeaderBytes <= p.body_bytes &&
            SameMessage(data, p)) {
          ++stats_.datagrams_placed;
          rx_items_.emplace_back(data, kHeaderBytes);
          rx_item_from_.push_back(static_cast<uint32_t>(i));
          rx_item_body_.emplace_back(p.body, length - kHeaderBytes);
          continue;
        }
        // Another datagram: whole again in our buffer before anything is handled.
        ++stats_.placement_misses;
        ++window_misses_;
        if (length > kHeaderBytes) {
          std::memcpy(data + kHeaderBytes, p.body, std::min(length - kHeaderBytes, p.body_bytes));
        }
      }
      if (length >= kHeaderBytes && data[3] == kBundleType && data[0] == (kMagic & 0xff) &&
          data[1] == (kMagic >> 8) && data[2] == kWireVersion) {
        size_t offset = kHeaderBytes;
        while (offset + 2 <= length) {
          uint16_t item;
          std::memcpy(&item, data + offset, 2);
          if (offset + 2 + item > length) {
            ++stats_.bad_bundles;
            break;
          }
          rx_items_.emplace_back(data + offset + 2, item);
          rx_item_from_.push_back(static_cast<uint32_t>(i));
          rx_item_body_.emplace_back();
          offset += 2 + item;
        }
        continue;
      }
      rx_items_.emplace_back(data, length);
      rx_item_from_.push_back(static_cast<uint32_t>(i));
      rx_item_body_.emplace_back();
    }
    // All of the result's packets first to the hook (cache hints), then one by one.
    if (on_batch_ && !rx_items_.empty()) on_batch_(rx_items_);
    for (size_t k = 0; k < rx_items_.size(); ++k) {
      const PeerAddress& from = rx_from_[rx_item_from_[k]];
      if (rx_item_body_[k].data() != nullptr) {
        placed_(from, rx_items_[k], rx_item_body_[k]);
      } else {
        on_packet(from, rx_items_[k]);
      }
    }
    total += static_cast<size_t>(got);
    if (static_cast<size_t>(got) < want) break;
  }
  if (errors_seen) DrainErrors();
  return total;
}

size_t UdpSocket::DrainErrors(size_t max_errors) {
  size_t read = 0;
  alignas(cmsghdr) uint8_t control[256];
  while (read < max_errors) {
    PeerAddress to;
    iovec vector{error_buffer_.data(), error_buffer_.size()};
    msghdr message{};
    message.msg_name = &to.storage;
    message.msg_namelen = sizeof(to.storage);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    const ssize_t got = recvmsg(fd_, &message, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (got < 0) {
      if (errno == EINTR) continue;
      break;  // EAGAIN: the queue is empty
    }
    ++read;
    to.length = message.msg_namelen;
    bool port_unreachable = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
      // A dual-stack socket reports ICMPv4 errors about its IPv4 peers as IPV6_RECVERR too.
      const bool is_error = (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
                            (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR);
      if (!is_error || c->cmsg_len < CMSG_LEN(sizeof(sock_extended_err))) continue;
      sock_extended_err e;
      std::memcpy(&e, CMSG_DATA(c), sizeof(e));
      port_unreachable = IsPortUnreachable(e);
    }
    if (!port_unreachable) {
      ++stats_.error_queue_other;
      continue;
    }
    ++stats_.port_unreachable;
    if (on_unreachable_) {
      const size_t quoted = std::min(static_cast<size_t>(got), error_buffer_.size());
      on_unreachable_(to, std::span<const uint8_t>(error_buffer_.data(), quoted));
    }
  }
  return read;
}

}  // namespace squall::transport
