#pragma once
// The authenticated session handshake. Three messages (plus a refusal), byte layouts below, all
// integers little-endian. The transport carries them in its session-management packets, retries
// them on its own timer, and feeds whatever arrives into these objects.
//
//   client                                        server
//   ClientHello  (148 B) ------------------------> OnClientHello: checks MAC under the key id
//               <------------------------ ServerHello (112 B)   or Refuse (8 B)
//   OnServerHello: checks MAC, derives keys
//   Confirm (40 B) or Refuse (8 B) ------------->  OnConfirm: checks key confirmation, derives
//
// ClientHello: 0 type=1 | 1 version=1 | 2 cipher | 3 flags (bit0: offers X25519) | 4 key_id u32 |
//   8 epoch_proposed u16 | 10 reserved u16 = 0 | 12 client_session u32 | 16 client_address 18 B |
//   34 server_address 18 B | 52 client_nonce 32 B | 84 client_x25519_public 32 B (0 if none) |
//   116 mac 32 B = HMAC(K_hs, "squall hello client" || bytes [0,116))
// ServerHello: 0 type=2 | 1 version=1 | 2 cipher | 3 flags (bit0: X25519 used) | 4 key_id u32 |
//   8 epoch u16 | 10 reserved u16 = 0 | 12 server_session u32 | 16 server_nonce 32 B |
//   48 server_x25519_public 32 B (0 if none) |
//   80 mac 32 B = HMAC(K_hs, "squall hello server" || ClientHello || bytes [0,80))
// Confirm: 0 type=3 | 1 version=1 | 2 reserved u16 = 0 | 4 key_id u32 |
//   8 mac 32 B = HMAC(K_confirm, "squall confirm" || transcript_hash)
// Refuse: 0 type=4 | 1 version=1 | 2 reason (HandshakeStatus) | 3 reserved | 4 key_id u32.
//   Unauthenticated (the peer may not hold any key we share): report it, never trust it further.
//
// K_hs and the session base key come from the group secret (keyring.h). After the ServerHello:
//   transcript_hash = SHA-256(ClientHello || ServerHello)       (identities, key id, epoch, nonces)
//   PRK_S = HKDF-Extract(salt = client_nonce || server_nonce,
//                        ikm  = session_base_key || X25519 shared secret (if used))
//   c2s key/salt, s2c key/salt, K_confirm = HKDF-Expand(PRK_S, label || transcript_hash)
#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "crypto/aead.h"
#include "crypto/keyring.h"
#include "crypto/session_crypto.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace squall::crypto {

inline constexpr size_t kClientHelloBytes = 148;
inline constexpr size_t kServerHelloBytes = 112;
inline constexpr size_t kConfirmBytes = 40;
inline constexpr size_t kRefuseBytes = 8;
inline constexpr uint8_t kHandshakeVersion = 1;
enum class HandshakeMessageType : uint8_t {
  kClientHello = 1,
  kServerHello = 2,
  kConfirm = 3,
  kRefuse = 4,
};

// An endpoint address as the session identity sees it: 16 bytes of IPv6 address (IPv4 as
// ::ffff:a.b.c.d) and the UDP port, big-endian as on the wire.
struct EndpointAddress {
  std::array<uint8_t, 18> bytes{};
  static EndpointAddress Ipv4(uint32_t address_host_order, uint16_t port);
  bool operator==(const EndpointAddress&) const = default;
};

enum class HandshakeStatus : uint8_t {
  kOk = 0,
  kInProgress = 1,       // a step succeeded; more messages to come
  kMalformed = 2,        // wrong size, type, version, reserved bits, or epoch
  kUnknownKeyId = 3,     // the peer named a group key we do not hold (or whose grace ended)
  kBadMac = 4,           // the peer does not hold the group key (MAC mismatch)
  kCipherMismatch = 5,   // the peer asked for a cipher this endpoint is not configured for
  kBadPeerKey = 6,       // the peer's X25519 public key is invalid (low-order point)
  kRefusedByPeer = 7,    // the peer sent a Refuse; peer_reason says why
  kWrongState = 8,       // message out of order for this handshake
  kInternal = 9,         // random generator or OpenSSL failure on this side
};
// A sentence naming what happened and what to do, for the session event.
const char* Describe(HandshakeStatus status);

