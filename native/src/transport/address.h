#pragma once
// A peer's UDP address (IPv4 or IPv6), comparable and hashable so sessions can check that a
// packet really comes from the peer the session belongs to.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace squall::transport {

struct PeerAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  // Parses "host:port", "[v6]:port" or a bare host with a separate port. Numeric hosts only
  // (no DNS lookups on the event-loop thread). Returns false on malformed input.
  static bool Parse(const std::string& text, PeerAddress* out);
  static bool FromHostPort(const std::string& host, uint16_t port, PeerAddress* out);
  std::string ToString() const;
  int family() const { return storage.ss_family; }
  uint16_t port() const;
  bool IsLoopback() const;
  // Maps an IPv4 address into ::ffff:a.b.c.d so a dual-stack IPv6 socket can send to it.
  PeerAddress ToV4Mapped() const;
  bool operator==(const PeerAddress& other) const;
  size_t Hash() const;
};

struct PeerAddressHash {
  size_t operator()(const PeerAddress& a) const { return a.Hash(); }
};

}  // namespace squall::transport
