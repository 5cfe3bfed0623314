#pragma once
// The wire header every Squall transport packet starts with. The layout is explicit and
// little-endian (eRPC used host-order bitfields, which are not portable) and versioned. A sealed
// packet (flag bit 0) is this header as associated data, the encrypted body, and a 24-byte
// trailer (sequence and AES-GCM tag; endpoint_crypto.h). Bytes 6-7 are reserved for congestion
// feedback.
//
//  offset size field
//   0     2    magic            0x5153 ("SQ" as bytes 'S','Q')
//   2     1    version          kWireVersion
//   3     1    packet type      PacketType
//   4     1    flags            bit 0: sealed (AES-GCM, 24-byte trailer follows the body);
//                                 bit 1: rekey requested (server -> client);
//                                 bit 2: sealed batch (body = several packets); others zero
//   5     1    request type     handler id, 0..255
//   6     2    reserved         zero (room for congestion feedback)
//   8     4    dest session     the receiver's session number (kNoSession in a connect request)
//  12     4    message bytes    size of the whole request/response message, not this packet
//  16     4    packet number    per-request wire packet number (eRPC's pkt_num, see endpoint.h)
//  20     4    aux              response status / peer session number / handshake error
//  24     8    request number   slot-encoded request number, or the handshake token
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "version.h"

namespace squall::transport {

inline constexpr uint16_t kMagic = 0x5153;
inline constexpr size_t kHeaderBytes = 32;
// Space kept free in every plaintext packet (the wire format before encryption existed).
inline constexpr size_t kTagBytes = 16;
// What a sealed packet carries after its body: 8-byte sequence and 16-byte AES-GCM tag
// (crypto::kTrailerBytes; endpoint_crypto.cc asserts they agree). A session of an encrypting
// endpoint keeps this much free in every packet.
inline constexpr size_t kSealTrailerBytes = 24;
// The packet is sealed: header authenticated as associated data, body encrypted, trailer after
// it (native/src/crypto/session_crypto.h). Set by the sender's seal step, never by protocol code.
inline constexpr uint8_t kFlagEncrypted = 0x01;
// Sealed server packets only: the server wants the client to run a rekey handshake (its group
// key rotated or its send key is near its limit). Covered by the tag, so it cannot be forged.
inline constexpr uint8_t kFlagRekeyRequested = 0x02;
// Sealed only: the body is a run of packets of one session sealed together (a sealed batch,
// endpoint.h "Encryption"): after this header (a copy of the first packet's header with this bit
// added) each packet follows as a u16 LE length and its bytes (its own header, flags and all, and
// its payload), and one trailer covers them all. One AES-GCM invocation per batch instead of per
// packet: the fixed cost of an EVP call (~0.2 µs here) is most of a small packet's cost.
inline constexpr uint8_t kFlagBatch = 0x04;
inline constexpr uint8_t kFlagsKnown = kFlagEncrypted | kFlagRekeyRequested | kFlagBatch;
inline constexpr uint32_t kNoSession = 0xFFFFFFFFu;
// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP).
inline constexpr uint32_t kDatagramBytesMax = 65507;

enum class PacketType : uint8_t {
  kRequest = 0,            // client -> server: a slice of the request message
  kRequestForResponse = 1, // client -> server: "send me the next response packet"
  kCreditReturn = 2,       // server -> client: acknowledges a non-last request packet
  kResponse = 3,           // server -> client: a slice of the response message
  // Message bytes of CONNECT and of an accepting CONNECT_RESP: the sender's incarnation tag
  // (endpoint.cc, "Peers": sessions to one remote endpoint incarnation share their liveness).
  kConnectRequest = 4,     // client -> server, aux = client session
  kConnectResponse = 5,    // server -> client, aux = server session or error, see ConnectError
  kDisconnectRequest = 6,  // client -> server
  kDisconnectResponse = 7, // server -> client
  // A client's PING carries its census of the peer record (endpoint.cc, "Orphans"): message
  // bytes = its connected client sessions there, request number = the sum of their server
  // session numbers. A server PINGs a client only to ask about a suspected orphan.
  kPing = 8,               // keepalive (either way), answered by kPong
  kPong = 9,
  // Encrypting endpoints only (handshake messages of native/src/crypto/handshake.h as payload):
  kConnectConfirm = 10,    // client -> server, plaintext: the handshake's Confirm (or Refuse)
  kRekey = 11,             // either way, sealed: a rekey handshake message on a live session
};
inline constexpr uint8_t kPacketTypeCount = 12;

// A bundle datagram carries several small packets to one destination, so that the kernel's
// per-datagram cost (~3 µs here, NOTES.md) is paid once per bundle rather than once per packet.
// It exists only between UdpSockets: its 32-byte header has magic and version, packet type byte
// kBundleType and message bytes = the number of packets; then each packet as a u16 LE length
// followed by its bytes. The protocol core never sees a bundle (Decode rejects the type).
inline constexpr uint8_t kBundleType = 0xB0;
inline constexpr size_t kBundleItemBytesMax = 1024;   // larger packets travel alone
inline constexpr uint32_t kBundleBytesMaxLoopback = 65000;
inline constexpr uint32_t kBundleBytesMaxPath = 1472;

const char* PacketTypeName(PacketType type);

struct Header {
  uint16_t magic = kMagic;
  uint8_t version = kWireVersion;
  PacketType type = PacketType::kRequest;
  uint8_t flags = 0;
  uint8_t request_type = 0;
  uint16_t reserved = 0;
  uint32_t dest_session = 0;
  uint32_t message_bytes = 0;
  uint32_t packet_number = 0;
  uint32_t aux = 0;
  uint64_t request_number = 0;
};

// Why a packet was dropped before reaching protocol logic.
enum class DecodeError : uint8_t { kNone, kTruncated, kBadMagic, kBadVersion, kBadType, kBadFlags };

void Encode(const Header& header, uint8_t* out);
// Decodes and checks the fields that do not depend on session state.
DecodeError Decode(std::span<const uint8_t> packet, Header* header);

}  // namespace squall::transport