struct HandshakeConfig {
  AeadAlgorithm algorithm = AeadAlgorithm::kAes128Gcm;
  // Client: offer an ephemeral X25519 exchange. Server: accept it when offered. Used only when
  // both sides enable it. Costs about 0.1 ms per handshake per side (README: measured).
  bool forward_secrecy = true;
};

// Result of feeding one message in. reply (if non-empty) goes to the peer; keys are set when
// the handshake completed on this side (status kOk).
struct HandshakeStep {
  HandshakeStatus status = HandshakeStatus::kInternal;
  HandshakeStatus peer_reason = HandshakeStatus::kOk;  // when status == kRefusedByPeer
  std::vector<uint8_t> reply;
  std::optional<SessionKeys> keys;
};

struct ClientHelloParams {
  uint32_t client_session = 0;
  EndpointAddress client_address;
  EndpointAddress server_address;
  // For a new session 0; for a rekey, the session's SessionCrypto::NextEpoch().
  uint16_t epoch_proposed = 0;
};

class ClientHandshake {
 public:
  ClientHandshake(const HandshakeConfig& config, CryptoCounters* counters);
  ~ClientHandshake();
  ClientHandshake(const ClientHandshake&) = delete;
  ClientHandshake& operator=(const ClientHandshake&) = delete;

  // Builds the ClientHello under the keyring's primary key (reply). Resend the same bytes on
  // timeout; do not call Start twice.
  HandshakeStep Start(const Keyring& keyring, const ClientHelloParams& params);
  // Feeds a ServerHello or Refuse. On success: status kOk, reply = Confirm, keys set. A
  // duplicate of the accepted ServerHello yields the same Confirm again (status kInProgress).
  HandshakeStep OnMessage(Bytes message);

 private:
  enum class State : uint8_t { kIdle, kAwaitServerHello, kDone, kFailed };
  HandshakeStep Fail(HandshakeStatus status, bool tell_peer);
  HandshakeConfig config_;
  CryptoCounters* counters_;
  State state_ = State::kIdle;
  uint32_t key_id_ = 0;
  uint16_t epoch_proposed_ = 0;
  Digest handshake_mac_key_{};
  Digest session_base_key_{};
  std::array<uint8_t, kClientHelloBytes> hello_{};
  std::array<uint8_t, kServerHelloBytes> server_hello_{};
  std::vector<uint8_t> confirm_;
  EVP_PKEY* ephemeral_ = nullptr;
};

class ServerHandshake {
 public:
  ServerHandshake(const HandshakeConfig& config, CryptoCounters* counters);
  ~ServerHandshake();
  ServerHandshake(const ServerHandshake&) = delete;
  ServerHandshake& operator=(const ServerHandshake&) = delete;

  // Feeds a ClientHello. reply = ServerHello (status kInProgress) or Refuse. epoch_min: 0 for a
  // new session, the session's NextEpoch() for a rekey. A duplicate of the accepted hello yields
  // the same ServerHello. now_ms decides whether the named key is still accepted (rotation).
  HandshakeStep OnClientHello(Bytes message, const Keyring& keyring, uint32_t server_session,
                              uint16_t epoch_min, uint64_t now_ms);
  // Feeds a Confirm or Refuse. On success: status kOk and keys set.
  HandshakeStep OnMessage(Bytes message);

 private:
  enum class State : uint8_t { kIdle, kAwaitConfirm, kDone, kFailed };
  HandshakeStep Fail(HandshakeStatus status, bool tell_peer);
  HandshakeConfig config_;
  CryptoCounters* counters_;
  State state_ = State::kIdle;
  uint32_t key_id_ = 0;
  std::array<uint8_t, kClientHelloBytes> hello_{};
  std::vector<uint8_t> server_hello_;
  std::optional<SessionKeys> pending_keys_;
  Digest confirm_key_{};
};

// The 8-byte Refuse message (exposed for tests and for the transport's own refusals).
std::vector<uint8_t> EncodeRefuse(HandshakeStatus reason, uint32_t key_id);

}  // namespace squall::crypto
