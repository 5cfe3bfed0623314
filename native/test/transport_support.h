#pragma once
// Test doubles for the transport core: a recording PacketIo (protocol tests compare what the
// endpoint sent with the expected transcript), an in-memory wire with seeded loss and
// reordering that runs two endpoints in virtual time, and an endpoint on a real UDP socket.
#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "transport/endpoint.h"
#include "transport/udp_socket.h"
#include "transport/wire.h"

namespace squall::test {
using namespace squall::transport;

inline PeerAddress Addr(const char* text) {
  PeerAddress a;
  PeerAddress::Parse(text, &a);
  return a;
}

// "TYPE s=<dest session> r=<request number> p=<packet number> m=<message bytes> a=<aux>
//  len=<payload bytes>", one line per packet, so a transcript reads like the protocol table.
inline std::string Describe(const Header& h, size_t payload_bytes) {
  return std::string(PacketTypeName(h.type)) + " s=" + std::to_string(h.dest_session) +
         " r=" + std::to_string(h.request_number) + " p=" + std::to_string(h.packet_number) +
         " m=" + std::to_string(h.message_bytes) + " a=" + std::to_string(h.aux) +
         " len=" + std::to_string(payload_bytes);
}

struct SentPacket {
  PeerAddress to;
  Header header;
  std::vector<uint8_t> bytes;  // header + payload
};

class RecordingIo : public PacketIo {
 public:
  void Send(const PeerAddress& to, std::span<const uint8_t> header,
            std::span<const uint8_t> payload) override {
    SentPacket p;
    p.to = to;
    p.bytes.assign(header.begin(), header.end());
    p.bytes.insert(p.bytes.end(), payload.begin(), payload.end());
    Decode(p.bytes, &p.header);
    lines.push_back(Describe(p.header, payload.size()));
    packets.push_back(std::move(p));
  }
  std::vector<std::string> Take() {
    std::vector<std::string> out;
    out.swap(lines);
    packets.clear();
    return out;
  }
  std::vector<std::string> lines;
  std::vector<SentPacket> packets;
};

inline std::vector<uint8_t> Packet(const Header& h, const std::vector<uint8_t>& payload = {}) {
  std::vector<uint8_t> bytes(kHeaderBytes);
  Encode(h, bytes.data());
  bytes.insert(bytes.end(), payload.begin(), payload.end());
  return bytes;
}

// A plaintext connect request from client session `client_session` (8 slots, token 0xABCD).
inline std::vector<uint8_t> ConnectRequest(uint32_t client_session, uint32_t packet_bytes) {
  Header h;
  h.type = PacketType::kConnectRequest;
  h.dest_session = kNoSession;
  h.aux = client_session;
  h.packet_number = packet_bytes;
  h.request_type = 8;
  h.request_number = 0xABCD;
  return Packet(h);
}

inline std::vector<uint8_t> Pattern(size_t bytes, uint8_t seed) {
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  return out;
}

// A lossy, reordering in-memory network between endpoints, in virtual time.
class MemoryWire {
 public:
  struct InFlight {
    PeerAddress from, to;
    std::vector<uint8_t> bytes;
  };
  class Port : public PacketIo {
   public:
    Port(MemoryWire* wire, PeerAddress self) : wire_(wire), self_(self) {}
    void Send(const PeerAddress& to, std::span<const uint8_t> header,
              std::span<const uint8_t> payload) override {
      InFlight p{self_, to, std::vector<uint8_t>(header.begin(), header.end())};
      p.bytes.insert(p.bytes.end(), payload.begin(), payload.end());
      wire_->Push(std::move(p));
    }
    const PeerAddress& self() const { return self_; }

   private:
    MemoryWire* wire_;
    PeerAddress self_;
  };

  MemoryWire(double loss, bool reorder, uint64_t seed)
      : loss_(loss), reorder_(reorder), rng_(seed) {}
  void Attach(const PeerAddress& address, Endpoint* endpoint) { endpoints_[key(address)] = endpoint; }
  void Push(InFlight p) {
    ++sent;
    if (Uniform() < loss_) {
      ++lost;
      return;
    }
    queue_.push_back(std::move(p));
  }
  // Delivers one packet (a random one when reordering). False when nothing is in flight.
  bool DeliverOne(uint64_t now_us) {
    if (queue_.empty()) return false;
    size_t index = 0;
    if (reorder_ && queue_.size() > 1 && Uniform() < 0.3) {
      index = static_cast<size_t>(Next() % std::min<size_t>(queue_.size(), 8));
    }
    InFlight p = std::move(queue_[index]);
    queue_.erase(queue_.begin() + static_cast<long>(index));
    Header h;
    if (drop && Decode(p.bytes, &h) == DecodeError::kNone && drop(p, h)) return true;
    auto it = endpoints_.find(key(p.to));
    if (it != endpoints_.end()) it->second->OnPacket(p.from, p.bytes, now_us);
    return true;
  }
  size_t in_flight() const { return queue_.size(); }
  void DeliverAll(uint64_t now_us) {
    while (DeliverOne(now_us)) {
    }
  }
  // Optional: discards the packets (by header) it returns true for, at delivery.
  std::function<bool(const InFlight&, const Header&)> drop;
  uint64_t sent = 0, lost = 0;

 private:
  static std::string key(const PeerAddress& a) { return a.ToString(); }
  uint64_t Next() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_;
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  double loss_;
  bool reorder_;
  uint64_t rng_;
  std::deque<InFlight> queue_;
  std::map<std::string, Endpoint*> endpoints_;
};

// A client port and a server port on one in-order MemoryWire (test rigs put endpoints on them).
struct WirePair {
  explicit WirePair(uint64_t seed) : wire(0.0, false, seed) {}
  MemoryWire wire;
  PeerAddress client_address = Addr("10.0.0.1:1000");
  PeerAddress server_address = Addr("10.0.0.2:2000");
  MemoryWire::Port client_port{&wire, client_address};
  MemoryWire::Port server_port{&wire, server_address};
};

// An endpoint on a real socket, driven with poll() as the addon does with libuv; `placing`
// wires receiving in place (UdpSocket::SetPlacement) as the addon does.
struct UdpNode {
  std::unique_ptr<UdpSocket> socket;
  std::unique_ptr<Endpoint> endpoint;
  UdpNode(const char* host, const EndpointConfig& config, bool placing = false) {
    std::string error;
    socket = UdpSocket::Open(host, 0, config.packet_bytes_max, &error);
    if (!socket) return;
    endpoint = std::make_unique<Endpoint>(config, socket.get());
    if (!placing) return;
    Endpoint* e = endpoint.get();
    socket->SetPlacement(
        [e](std::span<ReceivePlacement> out) { return e->PlanReceive(out); },
        [e](const PeerAddress& from, std::span<const uint8_t> header, std::span<const uint8_t> body) {
          e->OnPlacedPacket(from, header, body, MonotonicNowUs());
        });
  }
  void Pump(uint64_t now) {
    socket->Receive([&](const PeerAddress& from, std::span<const uint8_t> bytes) {
      endpoint->OnPacket(from, bytes, now);
    }, 256);
    endpoint->OnTimers(now);
    socket->Flush();
  }
};

}  // namespace squall::test
